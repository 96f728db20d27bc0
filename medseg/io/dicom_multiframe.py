"""Multi-frame (Enhanced / Legacy Converted Enhanced) CT: one file's frames as slice headers.

Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.1) and Legacy Converted Enhanced CT
(1.2.840.10008.5.1.4.1.1.2.2) keep every frame's geometry and rescale in functional groups: the
per-frame group of the frame, else the shared group. `expand_frames` turns such a file into one
`SliceHeader` per frame of one stack, whose dataset holds the frame's own values under the classic
keywords (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, RescaleSlope ...), so the classic
series reader sorts, checks and decodes them like single-frame slices (`medseg.io.dicom_series`).
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medseg.errors import DicomError, GeometryError
from medseg.io.dicom_discovery import Series, SliceHeader, is_enhanced
from medseg.io.dicom_pixels import read_stored_frames, read_stored_pixels
from medseg.io.volume import check_voxel_budget

__all__ = ["ENHANCED_CT", "LEGACY_ENHANCED_CT", "expand_frames", "frame_geometry", "frame_pixels"]

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"

_REQUIRED_GROUPS = {
    "PlanePositionSequence": "ImagePositionPatient",
    "PlaneOrientationSequence": "ImageOrientationPatient",
    "PixelMeasuresSequence": "PixelSpacing",
}
_CONVERTED_GROUPS = ("UnassignedSharedConvertedAttributesSequence", "UnassignedPerFrameConvertedAttributesSequence")
"""Legacy attributes a converter could not place: they fill gaps, never override the file's own attributes."""
_NOT_COPIED = {pydicom.tag.Tag(k) for k in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
                                            "PixelData", "NumberOfFrames")}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _frame_count(header: SliceHeader) -> int:
    value = header.dataset.get("NumberOfFrames", 1)
    try:
        count = float(value if value not in (None, "") else 1)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"invalid NumberOfFrames {value!r}: not a number", header.path) from exc
    if not (math.isfinite(count) and count.is_integer() and count >= 1):
        raise DicomError(f"invalid NumberOfFrames {value!r}: must be a whole number of at least 1", header.path)
    return int(count)


def _first_item(groups: Dataset | None, name: str) -> Dataset | None:
    sequence = groups.get(name) if groups is not None else None
    return sequence[0] if sequence else None


def _frame_groups(shared: Dataset | None, own: Dataset) -> dict[str, Dataset]:
    """First item of every functional group of a frame: its own group where it has one, else the shared one."""
    groups: dict[str, Dataset] = {}
    for source in (shared, own):
        for element in source if source is not None else ():
            if element.VR == "SQ" and element.value:
                groups[element.keyword or str(element.tag)] = element.value[0]
    return groups


def _flatten(base: dict[Any, Any], file_meta: Any, groups: dict[str, Dataset]) -> Dataset:
    """The file's attributes plus one frame's functional-group attributes (which win, except converted leftovers)."""
    flat = Dataset(dict(base))
    flat.file_meta = file_meta
    for name, item in groups.items():
        fill_only = name in _CONVERTED_GROUPS
        for element in item:
            if not (fill_only and element.tag in flat):
                flat[element.tag] = element
    return flat


def _stack_key(groups: dict[str, Dataset]) -> tuple[str, str]:
    """(StackID, TemporalPositionIndex) of a frame: frames of one volume share both."""
    content = groups.get("FrameContentSequence") or Dataset()
    return (str(content.get("StackID", "") or "").strip(), str(content.get("TemporalPositionIndex", "") or "").strip())


def _describe_stack(key: tuple[str, str]) -> str:
    parts = [f"StackID {key[0]}" if key[0] else "no StackID"]
    if key[1]:
        parts.append(f"temporal position {key[1]}")
    return " / ".join(parts)


def _natural(key: tuple[str, str]) -> tuple[tuple[float, str], ...]:
    """Sort key putting StackID 2 before StackID 10."""
    return tuple((float(part), "") if part.lstrip("-").isdigit() else (math.inf, part) for part in key)


def _choose_stack(path: str, keys: list[tuple[str, str]], notes: list[str]) -> list[int]:
    """Frames (0-based) of the one stack to read: the only one, or the largest; `GeometryError` on a tie."""
    stacks: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        stacks[key].append(index)
    if len(stacks) == 1:
        return next(iter(stacks.values()))
    ranked = sorted(stacks.items(), key=lambda item: (-len(item[1]), item[1][0]))
    found = ", ".join(f"{_describe_stack(key)}: {len(frames)} frames"
                      for key, frames in sorted(stacks.items(), key=lambda item: _natural(item[0])))
    if len(ranked[0][1]) == len(ranked[1][1]):
        raise GeometryError(f"{len(stacks)} frame stacks and no single largest one ({found}): not one volume; "
                            "export one stack (or one time point) per file", path)
    notes.append(f"{len(stacks)} frame stacks in one file ({found}): read the largest, "
                 f"{_describe_stack(ranked[0][0])}")
    return ranked[0][1]


def _pixel_data(path: str, ds: Dataset, frames: int) -> int | None:
    """Check that the pixel data holds `frames` frames; return where native 8/16-bit values start (else None).

    `DicomError` naming the file when it holds more or fewer frames than NumberOfFrames says.
    """
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if not syntax or not syntax.is_transfer_syntax or not syntax.is_little_endian or syntax.is_deflated:
        return None  # pydicom reads these (big endian, deflated) or names the unknown syntax when decoding
    with open(path, "rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        start = handle.tell()
        head = handle.read(12)
        if len(head) < 8:
            raise DicomError("DICOM file has no pixel data", path)
        if head[:4] != _PIXEL_DATA_TAG:
            return None  # float or double pixel data: pydicom checks it
        if syntax.is_implicit_VR:
            length, value_start = struct.unpack("<I", head[4:8])[0], start + 8
        else:
            length, value_start = struct.unpack("<I", head[8:12])[0], start + 12
        if length == _UNDEFINED_LENGTH:
            handle.seek(value_start)
            _check_encapsulated(path, ds, handle, frames)
            return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits, samples = int(ds.get("BitsAllocated") or 0), int(ds.get("SamplesPerPixel") or 1)
    if syntax.is_compressed or bits % 8 or bits <= 0 or samples <= 0:
        return None
    frame_bytes = rows * cols * samples * bits // 8
    if length not in (frame_bytes * frames, frame_bytes * frames + 1):
        raise DicomError(f"NumberOfFrames is {frames} but the pixel data holds {length / frame_bytes:.6g} frame(s) "
                         f"of {rows}x{cols} ({length} bytes, expected {frame_bytes * frames})", path)
    native = syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) and samples == 1 and bits in (8, 16)
    return value_start if native else None


def _check_encapsulated(path: str, ds: Dataset, handle: Any, frames: int) -> None:
    try:
        offsets = parse_basic_offsets(handle)
        fragments, _ = parse_fragments(handle)
    except Exception as exc:  # damaged item tags or lengths
        raise DicomError(f"damaged encapsulated pixel data ({exc})", path) from exc
    extended = ds.get("ExtendedOffsetTable")
    if extended:
        held, where = len(extended) // 8, "Extended Offset Table"
    elif offsets:
        held, where = len(offsets), "Basic Offset Table"
    elif fragments < frames:
        held, where = fragments, "fragments"
    else:
        return  # one or more fragments per frame: the decoder splits them
    if held != frames:
        raise DicomError(f"NumberOfFrames is {frames} but the pixel data holds {held} frame(s) ({where})", path)


def _pixel_spacing(frame: SliceHeader) -> tuple[float, ...] | None:
    try:
        return tuple(round(float(v), 6) for v in frame.get("PixelSpacing"))
    except (TypeError, ValueError):
        return None  # the reader names an invalid spacing


def expand_frames(series: Series, max_voxels: int) -> Series:
    """The frames of the multi-frame file `series` holds, one `SliceHeader` each, for one stack.

    Refuses, naming the file: an invalid or too large NumberOfFrames, missing functional groups, pixel data
    holding another number of frames, several equally large stacks, frames with different orientations or
    pixel spacings. The voxel budget is checked from the header before anything else is read.
    """
    if len(series.slices) != 1 or not is_enhanced(series.first.dataset):
        raise DicomError("a multi-frame (enhanced) file must be a series by itself", series.source)
    header = series.first
    path, ds = header.path, header.dataset
    frames = _frame_count(header)
    rows, cols = header.matrix
    check_voxel_budget((cols, rows, frames), np.int16, max_voxels, path)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise DicomError("PerFrameFunctionalGroupsSequence missing: the frames cannot be placed in space", path)
    if len(per_frame) != frames:
        raise DicomError(f"NumberOfFrames is {frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} "
                         "item(s)", path)
    native_offset = _pixel_data(path, ds, frames)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")

    try:
        groups = [_frame_groups(shared, own) for own in per_frame]
        base = {element.tag: element for element in ds if element.tag not in _NOT_COPIED}
    except Exception as exc:  # pydicom raises many types on damaged nested values
        raise DicomError(f"damaged functional groups ({type(exc).__name__}: {str(exc)[:200]})", path) from exc
    notes = list(series.notes)
    chosen = _choose_stack(path, [_stack_key(g) for g in groups], notes)
    frame_bytes = rows * cols * int(ds.get("BitsAllocated") or 0) // 8
    headers = []
    for index in chosen:
        missing = [name for name in _REQUIRED_GROUPS if name not in groups[index]]
        if missing:
            raise DicomError(f"frame {index + 1}: {' and '.join(missing)} ("
                             f"{', '.join(_REQUIRED_GROUPS[name] for name in missing)}) missing from its per-frame "
                             "and the shared functional groups: cannot place the frame", path)
        offset = None if native_offset is None else native_offset + index * frame_bytes
        frame = SliceHeader(path, _flatten(base, ds.file_meta, groups[index]), offset, frame=index)
        try:
            frame.placement()
        except DicomError as exc:
            raise DicomError(f"frame {index + 1}: {exc.message}", path) from exc
        headers.append(frame)
    _check_frames_agree(path, headers)
    return Series(series.key, headers, notes=notes)


def frame_geometry(ds: Dataset) -> list[Dataset]:
    """Per frame of a multi-frame file: Rows, Columns and the frame's ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing from its functional groups (absent where the groups lack them)."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for own in ds.get("PerFrameFunctionalGroupsSequence") or ():
        groups = _frame_groups(shared, own)
        frame = Dataset()
        frame.Rows, frame.Columns = ds.Rows, ds.Columns
        for name, keyword in _REQUIRED_GROUPS.items():
            item = groups.get(name)
            if item is not None and keyword in item:
                setattr(frame, keyword, item[keyword].value)
        frames.append(frame)
    return frames


def _check_frames_agree(path: str, frames: list[SliceHeader]) -> None:
    """One orientation and one pixel spacing for all frames, else `GeometryError` naming two frames."""
    first = frames[0]
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=1e-3):
            raise GeometryError(
                f"frames with different ImageOrientationPatient in one stack: frame {first.frame + 1} "
                f"{np.round(first.orientation, 4).tolist()}, frame {frame.frame + 1} "
                f"{np.round(frame.orientation, 4).tolist()}: not one volume", path)
        if _pixel_spacing(frame) != _pixel_spacing(first):
            raise GeometryError(f"frames with different PixelSpacing in one stack: frame {first.frame + 1} "
                                f"{_pixel_spacing(first)}, frame {frame.frame + 1} {_pixel_spacing(frame)}: "
                                "not one volume", path)


def frame_pixels(ordered: Sequence[SliceHeader]) -> Iterator[np.ndarray]:
    """Stored values of the frame headers `ordered` (from `expand_frames`), in that order, one frame at a time."""
    first = ordered[0]
    if first.native_pixel_offset is not None:  # every frame header knows where its values start
        return (read_stored_pixels(h.path, h.dataset, h.native_pixel_offset) for h in ordered)
    return read_stored_frames(first.path, first.dataset, [int(h.frame or 0) for h in ordered])
