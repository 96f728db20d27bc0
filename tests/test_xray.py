"""Tests for medseg.io.xray: real CR files, synthetic DICOM/PNG edge cases and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.errors import DicomError, InputError
from medseg.io.xray import Radiograph, is_radiograph_file, read_radiograph

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@pytest.fixture
def xray_dir() -> Path:
    folder = REALDATA / "xray"
    if not folder.is_dir():
        pytest.skip(f"real test data not available at {folder}")
    return folder


def _write_dx(path: Path, pixels: np.ndarray, **attrs: Any) -> Path:
    """Write an uncompressed single-frame DX DICOM holding `pixels` (uint16 unless told otherwise)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SYNTH"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if attrs.get("SamplesPerPixel", 1) > 1 else pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _normalised(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _window(x: np.ndarray, center: float, width: float, y_max: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto [0, y_max], written out independently of pydicom."""
    c, w = center - 0.5, width - 1
    y = ((x - c) / w + 0.5) * y_max
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, y_max, y))


# --- real files ---------------------------------------------------------------------------------------


def test_rsna_monochrome1_file_is_the_monochrome2_pixels_relabelled(xray_dir: Path) -> None:
    """The 'MONOCHROME1' RSNA file holds the MONOCHROME2 file's stored pixels unchanged, only the tag differs.

    Read as DICOM says, it is therefore the negative of the MONOCHROME2 image: the loader must invert it.
    """
    m2_path, m1_path = xray_dir / "rsna_cr_jpeg_baseline.dcm", xray_dir / "rsna_cr_monochrome1.dcm"
    ds2, ds1 = pydicom.dcmread(m2_path), pydicom.dcmread(m1_path)
    assert (ds2.PhotometricInterpretation, ds1.PhotometricInterpretation) == ("MONOCHROME2", "MONOCHROME1")
    assert ds1.PixelData == ds2.PixelData

    m2, m1 = read_radiograph(m2_path), read_radiograph(m1_path)
    for image in (m1, m2):
        assert image.array.dtype == np.float32 and image.array.shape == (1024, 1024)
        assert image.pixel_spacing == pytest.approx((0.168, 0.168))
        assert image.tags["voi"] == "none" and image.tags["BitsStored"] == 8
    np.testing.assert_array_equal(m1.array, 255.0 - m2.array)
    assert _corr(m1.array, m2.array) < -0.99
    assert any("MONOCHROME1 inverted" in note for note in m1.notes)
    assert not any("MONOCHROME1" in note for note in m2.notes)


def test_rsna_true_monochrome1_copy_loads_to_the_same_image(xray_dir: Path, tmp_path: Path) -> None:
    """A genuine MONOCHROME1 copy (stored as 255 - x) of the RSNA image reads like the MONOCHROME2 file."""
    m2_path = xray_dir / "rsna_cr_jpeg_baseline.dcm"
    stored = pydicom.dcmread(m2_path).pixel_array
    copy = _write_dx(
        tmp_path / "rsna_true_mono1.dcm",
        (255 - stored).astype(np.uint8),
        Modality="CR",
        PhotometricInterpretation="MONOCHROME1",
        PixelSpacing=[0.168, 0.168],
    )
    m2, m1 = read_radiograph(m2_path), read_radiograph(copy)
    assert _corr(m1.array, m2.array) > 0.99
    assert np.abs(_normalised(m1.array) - _normalised(m2.array)).mean() < 0.01
    np.testing.assert_array_equal(m1.array, m2.array)
    assert m1.pixel_spacing == pytest.approx((0.168, 0.168))


@pytest.mark.parametrize("voi", ["raw", "apply"])
def test_fuji_monochrome1_10bit_inverted_lungs_dark(xray_dir: Path, voi: str) -> None:
    path = xray_dir / "fuji_cr_monochrome1_10bit.dcm"
    image = read_radiograph(path, voi=voi)  # type: ignore[arg-type]
    a = image.array
    assert a.dtype == np.float32 and a.shape == (440, 440)
    assert a.min() >= 0.0 and a.max() <= 1023.0
    assert image.tags["BitsStored"] == 10 and image.tags["PhotometricInterpretation"] == "MONOCHROME1"
    assert image.pixel_spacing is None
    rows = slice(120, 280)
    mediastinum = a[rows, 200:240].mean()  # spine/heart column in the middle of the film
    right_lung, left_lung = a[rows, 70:150].mean(), a[rows, 290:370].mean()
    assert right_lung < 0.75 * mediastinum and left_lung < 0.75 * mediastinum
    if voi == "raw":
        assert image.tags["voi"] == "none"
        np.testing.assert_array_equal(a, 1023.0 - pydicom.dcmread(path).pixel_array)
    else:
        assert image.tags["voi"] == "window"  # WindowCenter 550 / WindowWidth 1024 in the file


@pytest.mark.parametrize("name", ["nih_00000001_000_cardiomegaly.png", "nih_00027426_000_no_finding.png"])
def test_nih_png_8bit(xray_dir: Path, name: str) -> None:
    image = read_radiograph(xray_dir / name)
    assert isinstance(image, Radiograph)
    assert image.array.ndim == 2 and image.array.dtype == np.float32
    assert image.array.min() >= 0.0 and image.array.max() <= 255.0
    assert image.array.max() > 200  # 8-bit values kept, not rescaled to [0, 1]
    assert image.pixel_spacing is None and image.tags["BitsStored"] == 8
    assert is_radiograph_file(xray_dir / name)


def test_is_radiograph_file(xray_dir: Path, tmp_path: Path) -> None:
    assert is_radiograph_file(xray_dir / "fuji_cr_monochrome1_10bit.dcm")
    assert is_radiograph_file(xray_dir / "rsna_cr_jpeg_baseline.dcm")
    assert not is_radiograph_file(REALDATA / "ct_dicom" / "CT_small.dcm")
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    assert not is_radiograph_file(fake)
    assert not is_radiograph_file(tmp_path / "missing.png")


# --- synthetic files ----------------------------------------------------------------------------------


def test_png_16bit_keeps_values(tmp_path: Path) -> None:
    values = np.linspace(0, 40000, 64 * 48).reshape(64, 48).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_radiograph(tmp_path / "deep.png")
    assert image.array.dtype == np.float32 and image.array.max() == 40000.0
    np.testing.assert_array_equal(image.array, values)
    assert image.tags["BitsStored"] == 16


def test_rgb_png_converted_to_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    image = read_radiograph(tmp_path / "colour.png")
    assert image.array.shape == (20, 30)
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(image.array, expected, atol=1e-3)
    assert any("RGB converted to grey" in note for note in image.notes)


def test_palette_png_converted_to_grey(tmp_path: Path) -> None:
    indices = np.tile(np.arange(25, dtype=np.uint8), (5, 1))
    colours = np.array([(10 * i, 0, 255 - 10 * i) for i in range(25)], dtype=np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(colours.ravel().tolist())
    img.save(tmp_path / "palette.png")
    image = read_radiograph(tmp_path / "palette.png")
    assert any("P converted to grey" in note for note in image.notes)
    np.testing.assert_allclose(image.array, (colours @ [0.299, 0.587, 0.114])[indices], atol=1e-3)


def test_dx_monochrome1_12bit_raw_and_window(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 4095, 256).round().astype(np.uint16), (8, 1))
    path = _write_dx(
        tmp_path / "dx.dcm",
        gradient,
        PhotometricInterpretation="MONOCHROME1",
        BitsStored=12,
        WindowCenter=[1500, 3000],
        WindowWidth=[1000, 500],
        PixelSpacing=[0.15, 0.14],
    )
    raw = read_radiograph(path, voi="raw")
    np.testing.assert_array_equal(raw.array, 4095.0 - gradient)
    assert raw.tags["voi"] == "none" and raw.tags["Modality"] == "DX" and raw.tags["BitsStored"] == 12

    applied = read_radiograph(path, voi="apply")
    assert applied.tags["voi"] == "window"
    row = applied.array[0].astype(np.float64)
    assert np.all(np.diff(row) <= 0)  # inverted: brighter stored value -> darker displayed value
    assert row[0] == 4095.0 and row[-1] == 0.0  # clipped at both ends of the first window
    expected = 4095.0 - _window(gradient[0].astype(np.float64), 1500, 1000, 4095)
    np.testing.assert_allclose(row, expected, atol=0.01)
    assert applied.pixel_spacing == pytest.approx((0.15, 0.14))


def test_dx_signed_rescaled_monochrome1_inverts_within_range(tmp_path: Path) -> None:
    pixels = np.array([[-2048, 0], [100, 2047]], dtype=np.int16)
    path = _write_dx(
        tmp_path / "signed.dcm",
        pixels,
        PhotometricInterpretation="MONOCHROME1",
        BitsStored=12,
        PixelRepresentation=1,
        RescaleSlope=2,
        RescaleIntercept=10,
    )
    image = read_radiograph(path, voi="raw")
    low, high = -2048 * 2 + 10, 2047 * 2 + 10
    np.testing.assert_array_equal(image.array, low + high - (pixels * 2.0 + 10))


@pytest.mark.parametrize("lut_vr", ["US", "OW"])
def test_voi_lut_sequence_preferred_and_inverted_within_lut_range(tmp_path: Path, lut_vr: str) -> None:
    """An 8-bit VOI LUT with 4096 entries (pydicom 3.0's apply_voi wraps indices above 255 here)."""
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (2, 1))
    lut = (np.arange(4096) // 16).astype("<u2")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]  # 4096 entries from 0, 8-bit output
    item.add_new(0x00283006, lut_vr, lut.tolist() if lut_vr == "US" else lut.tobytes())  # LUTData
    path = _write_dx(
        tmp_path / "lut.dcm",
        stored,
        BitsStored=12,
        PhotometricInterpretation="MONOCHROME1",
        VOILUTSequence=[item],
        WindowCenter=100,
        WindowWidth=10,
    )
    image = read_radiograph(path)
    assert image.tags["voi"] == "lut"
    np.testing.assert_array_equal(image.array, 255.0 - stored // 16)
    assert any("[0, 255]" in note for note in image.notes)


def test_rgb_dicom_converted_to_grey(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = _write_dx(
        tmp_path / "rgb.dcm", rgb, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0
    )
    image = read_radiograph(path)
    assert image.array.shape == (6, 5) and image.tags["voi"] == "none"
    np.testing.assert_allclose(image.array, rgb @ [0.299, 0.587, 0.114], atol=1e-3)
    assert any("RGB converted to grey" in note for note in image.notes)


def test_pixel_spacing_fallback(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4), dtype=np.uint16)
    both = _write_dx(tmp_path / "both.dcm", pixels, PixelSpacing=[0.1, 0.2], ImagerPixelSpacing=[0.3, 0.4])
    imager = _write_dx(tmp_path / "imager.dcm", pixels, ImagerPixelSpacing=[0.3, 0.4])
    neither = _write_dx(tmp_path / "neither.dcm", pixels)
    assert read_radiograph(both).pixel_spacing == pytest.approx((0.1, 0.2))
    from_imager = read_radiograph(imager)
    assert from_imager.pixel_spacing == pytest.approx((0.3, 0.4))
    assert any("ImagerPixelSpacing" in note for note in from_imager.notes)
    assert read_radiograph(neither).pixel_spacing is None


# --- bad input ----------------------------------------------------------------------------------------


def _truncated_dicom(tmp_path: Path) -> Path:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = _write_dx(tmp_path / "truncated.dcm", pixels)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - pixels.nbytes // 2])
    return path


def _truncated_png(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_png(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


def _multiframe(tmp_path: Path) -> Path:
    return _write_dx(tmp_path / "frames.dcm", np.zeros((2, 4, 4), dtype=np.uint16), NumberOfFrames=2)


def _hsv_photometric(tmp_path: Path) -> Path:
    return _write_dx(tmp_path / "hsv.dcm", np.zeros((4, 4), dtype=np.uint16), PhotometricInterpretation="HSV")


@pytest.mark.parametrize(
    ("make", "expected_type", "message"),
    [
        (_truncated_dicom, DicomError, "pixel data"),
        (_truncated_png, InputError, "truncated"),
        (_text_png, InputError, "not an image"),
        (lambda tmp: tmp / "missing.dcm", InputError, "not found"),
        (lambda tmp: tmp, InputError, "directory"),
        (lambda tmp: REALDATA / "ct_dicom" / "CT_small.dcm", DicomError, "not a radiograph"),
        (lambda tmp: REALDATA / "ct_dicom" / "transfer_syntaxes" / "1.dcm", DicomError, "Modality MR"),
        (_multiframe, DicomError, "not a radiograph"),
        (_hsv_photometric, DicomError, "unsupported photometric interpretation"),
    ],
    ids=["truncated-dcm", "truncated-png", "text-png", "missing", "dir", "ct", "mr", "frames", "hsv"],
)
def test_bad_input_raises_typed_error_naming_file(
    tmp_path: Path, make: Any, expected_type: type[InputError], message: str
) -> None:
    path = make(tmp_path)
    if REALDATA in path.parents and not path.exists():
        pytest.skip(f"real test data not available at {path}")
    with pytest.raises(expected_type) as caught:
        read_radiograph(path)
    assert path.name in str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_truncated_jpeg_dicom_raises_dicom_error(xray_dir: Path, tmp_path: Path) -> None:
    data = (xray_dir / "rsna_cr_jpeg_baseline.dcm").read_bytes()
    path = tmp_path / "cut_jpeg.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError, match=r"cut_jpeg\.dcm: truncated"):
        read_radiograph(path)
