"""TotalSegmentator CT dataset -> lobe segmentation manifest (five lobe masks merged into labels 1-5).

Layout (v2): `ROOT/meta.csv` (semicolon-separated, UTF-8 with BOM; columns image_id;age;gender;institute;
study_type;split;manufacturer;scanner_model;kvp;pathology;pathology_location) and per subject
`ROOT/sXXXX/ct.nii.gz` + `ROOT/sXXXX/segmentations/<structure>.nii.gz` (one binary mask per structure).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg import __version__
from medseg.data.importers._common import (
    ImportResult,
    default_output,
    finish,
    number_or_text,
    read_table,
    relative_to_manifest,
    require_columns,
)
from medseg.data.manifest import CaseRecord, Manifest, Provenance, assign_patient_splits, progress
from medseg.errors import InputError
from medseg.io.volume import Volume
from medseg.io.volume_files import write_nifti
from medseg.labels import label_map

__all__ = ["LOBE_FILES", "import_totalsegmentator", "merge_lobes"]

LOBE_FILES: dict[int, str] = {label.value: label.totalsegmentator for label in label_map("lobes").foreground
                              if label.totalsegmentator}
"""Lobe label value -> TotalSegmentator structure name (from the registry, configs/labels/lobes.yaml)."""

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


def merge_lobes(masks: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """One uint8 label map from binary lobe masks (label -> mask); returns (labels, overlapping voxels).

    A voxel claimed by several lobes gets the lowest label value among them (deterministic). Mask
    voxels count as set when > 0.5, which also accepts masks stored as float or scaled integers.
    """
    shape = next(iter(masks.values())).shape
    merged = np.zeros(shape, dtype=np.uint8)
    claims = np.zeros(shape, dtype=np.uint8)
    for value in sorted(masks):
        inside = np.asarray(masks[value]) > 0.5
        claims += inside
        merged[inside & (merged == 0)] = value
    return merged, int(np.count_nonzero(claims > 1))


def import_totalsegmentator(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    labels_dir: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    checksums: bool = True,
    command: str | None = None,
) -> ImportResult:
    """Write a lobe-segmentation manifest for a TotalSegmentator dataset folder.

    Each subject's five lobe masks are merged into `<labels_dir>/<subject>_lobes.nii.gz` (uint8, the CT's
    affine; default `labels_dir` is `labels/` beside the manifest, never the dataset). CT images are
    referenced, not copied. Splits come from meta.csv's `split` column when there is one, else they are
    assigned per subject with `split_seed` (TotalSegmentator publishes no patient ids: subject = patient).
    Subjects without ct.nii.gz or any lobe mask, or whose masks do not match the CT grid, are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder (expected a TotalSegmentator dataset root)", root)
    out = Path(out) if out is not None else default_output("totalsegmentator")
    labels_dir = Path(labels_dir) if labels_dir is not None else out.parent / "labels"
    meta = _read_meta(root)
    subjects = sorted(entry.name for entry in os.scandir(root)
                      if entry.is_dir() and ((root / entry.name / "ct.nii.gz").exists()
                                             or (root / entry.name / "segmentations").is_dir()))
    if not subjects:
        raise InputError("no subject folders with ct.nii.gz or segmentations/ found", root)

    warnings: list[str] = []
    cases: list[CaseRecord] = []
    overlap_total = skipped = 0
    with progress(len(subjects), "merging lobes") as advance:
        for subject in subjects:
            case, overlap, problem = _import_subject(root / subject, labels_dir, out.parent, meta.get(subject))
            advance()
            if case is None:
                skipped += 1
                warnings.append(f"{subject}: skipped: {problem}")
                continue
            overlap_total += overlap
            if overlap:
                warnings.append(f"{subject}: {overlap} voxel(s) in more than one lobe mask (lowest label kept)")
            cases.append(case)

    use_meta_split = bool(meta) and any("split" in row for row in meta.values())
    if use_meta_split:
        for case in cases:
            raw = (meta.get(case.case_id) or {}).get("split", "")
            case.split = _SPLIT_NAMES.get(raw.strip().lower())  # type: ignore[assignment]
            if case.split is None:
                warnings.append(f"{case.case_id}: no usable split in meta.csv ({raw!r}); left unassigned")
    else:
        assigned = assign_patient_splits([case.patient_id for case in cases], fractions, split_seed)
        for case in cases:
            case.split = assigned[case.patient_id]
    missing = sorted(set(meta) - set(subjects))
    if missing:
        warnings.append(f"{len(missing)} subject(s) listed in meta.csv have no folder (e.g. {missing[0]})")

    manifest = Manifest(
        name="totalsegmentator-lobes",
        task="segmentation",
        provenance=Provenance(
            source="TotalSegmentator CT dataset", generator="medseg.data.importers.totalsegmentator",
            generator_version=__version__, seed=None if use_meta_split else split_seed,
            root=str(root.absolute()), command=command, license="CC BY 4.0 (check the version you use)",
            url="https://doi.org/10.5281/zenodo.6802613",
            notes=("lobes merged from segmentations/lung_*_lobe_*.nii.gz: "
                   + ", ".join(f"{v} {name}" for v, name in label_map("lobes").short_names().items()) + "; "
                   "overlapping voxels get the lowest label; splits "
                   + ("from meta.csv" if use_meta_split else f"assigned per subject, seed {split_seed}")),
        ),
        label_map=label_map("lobes").names(background=True),
        label_maps={"lobes": "lobes"},
        cases=cases,
    )
    stats = {"skipped": skipped, "overlap_voxels": overlap_total}
    return finish(manifest, out, checksums=checksums, warnings=warnings, stats=stats)


def _read_meta(root: Path) -> dict[str, dict[str, str]]:
    path = root / "meta.csv"
    if not path.is_file():
        return {}
    header, rows = read_table(path, delimiter=";")
    require_columns(header, ["image_id"], path)
    return {row["image_id"]: row for row in rows if row.get("image_id")}


def _import_subject(folder: Path, labels_dir: Path, manifest_dir: Path,
                    meta_row: dict[str, str] | None) -> tuple[CaseRecord | None, int, str | None]:
    """(case, overlapping voxels, None) or (None, 0, why it was skipped)."""
    ct_path = folder / "ct.nii.gz"
    if not ct_path.is_file():
        return None, 0, "no ct.nii.gz"
    mask_paths = {value: folder / "segmentations" / f"{name}.nii.gz" for value, name in LOBE_FILES.items()}
    absent = [path.name for path in mask_paths.values() if not path.is_file()]
    if absent:
        return None, 0, f"missing lobe mask(s) {', '.join(absent)}"
    try:
        ct = nib.load(ct_path)
        masks = {}
        for value, path in mask_paths.items():
            image = nib.load(path)
            if image.shape[:3] != ct.shape[:3] or not np.allclose(image.affine, ct.affine, atol=1e-3):
                return None, 0, f"{path.name} is not on the CT grid (shape {image.shape}, CT {ct.shape})"
            masks[value] = np.asanyarray(image.dataobj).reshape(image.shape[:3])
    except Exception as exc:  # a broken file skips its subject, reported with the reason
        return None, 0, f"unreadable NIfTI ({exc})"
    merged, overlap = merge_lobes(masks)
    target = labels_dir / f"{folder.name}_lobes.nii.gz"
    write_nifti(Volume(array=merged, affine=ct.affine), target, label=True)
    metadata: dict[str, Any] = {key: number_or_text(value) for key, value in (meta_row or {}).items()
                                if key not in ("image_id", "split") and value.strip()}
    metadata["lobe_overlap_voxels"] = overlap
    case = CaseRecord(case_id=folder.name, patient_id=folder.name, image=relative_to_manifest(manifest_dir, ct_path),
                      labels={"lobes": relative_to_manifest(manifest_dir, target)}, metadata=metadata)
    return case, overlap, None
