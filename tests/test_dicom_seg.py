"""DICOM SEG export: frames on the source slices (checked with pydicom, highdicom and SimpleITK), codes, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.errors import GeometryError, InputError
from medseg.export.dicom_seg import read_dicom_seg_labels, write_dicom_seg
from medseg.io import ReadOptions, Volume, load_volume, read_nifti

from .conftest import resample_by_world, sitk_read_series, sitk_world_matrix_ras

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# Written out here (not imported) so the test checks the registry: DICOM CID 6170 lobe / CID 7151 lung types,
# keyed (type code, laterality modifier code from CID 244: 24028007 right, 7771000 left).
LOBE_CODES = {("45653009", "7771000"): 1, ("90572001", "7771000"): 2, ("45653009", "24028007"): 3,
              ("72481006", "24028007"): 4, ("90572001", "24028007"): 5}
LUNG_CODES = {("39607008", "24028007"): 1, ("39607008", "7771000"): 2}


def _type_key(segment) -> tuple[str, str]:
    """(property type code, laterality modifier code) of a SegmentSequence item."""
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    modifier = kind.SegmentedPropertyTypeModifierCodeSequence[0]
    assert kind.CodingSchemeDesignator == modifier.CodingSchemeDesignator == "SCT"
    return str(kind.CodeValue), str(modifier.CodeValue)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from medseg.data.phantom.ct_case import synth_ct_case

    folder = tmp_path_factory.mktemp("seg_case")
    synth_ct_case(folder, 3, case_id="seg", size=96, slices=40, findings=[])
    volume = load_volume(folder / "ct")
    labels = read_nifti(folder / "lobes.nii.gz")
    assert labels.shape == volume.shape and np.allclose(labels.affine, volume.affine, atol=1e-4)
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4, 5}
    result = write_dicom_seg(labels.array, volume, folder / "out" / "lobes_seg.dcm")
    return folder, volume, labels, result


def _source_headers(folder: Path) -> dict[str, pydicom.Dataset]:
    headers = (pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()))
    return {ds.SOPInstanceUID: ds for ds in headers}


def _frame_items(seg: pydicom.Dataset):
    """(referenced SOP instance UID, IPP, segment number) of each frame."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        yield uid, position, int(identification[0].ReferencedSegmentNumber)


def _check_frames_on_sources(seg_path: Path, series: Path) -> pydicom.Dataset:
    seg = pydicom.dcmread(seg_path)
    sources = _source_headers(series)
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [first.SeriesInstanceUID]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, first.ImageOrientationPatient)
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing)
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    for uid, position, _ in _frame_items(seg):
        assert uid in sources
        assert np.abs(position - np.array(sources[uid].ImagePositionPatient, dtype=float)).max() <= 1e-4
    return seg


def _check_frames_against_sitk(seg_path: Path, series: Path, labels: np.ndarray, affine: np.ndarray,
                               codes: dict[str, int]) -> None:
    """Every frame equals the reference labels on SimpleITK's reading of the series, found by position."""
    image = sitk_read_series(series)
    size = image.GetSize()
    reference = resample_by_world(labels, affine, sitk_world_matrix_ras(image), size)   # (x, y, z) = (col, row, z)
    seg = pydicom.dcmread(seg_path)
    values = {int(s.SegmentNumber): codes[_type_key(s)]
              for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = set()
    for number, (_, position, segment) in enumerate(_frame_items(seg)):
        index = np.array(image.TransformPhysicalPointToContinuousIndex(position.tolist()))
        assert np.allclose(index[:2], 0, atol=1e-4) and abs(index[2] - round(index[2])) < 1e-4, index
        z = round(index[2])
        expected = values[segment] == reference[:, :, z].T
        assert np.array_equal(frames[number] > 0, expected), (number, z, segment)
        seen.add((z, segment))
    # frames exist exactly for the (slice, segment) pairs with labelled pixels
    wanted = {(z, number) for z in range(size[2]) for number, value in values.items()
              if np.any(reference[:, :, z] == value)}
    assert seen == wanted


def test_seg_is_segmentation_storage_with_snomed_lobe_segments(case) -> None:
    folder, _, _, result = case
    seg = _check_frames_on_sources(result.path, folder / "ct")
    assert seg.Modality == "SEG" and seg.SOPClassUID == SEGMENTATION_STORAGE
    assert seg.SegmentationType == "BINARY" and seg.SeriesDescription == "medseg lobes"
    assert len(seg.SegmentSequence) == 5
    for item in seg.SegmentSequence:
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        assert kind.CodingSchemeDesignator == "SCT"
        assert LOBE_CODES[_type_key(item)] == result.label_values[int(item.SegmentNumber)]
        region = item.AnatomicRegionSequence[0]
        assert region.CodeValue == "39607008" and region.AnatomicRegionModifierSequence[0].CodeValue == (
            _type_key(item)[1])
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medseg"
        assert len(item.RecommendedDisplayCIELabValue) == 3
    assert result.segments == {1: "left_upper_lobe", 2: "left_lower_lobe", 3: "right_upper_lobe",
                               4: "right_middle_lobe", 5: "right_lower_lobe"}
    assert result.skipped == {} and result.source_images == 40 and result.frames == seg.NumberOfFrames
    assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]   # no temporary left


def test_highdicom_reads_the_seg(case) -> None:
    _, _, _, result = case
    seg = hd.seg.segread(result.path)
    assert seg.number_of_segments == 5 and seg.segment_numbers == [1, 2, 3, 4, 5]
    assert {c.value for c in seg.segmented_property_types} == {code for code, _ in LOBE_CODES}   # distinct types
    assert [_type_key(seg.get_segment_description(n)) for n in seg.segment_numbers] == list(LOBE_CODES)


def test_read_back_equals_the_nifti_labels(case) -> None:
    _, volume, labels, result = case
    back = read_dicom_seg_labels(result.path, volume)
    assert back.dtype == np.uint8 and np.array_equal(back, labels.array)
    # placed by frame positions alone: the NIfTI's own grid (no slice files, no tags) gives the same array
    assert np.array_equal(read_dicom_seg_labels(result.path, labels), labels.array)


def test_frames_match_simpleitk_slices_by_position(case) -> None:
    folder, _, labels, result = case
    _check_frames_against_sitk(result.path, folder / "ct", labels.array, labels.affine, LOBE_CODES)


def _coronal_series(folder: Path):
    """A coronal phantom series (rows run feet-ward): rendered truth labels and their grid."""
    from medseg.data.phantom.acquisition import sample_acquisition
    from medseg.data.phantom.model import build_chest_model, component_rng
    from medseg.data.phantom.render import Grid, ScannerSettings, render
    from medseg.io.dicom_write import SeriesInfo, write_ct_series

    model = build_chest_model(11, findings=())
    base = sample_acquisition(component_rng(11, "acquisition"), model, size=96, slices=40,
                              truncation_probability=0.0).grid
    # new axes (i, j, k) = old (i, k, j), j flipped: columns run right-left, rows head-feet, slices along y
    index_map = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, base.shape[2] - 1], [0, 0, 0, 1]])
    affine, shape = base.affine @ index_map, (base.shape[0], base.shape[2], base.shape[1])
    image = render(model, Grid(shape, affine, base.slice_thickness), ScannerSettings(noise_sd=10.0))
    write_ct_series(np.asarray(image.hu), affine, folder, SeriesInfo(series_description="coronal phantom"))
    return np.asarray(image.lobes), affine


def test_coronal_acquisition_round_trips(tmp_path: Path) -> None:
    truth, truth_affine = _coronal_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    first = pydicom.dcmread(volume.slice_files[0], stop_before_pixels=True)
    normal = np.cross(*np.reshape(np.array(first.ImageOrientationPatient, dtype=float), (2, 3)))
    assert abs(normal[1]) > 0.99, "not a coronal acquisition"
    labels = resample_by_world(truth, truth_affine, volume.affine, volume.shape)
    result = write_dicom_seg(labels, volume, tmp_path / "seg.dcm")
    assert len(result.segments) == 5
    _check_frames_on_sources(result.path, tmp_path / "ct")
    assert np.array_equal(read_dicom_seg_labels(result.path, volume), labels)
    _check_frames_against_sitk(result.path, tmp_path / "ct", truth, truth_affine, LOBE_CODES)


def _reorient(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axes (j, i, k) with the new first and last axes reversed; the affine follows, voxels stay put."""
    shape = array.shape
    index_map = np.array([[0, 1.0, 0, 0], [-1.0, 0, 0, shape[1] - 1], [0, 0, -1.0, shape[2] - 1], [0, 0, 0, 1]])
    # new (a, b, c) -> old (i, j, k) = (b, shape[1] - 1 - a, shape[2] - 1 - c)
    moved = array.transpose(1, 0, 2)[::-1, :, ::-1]
    return np.ascontiguousarray(moved), affine @ index_map


def test_reoriented_volume_maps_to_the_same_frames_by_geometry(case, tmp_path: Path) -> None:
    _, volume, labels, result = case
    array, affine = _reorient(volume.array, volume.affine)
    moved_labels, moved_affine = _reorient(labels.array, labels.affine)
    assert np.allclose(moved_affine, affine)
    assert np.array_equal(resample_by_world(labels.array, labels.affine, affine, array.shape), moved_labels)
    moved = Volume(array, affine, tags=volume.tags, source=volume.source, slice_files=volume.slice_files)
    other = write_dicom_seg(moved_labels, moved, tmp_path / "moved.dcm")

    def frames(path: Path) -> dict[tuple[str, int], np.ndarray]:
        seg = pydicom.dcmread(path)
        pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
        return {(uid, segment): pixels[n] for n, (uid, _, segment) in enumerate(_frame_items(seg))}

    original, reoriented = frames(result.path), frames(other.path)
    assert original.keys() == reoriented.keys()
    assert all(np.array_equal(original[key], reoriented[key]) for key in original)
    assert np.array_equal(read_dicom_seg_labels(other.path, moved), moved_labels)
    assert np.array_equal(read_dicom_seg_labels(result.path, moved), moved_labels)


def test_absent_lobe_is_skipped_and_reported(case, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, volume, labels, _ = case
    no_middle = np.where(labels.array == 4, 0, labels.array).astype(np.uint8)
    with caplog.at_level(logging.INFO, logger="medseg.export.dicom_seg"):
        result = write_dicom_seg(no_middle, volume, tmp_path / "seg.dcm")
    assert result.skipped == {4: "right_middle_lobe"} and "right_middle_lobe" in caplog.text
    assert result.label_values == {1: 1, 2: 2, 3: 3, 4: 5}
    seg = pydicom.dcmread(result.path)
    assert sorted(_type_key(s) for s in seg.SegmentSequence) == sorted(
        code for code, value in LOBE_CODES.items() if value != 4)
    assert np.array_equal(read_dicom_seg_labels(result.path, volume), no_middle)


def test_lungs_label_map_and_explicit_names(case, tmp_path: Path) -> None:
    folder, volume, _, _ = case
    lungs = read_nifti(folder / "lungs.nii.gz").array
    result = write_dicom_seg(lungs, volume, tmp_path / "lungs.dcm", label_map="lungs")
    seg = pydicom.dcmread(result.path)
    assert {_type_key(s) for s in seg.SegmentSequence} == set(LUNG_CODES)
    assert np.array_equal(read_dicom_seg_labels(result.path, volume), lungs)
    swapped = np.choose(lungs, [0, 7, 9]).astype(np.uint8)
    explicit = write_dicom_seg(swapped, volume, tmp_path / "explicit.dcm", label_map={7: "Right lung", 9: "LEFT-LUNG"})
    assert explicit.segments == {1: "right_lung", 2: "left_lung"}
    assert np.array_equal(read_dicom_seg_labels(explicit.path, volume, label_map={7: "right_lung", 9: "left_lung"}),
                          swapped)


def test_bad_inputs_are_refused_with_clear_errors(case, tmp_path: Path) -> None:
    folder, volume, labels, _ = case
    nifti = read_nifti(folder / "lobes.nii.gz")
    with pytest.raises(InputError, match="needs the source DICOM series") as error:
        write_dicom_seg(labels.array, nifti, tmp_path / "a.dcm")
    assert "lobes.nii.gz" in str(error.value)
    with pytest.raises(InputError, match=r"shape \(96, 96, 39\)"):
        write_dicom_seg(labels.array[:, :, 1:], volume, tmp_path / "a.dcm")
    with pytest.raises(InputError, match="'spleen'"):
        write_dicom_seg(labels.array, volume, tmp_path / "a.dcm", label_map={1: "left_upper_lobe", 2: "spleen"})
    with pytest.raises(InputError, match=r"label value\(s\) \[3, 4, 5\] have no name"):
        write_dicom_seg(labels.array, volume, tmp_path / "a.dcm", label_map="lungs")
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(np.zeros_like(labels.array), volume, tmp_path / "a.dcm")
    assert not any(tmp_path.iterdir())


def test_labels_off_the_acquired_slices_are_refused(case, tmp_path: Path) -> None:
    _, volume, labels, _ = case
    shifted = volume.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]               # half a voxel along i: no longer the pixel grid
    with pytest.raises(GeometryError, match="not on the label grid"):
        write_dicom_seg(labels.array, Volume(volume.array, shifted, tags=volume.tags,
                                             slice_files=volume.slice_files), tmp_path / "a.dcm")
    middle = labels.array[:, :, labels.shape[2] // 2:][:, :, :1]
    assert middle.any()
    padded = np.concatenate([labels.array, middle], axis=2)   # labels on an extra, unacquired plane
    extended = Volume(np.zeros(padded.shape, np.int16), volume.affine, tags=volume.tags,
                      slice_files=volume.slice_files)
    with pytest.raises(GeometryError, match="off the acquired slices"):
        write_dicom_seg(padded, extended, tmp_path / "a.dcm")
    assert not any(tmp_path.iterdir())


def test_resampled_series_is_refused_naming_the_reason(case, tmp_path: Path) -> None:
    folder, _, _, _ = case
    shutil.copytree(folder / "ct", tmp_path / "ct")
    (tmp_path / "ct" / "slice_0020.dcm").unlink()
    volume = load_volume(tmp_path / "ct", options=ReadOptions(on_uneven_spacing="resample"))
    assert not volume.slice_files and volume.notes
    with pytest.raises(GeometryError, match=r"must reference acquired slices.*missing slice") as error:
        write_dicom_seg(np.ones(volume.shape, np.uint8), volume, tmp_path / "seg.dcm")
    assert "NIfTI" in str(error.value) and not (tmp_path / "seg.dcm").exists()


# ------------------------------------------------------------------------------------------------ real data


def _lung_threshold(volume: Volume) -> np.ndarray:
    """HU < -400 inside the body (the filled HU > -400 region of each slice) as label 1."""
    from scipy import ndimage

    body = np.stack([ndimage.binary_fill_holes(volume.array[:, :, k] > -400) for k in range(volume.shape[2])], axis=2)
    return ((volume.array < -400) & body).astype(np.uint8)


@pytest.mark.parametrize(("name", "missing"), [("siemens_abdomen_j2k", "StudyInstanceUID"),
                                               ("chest_slice_pair", "FrameOfReferenceUID")])
def test_real_series_without_uids_is_refused(realdata: Path, tmp_path: Path, name: str, missing: str) -> None:
    volume = load_volume(realdata / "ct_dicom" / name)
    with pytest.raises(InputError, match=missing) as error:
        write_dicom_seg(_lung_threshold(volume), volume, tmp_path / "seg.dcm", label_map="lungs")
    assert name in str(error.value) and not any(tmp_path.iterdir())


def test_real_series_round_trips_on_its_slices(realdata: Path, tmp_path: Path) -> None:
    """The real Siemens J2K series with its blanked UIDs restored (SOP UIDs from the file meta)."""
    study, series_uid, frame = generate_uid(), generate_uid(), None
    series = tmp_path / "ct"
    series.mkdir()
    for path in sorted((realdata / "ct_dicom" / "siemens_abdomen_j2k").iterdir()):
        ds = pydicom.dcmread(path)
        frame = frame or ds.FrameOfReferenceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(series / path.name)
    volume = load_volume(series)
    mask = _lung_threshold(volume)
    assert 0.001 < mask.mean() < 0.5
    result = write_dicom_seg(mask, volume, tmp_path / "seg.dcm", label_map="lungs", series_description="air")
    assert result.segments == {1: "right_lung"} and result.source_images == 20
    seg = _check_frames_on_sources(result.path, series)
    assert seg.FrameOfReferenceUID == frame and seg.NumberOfFrames == int(np.any(mask, axis=(0, 1)).sum())
    assert np.array_equal(read_dicom_seg_labels(result.path, volume), mask)
    _check_frames_against_sitk(result.path, series, mask, volume.affine, LUNG_CODES)
