"""Discovery, grouping, selection and the geometry checks on series the tests build themselves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.errors import DicomError, GeometryError, InputError
from medseg.io import (
    AIR_HU,
    ReadOptions,
    SelectionRules,
    discover_dicom,
    group_series,
    load_volume,
    scan_dicom,
    select_series,
)
from medseg.io.dicom_write import SeriesInfo, write_ct_series


def _axial_affine(dx: float = 0.8, dz: float = 2.0, origin=(100.0, 80.0, -50.0)) -> np.ndarray:
    affine = np.diag([-dx, -dx, dz, 1.0])
    affine[:3, 3] = origin
    return affine


def _series(folder: Path, slices: int = 6, matrix=(24, 20), info: SeriesInfo | None = None,
            affine: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    hu = np.random.default_rng(seed).integers(-1024, 1500, (*matrix, slices)).astype(np.int16)
    write_ct_series(hu, _axial_affine() if affine is None else affine, folder, info)
    return hu


def test_discovery_skips_and_counts_non_dicom(tmp_path: Path) -> None:
    _series(tmp_path / "study" / "a" / "b", slices=5)
    (tmp_path / "study" / "notes.txt").write_text("hello")
    (tmp_path / "study" / "empty").write_bytes(b"")
    (tmp_path / "study" / "a" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    found = discover_dicom(tmp_path / "study")
    assert len(found.headers) == 5
    assert found.skipped_non_dicom == 3
    assert all("PixelData" not in h.dataset for h in found.headers)  # headers only


def test_truncated_file_named_in_error(tmp_path: Path) -> None:
    _series(tmp_path, slices=4)
    victim = sorted(tmp_path.glob("*.dcm"))[2]
    victim.write_bytes(victim.read_bytes()[:-500])
    with pytest.raises(DicomError, match=victim.name):
        load_volume(tmp_path)


def test_grouping_splits_mixed_matrix_and_selection_explains(tmp_path: Path) -> None:
    uid = pydicom.uid.generate_uid()
    _series(tmp_path / "big", slices=8, info=SeriesInfo(series_uid=uid))
    _series(tmp_path / "small", slices=3, matrix=(16, 16), info=SeriesInfo(series_uid=uid))
    _series(tmp_path / "scout", slices=10, info=SeriesInfo(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    _series(tmp_path / "mr", slices=12, info=SeriesInfo(modality="MR"))
    series = group_series(discover_dicom(tmp_path).headers)
    assert sorted(len(s.slices) for s in series) == [3, 8, 10, 12]
    assert any("mixes 2 orientations/matrix sizes" in note for s in series for note in s.notes)
    selection = select_series(series)
    assert len(selection.chosen.slices) == 8
    reasons = {len(v.series.slices): " ".join(v.reasons) for v in selection.verdicts}
    assert "LOCALIZER" in reasons[10]
    assert "modality MR is not CT" in reasons[12]
    assert "selected" in reasons[8] and "most_slices" in selection.reason
    # Rules are configurable: accepting MR picks the largest series.
    assert len(select_series(series, SelectionRules(modalities=("CT", "MR"))).chosen.slices) == 12


def test_axial_preferred_and_thinnest_breaks_ties(tmp_path: Path) -> None:
    coronal = np.eye(4)
    coronal[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]) * 0.8
    _series(tmp_path / "coronal", slices=20, affine=coronal)
    _series(tmp_path / "thick", slices=6, affine=_axial_affine(dz=5.0))
    _series(tmp_path / "thin", slices=6, affine=_axial_affine(dz=1.0))
    selection = scan_dicom(tmp_path).selection
    assert selection.chosen.folder.endswith("thin")
    with pytest.raises(InputError, match="not axial"):
        select_series([s.series for s in selection.verdicts if s.series.folder.endswith("coronal")],
                      SelectionRules(max_obliquity_deg=30))


def test_rescale_and_padding(tmp_path: Path) -> None:
    hu = np.full((10, 12, 3), 40, np.int16)
    hu[:2] = -2000 - 1024  # stored value -2000 with intercept -1024
    hu[5, 5, 1] = 1234
    write_ct_series(hu, _axial_affine(), tmp_path / "pad", SeriesInfo(pixel_padding_value=-2000))
    volume = load_volume(tmp_path / "pad")
    assert volume.array.dtype == np.int16
    assert (volume.array[:2] == AIR_HU).all() and volume.array[5, 5, 1] == 1234

    fine = np.linspace(-1000, 1000, 10 * 12 * 3).reshape(10, 12, 3)
    write_ct_series(fine, _axial_affine(), tmp_path / "slope", SeriesInfo(rescale_slope=0.5))
    volume = load_volume(tmp_path / "slope")
    assert volume.array.dtype == np.float32
    assert np.abs(volume.array - fine).max() <= 0.25  # stored in 0.5 HU steps


def test_rle_compressed_series_decodes_identically(tmp_path: Path) -> None:
    hu = np.random.default_rng(1).integers(-1024, 2000, (16, 18, 4)).astype(np.int16)
    write_ct_series(hu, _axial_affine(), tmp_path, compress_rle=True)
    assert pydicom.dcmread(next(tmp_path.glob("*.dcm"))).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert np.array_equal(load_volume(tmp_path).array, hu)


def test_uneven_spacing_refused_then_interpolated(tmp_path: Path) -> None:
    hu = np.zeros((8, 8, 4), np.int16)
    for k in range(4):
        hu[:, :, k] = 100 * k
    write_ct_series(hu, _axial_affine(dz=2.0), tmp_path)
    # Move the last slice 1.3 mm further: uneven, not a whole missing slice.
    last = sorted(tmp_path.glob("*.dcm"))[-1]
    ds = pydicom.dcmread(last)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.3
    ds.save_as(last)
    with pytest.raises(GeometryError, match="non-uniform slice spacing"):
        load_volume(tmp_path)
    volume = load_volume(tmp_path, options=ReadOptions(on_uneven_spacing="resample"))
    # 7.3 mm of coverage at the 2 mm median gap -> 5 slices spread evenly over the whole coverage.
    assert volume.shape[2] == 5 and volume.spacing[2] == pytest.approx(7.3 / 4)
    assert volume.world([0, 0, 4])[2] == pytest.approx(-50 + 7.3, abs=1e-3)
    # Linear interpolation between the original slices (values 0, 100, 200, 300 at 0, 2, 4, 7.3 mm).
    expected = np.interp(np.arange(5) * 7.3 / 4, [0, 2, 4, 7.3], [0, 100, 200, 300])
    assert np.allclose(volume.array[0, 0, :], np.rint(expected))


def test_gantry_tilt_resampling_keeps_world_positions(tmp_path: Path) -> None:
    """A bright ball in a tilted stack must sit at the same RAS position after resampling."""
    tilt = math.radians(20)
    dx, dz = 1.0, 2.0
    lps = np.eye(4)
    lps[:3, 0] = [dx, 0, 0]
    lps[:3, 1] = [0, math.cos(tilt) * dx, -math.sin(tilt) * dx]   # tilted column direction
    lps[:3, 2] = [0, 0, dz]                                          # table moves along z
    lps[:3, 3] = [-20, -20, -20]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    shape = (40, 40, 24)
    index = np.indices(shape).reshape(3, -1).T
    world = index @ affine[:3, :3].T + affine[:3, 3]
    centre = np.array([-0.0, 2.0, -3.0])
    hu = np.where(np.linalg.norm(world - centre, axis=1) < 6, 1000, -1000).reshape(shape).astype(np.int16)
    write_ct_series(hu, affine, tmp_path)

    with pytest.raises(GeometryError, match=r"gantry tilt of 20\.00 deg"):
        load_volume(tmp_path, options=ReadOptions(on_gantry_tilt="error"))
    volume = load_volume(tmp_path)
    bright = np.argwhere(volume.array > 0)
    found = volume.world(bright).mean(axis=0)
    assert np.linalg.norm(found - centre) < 0.5, f"ball moved to {found}, expected {centre}"
    direction = volume.affine[:3, :3] / np.array(volume.spacing)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert volume.array.min() == -1024  # outside the tilted field of view is air


def test_selection_with_nothing_usable_lists_reasons(tmp_path: Path) -> None:
    _series(tmp_path / "mr", slices=3, info=SeriesInfo(modality="MR", series_description="t1 axial"))
    with pytest.raises(InputError, match=r"no series qualifies \(t1 axial: modality MR is not CT\)"):
        load_volume(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"no DICOM images found \(1 non-DICOM file\(s\) skipped\)"):
        load_volume(tmp_path / "empty")


def _native_and_pydicom(path: Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    from medseg.io.dicom_discovery import read_header
    from medseg.io.dicom_pixels import read_stored_pixels

    ds, offset = read_header(path)
    return read_stored_pixels(str(path), ds, offset), pydicom.dcmread(path).pixel_array, offset


def test_native_fast_path_equals_pydicom_on_real_files(realdata: Path) -> None:
    checked = 0
    for path in sorted((realdata / "ct_dicom").rglob("*")):
        if not path.is_file() or path.suffix == ".gz":
            continue
        ours, reference, offset = _native_and_pydicom(path)
        checked += offset is not None
        assert ours.dtype == reference.dtype and np.array_equal(ours, reference), path.name
    assert checked >= 15  # the uncompressed files really took the fast path


@pytest.mark.parametrize("signed, raw, expected", [
    (0, [0xF123, 0x0123, 0x0FFF], [0x0123, 0x0123, 0x0FFF]),   # high bits outside BitsStored masked
    (1, [0x0FFF, 0x0800, 0xF800], [-1, -2048, -2048]),          # 12-bit two's complement sign-extended
])
def test_native_fast_path_handles_bits_stored(tmp_path: Path, signed: int, raw: list[int],
                                              expected: list[int]) -> None:
    write_ct_series(np.zeros((4, 4, 1), np.int16), _axial_affine(), tmp_path)
    path = next(tmp_path.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
    values = np.zeros(16, np.uint16)
    values[: len(raw)] = raw
    ds.PixelData = values.tobytes()
    ds.save_as(path)
    ours, reference, offset = _native_and_pydicom(path)
    assert offset is not None
    assert np.array_equal(ours, reference) and ours.ravel()[: len(raw)].tolist() == expected
