"""Turn a workflow's inputs into cases: one per CT study (its selected series), volume file or radiograph.

One header-only walk of the tree finds every DICOM file (`discover_dicom`); files are grouped by study
(StudyInstanceUID, else folder) and each study's series go through the workflow's selection rules. CR/DX
files become radiograph cases, NIfTI/NRRD/MHA files CT volume cases, PNG/JPEG files radiograph cases.
Whatever cannot become a case is a `CaseProblem` with its reason (unreadable file, no qualifying series,
a folder with no images), reported by the run instead of stopping it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medseg.errors import InputError

__all__ = ["Case", "CaseList", "CaseProblem", "discover_cases", "relative_source", "relative_text"]

log = logging.getLogger(__name__)

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg")
_RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "MG"}


@dataclass
class Case:
    case_id: str
    kind: Literal["ct", "xray"]
    source: Path
    """The study folder, or the file."""
    files: list[str] = field(default_factory=list)
    """DICOM files of the selected series (empty for single files)."""
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    notes: list[str] = field(default_factory=list)
    series: Any = field(default=None, repr=False, compare=False)
    """The selected `medseg.io.dicom_discovery.Series` (headers already read) for DICOM studies."""
    folder: str = ""
    """Its case folder relative to the output folder (set by the runner from the output layout)."""
    shown_source: str = ""
    """`source` as recorded in run.json and review pages: relative to the input root when inside it."""


@dataclass
class CaseProblem:
    source: str
    reason: str


@dataclass
class CaseList:
    cases: list[Case] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)
    skipped_files: int = 0
    root: Path | None = None
    """The input root (the tree's folder, or the manifest's folder) that recorded paths are relative to."""


def _case_id(root: Path, path: Path) -> str:
    relative = path.relative_to(root) if path != root and root in path.parents else Path(path.name)
    text = str(relative)
    for suffix in (*_VOLUME_SUFFIXES, *_BITMAP_SUFFIXES, ".dcm"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace(os.sep, "__")).strip("._") or "case"


def _unique(case_id: str, used: set[str]) -> str:
    candidate, number = case_id, 2
    while candidate in used:
        candidate, number = f"{case_id}_{number}", number + 1
    used.add(candidate)
    return candidate


def _common_folder(paths: list[str]) -> Path:
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def _dicom_cases(root: Path, found, rules, result: CaseList, used: set[str]) -> set[str]:
    """Cases from DICOM headers; returns the folders that produced (or refused) a study."""
    from medseg.io.dicom_discovery import group_series
    from medseg.io.series_selection import select_series

    studies: dict[str, list] = defaultdict(list)
    xrays = []
    for header in found.headers:
        modality = str(header.get("Modality", "") or "").upper()
        if modality in _RADIOGRAPH_MODALITIES and int(header.get("NumberOfFrames", 1) or 1) == 1:
            xrays.append(header)
            continue
        studies[str(header.get("StudyInstanceUID") or os.path.dirname(header.path))].append(header)
    covered: set[str] = set()
    for study_uid, headers in sorted(studies.items(), key=lambda item: item[1][0].path):
        folder = _common_folder([h.path for h in headers])
        covered.add(str(folder))
        try:
            selection = select_series(group_series(headers), rules, source=str(folder))
        except InputError as exc:
            result.problems.append(CaseProblem(str(folder), exc.message))
            continue
        chosen = selection.chosen
        first = chosen.slices[0]
        result.cases.append(Case(
            _unique(_case_id(root, folder), used), "ct", folder, [s.path for s in chosen.slices],
            patient_id=str(first.get("PatientID", "") or ""), study_uid=study_uid if "/" not in study_uid else "",
            series_uid=str(first.get("SeriesInstanceUID", "") or ""), notes=[selection.reason, *chosen.notes],
            series=chosen))
    for header in xrays:
        path = Path(header.path)
        covered.add(str(path.parent))
        result.cases.append(Case(_unique(_case_id(root, path), used), "xray", path, [header.path],
                                 patient_id=str(header.get("PatientID", "") or ""),
                                 study_uid=str(header.get("StudyInstanceUID", "") or ""),
                                 series_uid=str(header.get("SeriesInstanceUID", "") or "")))
    return covered


def _is_label_map(path: Path) -> bool:
    """A volume file stored as 8-bit integers (or bool) is a label map (CT needs at least 16 bits).

    An unreadable header raises `InputError` with the reader's message (the file is not a case)."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel
        from nibabel.filebasedimages import ImageFileError

        try:
            dtype = nibabel.load(str(path)).get_data_dtype()
        except (ImageFileError, OSError, EOFError, ValueError) as exc:
            raise InputError(f"cannot read the NIfTI header ({type(exc).__name__}: {exc})", path) from exc
        return dtype.kind in "biu" and dtype.itemsize == 1
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:   # SimpleITK reports unreadable files as RuntimeError
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = (lines[-1] if lines else "unreadable").removeprefix("sitk::ERROR:").strip()
        raise InputError(f"cannot read the image header ({reason})", path) from exc
    return reader.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8)


def _tree_cases(root: Path, glob: str | None, rules) -> CaseList:
    from medseg.io.dicom_discovery import discover_dicom

    result = CaseList()
    used: set[str] = set()
    found = discover_dicom(root)
    if glob:
        found.headers = [h for h in found.headers if fnmatch.fnmatch(os.path.relpath(h.path, root), glob)]
    covered = _dicom_cases(root, found, rules, result, used)
    for path, reason in found.unreadable:
        result.problems.append(CaseProblem(path, reason))
        covered.add(os.path.dirname(path))
    files = [Path(folder) / name for folder, _, names in os.walk(root) for name in names]
    other: dict[str, int] = defaultdict(int)
    for path in sorted(files):
        relative = os.path.relpath(path, root)
        if glob and not fnmatch.fnmatch(relative, glob):
            continue
        name = path.name.lower()
        if name.endswith(_VOLUME_SUFFIXES):
            try:
                label_map = _is_label_map(path)
            except InputError as exc:
                result.problems.append(CaseProblem(str(path), exc.message))
                covered.add(str(path.parent))
                continue
            if label_map:
                result.skipped_files += 1   # a mask beside its image, not a case of its own
                continue
            result.cases.append(Case(_unique(_case_id(root, path), used), "ct", path))
            covered.add(str(path.parent))
        elif name.endswith(_BITMAP_SUFFIXES):
            result.cases.append(Case(_unique(_case_id(root, path), used), "xray", path))
            covered.add(str(path.parent))
        else:
            other[str(path.parent)] += 1
    dicom_files = {h.path for h in found.headers} | {p for p, _ in found.unreadable}
    for folder, count in sorted(other.items()):
        if folder in covered or any(str(Path(f).parent) == folder for f in dicom_files):
            continue
        if not any(Path(c).is_relative_to(folder) for c in covered):   # no images here or below
            result.problems.append(CaseProblem(folder, f"no images: {count} file(s) that are neither DICOM images, "
                                                       "volume files nor PNG/JPEG"))
    result.skipped_files += found.skipped_non_dicom + found.skipped_non_image
    return result


def _manifest_cases(manifest_path: Path, splits: list[str] | None) -> CaseList:
    from medseg.data.manifest import load_manifest, resolve_path

    manifest = load_manifest(manifest_path)
    kind: Literal["ct", "xray"] = "xray" if manifest.task == "classification" else "ct"
    result = CaseList()
    for record in manifest.cases:
        if splits and record.split not in splits:
            continue
        source = resolve_path(manifest_path.parent, record.image)
        result.cases.append(Case(record.case_id, kind, source, patient_id=record.patient_id))
    return result


def discover_cases(inputs) -> CaseList:
    """The cases of a workflow's `inputs` (a `medseg.workflow.schema.Inputs`)."""
    if inputs.manifest is not None:
        listed = _manifest_cases(Path(inputs.manifest), inputs.splits)
        listed.root = Path(inputs.manifest).parent
        return listed
    root = Path(inputs.path)
    if not root.exists():
        raise InputError("no such file or folder", root)
    if root.is_file():
        name = root.name.lower()
        kind: Literal["ct", "xray"] = "xray" if name.endswith(_BITMAP_SUFFIXES) else "ct"
        if not name.endswith((*_VOLUME_SUFFIXES, *_BITMAP_SUFFIXES)):
            listed = _tree_cases(root.parent, root.name, inputs.series.selection_rules())
        else:
            listed = CaseList([Case(_case_id(root.parent, root), kind, root)])
        listed.root = root.parent
        return listed
    listed = _tree_cases(root, inputs.glob, inputs.series.selection_rules())
    listed.root = root
    return listed


def relative_text(text: str, root: Path | None) -> str:
    """`text` with the input root's absolute path removed (paths in records are relative to the input root)."""
    if not root or not text:
        return text
    prefix = os.path.abspath(root).rstrip(os.sep) + os.sep
    return text.replace(prefix, "")


def relative_source(path: str | os.PathLike[str], root: Path | None) -> str:
    """`path` relative to the input root when it lies inside it (POSIX), else as given."""
    if root is None:
        return str(path)
    absolute, base = os.path.abspath(path), os.path.abspath(root)
    if absolute == base:
        return "."
    if os.path.commonpath([absolute, base]) == base:
        return Path(os.path.relpath(absolute, base)).as_posix()
    return str(path)
