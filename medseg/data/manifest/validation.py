"""`validate_manifest`: a manifest checked against the files it references, every problem reported."""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.manifest.hashing import PROGRESS_MIN_ITEMS, files_under, resolve_path, sha256_file
from medseg.data.manifest.schema import SPLITS, CaseRecord, Manifest
from medseg.data.manifest.storage import load_manifest
from medseg.progress import progress_bar

__all__ = ["Problem", "ValidationReport", "validate_manifest"]

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest's data: which case, which path, what."""

    kind: str
    message: str
    case_id: str | None = None
    path: str | None = None


@dataclass
class ValidationReport:
    """The result of `validate_manifest`: problems found and what was checked."""

    manifest_path: Path
    manifest: Manifest
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    checksums_verified: int = 0
    label_files_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, case_id: str | None = None, path: str | None = None) -> None:
        self.problems.append(Problem(kind, message, case_id, path))

    def summary(self) -> str:
        splits = ", ".join(f"{key} {n}" for key, n in self.manifest.split_counts().items())
        checked = (f"{self.files_checked} files present, {self.checksums_verified} checksums verified, "
                   f"{self.label_files_read} label files read")
        head = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{head}: {len(self.manifest.cases)} cases ({splits}); {checked}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest_path),
            "ok": self.ok,
            "name": self.manifest.name,
            "task": self.manifest.task,
            "cases": len(self.manifest.cases),
            "splits": self.manifest.split_counts(),
            "files_checked": self.files_checked,
            "checksums_verified": self.checksums_verified,
            "label_files_read": self.label_files_read,
            "problems": [problem.__dict__ for problem in self.problems],
        }


def validate_manifest(
    path: str | os.PathLike[str], check_checksums: bool = True, check_label_values: bool = True
) -> ValidationReport:
    """Check a manifest against its files.

    Schema errors raise `ConfigError` (`ManifestSchemaError`). Everything else becomes a `Problem` in the
    report: duplicate case ids, a patient in several splits, missing files, sha256 mismatches, files added
    to a checksummed DICOM folder, segmentation label values outside the label map (and label grids that
    differ from a NIfTI image's), classification labels that are not 0/1/null or not in the label map.
    """
    path = Path(path)
    manifest = load_manifest(path)
    report = ValidationReport(manifest_path=path, manifest=manifest)
    base = path.parent
    _check_case_ids(manifest, report)
    _check_patient_leakage(manifest, report)
    hashes: list[tuple[str, str, str]] = []
    for case in manifest.cases:
        _check_case_files(case, manifest, base, report, hashes)
    if check_checksums:
        _verify_checksums(hashes, base, report)
    if check_label_values and manifest.task == "segmentation":
        _check_segmentation_values(manifest, base, report)
    return report


def _check_case_ids(manifest: Manifest, report: ValidationReport) -> None:
    seen: dict[str, int] = defaultdict(int)
    for case in manifest.cases:
        seen[case.case_id] += 1
    for case_id, count in seen.items():
        if count > 1:
            report.add("duplicate_case", f"case id used by {count} cases", case_id)


def _check_patient_leakage(manifest: Manifest, report: ValidationReport) -> None:
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case in manifest.cases:
        if case.split:
            by_patient[case.patient_id][case.split].append(case.case_id)
    for patient, splits in sorted(by_patient.items()):
        if len(splits) > 1:
            where = "; ".join(f"{split}: {', '.join(cases[:3])}{' ...' if len(cases) > 3 else ''}"
                              for split, cases in sorted(splits.items(), key=lambda item: SPLITS.index(item[0])))
            report.add("patient_leakage", f"patient '{patient}' is in {len(splits)} splits ({where})")


def _check_case_files(case: CaseRecord, manifest: Manifest, base: Path, report: ValidationReport,
                      hashes: list[tuple[str, str, str]]) -> None:
    referenced = [case.image]
    if not resolve_path(base, case.image).exists():
        report.add("missing", "image not found", case.case_id, case.image)
    for name, value in case.labels.items():
        if manifest.task == "segmentation":
            if not isinstance(value, str):
                report.add("label", f"label '{name}' must be a file path, got {value!r}", case.case_id)
                continue
            referenced.append(value)
            if not resolve_path(base, value).exists():
                report.add("missing", f"label file '{name}' not found", case.case_id, value)
        else:
            if name not in manifest.label_map:
                close = difflib.get_close_matches(name, manifest.class_names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                report.add("label", f"class '{name}' is not in the label map{hint}", case.case_id)
            if value not in (0, 1, None):
                report.add("label", f"class '{name}' must be 0, 1 or null, got {value!r}", case.case_id)
    present = [item for item in referenced if resolve_path(base, item).exists()]
    report.files_checked += sum(len(files_under(base, item)) for item in present)
    for key, digest in case.checksums.items():
        if resolve_path(base, key).is_file():
            hashes.append((case.case_id, key, digest))
        else:
            report.add("missing", "checksummed file not found", case.case_id, key)
    _check_unlisted_files(case, base, report)


def _check_unlisted_files(case: CaseRecord, base: Path, report: ValidationReport) -> None:
    """Files added to a checksummed image folder (e.g. an extra DICOM slice) after the manifest was written."""
    folder = resolve_path(base, case.image)
    prefix = case.image.rstrip("/") + "/"
    if not folder.is_dir() or not any(key.startswith(prefix) for key in case.checksums):
        return
    for name in files_under(base, case.image):
        if name not in case.checksums:
            report.add("unlisted", "file in the image folder has no checksum (added after the manifest?)",
                       case.case_id, name)


def _verify_checksums(hashes: list[tuple[str, str, str]], base: Path, report: ValidationReport) -> None:
    with progress_bar(len(hashes), "verifying checksums", min_items=PROGRESS_MIN_ITEMS) as advance:
        for case_id, key, expected in hashes:
            actual = sha256_file(resolve_path(base, key))
            if actual != expected:
                report.add("checksum", f"sha256 mismatch: manifest {expected[:12]}..., file {actual[:12]}...",
                           case_id, key)
            else:
                report.checksums_verified += 1
            advance()


def _check_segmentation_values(manifest: Manifest, base: Path, report: ValidationReport) -> None:
    """Every label file's values lie in its own label map (`label_maps[key]`, else `label_map`)."""
    jobs = [(case, value, set(manifest.label_map_for(key))) for case in manifest.cases
            for key, value in case.labels.items()
            if isinstance(value, str) and value.lower().endswith(_VOLUME_SUFFIXES)
            and resolve_path(base, value).is_file()]
    with progress_bar(len(jobs), "reading label files", min_items=PROGRESS_MIN_ITEMS) as advance:
        for case, value, allowed in jobs:
            _check_label_file(case, value, allowed, base, report)
            advance()


def _check_label_file(case: CaseRecord, value: str, allowed: set[int], base: Path, report: ValidationReport) -> None:
    try:
        array, affine = _read_label_volume(resolve_path(base, value))
    except Exception as exc:  # any unreadable label file is a problem to report, not a crash
        report.add("label", f"cannot read label file ({exc})", case.case_id, value)
        return
    report.label_files_read += 1
    values = np.unique(array)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        report.add("label_value", "label file holds non-integer values", case.case_id, value)
        return
    outside = sorted(int(v) for v in values if int(v) not in allowed)
    if outside:
        shown = ", ".join(map(str, outside[:10])) + (" ..." if len(outside) > 10 else "")
        report.add("label_value", f"label value(s) {shown} not in the label map ({_describe_keys(allowed)})",
                   case.case_id, value)
    _check_grid(case, value, array.shape, affine, base, report)


def _describe_keys(keys: set[int]) -> str:
    ordered = sorted(keys)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _read_label_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(path)
        return np.asanyarray(image.dataobj), image.affine
    from medseg.io import read_itk_image

    volume = read_itk_image(path)
    return volume.array, volume.affine


def _check_grid(case: CaseRecord, value: str, shape: tuple[int, ...], affine: np.ndarray, base: Path,
                report: ValidationReport) -> None:
    """A label volume must share a NIfTI image's grid (checked from the image header only)."""
    image_path = resolve_path(base, case.image)
    if not image_path.name.lower().endswith((".nii", ".nii.gz")) or not image_path.is_file():
        return
    import nibabel as nib

    try:
        image = nib.load(image_path)
    except Exception as exc:  # any unreadable image header is a problem to report (the grid cannot be checked)
        report.add("image", f"cannot read the image header, so the label grid was not checked "
                            f"({type(exc).__name__}: {exc})", case.case_id, case.image)
        return
    if tuple(image.shape[:3]) != tuple(shape[:3]):
        report.add("label_grid", f"label shape {tuple(shape[:3])} differs from image shape {tuple(image.shape[:3])}",
                   case.case_id, value)
    elif not np.allclose(image.affine, affine, atol=1e-3):
        report.add("label_grid", "label affine differs from the image's (not on the image grid)", case.case_id, value)
