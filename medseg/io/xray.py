"""Read chest radiographs (DICOM CR/DX, PNG, JPEG) into a float32 2D array that displays as-is.

The result always reads like MONOCHROME2: higher value = brighter (bone white, air dark). DICOM pixel
data goes through the modality LUT/rescale, optionally the VOI LUT or window, and MONOCHROME1 is
inverted within the range of the last step. PNG/JPEG keep their bit-depth values (16-bit stays 16-bit).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing

from medseg.errors import DicomError, InputError
from medseg.io.dicom_tags import plain_tag_value

__all__ = [
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MIN_SIDE",
    "RADIOGRAPH_MODALITIES",
    "Radiograph",
    "check_usable",
    "is_radiograph_file",
    "read_radiograph",
]

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
"""DICOM modalities accepted as projection radiographs without comment."""

MAX_PIXELS = 200_000_000
"""Default pixel budget of `read_radiograph`, checked from the header before pixels are decoded (the largest
detectors give about 20 M pixels). PNG/JPEG above Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`
x 2, about 179 M) are refused by Pillow first, with the same kind of message."""
MIN_SIDE = 64
"""`check_usable`: fewest pixels on a side (the NIH 64 px cohort is the smallest real input)."""
MAX_ASPECT = 4.0
"""`check_usable`: largest ratio of the long side to the short side."""
_MIN_GREY_LEVELS = 8

_REFUSED_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US", "SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "SR"})
_COLOUR_INTERPRETATIONS = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_HEADER_ERRORS = (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
_TAG_KEYS = (
    "Modality",
    "PhotometricInterpretation",
    "BitsStored",
    "ViewPosition",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Manufacturer",
)

PathArg = str | PathLike[str]


@dataclass
class Radiograph:
    """A 2D projection image; `array` is float32 (rows, columns), higher value = brighter."""

    array: np.ndarray
    pixel_spacing: tuple[float, float] | None
    """(row spacing, column spacing) in mm; None when the file gives none."""
    source: str
    tags: dict[str, Any] = field(default_factory=dict)
    """Key source tags (None when absent) and "voi": "lut", "window" or "none" (what was applied)."""
    notes: list[str] = field(default_factory=list)
    """Warnings and corrections made while loading, in the order they happened."""

    def __post_init__(self) -> None:
        if self.array.ndim != 2:
            raise ValueError(f"Radiograph array must be 2D, got shape {self.array.shape}")


def read_radiograph(path: PathArg, *, voi: Literal["apply", "raw"] = "apply", max_pixels: int = MAX_PIXELS,
                    usable: bool = False) -> Radiograph:
    """Load a radiograph from DICOM, PNG or JPEG.

    `voi="apply"` applies the DICOM VOI LUT or window (first one) when present; `voi="raw"` skips it.
    Images of more than `max_pixels` are refused from their header, before any pixel is decoded.
    `usable=True` also refuses images no classifier can read (`check_usable`: too small, extreme aspect ratio,
    no contrast); classification asks for it.
    Raises `InputError` (or `DicomError`) naming the file for anything that cannot be loaded.
    """
    if voi not in ("apply", "raw"):
        raise ValueError(f"voi must be 'apply' or 'raw', got {voi!r}")
    path = Path(path)
    head = _read_head(path)
    is_dicom = head[128:132] == b"DICM"
    looks_like_bitmap = path.suffix.lower() in _IMAGE_SUFFIXES and not is_dicom
    limits = (max_pixels, usable)
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)) or looks_like_bitmap:
        image = _read_bitmap(path, limits)
    else:
        image = _read_dicom(path, voi=voi, force=not is_dicom, limits=limits)
    return check_usable(image) if usable else image


def _check_size(rows: int, cols: int, path: Path, limits: tuple[int, bool]) -> None:
    """Refuse, from the header, images over the pixel budget (and, when usable, too small or too elongated)."""
    max_pixels, usable = limits
    if rows <= 0 or cols <= 0:
        raise InputError(f"empty image: {rows}x{cols} pixels", path)
    if rows * cols > max_pixels:
        raise InputError(f"image of {rows}x{cols} pixels ({rows * cols / 1e6:.3g} M) exceeds the pixel budget of "
                         f"{max_pixels / 1e6:.3g} M (read_radiograph max_pixels)", path)
    if usable:
        _check_shape(rows, cols, path)


def _check_shape(rows: int, cols: int, path: PathArg) -> None:
    if min(rows, cols) < MIN_SIDE:
        raise InputError(f"not a usable radiograph: too small, {rows}x{cols} pixels (at least {MIN_SIDE} on a "
                         "side)", path)
    if max(rows, cols) / min(rows, cols) > MAX_ASPECT:
        raise InputError(f"not a usable radiograph: extreme aspect ratio, {rows}x{cols} pixels "
                         f"({max(rows, cols) / min(rows, cols):.3g}:1, at most {MAX_ASPECT:g}:1)", path)


def check_usable(image: Radiograph) -> Radiograph:
    """`image` unchanged, or `InputError` saying why no classifier can read it: too small (< `MIN_SIDE` px on
    a side), extreme aspect ratio (> `MAX_ASPECT`), non-finite values, or no contrast (constant, 98 % of the
    pixels on one value, or fewer than 8 grey levels)."""
    array = image.array
    _check_shape(*array.shape, image.source)
    step = max(1, int(math.sqrt(array.size / 1_000_000)))  # about a million pixels are plenty for the statistics
    sample = array[::step, ::step]
    if not np.isfinite(array).all():
        raise InputError("not a usable radiograph: non-finite (NaN/inf) pixel values", image.source)
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputError(f"not a usable radiograph: no contrast, every pixel is {low:g}", image.source)
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    if p1 == p99:
        raise InputError(f"not a usable radiograph: near-constant, at least 98 % of the pixels are {p1:g} "
                         f"(range {low:g}..{high:g})", image.source)
    levels = np.unique(sample).size
    if levels < _MIN_GREY_LEVELS:
        raise InputError(f"not a usable radiograph: tiny dynamic range, {levels} grey levels ({low:g}..{high:g}; "
                         f"at least {_MIN_GREY_LEVELS})", image.source)
    return image


def is_radiograph_file(path: PathArg) -> bool:
    """Cheap check: a PNG/JPEG (by magic bytes) or a single-frame DICOM with a radiograph modality."""
    path = Path(path)
    try:
        head = _read_head(path)
    except InputError:
        return False
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return True
    if head[128:132] != b"DICM" and path.suffix.lower() not in _DICOM_SUFFIXES:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, force=True, specific_tags=["Modality", "NumberOfFrames"]
            )
        frames = int(ds.get("NumberOfFrames") or 1)
    except _HEADER_ERRORS:
        return False
    return str(ds.get("Modality") or "").upper() in RADIOGRAPH_MODALITIES and frames == 1


# --- files -------------------------------------------------------------------------------------------


def _read_head(path: Path) -> bytes:
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a directory, expected an image file", path)
    try:
        with path.open("rb") as fh:
            return fh.read(132)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --- PNG / JPEG --------------------------------------------------------------------------------------


def _read_bitmap(path: Path, limits: tuple[int, bool]) -> Radiograph:
    notes: list[str] = []
    try:
        with Image.open(path) as img:
            _check_size(img.height, img.width, path, limits)
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"not a radiograph: {img.n_frames} frames in one image file", path)
            img.load()
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
                notes.append("EXIF orientation applied")
            array, bits = _bitmap_to_grey(img, path, notes)
    except InputError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise InputError("not an image: format not recognised as PNG/JPEG", path) from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large to decode safely ({_one_line(exc)})", path) from exc
    except Exception as exc:
        raise InputError(f"truncated or undecodable image data ({_one_line(exc)})", path) from exc
    tags: dict[str, Any] = dict.fromkeys(_TAG_KEYS)
    tags.update(BitsStored=bits, voi="none")
    return Radiograph(array.astype(np.float32), None, str(path), tags, notes)


def _bitmap_to_grey(img: Image.Image, path: Path, notes: list[str]) -> tuple[np.ndarray, int | None]:
    """Grey values of a Pillow image at its own bit depth, and that bit depth."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img), 8
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), 16
    if mode == "I":
        array = np.asarray(img)
        return array, 16 if array.min() >= 0 and array.max() <= 65535 else 32
    if mode == "F":
        return np.asarray(img), None
    if mode == "1":
        notes.append("1-bit image expanded to 0/255")
        return np.asarray(img.convert("L")), 8
    if mode == "LA":
        notes.append("alpha channel dropped")
        return np.asarray(img.getchannel("L")), 8
    if mode in ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return _rgb_to_grey(np.asarray(img.convert("RGB")), mode, notes), 8
    raise InputError(f"unsupported image mode {mode!r}", path)


def _rgb_to_grey(rgb: np.ndarray, source: str, notes: list[str]) -> np.ndarray:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        notes.append(f"{source} converted to grey (identical channels)")
        return rgb[..., 0]
    notes.append(f"{source} converted to grey (ITU-R BT.601 luma)")
    return rgb.astype(np.float64) @ _LUMA


# --- DICOM -------------------------------------------------------------------------------------------


def _read_dicom(path: Path, *, voi: str, force: bool, limits: tuple[int, bool]) -> Radiograph:
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dcmread(path, force, caught)
        _check_radiograph(ds, path, notes)
        try:
            rows, cols = int(ds.get("Rows")), int(ds.get("Columns"))
        except (TypeError, ValueError) as exc:
            raise DicomError(f"Rows/Columns missing or invalid ({ds.get('Rows')!r} x {ds.get('Columns')!r})",
                             path) from exc
        _check_size(rows, cols, path, limits)
        photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise DicomError(f"truncated or undecodable pixel data ({_one_line(exc)})", path) from exc
        if photometric in _COLOUR_INTERPRETATIONS:
            array, voi_kind = _colour_to_grey(pixels, ds, photometric, path, notes), "none"
        else:
            array, voi_kind = _monochrome(pixels, ds, photometric, path, voi, notes)
    notes.extend(f"pydicom: {' '.join(str(w.message).split())}" for w in caught)
    tags = {key: plain_tag_value(ds.get(key)) for key in _TAG_KEYS}
    tags["voi"] = voi_kind
    return Radiograph(array.astype(np.float32), _pixel_spacing(ds, notes), str(path), tags, notes)


def _dcmread(path: Path, force: bool, caught: list[warnings.WarningMessage]) -> Dataset:
    try:
        ds = pydicom.dcmread(path, force=force)
    except Exception as exc:
        if force or isinstance(exc, InvalidDicomError):
            raise InputError("not an image: not a DICOM, PNG or JPEG file", path) from exc
        raise DicomError(f"cannot parse DICOM file ({_one_line(exc)})", path) from exc
    if "PixelData" not in ds:
        if force and "SOPClassUID" not in ds:
            raise InputError("not an image: not a DICOM, PNG or JPEG file", path)
        eof = [
            str(w.message).split(" in file ")[0] for w in caught if "end of file" in str(w.message).lower()
        ]
        if eof:
            raise DicomError(
                f"truncated file, pixel data incomplete ({' '.join(eof[0].split())[:200]})", path
            )
        raise DicomError("DICOM file has no pixel data", path)
    return ds


def _check_radiograph(ds: Dataset, path: Path, notes: list[str]) -> None:
    """Refuse cross-sectional, multi-frame and unsupported-colour data before decoding pixels."""
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality in _REFUSED_MODALITIES:
        raise DicomError(f"not a radiograph: Modality {modality} (load CT/MR as a volume)", path)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DicomError(f"not a radiograph: {frames} frames (multi-frame or 3D image)", path)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in _COLOUR_INTERPRETATIONS | {"MONOCHROME1", "MONOCHROME2"}:
        raise DicomError(f"unsupported photometric interpretation {photometric or '(missing)'!r}", path)
    if modality not in RADIOGRAPH_MODALITIES:
        notes.append(f"Modality {modality or '(missing)'} is not CR/DX; read as a 2D radiograph")


def _monochrome(
    pixels: np.ndarray, ds: Dataset, photometric: str, path: Path, voi: str, notes: list[str]
) -> tuple[np.ndarray, str]:
    """Modality LUT, optional VOI, then MONOCHROME1 inversion within the output range of the last step."""
    if pixels.ndim != 2:
        raise DicomError(f"not a radiograph: pixel array has shape {pixels.shape}", path)
    try:
        data = apply_modality_lut(pixels, ds)
        low, high = _modality_range(ds)
        voi_kind = "none"
        if voi == "apply":
            data, voi_kind, (low, high) = _apply_voi(data, ds, (low, high), notes)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"invalid modality or VOI LUT ({_one_line(exc)})", path) from exc
    data = np.asarray(data, dtype=np.float64)
    if photometric == "MONOCHROME1":
        data = (low + high) - data
        notes.append(f"MONOCHROME1 inverted within [{low:g}, {high:g}]")
    return data, voi_kind


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Value range after the modality LUT/rescale, from BitsStored and PixelRepresentation."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return float(low), float(high)


def _apply_voi(
    data: np.ndarray, ds: Dataset, modality_range: tuple[float, float], notes: list[str]
) -> tuple[np.ndarray, str, tuple[float, float]]:
    """First VOI LUT if present, else first window; returns (data, kind, output range)."""
    lut_items = ds.get("VOILUTSequence")
    if lut_items and lut_items[0].get("LUTDescriptor") and lut_items[0].get("LUTData") is not None:
        depth = int(lut_items[0].LUTDescriptor[2])
        return _voi_lut(data, ds, lut_items[0]), "lut", (0.0, float(2**depth - 1))
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return data, "none", modality_range
    try:
        windowed = apply_windowing(data, ds, 0)
    except ValueError as exc:
        notes.append(f"VOI window ignored ({_one_line(exc)})")
        return data, "none", modality_range
    return windowed, "window", modality_range


def _voi_lut(data: np.ndarray, ds: Dataset, item: Dataset) -> np.ndarray:
    """Map values through a VOI LUT item (PS3.3 C.11.2.1.1): below first -> first entry, above -> last.

    Written out because pydicom 3.0's `apply_voi` indexes with the LUT's output dtype, so an 8-bit LUT
    with more than 256 entries wraps its indices.
    """
    entries, first, _ = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    element = item["LUTData"]
    if element.VR == "OW" or isinstance(element.value, bytes):
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        lut = np.frombuffer(element.value, dtype="<u2" if little else ">u2", count=entries)
    else:
        lut = np.asarray(element.value, dtype=np.int64).ravel()
    index = np.clip(np.rint(data).astype(np.int64) - first, 0, len(lut) - 1)
    return lut[index].astype(np.float64)


def _colour_to_grey(
    pixels: np.ndarray, ds: Dataset, photometric: str, path: Path, notes: list[str]
) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        try:
            pixels = apply_color_lut(pixels, ds)
        except Exception as exc:
            raise DicomError(f"invalid palette colour lookup table ({_one_line(exc)})", path) from exc
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DicomError(f"not a radiograph: colour pixel array has shape {pixels.shape}", path)
    return _rgb_to_grey(pixels, "RGB" if photometric == "RGB" else f"{photometric} (as RGB)", notes)


def _pixel_spacing(ds: Dataset, notes: list[str]) -> tuple[float, float] | None:
    """PixelSpacing, else ImagerPixelSpacing (detector plane, no magnification correction), else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if not value:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            notes.append(f"{keyword} {value!r} ignored: not two numbers")
            continue
        if not (row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col)):
            notes.append(f"{keyword} {value!r} ignored: not positive")
            continue
        if keyword == "ImagerPixelSpacing":
            notes.append(
                "pixel spacing from ImagerPixelSpacing (detector plane, not magnification corrected)"
            )
        return row, col
    notes.append("no pixel spacing in file")
    return None
