"""CheXpert -> multi-label classification manifest with an explicit policy for uncertain labels.

Layout: `CheXpert-v1.0-small/{train.csv, valid.csv, train/, valid/}`; columns Path, Sex, Age, Frontal/Lateral,
AP/PA and the 14 observations (1.0 positive, 0.0 negative, -1.0 uncertain, blank = not mentioned). Path reads
`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`; patient and study ids come from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from medseg import __version__
from medseg.data.importers._common import (
    ImportResult,
    default_output,
    finish,
    number_or_text,
    read_table,
    relative_to_manifest,
    require_columns,
    select_classes,
)
from medseg.data.manifest import CaseRecord, Manifest, Provenance, Split, assign_patient_splits
from medseg.errors import ConfigError, InputError

__all__ = ["CHEXPERT_CLASSES", "UNCERTAIN_POLICIES", "import_chexpert", "label_value"]

CHEXPERT_CLASSES = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
"""The 14 observations, in CSV order."""

UncertainPolicy = Literal["ones", "zeros", "ignore"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")
_PATIENT = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")


def label_value(cell: str, uncertain: UncertainPolicy) -> int | None:
    """One CSV cell under the policy: 1.0 -> 1, 0.0 or blank -> 0, -1.0 -> 1 / 0 / None (ones/zeros/ignore)."""
    text = cell.strip()
    if not text:
        return 0
    value = float(text)
    if value == 1:
        return 1
    if value == 0:
        return 0
    if value == -1:
        return {"ones": 1, "zeros": 0, "ignore": None}[uncertain]
    raise ValueError(f"unexpected label value {cell!r}")


def import_chexpert(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    uncertain: UncertainPolicy = "zeros",
    frontal_only: bool = False,
    classes: Sequence[str] | None = None,
    valid_split: Split = "test",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    checksums: bool = True,
    command: str | None = None,
) -> ImportResult:
    """Write a classification manifest for a CheXpert folder (the `CheXpert-v1.0[-small]` folder or its parent).

    valid.csv (radiologist-labelled; the official test set is not public) becomes `valid_split` (default test);
    train.csv patients are split into train/val per patient (`val_fraction`, seeded) when valid_split is
    test, else all go to train. Blank cells are 0 ("not mentioned"); uncertain (-1) follows `uncertain`.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"uncertain policy must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder (expected the CheXpert root)", root)
    out = Path(out) if out is not None else default_output("chexpert")
    csv_dir = _find_csv_dir(root)
    kept = select_classes(CHEXPERT_CLASSES, classes)

    warnings: list[str] = []
    cases: list[CaseRecord] = []
    stats: dict[str, Any] = {"images_missing": 0, "lateral_dropped": 0}
    order = list(range(5))
    for csv_name, split in (("train.csv", None), ("valid.csv", valid_split)):
        csv_path = csv_dir / csv_name
        if not csv_path.is_file():
            warnings.append(f"{csv_path} not found")
            continue
        header, rows = read_table(csv_path, delimiter=",")
        require_columns(header, ["Path", *kept], csv_path)
        for number, row in enumerate(rows, start=2):
            if frontal_only and row.get("Frontal/Lateral", "Frontal") != "Frontal":
                stats["lateral_dropped"] += 1
                continue
            case = _case(row, number, csv_path, csv_dir, root, out.parent, kept, uncertain, split, order)
            if case is None:
                stats["images_missing"] += 1
                continue
            cases.append(case)
    if stats["images_missing"]:
        warnings.append(f"{stats['images_missing']} image(s) listed in the CSVs not found (skipped)")

    if valid_split == "test":
        training = [case for case in cases if case.split is None]
        carved = assign_patient_splits([case.patient_id for case in training], (1 - val_fraction, val_fraction),
                                       split_seed, splits=("train", "val"))
        for case in training:
            case.split = carved[case.patient_id]
        split_note = f"valid.csv -> test; train.csv split per patient ({val_fraction:.0%} of patients to val)"
    else:
        for case in cases:
            case.split = case.split or "train"
        split_note = "valid.csv -> val; train.csv -> train"

    manifest = Manifest(
        name="chexpert", task="classification",
        provenance=Provenance(
            source="CheXpert", generator="medseg.data.importers.chexpert", generator_version=__version__,
            seed=split_seed, root=str(root.absolute()), command=command,
            license="Stanford University School of Medicine CheXpert Dataset Research Use Agreement",
            url="https://stanfordmlgroup.github.io/competitions/chexpert/",
            notes=(f"uncertain (-1) -> {'1' if uncertain == 'ones' else '0' if uncertain == 'zeros' else 'null'} "
                   f"(policy '{uncertain}'); blank -> 0; {'frontal views only; ' if frontal_only else ''}{split_note}"),
        ),
        label_map=kept, cases=cases,
    )
    return finish(manifest, out, checksums=checksums, warnings=warnings, stats=stats)


def _find_csv_dir(root: Path) -> Path:
    """The folder with train.csv/valid.csv: ROOT itself, or one folder below (ROOT = the parent)."""
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    below = sorted(p.parent for p in root.glob("*/valid.csv")) + sorted(p.parent for p in root.glob("*/train.csv"))
    if below:
        return below[0]
    raise InputError("no train.csv or valid.csv found here or one folder below", root)


def _resolve_image(path_text: str, csv_dir: Path, root: Path, order: list[int]) -> Path | None:
    """Find the image that a CSV `Path` names: relative to the CSV folder's parent, the CSV folder, or ROOT.

    `order` holds the candidate indices, most recently successful first (so one stat per row is typical).
    """
    relative = Path(path_text.replace("\\", "/"))
    stripped = Path(*relative.parts[1:]) if len(relative.parts) > 1 else relative
    candidates = (csv_dir.parent / relative, csv_dir / stripped, csv_dir / relative, root / relative, root / stripped)
    for index in list(order):
        if candidates[index].is_file():
            order.remove(index)
            order.insert(0, index)
            return candidates[index]
    return None


def _case(row: dict[str, str], number: int, csv_path: Path, csv_dir: Path, root: Path, manifest_dir: Path,
          kept: Sequence[str], uncertain: UncertainPolicy, split: Split | None, order: list[int]) -> CaseRecord | None:
    path_text = row["Path"]
    match = _PATIENT.search(path_text.replace("\\", "/"))
    if match is None:
        raise InputError(f"line {number}: cannot find patientNNNNN/studyN in Path {path_text!r}", csv_path)
    image = _resolve_image(path_text, csv_dir, root, order)
    if image is None:
        return None
    try:
        labels = {name: label_value(row.get(name, ""), uncertain) for name in kept}
    except ValueError as exc:
        raise InputError(f"line {number}: {exc}", csv_path) from exc
    patient, study = match.groups()
    metadata: dict[str, Any] = {"study": study}
    for column, key in (("Sex", "sex"), ("Age", "age"), ("Frontal/Lateral", "view"), ("AP/PA", "projection")):
        if row.get(column):
            metadata[key] = number_or_text(row[column])
    return CaseRecord(
        case_id=f"{patient}_{study}_{Path(path_text).stem}", patient_id=patient, split=split,
        image=relative_to_manifest(manifest_dir, image), labels=labels, metadata=metadata,
    )
