"""`medseg.evaluate_segmentation` and `medseg.evaluate_classification`: score outputs against references."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from medseg.errors import InputError

if TYPE_CHECKING:
    from medseg.evaluate.classification import ClassificationReport
    from medseg.evaluate.segmentation import FolderScores, SegmentationScores

__all__ = ["ClassificationOptions", "evaluate_classification", "evaluate_segmentation"]

PROGRESS_WORK = 4_000_000
"""Resamples x images x classes above which classification scoring shows a progress bar (about a second)."""


def evaluate_segmentation(pred: str | os.PathLike[str], ref: str | os.PathLike[str], *,
                          labels: Literal["lobes", "lungs", "all"] = "lobes", ref_name: str | None = None,
                          pred_name: str | None = None, progress: bool = False
                          ) -> SegmentationScores | FolderScores:
    """Dice, IoU, HD95, ASSD and volume differences per label of two label files on one grid, or of two
    folders whose cases pair by name (`CASE.nii.gz` or `CASE/<ref_name>`); folders give `FolderScores`."""
    from medseg.evaluate.segmentation import compare_files, evaluate_pairs, pair_folders
    from medseg.progress import progress_bar

    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise InputError("no such file or folder", path)
    if pred.is_dir() != ref.is_dir():
        kind = {True: "folder", False: "file"}
        raise InputError(f"--pred and --ref must both be files or both be folders ({pred} is a "
                         f"{kind[pred.is_dir()]}, {ref} is a {kind[ref.is_dir()]})")
    if not pred.is_dir():
        return compare_files(pred, ref, labels)
    pairs = pair_folders(pred, ref, ref_name=ref_name, pred_name=pred_name)
    with progress_bar(len(pairs.pairs), "scoring", enabled=progress, min_items=2) as advance:
        return evaluate_pairs(pairs, labels, on_case=lambda done, total, case: advance(info=f"scored {case}"))


@dataclass(frozen=True)
class ClassificationOptions:
    """Operating point (calls, youden, sensitivity:T, specificity:T or a threshold), bootstrap resamples and
    seed, and the task (auto, multilabel, multiclass)."""

    operating_point: str = "calls"
    resamples: int = 2000
    seed: int = 0
    task: Literal["auto", "multilabel", "multiclass"] = "auto"


def evaluate_classification(predictions: str | os.PathLike[str], labels: str | os.PathLike[str], *,
                            out: str | os.PathLike[str] | None = None, compare: str | os.PathLike[str] | None = None,
                            options: ClassificationOptions | None = None, progress: bool = False
                            ) -> ClassificationReport:
    """Score a predictions CSV against a labels CSV (rows paired by `medseg.evaluate.matching`): AUC with
    bootstrap and DeLong intervals, PR-AUC, operating points, calibration; `compare`: a second predictions CSV
    for a paired DeLong test. `out`: also write report.json, CSVs, figures and report.html there."""
    from medseg.evaluate.classification import evaluate_classification as score
    from medseg.evaluate.classification import read_prediction_table, write_report

    options = options or ClassificationOptions()
    label_table = read_prediction_table(labels, "labels")
    preds = read_prediction_table(predictions, "predictions", label_table.classes)
    second = None if compare is None else read_prediction_table(compare, "predictions", label_table.classes)
    work = options.resamples * len(label_table.images) * len(label_table.classes) * (3 if second is None else 4)
    with _class_progress(len(label_table.classes) + 1 + (second is not None),
                         progress and work > PROGRESS_WORK) as on_class:
        report = score(label_table, preds, compare=second, operating_point=options.operating_point,
                       n_resamples=options.resamples, seed=options.seed, task=options.task, on_class=on_class)
    if out is not None:
        write_report(report, out)
    return report


@contextmanager
def _class_progress(total: int, enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    from medseg.progress import progress_bar

    with progress_bar(total, "bootstrapping", enabled=enabled) as advance:
        shown = 0

        def on_class(done: int, _total: int, name: str) -> None:
            nonlocal shown
            advance(done - shown, info=name)
            shown = done

        yield on_class
