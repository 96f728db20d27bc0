"""One entry point for any input: DICOM folder or file, NIfTI, NRRD or MHA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.dicom_discovery import Discovery, discover_dicom, group_series
from medseg.io.dicom_series import ReadOptions, read_series
from medseg.io.series_selection import Selection, SelectionRules, select_series
from medseg.io.volume import Volume
from medseg.io.volume_files import ITK_SUFFIXES, NIFTI_SUFFIXES, read_itk_image, read_nifti

__all__ = ["DicomStudy", "load_volume", "require_ct", "scan_dicom"]


@dataclass
class DicomStudy:
    """The series found under a path and the one selected from them."""

    discovery: Discovery
    selection: Selection

    def summary(self) -> dict[str, Any]:
        return {**self.discovery.summary(), **self.selection.summary()}


def scan_dicom(path: str | os.PathLike[str], rules: SelectionRules | None = None) -> DicomStudy:
    """Discover, group and select (headers only)."""
    discovery = discover_dicom(path)
    if not discovery.headers:
        detail = f"{discovery.skipped_non_dicom} non-DICOM file(s) skipped"
        if discovery.skipped_non_image:
            detail += f", {discovery.skipped_non_image} DICOM file(s) without an image (no Rows/Columns or not " \
                      "an image object)"
        if discovery.unreadable:
            detail += f", {len(discovery.unreadable)} unreadable ({discovery.unreadable[0][1]})"
        raise InputError(f"no DICOM images found ({detail})", path)
    return DicomStudy(discovery, select_series(group_series(discovery.headers), rules, source=str(path)))


def load_volume(
    path: str | os.PathLike[str],
    *,
    rules: SelectionRules | None = None,
    options: ReadOptions | None = None,
) -> Volume:
    """Load a volume from a DICOM folder/file (selecting a series by `rules`) or a NIfTI/NRRD/MHA file."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    name = path.name.lower()
    if path.is_file() and name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, options)
    if path.is_file() and name.endswith(ITK_SUFFIXES):
        return read_itk_image(path, options)
    study = scan_dicom(path, rules)
    volume = read_series(study.selection.chosen, options)
    volume.source = str(path)
    return volume


def require_ct(volume: Volume, step: str = "this step") -> None:
    """Refuse a volume that is known not to be CT (missing Modality passes, with the caller's trust)."""
    modality = (volume.modality or "").upper()
    if modality and modality != "CT":
        raise InputError(f"{step} needs a CT image, but this is {modality}", volume.source)
