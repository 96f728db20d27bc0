"""Find DICOM files in a folder tree and group them into series (headers only, no pixel data)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medseg.errors import DicomError, InputError
from medseg.io.dicom_pixels import locate_native_pixels

__all__ = ["Discovery", "Series", "SliceHeader", "discover_dicom", "functional_group_value", "group_series",
           "is_enhanced", "read_header"]

log = logging.getLogger(__name__)

_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def is_enhanced(ds: Dataset) -> bool:
    """Whether `ds` is a multi-frame image whose geometry lives in functional groups (Enhanced CT and kin)."""
    return any(name in ds for name in _FUNCTIONAL_GROUPS)


def functional_group_value(ds: Dataset, keyword: str) -> Any:
    """`keyword` from the shared functional groups, else from the first frame's (None when absent).

    Describes an enhanced file as a whole (orientation, slice thickness) for discovery and selection; the
    reader takes every frame's own values (`medseg.io.dicom_multiframe`).
    """
    for name in _FUNCTIONAL_GROUPS:
        try:
            groups = ds.get(name)
            for group in groups[0] if groups else ():
                if group.VR == "SQ" and group.value and keyword in group.value[0]:
                    return group.value[0].get(keyword)
        except Exception:  # a damaged group describes nothing; the reader names the problem
            continue
    return None


@dataclass
class SliceHeader:
    """One DICOM image file, described from its header alone."""

    path: str
    dataset: Dataset
    native_pixel_offset: int | None = None
    """Where uncompressed little-endian pixel values start in the file (None: decode with pydicom)."""
    frame: int | None = None
    """0-based frame of a multi-frame file this header describes (its `dataset` then holds the frame's
    functional-group values); None for a single-frame file or a whole multi-frame file."""

    def get(self, keyword: str, default: Any = None) -> Any:
        if keyword in self.dataset or not is_enhanced(self.dataset):
            return self.dataset.get(keyword, default)
        value = functional_group_value(self.dataset, keyword)
        return default if value is None else value

    @property
    def label(self) -> str:
        """How messages name this slice: the file name, with the frame number for a frame of a multi-frame file."""
        name = os.path.basename(self.path)
        return name if self.frame is None else f"{name} frame {self.frame + 1}"

    def _vector(self, keyword: str, size: int) -> np.ndarray | None:
        try:
            value = self.get(keyword)
            vector = np.array(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
        return vector if value is not None and vector.size == size else None

    @property
    def orientation(self) -> np.ndarray | None:
        """ImageOrientationPatient as 6 numbers (None when missing or not numeric; may hold NaN/inf)."""
        return self._vector("ImageOrientationPatient", 6)

    @property
    def position(self) -> np.ndarray | None:
        """ImagePositionPatient as 3 numbers (None when missing or not numeric; may hold NaN/inf)."""
        return self._vector("ImagePositionPatient", 3)

    def placement(self) -> tuple[np.ndarray, np.ndarray]:
        """(ImageOrientationPatient, ImagePositionPatient), finite; `DicomError` naming the tag otherwise."""
        result = []
        for keyword, vector, size in (("ImageOrientationPatient", self.orientation, 6),
                                      ("ImagePositionPatient", self.position, 3)):
            if keyword not in self.dataset:
                raise DicomError(f"{keyword} missing: cannot place the slice", self.path)
            if vector is None or not np.isfinite(vector).all():
                raise DicomError(f"invalid {keyword} {_raw_text(self.dataset, keyword)}: expected {size} finite "
                                 "numbers; cannot place the slice", self.path)
            result.append(vector)
        return result[0], result[1]

    @property
    def matrix(self) -> tuple[int, int]:
        return int(self.get("Rows", 0) or 0), int(self.get("Columns", 0) or 0)


@dataclass
class Series:
    """Files sharing one SeriesInstanceUID, one orientation and one matrix size."""

    key: str
    slices: list[SliceHeader]
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def modality(self) -> str | None:
        return self.first.get("Modality") or None

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self.first.get("ImageType") or ()
        return tuple(str(v).upper() for v in (value if not isinstance(value, str) else value.split("\\")))

    @property
    def slice_thickness(self) -> float | None:
        value = self.first.get("SliceThickness")
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @property
    def folder(self) -> str:
        return os.path.dirname(self.first.path)

    @property
    def multiframe(self) -> bool:
        """A multi-frame (enhanced) file, or frames of one: a series by itself."""
        return self.first.frame is not None or is_enhanced(self.first.dataset)

    @property
    def source(self) -> str:
        """What messages name: the file of a multi-frame series, else the folder."""
        return self.first.path if self.multiframe else self.folder

    @property
    def slice_count(self) -> int:
        """Slices, counting every frame of a multi-frame file (0 when its NumberOfFrames is not a count)."""
        if self.first.frame is not None or not is_enhanced(self.first.dataset):
            return len(self.slices)
        try:
            return max(int(self.first.get("NumberOfFrames", 1) or 1), 0)
        except (TypeError, ValueError):
            return 0

    def summary(self) -> dict[str, Any]:
        rows, cols = self.first.matrix
        return {
            "key": self.key,
            "modality": self.modality,
            "description": self.description,
            "image_type": list(self.image_type),
            "slices": self.slice_count,
            "matrix": [rows, cols],
            "slice_thickness_mm": self.slice_thickness,
            "folder": self.folder,
            "notes": list(self.notes),
        }


@dataclass
class Discovery:
    """What a folder walk found."""

    headers: list[SliceHeader]
    skipped_non_dicom: int = 0
    skipped_non_image: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "image_files": len(self.headers),
            "skipped_non_dicom": self.skipped_non_dicom,
            "skipped_non_image_dicom": self.skipped_non_image,
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
        }


def _looks_like_dicom(path: str) -> bool:
    """Cheap magic check: 'DICM' at byte 128, or a raw data set starting with group 0002/0008."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) >= 8


def read_header(path: str | os.PathLike[str]) -> tuple[Dataset, int | None]:
    """Read a DICOM header without pixel data, and where native pixel values start (if they do).

    Raises `InputError` naming the file when it cannot be parsed.
    """
    try:
        with open(path, "rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
            return ds, locate_native_pixels(handle, ds)
    except Exception as exc:   # pydicom raises many types on damaged headers (BytesLengthException, unknown VRs ...)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a readable DICOM file ({detail})", path) from exc


def _raw_text(ds: Dataset, keyword: str) -> str:
    """A tag's value as text for a message, even when pydicom cannot convert it."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom cannot convert the raw value: show its bytes
        value = ds.get_item(keyword).value
    return (str([str(v) for v in value]) if isinstance(value, MultiValue) else repr(value))[:120]


def _is_image(ds: Dataset) -> bool:
    if str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return False
    if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    return bool(ds.get("Rows")) and bool(ds.get("Columns"))


def _iter_files(root: Path) -> Iterable[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)


def discover_dicom(root: str | os.PathLike[str]) -> Discovery:
    """Walk `root` (a folder or one file) and read the header of every DICOM image file once."""
    root_path = Path(root)
    if not root_path.exists():
        raise InputError("no such file or folder", root_path)
    paths = [str(root_path)] if root_path.is_file() else _iter_files(root_path)
    found = Discovery(headers=[])
    for path in paths:
        if not _looks_like_dicom(path):
            found.skipped_non_dicom += 1
            continue
        try:
            ds, offset = read_header(path)
        except InputError as exc:
            found.unreadable.append((path, exc.message))
            continue
        if not any(keyword in ds for keyword in ("SOPClassUID", "Modality", "Rows")):
            found.unreadable.append((path, "DICOM header ends before the image attributes (truncated file?)"))
            continue
        if not _is_image(ds):
            found.skipped_non_image += 1
            continue
        found.headers.append(SliceHeader(path, ds, offset))
    log.debug("discovered %d DICOM image files under %s", len(found.headers), root_path)
    return found


def _series_uid(header: SliceHeader) -> str:
    uid = header.get("SeriesInstanceUID")
    if uid:
        return str(uid)
    # No UID (seen in anonymised exports): fall back to study + series number + folder.
    number = header.get("SeriesNumber")
    return f"{os.path.dirname(header.path)} (no SeriesInstanceUID{f', series {number}' if number else ''})"


def _layout_key(header: SliceHeader) -> tuple[Any, ...]:
    iop = header.orientation
    if iop is not None and not np.isfinite(iop).all():  # NaN != NaN: group such slices by the tag's text
        return (_raw_text(header.dataset, "ImageOrientationPatient"), header.matrix)
    rounded = tuple(float(v) for v in np.round(iop, 3)) if iop is not None else None
    return (rounded, header.matrix)


def group_series(headers: Iterable[SliceHeader]) -> list[Series]:
    """Group headers by SeriesInstanceUID, splitting a series that mixes orientations or matrix sizes.

    A multi-frame (enhanced) file is a series by itself, keyed by its UID (and file name when its UID is shared).
    """
    by_uid: dict[str, list[SliceHeader]] = defaultdict(list)
    enhanced: list[SliceHeader] = []
    for header in headers:
        (enhanced if is_enhanced(header.dataset) else by_uid[_series_uid(header)]).append(header)
    enhanced_uids = [_series_uid(header) for header in enhanced]
    result: list[Series] = []
    for uid, header in zip(enhanced_uids, enhanced, strict=True):
        shared = uid in by_uid or enhanced_uids.count(uid) > 1
        result.append(Series(f"{uid} ({os.path.basename(header.path)})" if shared else uid, [header]))
    for uid, members in by_uid.items():
        by_layout: dict[tuple[Any, ...], list[SliceHeader]] = defaultdict(list)
        for header in members:
            by_layout[_layout_key(header)].append(header)
        if len(by_layout) == 1:
            result.append(Series(uid, members))
            continue
        layouts = sorted(by_layout.items(), key=lambda item: -len(item[1]))
        note = (
            f"series {uid} mixes {len(layouts)} orientations/matrix sizes "
            f"({', '.join(f'{k[1][0]}x{k[1][1]}' for k, _ in layouts)}): split into sub-series"
        )
        log.warning(note)
        for index, (_, part) in enumerate(layouts, start=1):
            result.append(Series(f"{uid}#{index}", part, notes=[note]))
    return result
