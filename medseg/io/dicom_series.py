"""Read one DICOM CT series into a `Volume` in Hounsfield units with an exact RAS affine."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medseg.errors import DicomError, GeometryError
from medseg.io.dicom_discovery import Series, SliceHeader
from medseg.io.dicom_multiframe import expand_frames, frame_pixels
from medseg.io.dicom_pixels import read_stored_pixels
from medseg.io.dicom_tags import plain_tag_value
from medseg.io.slice_geometry import (
    TILT_TOLERANCE_DEG,
    analyse_stack,
    check_uniform_spacing,
    resample_tilted_to_orthogonal,
    resample_to_uniform_spacing,
)
from medseg.io.volume import (
    AIR_HU,
    Volume,
    check_affine,
    check_voxel_budget,
    lps_to_ras,
    replace_non_finite,
)

__all__ = ["ReadOptions", "read_series"]

log = logging.getLogger(__name__)

_KEPT_TAGS = (
    "Modality", "PatientID", "PatientPosition", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "StudyDate", "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel",
    "SliceThickness", "BodyPartExamined", "FrameOfReferenceUID", "GantryDetectorTilt",
)


@dataclass(frozen=True)
class ReadOptions:
    """How to treat series that are not a clean, evenly spaced, orthogonal stack."""

    on_gantry_tilt: Literal["resample", "error"] = "resample"
    on_uneven_spacing: Literal["error", "resample"] = "error"
    spacing_tolerance: float = 0.01
    """Relative deviation from the median slice gap tolerated before slices count as uneven."""
    on_non_finite: Literal["air", "error"] = "air"
    """NaN/inf voxels (float NIfTI/NRRD/MHA or DICOM float data): replaced by air (`AIR_HU`, counted in
    `Volume.notes` and logged), or refused with `InputError`."""
    max_voxels: int = 1024**3
    """Largest image read, checked from the header before any pixel is read (a lying header cannot make
    medseg allocate more)."""


def _frame(header: SliceHeader) -> str:
    """Message prefix naming the frame of a multi-frame file ("" for a single-frame file)."""
    return "" if header.frame is None else f"frame {header.frame + 1}: "


def _number(header: SliceHeader, keyword: str, default: float) -> float:
    """A finite number from a numeric tag, `default` when absent or empty; `DicomError` naming the tag."""
    try:
        value = header.get(keyword)
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError) as exc:
        raise DicomError(f"{_frame(header)}invalid {keyword} value {header.dataset.get(keyword, '?')!r}: not a "
                         "number", header.path) from exc
    if not math.isfinite(number):
        raise DicomError(f"{_frame(header)}invalid {keyword} value {value!r}: not a finite number", header.path)
    return number


def _positive(header: SliceHeader, keyword: str, default: float) -> float:
    """`_number`, with zero or negative values (meaningless for a size) replaced by `default`."""
    number = _number(header, keyword, default)
    return number if number > 0 else default


def _rescale(header: SliceHeader) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), finite, slope non-zero; `DicomError` naming the file otherwise."""
    slope = _number(header, "RescaleSlope", 1.0)
    if slope == 0:
        raise DicomError(f"{_frame(header)}invalid RescaleSlope value {header.get('RescaleSlope')!r}: a zero slope "
                         "maps every pixel to the intercept", header.path)
    return slope, _number(header, "RescaleIntercept", 0.0)


def _pixel_spacing(header: SliceHeader) -> tuple[float, float]:
    keyword = "PixelSpacing" if header.get("PixelSpacing") else "ImagerPixelSpacing"
    value = header.get(keyword)
    if value is None or value == "":
        raise DicomError(f"{_frame(header)}PixelSpacing missing: cannot place the image in space", header.path)
    try:
        dy, dx = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{_frame(header)}invalid {keyword} {value!r}: expected two numbers", header.path) from exc
    if not (math.isfinite(dy) and math.isfinite(dx) and dy > 0 and dx > 0):
        raise DicomError(f"{_frame(header)}invalid {keyword} {[str(v) for v in value]}: spacings must be positive and "
                         "finite", header.path)
    return dy, dx


def _check_layout(series: Series) -> None:
    first = series.first
    for header in series.slices:
        if header.matrix != first.matrix:
            raise GeometryError(
                f"mixed matrix sizes in one series: {first.matrix} ({first.label}) vs "
                f"{header.matrix}", header.path)
        if _number(header, "NumberOfFrames", 1) > 1:
            raise DicomError("multi-frame image without functional groups (PerFrameFunctionalGroupsSequence): its "
                             "frames cannot be placed in space; only Enhanced and Legacy Converted Enhanced "
                             "multi-frame files are read", header.path)
        header.placement()
        if not np.allclose(header.orientation, first.orientation, atol=1e-3):
            raise GeometryError("slices with different ImageOrientationPatient in one series", header.path)


def _integer(header: SliceHeader, keyword: str) -> int:
    try:
        value = header.get(keyword)
        number = float(value)
        if not number.is_integer():
            raise ValueError(number)
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DicomError(f"invalid {keyword} value {header.dataset.get(keyword, '?')!r}: not an integer",
                         header.path) from exc


def _padding_mask(header: SliceHeader, pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray | None:
    """Voxels holding PixelPaddingValue (or, when padding is declared below air, anything below air)."""
    if "PixelPaddingValue" not in header.dataset:
        return None
    low = _integer(header, "PixelPaddingValue")
    high = _integer(header, "PixelPaddingRangeLimit") if "PixelPaddingRangeLimit" in header.dataset else low
    low, high = min(low, high), max(low, high)
    if slope > 0 and high * slope + intercept < AIR_HU:
        # Padding declared below air: lossy codecs perturb it, so every stored value below air is padding.
        mask = pixels < (AIR_HU - intercept) / slope
    else:
        mask = (pixels >= low) & (pixels <= high)
    return mask if mask.any() else None


def _decode_stack(ordered: list[SliceHeader], stored: Iterable[np.ndarray] | None = None) -> np.ndarray:
    """Decode slices straight into a (k, j, i) C-ordered buffer and return its (i, j, k) view.

    HU stay int16 while the rescale is integral and in range (the usual CT case), else the buffer
    becomes float32. Rescale and padding come from the headers read at discovery. `stored`: the slices'
    stored values in `ordered` order when they are not one file each (frames of a multi-frame file).
    """
    buffer = np.empty((len(ordered), *ordered[0].matrix), dtype=np.int16)
    if stored is None:
        stored = (read_stored_pixels(h.path, h.dataset, h.native_pixel_offset) for h in ordered)
    for index, (header, pixels) in enumerate(zip(ordered, stored, strict=True)):
        slope, intercept = _rescale(header)
        integral = slope == 1.0 and intercept.is_integer()
        if buffer.dtype == np.int16 and integral:
            low, high = int(pixels.min()) + int(intercept), int(pixels.max()) + int(intercept)
            integral = low >= -32768 and high <= 32767
        if buffer.dtype == np.int16 and not integral:
            buffer = buffer.astype(np.float32)
        target = buffer[index]
        if buffer.dtype == np.int16:
            np.add(pixels, np.int32(intercept), out=target, casting="unsafe")
        else:
            np.multiply(pixels, np.float32(slope), out=target, casting="unsafe")
            target += np.float32(intercept)
        padding = _padding_mask(header, pixels, slope, intercept)
        if padding is not None:
            target[padding] = AIR_HU
    return buffer.transpose(2, 1, 0)


def read_series(series: Series, options: ReadOptions | None = None) -> Volume:
    """Decode every slice once into a preallocated HU array and return it as a `Volume`.

    HU are stored as int16 when the rescale keeps them integral and in range, float32 otherwise. A
    multi-frame (enhanced) file is read frame by frame, each frame placed by its functional groups.
    """
    options = options or ReadOptions()
    multiframe = series.multiframe
    if multiframe and series.first.frame is None:
        series = expand_frames(series, options.max_voxels)
    source = series.source
    first = series.first
    rows, cols = first.matrix
    check_voxel_budget((cols, rows, len(series.slices)), np.int16, options.max_voxels, source)
    _check_layout(series)
    notes = list(series.notes)
    negative = [h for h in series.slices if _rescale(h)[0] < 0]
    if negative:
        notes.append(f"negative RescaleSlope {negative[0].get('RescaleSlope')} in {len(negative)} slice(s) "
                     f"(first {negative[0].label}): intensities inverted by the rescale")
    geometry = analyse_stack(
        first.orientation,
        np.stack([h.position for h in series.slices]),
        _pixel_spacing(first),
        _positive(first, "SpacingBetweenSlices", _positive(first, "SliceThickness", 1.0)),
        source=source,
        labels=[h.label for h in series.slices],
    )
    tilted = geometry.tilt_deg > TILT_TOLERANCE_DEG
    if tilted and options.on_gantry_tilt == "error":
        raise GeometryError(f"gantry tilt of {geometry.tilt_deg:.2f} deg (sheared slice stack); "
                            "re-run with gantry tilt resampling enabled to correct it", source)
    spacing_problem = check_uniform_spacing(geometry, relative_tolerance=options.spacing_tolerance)
    if spacing_problem and options.on_uneven_spacing == "error":
        raise GeometryError(spacing_problem, source)

    ordered = [series.slices[i] for i in geometry.order]
    array = _decode_stack(ordered, frame_pixels(ordered) if multiframe else None)
    array, replaced = replace_non_finite(array, options.on_non_finite, source)
    if replaced:
        notes.append(replaced)

    if spacing_problem:
        array, geometry = resample_to_uniform_spacing(array, geometry)
        notes.append(f"{spacing_problem}; resampled to {len(geometry.offsets)} evenly spaced slices")
    affine_lps = check_affine(geometry.affine_lps(), source)
    if tilted:
        array, affine_lps = resample_tilted_to_orthogonal(array, affine_lps, fill=AIR_HU)
        notes.append(f"gantry tilt {geometry.tilt_deg:.2f} deg corrected: resampled to an orthogonal grid")
    for note in notes:
        log.warning("%s: %s", source, note)

    tags = {key: plain_tag_value(first.get(key)) for key in _KEPT_TAGS}
    tags["TransferSyntaxUID"] = str(getattr(first.dataset.file_meta, "TransferSyntaxUID", "")) or None
    exact_slices = not (tilted or spacing_problem)
    return Volume(
        array=array,
        affine=lps_to_ras(affine_lps),
        tags=tags,
        source=source,
        notes=notes,
        slice_files=[h.path for h in ordered] if exact_slices else [],
        slice_frames=[int(h.frame or 0) for h in ordered] if exact_slices and multiframe else [],
    )

