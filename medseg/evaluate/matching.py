"""The one rule that pairs prediction rows with label rows (`medseg evaluate cls` and workflow AUC reports).

A prediction row is the label row with, in this order of trust:
1. the same `image` string;
2. the same file: each `image` taken relative to its own CSV's folder (a prediction's also as given, i.e.
   relative to the working directory, which is how `medseg classify` writes folder inputs), symlinks resolved;
3. the same file name, when exactly one label row has it;
4. the same file name without extension (the DICOM and the PNG of one radiograph), when exactly one label row
   has it.
A label row claimed by an earlier step is not offered to a later one. Two prediction rows claiming one label row
in the same step is an error; so is a label row left without a prediction (the error names examples and the
prediction rows whose name fit several label rows).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medseg.errors import InputError

__all__ = ["Matching", "label_keys", "match_rows", "prediction_order"]

_SHOWN = 5


@dataclass(frozen=True)
class Matching:
    """`label_of[p]`: the label row of prediction row `p` (None: unlabelled); `ambiguous[p]`: label rows that
    share prediction `p`'s file name (when that left it unmatched)."""

    label_of: list[int | None]
    ambiguous: dict[int, list[int]]

    def order(self, n_labels: int) -> list[int | None]:
        """For each label row, its prediction row (None when none)."""
        rows: list[int | None] = [None] * n_labels
        for p, label in enumerate(self.label_of):
            if label is not None:
                rows[label] = p
        return rows


def _few(items: Sequence[str], shown: int = _SHOWN) -> str:
    text = ", ".join(repr(item) for item in items[:shown])
    return text + (f", … ({len(items) - shown} more)" if len(items) > shown else "")


def _name(text: str) -> str:
    return PurePosixPath(text.replace("\\", "/")).name


def _stem(text: str) -> str:
    name = _name(text)
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else PurePosixPath(name).stem


def _real(base: Path, text: str) -> str:
    return os.path.realpath(base / text)


def match_rows(label_images: Sequence[str], labels_csv: str | os.PathLike[str], pred_images: Sequence[str],
               preds_csv: str | os.PathLike[str], *, pred_files: Sequence[str] | None = None) -> Matching:
    """Pair prediction rows with label rows by the rule above (unmatched rows are no error: `prediction_order`).

    `pred_files`: the file each prediction row was computed from, when the caller knows it (a workflow); it
    replaces the `image` text in steps 2-4. Raises InputError (naming `preds_csv`) when two prediction rows
    claim the same label row in one step.
    """
    label_of: list[int | None] = [None] * len(pred_images)
    claimed: dict[int, int] = {}
    exact = {image: i for i, image in enumerate(label_images)}
    for p, image in enumerate(pred_images):
        label = exact.get(image)
        if label is not None:
            label_of[p], claimed[label] = label, p
    ambiguous: dict[int, list[int]] = {}
    if len(claimed) == len(label_images) or len(claimed) == len(pred_images):
        return Matching(label_of, ambiguous)
    labels_dir, preds_dir = Path(labels_csv).resolve().parent, Path(preds_csv).resolve().parent
    sources = list(pred_files) if pred_files is not None else list(pred_images)

    def pred_paths(p: int) -> list[str]:
        if pred_files is not None:
            return [os.path.realpath(sources[p])]
        return list(dict.fromkeys([_real(preds_dir, sources[p]), os.path.realpath(sources[p])]))

    steps: list[tuple[str, Callable[[str], str], Callable[[int], list[str]]]] = [
        ("the same file", lambda image: _real(labels_dir, image), pred_paths),
        ("the same file name", _name, lambda p: [_name(sources[p])]),
        ("the same file name without extension", _stem, lambda p: [_stem(sources[p])]),
    ]
    for how, label_key, pred_keys in steps:
        index: dict[str, list[int]] = {}
        for i, image in enumerate(label_images):
            index.setdefault(label_key(image), []).append(i)
        proposed: dict[int, int] = {}
        for p in range(len(pred_images)):
            if label_of[p] is not None:
                continue
            for key in pred_keys(p):
                found = index.get(key, [])
                if len(found) > 1:
                    ambiguous.setdefault(p, found)
                    break
                if len(found) == 1 and found[0] not in claimed:
                    label = found[0]
                    if label in proposed:
                        raise InputError(f"rows {pred_images[proposed[label]]!r} and {pred_images[p]!r} both match "
                                         f"label image {label_images[label]!r} ({how})", preds_csv)
                    proposed[label] = p
                    break
        for label, p in proposed.items():
            label_of[p], claimed[label] = label, p
            ambiguous.pop(p, None)
    return Matching(label_of, ambiguous)


def prediction_order(matching: Matching, label_images: Sequence[str], labels_csv: str | os.PathLike[str],
          pred_images: Sequence[str], preds_csv: str | os.PathLike[str]) -> list[int]:
    """For each label row its prediction row; InputError (naming `preds_csv`) when some label rows have none."""
    order = matching.order(len(label_images))
    missing = [label_images[i] for i, p in enumerate(order) if p is None]
    if missing:
        hint = ""
        if matching.ambiguous:
            examples = [f"{pred_images[p]!r} -> {_few([label_images[i] for i in labels], 3)}"
                        for p, labels in list(matching.ambiguous.items())[:3]]
            hint = f"; {len(matching.ambiguous)} row(s) here fit several labels by file name (e.g. " \
                   + "; ".join(examples) + ")"
        raise InputError(f"{len(missing)} image(s) of {labels_csv} are not in this file (e.g. {_few(missing)}) — "
                         "rows are matched by the exact `image` value, then the same file (paths relative to each "
                         f"CSV's folder), then a unique file name{hint}", preds_csv)
    return [p for p in order if p is not None]


def label_keys(label_images: Sequence[str], labels_csv: str | os.PathLike[str], pred_images: Sequence[str],
               preds_csv: str | os.PathLike[str], *, pred_files: Sequence[str] | None = None) -> list[str | None]:
    """For each prediction row, the label `image` it is (None when it has no label row)."""
    matching = match_rows(label_images, labels_csv, pred_images, preds_csv, pred_files=pred_files)
    return [None if label is None else label_images[label] for label in matching.label_of]
