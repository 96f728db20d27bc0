"""Enhanced / Legacy Converted Enhanced CT (one file, many frames) load with the geometry of the classic series."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from medseg.errors import DicomError, GeometryError, InputError
from medseg.io import ReadOptions, load_volume, scan_dicom, write_nifti
from medseg.io.dicom_multiframe import ENHANCED_CT, LEGACY_ENHANCED_CT

from .conftest import assert_same_corners, sitk_read_series, sitk_world_matrix_ras

# ----------------------------------------------------------------------------------------- real series, converted


def _cohort_series(cohorts: Path) -> list[Path]:
    """The classic series listed in the ct_lung_pet_ct_dx cohort's SERIES.csv."""
    table = cohorts / "ct_lung_pet_ct_dx" / "SERIES.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not available")
    with table.open(newline="") as handle:
        return [table.parent / row["series_dir"] for row in csv.DictReader(handle)]


def _convert(folder: Path, target: Path, syntax: str | None = None) -> Path:
    """The classic series in `folder` as one Legacy Converted Enhanced CT file (highdicom), optionally compressed."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    for ds in datasets:
        ds.SOPClassUID = ds.get("SOPClassUID") or CTImageStorage      # anonymised without it
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or "1.2.3.4"
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom: single-component patient names of anonymised data
        image = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=generate_uid(), series_number=900,
                                               sop_instance_uid=generate_uid(), instance_number=1)
    if syntax is not None:
        image.compress(syntax, generate_instance_uid=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(target)
    return target


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
              ) -> Callable[[str, str | None], tuple[Path, Path]]:
    """(classic folder, enhanced file) for a cohort series index or 'j2k', converted once per module; skips
    cleanly when ../shared is absent (the `realdata` / `realdata_cohorts` fixtures)."""
    made: dict[tuple[str, str | None], tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("enhanced")

    def get(which: str, syntax: str | None = None) -> tuple[Path, Path]:
        if (which, syntax) not in made:
            if which == "j2k":
                folder = request.getfixturevalue("realdata") / "ct_dicom" / "siemens_abdomen_j2k"
            else:
                folder = _cohort_series(request.getfixturevalue("realdata_cohorts"))[int(which)]
            if not folder.is_dir():
                pytest.skip(f"{folder} is not available")
            made[which, syntax] = folder, _convert(folder, root / f"{which}_{syntax}" / "enhanced.dcm", syntax)
        return made[which, syntax]

    return get


@pytest.mark.parametrize("which, syntax", [("0", None), ("1", None), ("2", None), ("3", RLELossless),
                                           ("j2k", JPEG2000Lossless)])
def test_converted_real_series_equals_classic_series(converted, which: str, syntax: str | None) -> None:
    folder, enhanced = converted(which, syntax)
    classic = load_volume(folder)
    ours = load_volume(enhanced)
    assert pydicom.dcmread(enhanced, stop_before_pixels=True).SOPClassUID == LEGACY_ENHANCED_CT
    if syntax is not None:
        assert ours.tags["TransferSyntaxUID"] == syntax
    assert ours.array.dtype == classic.array.dtype and np.array_equal(ours.array, classic.array)
    assert np.allclose(ours.affine, classic.affine, atol=1e-4)
    assert ours.tags["Modality"] == "CT" and ours.tags["SliceThickness"] == classic.tags["SliceThickness"]
    assert ours.source == str(enhanced) and ours.notes == []
    depth = ours.shape[2]
    assert ours.slice_files == [str(enhanced)] * depth and sorted(ours.slice_frames) == list(range(depth))


def test_dicom_seg_of_an_enhanced_series_references_its_frames(converted, tmp_path: Path) -> None:
    # The same lung mask as SEG of the classic series and of its Legacy Converted Enhanced copy: each SEG frame
    # references the source frame at its place, and both read back to the same labels.
    from medseg.export.dicom_seg import read_dicom_seg_labels, write_dicom_seg
    from medseg.infer.lungmask import lung_mask

    folder, enhanced = converted("0", None)
    classic, ours = load_volume(folder), load_volume(enhanced)
    lungs = lung_mask(classic)
    classic_seg = write_dicom_seg(lungs, classic, tmp_path / "classic.dcm", label_map="lungs")
    enhanced_seg = write_dicom_seg(lungs, ours, tmp_path / "enhanced_seg.dcm", label_map="lungs")
    assert enhanced_seg.frames == classic_seg.frames and enhanced_seg.source_images == 1
    assert np.array_equal(read_dicom_seg_labels(tmp_path / "enhanced_seg.dcm", ours), lungs)
    seg = pydicom.dcmread(tmp_path / "enhanced_seg.dcm")
    source = pydicom.dcmread(enhanced, stop_before_pixels=True)
    for item in seg.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        frame = source.PerFrameFunctionalGroupsSequence[int(reference.ReferencedFrameNumber) - 1]
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                           frame.PlanePositionSequence[0].ImagePositionPatient, atol=1e-4)


def test_folder_with_one_enhanced_file_loads_and_info_describes_it(converted) -> None:
    from click.testing import CliRunner

    from medseg.cli import main

    folder, enhanced = converted("2")
    study = scan_dicom(enhanced.parent)
    assert len(study.selection.verdicts) == 1 and study.selection.chosen.multiframe
    summary = study.summary()["series"][0]
    assert summary["slices"] == 30 and summary["matrix"] == [512, 512] and summary["slice_thickness_mm"] == 8.0
    assert np.array_equal(load_volume(enhanced.parent).array, load_volume(folder).array)

    result = CliRunner().invoke(main, ["info", str(enhanced.parent), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["error"] is None and "30 slices, axial" in report["reason"]
    assert report["volume"]["shape"] == [512, 512, 30] and report["volume"]["orientation"] == "LPS"


def test_enhanced_file_beside_its_classic_series_is_a_series_of_its_own(converted, tmp_path: Path) -> None:
    folder, enhanced = converted("2")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in sorted(folder.iterdir())[:10]:                      # 10 classic slices of another series
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "enhanced.dcm").write_bytes(enhanced.read_bytes())
    study = scan_dicom(mixed)
    assert sorted(v.series.slice_count for v in study.selection.verdicts) == [10, 30]
    assert study.selection.chosen.multiframe                        # the most slices wins, frames counted


def test_nifti_from_enhanced_file_matches_simpleitk_reading_of_the_classic_series(converted, tmp_path: Path) -> None:
    folder, enhanced = converted("2")
    out = nib.load(write_nifti(load_volume(enhanced), tmp_path / "ct.nii"))
    image = sitk_read_series(folder)
    sitk_affine = sitk_world_matrix_ras(image)
    assert_same_corners(out.affine, out.shape, sitk_affine, image.GetSize(), tol=1e-3)
    assert np.allclose(out.affine, sitk_affine, atol=1e-4)       # both LPS-ordered axes: the same grid
    assert np.array_equal(np.asarray(out.dataobj), sitk.GetArrayFromImage(image).transpose(2, 1, 0))


# ----------------------------------------------------------------------------------------- synthetic Enhanced CT


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis_v = np.array(axis, float) / np.linalg.norm(axis)
    angle = math.radians(degrees)
    cross = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


OBLIQUE = _rotation((1, 1, 0.3), 17.0)
SHAPE = (12, 10, 8)                                   # columns (i), rows (j), frames (k)
DX, DY, DZ = 0.7, 0.9, 2.5
ORIGIN_LPS = np.array([-30.5, 12.25, 80.0])
SHUFFLED = [3, 0, 7, 1, 5, 2, 6, 4]                   # slice k stored as frame f: SHUFFLED[f] == k
SLOPES = [1.0, 1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]
INTERCEPTS = [-1024.0, -1000.0, -2048.0, 0.0, -1024.0, 5.0, -1024.0, -1024.0]


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _write_enhanced(path: Path, order: list[int] = SHUFFLED, slopes: list[float] = SLOPES,
                    intercepts: list[float] = INTERCEPTS, edit: Callable[[Dataset], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """An Enhanced CT Image (oblique, frames stored in `order`, per-frame rescale, orientation and pixel measures
    in the shared group); returns the expected HU (i, j, k) and RAS affine."""
    cols, rows, _ = SHAPE
    stored = np.random.default_rng(0).integers(-1000, 3000, SHAPE).astype(np.int16)
    row, col = OBLIQUE[:, 0], OBLIQUE[:, 1]
    normal = np.cross(row, col)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, keyword, generate_uid())
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=[round(float(v), 10) for v in (*row, *col)])]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[DY, DX], SliceThickness=DZ)]),
    )])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_item(
        FrameContentSequence=Sequence([_item(StackID="1", InStackPositionNumber=k + 1)]),
        PlanePositionSequence=Sequence([_item(ImagePositionPatient=[round(float(v), 6)
                                                                    for v in ORIGIN_LPS + k * DZ * normal])]),
        PixelValueTransformationSequence=Sequence([_item(RescaleSlope=slopes[k], RescaleIntercept=intercepts[k],
                                                         RescaleType="HU")]),
    ) for k in order])
    ds.PixelData = b"".join(np.ascontiguousarray(stored[:, :, k].T).tobytes() for k in order)
    if edit is not None:
        edit(ds)
    ds.save_as(path, enforce_file_format=True)
    lps = np.eye(4)
    lps[:3, :3] = np.stack([row * DX, col * DY, normal * DZ], axis=1)
    lps[:3, 3] = ORIGIN_LPS
    hu = stored * np.array(slopes) + np.array(intercepts)
    return hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_enhanced_ct_shuffled_frames_per_frame_rescale_exact_values_and_corners(tmp_path: Path) -> None:
    hu, expected = _write_enhanced(tmp_path / "enhanced.dcm")
    volume = load_volume(tmp_path / "enhanced.dcm")
    assert volume.shape == SHAPE and volume.array.dtype == np.float32  # slopes 2 and 0.5: not integral HU
    assert np.array_equal(volume.array, hu)
    assert np.allclose(volume.affine, expected, atol=1e-4)
    assert_same_corners(volume.affine, volume.shape, expected, SHAPE, tol=1e-4)
    # dcm2niix-style expectation: after sorting along the normal the origin is the first slice's position,
    # here stored as frame 2 (SHUFFLED[1] == 0).
    first = pydicom.dcmread(tmp_path / "enhanced.dcm").PerFrameFunctionalGroupsSequence[1]
    origin_lps = np.array(first.PlanePositionSequence[0].ImagePositionPatient, float)
    assert np.allclose(volume.affine[:3, 3], origin_lps * [-1, -1, 1], atol=1e-6)
    assert volume.orientation == "".join(nib.orientations.aff2axcodes(expected))


def test_enhanced_ct_matches_simpleitk_when_frames_are_in_order(tmp_path: Path) -> None:
    # SimpleITK (GDCM) reads an enhanced file in stored frame order, placing it by the first frame, and applies
    # one rescale to every frame: compare with it for in-order frames and one rescale only. Shuffled frames and
    # per-frame rescale are checked against the constructed truth above.
    path = tmp_path / "in_order.dcm"
    hu, _ = _write_enhanced(path, order=list(range(SHAPE[2])), slopes=[1.0] * 8, intercepts=[-1024.0] * 8)
    volume = load_volume(path)
    image = sitk.ReadImage(str(path))
    sitk_affine = sitk_world_matrix_ras(image)
    assert_same_corners(volume.affine, volume.shape, sitk_affine, image.GetSize(), tol=1e-4)
    assert np.allclose(volume.affine, sitk_affine, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume.array)
    assert volume.array.dtype == np.int16 and np.array_equal(volume.array, hu)


def test_enhanced_ct_compressed_frames_decode_identically(tmp_path: Path) -> None:
    # RLE here (openjpeg cannot encode 12x10 frames); JPEG 2000 frames: the converted Siemens series above.
    hu, expected = _write_enhanced(tmp_path / "native.dcm")
    ds = pydicom.dcmread(tmp_path / "native.dcm")
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(tmp_path / "compressed.dcm")
    volume = load_volume(tmp_path / "compressed.dcm")
    assert np.array_equal(volume.array, hu)
    assert np.allclose(volume.affine, expected, atol=1e-4)


def test_dicom_seg_of_shuffled_oblique_frames_round_trips(tmp_path: Path) -> None:
    from medseg.export.dicom_seg import read_dicom_seg_labels, write_dicom_seg

    _write_enhanced(tmp_path / "enhanced.dcm")
    volume = load_volume(tmp_path / "enhanced.dcm")
    labels = np.random.default_rng(1).integers(0, 3, volume.shape).astype(np.uint8)
    labels[:, :, 2] = 0                                   # an empty slice: its frame is left out of the SEG
    result = write_dicom_seg(labels, volume, tmp_path / "seg.dcm", label_map="lungs")
    assert result.frames == 2 * (SHAPE[2] - 1)
    assert np.array_equal(read_dicom_seg_labels(tmp_path / "seg.dcm", volume), labels)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    referenced = {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for item in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {f + 1 for f in range(SHAPE[2]) if SHUFFLED[f] != 2}   # frame f holds slice SHUFFLED[f]


def test_largest_stack_is_read_with_a_note(tmp_path: Path) -> None:
    def three_frames_elsewhere(ds: Dataset) -> None:
        for frame in ds.PerFrameFunctionalGroupsSequence[:3]:
            frame.FrameContentSequence[0].StackID = "2"

    path = tmp_path / "stacks.dcm"
    hu, _ = _write_enhanced(path, order=list(range(8)), edit=three_frames_elsewhere)
    volume = load_volume(path)
    assert volume.shape == (12, 10, 5) and np.array_equal(volume.array, hu[:, :, 3:])
    assert any("2 frame stacks in one file (StackID 1: 5 frames, StackID 2: 3 frames): read the largest, StackID 1"
               in note for note in volume.notes)


def test_missing_frame_and_gantry_tilt_use_the_series_checks(tmp_path: Path) -> None:
    path = tmp_path / "gap.dcm"
    hu, expected = _write_enhanced(path, order=[6, 0, 2, 7, 1, 5, 3])          # slice 4 missing
    with pytest.raises(GeometryError, match=r"1 missing slice\(s\): gap\(s\) at .* along the normal") as caught:
        load_volume(path)
    assert caught.value.path == str(path)
    volume = load_volume(path, options=ReadOptions(on_uneven_spacing="resample"))
    assert volume.shape == SHAPE and any("missing slice" in note for note in volume.notes)
    assert np.allclose(volume.affine, expected, atol=1e-4)
    assert np.allclose(volume.array[:, :, 5], hu[:, :, 5], atol=1e-3)

    def tilt(ds: Dataset) -> None:                       # shift each slice along the column direction
        for frame in ds.PerFrameFunctionalGroupsSequence:
            k = frame.FrameContentSequence[0].InStackPositionNumber - 1
            position = frame.PlanePositionSequence[0]
            position.ImagePositionPatient = [round(float(v), 6) for v in
                                             np.array(position.ImagePositionPatient, float) + k * 0.5 * OBLIQUE[:, 1]]

    path = tmp_path / "tilt.dcm"
    _write_enhanced(path, edit=tilt)
    with pytest.raises(GeometryError, match=r"gantry tilt of 11\.3\d deg"):
        load_volume(path, options=ReadOptions(on_gantry_tilt="error"))
    volume = load_volume(path)
    assert any("gantry tilt 11.3" in note for note in volume.notes)


def _set_frames(keyword: str, values: dict[int, object], sequence: str = "FrameContentSequence"
                ) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        for index, value in values.items():
            setattr(ds.PerFrameFunctionalGroupsSequence[index][sequence][0], keyword, value)
    return edit


def _other_orientation(ds: Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[5].PlaneOrientationSequence = Sequence([_item(
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])                  # per-frame wins over the shared group


def _no_plane_position(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence


def _other_pixel_spacing(ds: Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[4].PixelMeasuresSequence = Sequence([_item(PixelSpacing=[0.5, 0.5])])


def _frames_header(count: int) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        ds.NumberOfFrames = count
        ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:count])
    return edit


def _short_pixel_data(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: 7 * 12 * 10 * 2]


def _no_per_frame_groups(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence


def _nine_frames_claimed(ds: Dataset) -> None:
    ds.NumberOfFrames = 9


@pytest.mark.parametrize("edit, error, message", [
    (_other_orientation, GeometryError,
     r"frames with different ImageOrientationPatient in one stack: frame 1 \[.*\], frame 6 \[1\.0, 0\.0, 0\.0, 0\.0, "
     r"1\.0, 0\.0\]: not one volume"),
    (_set_frames("StackID", {i: "2" for i in range(4)}), GeometryError,
     r"2 frame stacks and no single largest one \(StackID 1: 4 frames, StackID 2: 4 frames\): not one volume"),
    (_set_frames("TemporalPositionIndex", {i: i % 2 + 1 for i in range(8)}), GeometryError,
     r"2 frame stacks and no single largest one \(StackID 1 / temporal position 1: 4 frames, StackID 1 / "
     r"temporal position 2: 4 frames\)"),
    (_no_plane_position, DicomError,
     r"frame 3: PlanePositionSequence \(ImagePositionPatient\) missing from its per-frame and the shared "
     r"functional groups: cannot place the frame"),
    (_set_frames("ImagePositionPatient", {1: [1.0, 2.0]}, "PlanePositionSequence"), DicomError,
     r"frame 2: invalid ImagePositionPatient \['1\.0', '2\.0'\]: expected 3 finite numbers"),
    (_other_pixel_spacing, GeometryError, r"frames with different PixelSpacing in one stack: frame 1 \(0\.9, 0\.7\), "
                                          r"frame 5 \(0\.5, 0\.5\)"),
    (_frames_header(7), DicomError, r"NumberOfFrames is 7 but the pixel data holds 8 frame\(s\) of 10x12 "
                                    r"\(1920 bytes, expected 1680\)"),
    (_short_pixel_data, DicomError, r"NumberOfFrames is 8 but the pixel data holds 7 frame\(s\)"),
    (_nine_frames_claimed, DicomError, r"NumberOfFrames is 9 but PerFrameFunctionalGroupsSequence has 8 item\(s\)"),
    (_no_per_frame_groups, DicomError, r"PerFrameFunctionalGroupsSequence missing: the frames cannot be placed"),
    (_set_frames("ImagePositionPatient", {3: [str(v) for v in ORIGIN_LPS]}, "PlanePositionSequence"), GeometryError,
     r"duplicate slice positions: enhanced\.dcm frame \d and enhanced\.dcm frame \d both lie at"),
])
def test_broken_enhanced_file_is_refused_naming_file_and_problem(tmp_path: Path, edit, error, message: str) -> None:
    path = tmp_path / "enhanced.dcm"
    _write_enhanced(path, order=list(range(8)), edit=edit)
    with pytest.raises(error, match=message) as caught:
        load_volume(path)
    assert caught.value.path == str(path)


def test_encapsulated_frame_count_mismatch_and_voxel_budget(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate, generate_frames

    path = tmp_path / "enhanced.dcm"
    _write_enhanced(path)
    with pytest.raises(InputError, match=r"image of 12x10x8 voxels .* exceeds the voxel budget") as caught:
        load_volume(path, options=ReadOptions(max_voxels=12 * 10 * 7))
    assert caught.value.path == str(path)

    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, generate_instance_uid=False)
    frames = list(generate_frames(ds.PixelData, number_of_frames=8))
    for has_bot, where in ((True, "Basic Offset Table"), (False, "fragments")):
        ds.PixelData = encapsulate(frames[:7], has_bot=has_bot)
        ds.save_as(path)
        with pytest.raises(DicomError, match=rf"NumberOfFrames is 8 but the pixel data holds 7 frame\(s\) \({where}\)"):
            load_volume(path)
