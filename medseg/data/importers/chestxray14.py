"""NIH ChestX-ray14 -> multi-label classification manifest.

Layout: `ROOT/Data_Entry_2017.csv` (or `Data_Entry_2017_v2020.csv`) with columns Image Index, Finding Labels
(`|`-separated, "No Finding"), Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
OriginalImage[Width, Height], OriginalImagePixelSpacing[x, y]; images in `ROOT/images/` or
`ROOT/images_001/images/` ... `ROOT/images_012/images/`; official split lists `train_val_list.txt`
and `test_list.txt` (one image file name per line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from medseg.errors import InputError

__all__ = ["NIH_CLASSES", "import_chestxray14", "parse_findings"]

NIH_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
"""The 14 findings, spelled as in Data_Entry_2017.csv."""

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_ALIASES = {"Pleural Thickening": "Pleural_Thickening", "Infiltrate": "Infiltration"}


def parse_findings(text: str) -> set[str]:
    """The findings of a `Finding Labels` cell ("No Finding" -> empty set)."""
    names = {_ALIASES.get(part.strip(), part.strip()) for part in text.split("|") if part.strip()}
    names.discard("No Finding")
    return names


def import_chestxray14(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    checksums: bool = True,
    command: str | None = None,
) -> ImportResult:
    """Write a classification manifest for an NIH ChestX-ray14 folder (images referenced, not copied).

    With the official lists, test = test_list.txt and train_val_list.txt is split into train/val per patient
    (`val_fraction` of its patients, seeded); without them all patients are split by `fractions`. Rows whose
    image file is not on disk (partial download) are skipped and counted.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder (expected the ChestX-ray14 root)", root)
    out = Path(out) if out is not None else default_output("chestxray14")
    csv_path = next((root / name for name in CSV_NAMES if (root / name).is_file()), None)
    if csv_path is None:
        raise InputError(f"no {' or '.join(CSV_NAMES)} found", root)
    header, rows = read_table(csv_path, delimiter=",")
    require_columns(header, ["Image Index", "Finding Labels", "Patient ID"], csv_path)
    kept = select_classes(NIH_CLASSES, classes)
    images = _index_images(root)

    warnings: list[str] = []
    cases: list[CaseRecord] = []
    unknown: dict[str, int] = {}
    missing = 0
    for row in rows:
        name = row["Image Index"]
        path = images.get(name)
        if path is None:
            missing += 1
            continue
        findings = parse_findings(row["Finding Labels"])
        for finding in findings - set(NIH_CLASSES):
            unknown[finding] = unknown.get(finding, 0) + 1
        cases.append(CaseRecord(
            case_id=Path(name).stem, patient_id=_patient_id(row["Patient ID"]),
            image=relative_to_manifest(out.parent, path),
            labels={cls: int(cls in findings) for cls in kept}, metadata=_metadata(row, header),
        ))
    if missing:
        warnings.append(f"{missing} image(s) listed in {csv_path.name} not found under {root} (skipped)")
    for finding, count in sorted(unknown.items()):
        warnings.append(f"unknown finding '{finding}' in {count} row(s) (ignored)")

    split_note = _assign_splits(root, cases, split_seed, val_fraction, fractions, warnings)
    manifest = Manifest(
        name="chestxray14", task="classification",
        provenance=Provenance(
            source="NIH ChestX-ray14", generator="medseg.data.importers.chestxray14", generator_version=__version__,
            seed=split_seed, root=str(root.absolute()), command=command, url="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            notes=f"labels from {csv_path.name} 'Finding Labels' ('No Finding' = all 0); {split_note}",
        ),
        label_map=kept, cases=cases,
    )
    return finish(manifest, out, checksums=checksums, warnings=warnings, stats={"images_missing": missing})


def _index_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from `images/`, `images_NNN/images/` and `images_NNN/`."""
    folders = [root / "images"]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and re.fullmatch(r"images_\d+", entry.name):
            folders += [root / entry.name / "images", root / entry.name]
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.is_file() and entry.name.lower().endswith(".png"):
                    found.setdefault(entry.name, folder / entry.name)
    return found


def _patient_id(text: str) -> str:
    text = text.strip()
    return str(int(text)) if text.isdigit() else text


def _metadata(row: dict[str, str], header: Sequence[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for column, key in (("Follow-up #", "follow_up"), ("Patient Gender", "sex"), ("Patient Sex", "sex"),
                        ("View Position", "view_position")):
        if row.get(column):
            metadata[key] = number_or_text(row[column])
    age = re.fullmatch(r"0*(\d+)\s*Y?", row.get("Patient Age", "").strip())
    if age:
        metadata["age"] = int(age.group(1))
    # The official header spells "OriginalImage[Width,Height]" unquoted, so it arrives as two columns.
    for prefix, key in (("OriginalImage[", "original_size"), ("OriginalImagePixelSpacing[", "pixel_spacing_mm")):
        index = next((i for i, name in enumerate(header) if name.startswith(prefix)), None)
        if index is not None and index + 1 < len(header):
            values = [number_or_text(row.get(header[i], "")) for i in (index, index + 1)]
            if all(isinstance(v, (int, float)) for v in values):
                metadata[key] = values
    return metadata


def _assign_splits(root: Path, cases: list[CaseRecord], seed: int, val_fraction: float,
                   fractions: tuple[float, float, float], warnings: list[str]) -> str:
    train_val_file, test_file = root / "train_val_list.txt", root / "test_list.txt"
    if not (train_val_file.is_file() and test_file.is_file()):
        assigned = assign_patient_splits([case.patient_id for case in cases], fractions, seed)
        for case in cases:
            case.split = assigned[case.patient_id]
        return f"no official split lists: patients split {fractions} with seed {seed}"
    test = set(test_file.read_text(encoding="utf-8").split())
    train_val = set(train_val_file.read_text(encoding="utf-8").split())
    in_train_val = [case for case in cases if f"{case.case_id}.png" in train_val]
    carved = assign_patient_splits([case.patient_id for case in in_train_val], (1 - val_fraction, val_fraction),
                                   seed, splits=("train", "val"))
    unlisted = 0
    for case in cases:
        name = f"{case.case_id}.png"
        split: Split | None = "test" if name in test else carved[case.patient_id] if name in train_val else None
        unlisted += split is None
        case.split = split
    if unlisted:
        warnings.append(f"{unlisted} image(s) are in neither split list (split left empty)")
    return (f"official lists: test = test_list.txt; train_val_list.txt split per patient into train/val "
            f"({val_fraction:.0%} of patients to val, seed {seed})")
