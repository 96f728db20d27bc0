"""Stored pixel values of one DICOM image, read once.

Uncompressed little-endian files are read straight from the pixel-data offset found while parsing the
header at discovery (no second parse); everything else is decoded by pydicom + pylibjpeg.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medseg.errors import DicomError

__all__ = ["locate_native_pixels", "read_stored_frames", "read_stored_pixels"]

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def locate_native_pixels(handle: BinaryIO, ds: Dataset) -> int | None:
    """File offset of uncompressed pixel values, for a handle positioned at the pixel-data tag.

    Returns None whenever the fast path does not apply (compressed, big endian, multi-frame, colour,
    unusual bit depth, or a length that does not match the header).
    """
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (8, 16):
        return None
    start = handle.tell()
    head = handle.read(12)
    if len(head) < 12 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if syntax == ExplicitVRLittleEndian:
        if head[4:6] not in (b"OW", b"OB"):
            return None
        length, offset = struct.unpack("<I", head[8:12])[0], start + 12
    else:
        length, offset = struct.unpack("<I", head[4:8])[0], start + 8
    if length != int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * bits // 8:
        return None
    return offset


def _native_pixels(path: str, ds: Dataset, offset: int) -> np.ndarray:
    rows, cols = int(ds.Rows), int(ds.Columns)
    allocated = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    if not 1 <= stored <= allocated:
        raise DicomError(f"invalid BitsStored {stored}: must be 1 to BitsAllocated ({allocated})", path)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    pixels = np.fromfile(path, dtype=dtype, count=rows * cols, offset=offset)
    if pixels.size != rows * cols:
        raise DicomError(f"truncated pixel data ({pixels.size} of {rows * cols} values)", path)
    pixels = pixels.reshape(rows, cols)
    if stored < allocated:  # as pydicom: mask unsigned values, sign-extend signed ones
        shift = allocated - stored
        if signed:
            pixels = (pixels << shift) >> shift
        else:
            pixels &= (1 << stored) - 1
    return pixels


def read_stored_pixels(path: str, ds: Dataset, native_offset: int | None) -> np.ndarray:
    """Stored values of a single-frame greyscale image as a (rows, columns) array."""
    expected = (int(ds.Rows), int(ds.Columns))
    if native_offset is not None:
        return _native_pixels(path, ds, native_offset)
    from pydicom.pixels import pixel_array

    try:
        pixels = pixel_array(path)
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        raise DicomError(f"cannot decode pixel data ({getattr(syntax, 'name', 'unknown transfer syntax')}): "
                         f"{exc}", path) from exc
    if pixels.shape != expected:
        raise DicomError(f"pixel data has shape {pixels.shape}, header says {expected}", path)
    return pixels


def read_stored_frames(path: str, ds: Dataset, frames: Sequence[int]) -> Iterator[np.ndarray]:
    """Stored values of frames `frames` (0-based, yielded in that order) of a multi-frame greyscale image,
    decoded by pydicom one frame at a time (uncompressed frames are read with `read_stored_pixels` and the
    frame's own offset instead)."""
    from pydicom.pixels import iter_pixels

    expected = (int(ds.Rows), int(ds.Columns))
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    decoded = iter_pixels(path, indices=list(frames))
    for frame in frames:
        try:
            pixels = next(decoded)
        except Exception as exc:  # decoders raise many types; all mean "cannot decode"
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise DicomError(f"cannot decode pixel data of frame {frame + 1} "
                             f"({getattr(syntax, 'name', 'unknown transfer syntax')}): {detail}", path) from exc
        if pixels.shape != expected:
            raise DicomError(f"frame {frame + 1} decodes to shape {pixels.shape}, header says {expected}", path)
        yield pixels
