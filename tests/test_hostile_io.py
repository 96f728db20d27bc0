"""Hostile inputs (issue #13): lying headers, NaN/inf, singular geometry and degenerate radiographs are refused
with a typed error naming the file (CLI: exit 2, one `medseg: error:` line) or handled as documented."""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from medseg.errors import DicomError, GeometryError, InputError
from medseg.export.statistics import lobe_statistics
from medseg.info import describe_input
from medseg.io import AIR_HU, ReadOptions, load_volume, read_itk_image, read_nifti, read_radiograph
from medseg.io.dicom_write import SeriesInfo, write_ct_series
from medseg.io.volume import check_affine, check_voxel_budget

REALDATA_COHORTS = Path(__file__).resolve().parents[2] / "shared" / "realdata_cohorts"


def _medseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], target: Path, expected: str,
                           output: Path | None = None) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert target.name in lines[0] and expected in lines[0], lines[0]
    if output is not None:
        assert not output.exists() and not list(output.parent.glob(f"*{output.name}*"))
    return lines[0]


def _convert_refused(target: Path, tmp_path: Path, expected: str, *options: str, info: bool = True) -> str:
    """`medseg convert` (and `medseg info --json`) refuse `target` with one line; no output is left."""
    out = tmp_path / "out" / "ct.nii.gz"
    out.parent.mkdir(exist_ok=True)
    line = _assert_one_line_error(_medseg("convert", str(target), str(out), *options), target, expected, out)
    if info:
        result = _medseg("info", str(target), "--json", *options)
        _assert_one_line_error(result, target, expected)
        assert expected in json.loads(result.stdout)["error"]
    return line


@pytest.fixture()
def series(tmp_path: Path) -> Path:
    hu = np.random.default_rng(0).integers(-1024, 1000, (20, 22, 5)).astype(np.int16)
    write_ct_series(hu, np.diag([-0.7, -0.7, 2.0, 1.0]), tmp_path / "dicom", SeriesInfo(series_description="chest"))
    return tmp_path / "dicom"


def _edit(folder: Path, raw: bool = False, **tags: object) -> Path:
    """Set tags in every file; `raw=True` writes the values' bytes as they are (invalid numbers included)."""
    for file in sorted(folder.iterdir()):
        ds = pydicom.dcmread(file)
        for keyword, value in tags.items():
            tag = Tag(tag_for_keyword(keyword))
            if raw:
                data = value if isinstance(value, bytes) else str(value).encode()
                data += b" " * (len(data) % 2)
                ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag).split(" ")[0], len(data), data, 0, False, True)
            else:
                setattr(ds, keyword, value)
        ds.save_as(file)
    return folder


def _float_volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4) if affine is None else affine), path)
    return path


def _nan_block() -> np.ndarray:
    array = np.full((12, 10, 8), -700.0, dtype=np.float32)
    array[2:5, 2:5, 2:5] = np.nan  # 27
    array[8, 8, 6] = np.inf
    return array


# --- 1. NaN in, NaN out -------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope, expected", [("NaN", "not a finite number"), ("inf", "not a finite number"),
                                             ("0", "zero slope"), ("abc", "not a number")])
def test_invalid_rescale_slope_is_refused(series: Path, tmp_path: Path, slope: str, expected: str) -> None:
    _edit(series, raw=True, RescaleSlope=slope)
    with pytest.raises(DicomError, match=f"RescaleSlope value '{slope}'.*{expected}") as info:
        load_volume(series)
    assert info.value.path and info.value.path.endswith(".dcm")
    line = _convert_refused(series, tmp_path, "RescaleSlope")
    assert slope in line


def test_negative_rescale_slope_is_applied_with_a_note(series: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = load_volume(series)
    _edit(series, RescaleSlope=-1, RescaleIntercept=0)
    volume = load_volume(series)
    assert any("negative RescaleSlope" in note for note in volume.notes)
    assert "negative RescaleSlope" in caplog.text
    stored = reference.array.astype(np.float32) + 1024  # the written intercept was -1024
    np.testing.assert_allclose(volume.array, -stored)


def test_nifti_nan_voxels_become_air_with_note_or_are_refused(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = _float_volume(tmp_path / "nan.nii.gz", _nan_block())
    volume = read_nifti(path)
    assert np.isfinite(volume.array).all() and (volume.array == AIR_HU).sum() == 28
    assert volume.notes == ["28 non-finite voxels (NaN/inf) replaced by air (-1024 HU)"]
    assert "28 non-finite voxels" in caplog.text
    assert load_volume(path).notes == volume.notes
    with pytest.raises(InputError, match="28 non-finite voxel"):
        load_volume(path, options=ReadOptions(on_non_finite="error"))
    _convert_refused(path, tmp_path, "28 non-finite voxel", "--non-finite", "error")
    out = tmp_path / "air.nii.gz"
    result = _medseg("convert", str(path), str(out))
    assert result.returncode == 0 and np.isfinite(nib.load(out).get_fdata()).all()


def test_itk_nan_voxels_follow_the_option(tmp_path: Path) -> None:
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_nan_block()), str(path))
    assert read_itk_image(path).notes[0].startswith("28 non-finite voxels")
    with pytest.raises(InputError, match="28 non-finite"):
        read_itk_image(path, ReadOptions(on_non_finite="error"))


def test_dicom_float_values_follow_the_option(series: Path) -> None:
    _edit(series, RescaleSlope=0.5)  # float32 HU path; the values stay finite
    assert load_volume(series).notes == []


def test_non_finite_voxels_raise_a_qc_flag(tmp_path: Path) -> None:
    volume = read_nifti(_float_volume(tmp_path / "nan.nii.gz", _nan_block()))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    stats = lobe_statistics(volume, labels)
    assert stats.flagged("non_finite_voxels") == {None}
    clean = read_nifti(_float_volume(tmp_path / "clean.nii.gz", np.full((12, 10, 8), -700.0)))
    assert not lobe_statistics(clean, labels).flagged("non_finite_voxels")


def test_info_json_is_strict_json(series: Path) -> None:
    _edit(series, raw=True, KVP="NaN")  # old: the tag printed as a bare NaN
    result = _medseg("info", str(series), "--json")
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["volume"]["tags"].get("KVP") is None


# --- 2. headers that lie allocate first ---------------------------------------------------------------------


def test_huge_dicom_matrix_refused_before_reading_pixels(series: Path, tmp_path: Path) -> None:
    _edit(series, Rows=65535, Columns=65535)
    with pytest.raises(InputError, match=r"65535x65535x5 voxels \(21.5 G voxels, 42.9 GB as int16\) exceeds the "
                                         r"voxel budget of 1.07 G voxels"):
        load_volume(series)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    line = _convert_refused(series, tmp_path, "exceeds the voxel budget")
    assert time.perf_counter() - started < 20
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 1024**2 or peak_kib == before, f"a child peaked at {peak_kib / 1024:.0f} MiB"
    assert "--max-voxels" in line


def test_max_voxels_is_configurable(series: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="20x22x5 voxels"):
        load_volume(series, options=ReadOptions(max_voxels=1000))
    _convert_refused(series, tmp_path, "exceeds the voxel budget", "--max-voxels", "1000")
    nifti = _float_volume(tmp_path / "v.nii", np.zeros((12, 10, 8)))
    with pytest.raises(InputError, match="12x10x8 voxels"):
        read_nifti(nifti, ReadOptions(max_voxels=100))
    assert load_volume(series, options=ReadOptions(max_voxels=2200)).shape == (20, 22, 5)


def _nifti_header_only(path: Path, shape: tuple[int, ...], size: int | None = None) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    with path.open("wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        if size is not None:
            handle.truncate(size)  # sparse: no disk used
    return path


def test_sparse_huge_nifti_refused_from_header(tmp_path: Path) -> None:
    path = _nifti_header_only(tmp_path / "sparse.nii", (2048, 2048, 1024), size=352 + 2048 * 2048 * 1024 * 2)
    with pytest.raises(InputError, match=r"2048x2048x1024 voxels .* exceeds the voxel budget"):
        read_nifti(path)
    _convert_refused(path, tmp_path, "exceeds the voxel budget")


def test_absurd_nifti_header_gives_a_reason(tmp_path: Path) -> None:
    path = _nifti_header_only(tmp_path / "absurd.nii", (30000, 30000, 30000))
    _convert_refused(path, tmp_path, "30000x30000x30000 voxels")


def test_truncated_and_empty_nifti_and_itk_refused(tmp_path: Path) -> None:
    truncated = _nifti_header_only(tmp_path / "short.nii", (100, 100, 100))
    with pytest.raises(InputError, match="truncated: header promises 2000000 bytes of voxel data, file holds 0"):
        read_nifti(truncated)
    _convert_refused(truncated, tmp_path, "truncated: header promises")
    empty = _nifti_header_only(tmp_path / "empty.nii", (100, 0, 100))
    _convert_refused(empty, tmp_path, "100x0x100 voxels: a dimension is zero")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 10, 10), np.float32)), str(tmp_path / "ok.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 10, 10), np.float32)), str(tmp_path / "ok.nrrd"))
    for name, old, new in (("short.mha", b"DimSize = 10 10 10", b"DimSize = 100 100 100"),
                           ("short.nrrd", b"sizes: 10 10 10", b"sizes: 100 100 100")):
        source = (tmp_path / f"ok{Path(name).suffix}").read_bytes()
        assert old in source
        (tmp_path / name).write_bytes(source.replace(old, new))
        with pytest.raises(InputError, match="truncated: header promises 4000000 bytes of voxel data, file holds 4000"):
            read_itk_image(tmp_path / name)
        _convert_refused(tmp_path / name, tmp_path, "truncated")
    huge = (tmp_path / "ok.mha").read_bytes().replace(b"DimSize = 10 10 10", b"DimSize = 50000 50000 50000")
    (tmp_path / "huge.mha").write_bytes(huge)
    _convert_refused(tmp_path / "huge.mha", tmp_path, "exceeds the voxel budget")


def test_voxel_budget_message() -> None:
    with pytest.raises(InputError) as info:
        check_voxel_budget((65535, 65535, 20), np.int16, 1024**3, "study")
    assert str(info.value) == ("study: image of 65535x65535x20 voxels (85.9 G voxels, 172 GB as int16) exceeds the "
                               "voxel budget of 1.07 G voxels (ReadOptions.max_voxels / --max-voxels)")


# --- 3. singular, zero or NaN affines -----------------------------------------------------------------------


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]), np.diag([np.nan, 1, 1, 1]),
                                    np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])])
def test_check_affine_refuses_singular_and_non_finite(affine: np.ndarray) -> None:
    with pytest.raises(GeometryError, match="cannot place the image in space"):
        check_affine(affine, "x.nii")
    check_affine(np.diag([-0.7, -0.7, 2.0, 1.0]))


def _nifti_with_header(path: Path, **fields: object) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), path)
    raw = path.read_bytes()
    header = nib.Nifti1Header(raw[:348])
    for key, value in fields.items():
        header[key] = value
    path.write_bytes(header.binaryblock + raw[348:])
    return path


@pytest.mark.parametrize("fields, expected", [
    ({"srow_x": [0, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 0, 0], "sform_code": 1}, "singular"),
    ({"srow_x": [np.nan, 0, 0, 0], "sform_code": 1}, "not finite"),
    ({"sform_code": 0, "qform_code": 1, "quatern_b": np.nan}, "not finite"),
])
def test_nifti_with_bad_affine_refused(tmp_path: Path, fields: dict, expected: str) -> None:
    path = _nifti_with_header(tmp_path / "bad.nii", **fields)
    with pytest.raises(GeometryError, match=expected):
        read_nifti(path)
    _convert_refused(path, tmp_path, f"affine is {expected}")


@pytest.mark.parametrize("old, new", [(b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1"),
                                      (b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1")])
def test_itk_with_zero_spacing_or_degenerate_direction_refused(tmp_path: Path, old: bytes, new: bytes) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(tmp_path / "ok.mha"))
    source = (tmp_path / "ok.mha").read_bytes()
    assert old in source
    (tmp_path / "bad.mha").write_bytes(source.replace(old, new))
    with pytest.raises(GeometryError, match="singular"):
        read_itk_image(tmp_path / "bad.mha")
    _convert_refused(tmp_path / "bad.mha", tmp_path, "cannot place the image in space")


@pytest.mark.parametrize("keyword, value, expected", [
    ("ImageOrientationPatient", "nan\\0\\0\\0\\1\\0", "invalid ImageOrientationPatient"),
    ("ImagePositionPatient", "nan\\0\\0", "invalid ImagePositionPatient"),
    ("ImagePositionPatient", "x\\0\\0", "invalid ImagePositionPatient"),
    ("PixelSpacing", "0\\0", "invalid PixelSpacing"),
    ("PixelSpacing", "nan\\1", "invalid PixelSpacing"),
    ("PixelSpacing", "inf\\1", "invalid PixelSpacing"),
    ("PixelSpacing", "0.5", "invalid PixelSpacing"),
    ("PixelSpacing", "x\\y", "invalid PixelSpacing"),
    ("SliceThickness", "nan", "invalid SliceThickness"),
    ("RescaleIntercept", "abc", "invalid RescaleIntercept"),
    ("PixelPaddingValue", b"-2000", "invalid PixelPaddingValue"),
    ("BitsStored", b"\x14\x00", "invalid BitsStored 20"),
])
def test_malformed_dicom_tags_name_the_tag(series: Path, tmp_path: Path, keyword: str, value: str | bytes,
                                            expected: str) -> None:
    _edit(series, raw=True, **{keyword: value})
    with pytest.raises(DicomError, match=expected):
        load_volume(series)
    _convert_refused(series, tmp_path, expected, info=keyword == "PixelSpacing")


@pytest.mark.parametrize("orientation", ["0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "a\\0\\0\\0\\1\\0"])
def test_degenerate_orientation_refused_with_typed_error(series: Path, tmp_path: Path, orientation: str) -> None:
    _edit(series, raw=True, ImageOrientationPatient=orientation)
    with pytest.raises(InputError, match="ImageOrientationPatient"):
        load_volume(series)
    _convert_refused(series, tmp_path, "ImageOrientationPatient")


def test_missing_rows_and_bits_allocated_refused(series: Path, tmp_path: Path) -> None:
    other = shutil.copytree(series, tmp_path / "bits")
    _edit(other, BitsAllocated=7)
    _convert_refused(other, tmp_path, "Bits Allocated")
    for file in sorted(series.iterdir()):
        ds = pydicom.dcmread(file)
        del ds.Rows
        ds.save_as(file)
    _convert_refused(series, tmp_path, "without an image (no Rows/Columns")


# --- 4. degenerate radiographs ------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("shape, fill, expected", [
    ((1, 1), "noise", "too small, 1x1 pixels"),
    ((2, 6000), "noise", "too small, 2x6000 pixels (at least 64 on a side)"),
    ((100, 500), "noise", "extreme aspect ratio, 100x500 pixels (5:1"),
    ((128, 128), "constant", "no contrast, every pixel is 77"),
    ((128, 128), "speck", "near-constant, at least 98 % of the pixels are 77"),
    ((128, 128), "levels", "tiny dynamic range, 3 grey levels"),
])
def test_degenerate_radiographs_refused_for_classification(tmp_path: Path, shape: tuple[int, int], fill: str,
                                                          expected: str) -> None:
    rng = np.random.default_rng(0)
    array = {"noise": lambda: rng.integers(0, 256, shape), "constant": lambda: np.full(shape, 77),
             "speck": lambda: np.pad(np.full((10, 10), 200), ((0, 118), (0, 118)), constant_values=77),
             "levels": lambda: rng.integers(100, 103, shape)}[fill]()
    path = _png(tmp_path / "x.png", array)
    assert read_radiograph(path).array.shape == shape  # reading alone stays permissive
    with pytest.raises(InputError, match=re.escape(expected)) as info:
        read_radiograph(path, usable=True)
    assert info.value.path == str(path)


def test_radiograph_pixel_budget_checked_from_headers(tmp_path: Path) -> None:
    path = _png(tmp_path / "big.png", np.random.default_rng(0).integers(0, 256, (300, 400)))
    with pytest.raises(InputError, match=r"300x400 pixels \(0.12 M\) exceeds the pixel budget of 0.1 M"):
        read_radiograph(path, max_pixels=100_000)
    big = _png_claiming(path, tmp_path / "big_header.png", 12000, 12000)
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(InputError, match=re.escape("12000x12000 pixels (144 M) exceeds the pixel budget of 100 M")):
        read_radiograph(big, max_pixels=100_000_000)
    bomb = _png_claiming(path, tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(InputError, match="too large to decode safely"):
        read_radiograph(bomb)  # Pillow's own decompression-bomb limit, as an InputError


def _png_claiming(source: Path, target: Path, width: int, height: int) -> Path:
    """`source` PNG with its IHDR rewritten to claim width x height (valid CRC, the data stays small)."""
    data = bytearray(source.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    target.write_bytes(bytes(data))
    return target


def test_radiograph_dicom_pixel_budget(tmp_path: Path) -> None:
    from tests.test_xray import _write_dx

    path = _write_dx(tmp_path / "dx.dcm", np.random.default_rng(0).integers(0, 4096, (80, 90)).astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 65535
    ds.save_as(path)
    with pytest.raises(InputError, match=r"65535x65535 pixels .* exceeds the pixel budget"):
        read_radiograph(path)


def test_real_and_synthetic_radiographs_are_usable(realdata: Path, tmp_path: Path) -> None:
    files = sorted(p for p in (realdata / "xray").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".dcm"))
    for cohort in ("cxr_nih_64px", "cxr_kermany_pediatric"):
        found = sorted(p for p in (REALDATA_COHORTS / cohort).rglob("*") if p.suffix.lower() in (".png", ".jpeg",
                                                                                                 ".jpg"))
        files += found[:: max(1, len(found) // 40)]
    result = _medseg("synth", "cxr", "-n", "4", "--size", "64", "--out", str(tmp_path / "synth"))
    assert result.returncode == 0, result.stderr
    files += sorted((tmp_path / "synth").rglob("*.png")) + sorted((tmp_path / "synth").rglob("*.dcm"))
    assert len(files) > 10
    for file in files:
        read_radiograph(file, usable=True)


# --- real data: nothing real refused by the new checks ------------------------------------------------------


def test_real_ct_still_loads(realdata: Path) -> None:
    known_refusals = {"duplicate_positions": "duplicate slice positions", "missing_slice": "missing slice",
                      "missing_slice_tilted": "missing slice", "nema_ct1_chest": "duplicate slice positions",
                      "transfer_syntaxes": "duplicate slice positions"}
    from medseg.io import SelectionRules

    inputs = sorted((realdata / "ct_dicom").iterdir()) + sorted((realdata / "nifti").rglob("*.nii.gz"))
    inputs += sorted((realdata / "ct_dicom").glob("*/*.dcm"))
    for path in inputs:
        if path.is_dir() and path.name == "licenses":
            continue
        report = describe_input(path, rules=SelectionRules(modalities=None))
        expected = known_refusals.get(path.name) if path.is_dir() else None
        if expected:
            assert expected in (report["error"] or ""), (path, report["error"])
        else:
            assert report["error"] is None, (path, report["error"])
            assert all(math.isfinite(v) for v in report["volume"]["value_range"])
