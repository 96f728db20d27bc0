"""Classification evaluation: read labels/predictions CSVs, score every class, write the report files.

CSV layout (labels and predictions alike): a column `image` (path or id; rows are paired by
`medseg.evaluate.matching`: the exact string, then the same file, then a unique file name), then one column per
class named after it: 0/1 in labels, probabilities in [0, 1] in predictions. Predictions may add `<class>_call`
columns (0/1 decisions at the model's stored thresholds) and other columns, which are ignored; the classes are
the label file's class columns.

Statistics per class (one-vs-rest in the multi-class case) come from `medseg.evaluate.roc`: AUC with a
stratified-bootstrap and a DeLong interval, average precision, decisions at an operating point with Wilson
intervals, sensitivity at 90 % specificity and specificity at 90 % sensitivity, and calibration (ECE).
Macro/micro summaries use an ordinary bootstrap that resamples images jointly (all classes together).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.evaluate import roc
from medseg.evaluate.predictions import CALL_SUFFIX

log = logging.getLogger(__name__)

__all__ = [
    "ClassResult",
    "ClassTable",
    "ClassificationReport",
    "Comparison",
    "Estimate",
    "OperatingPoint",
    "evaluate_classification",
    "parse_operating_point",
    "read_prediction_table",
    "write_report",
]

Task = Literal["auto", "multilabel", "multiclass"]
Progress = Callable[[int, int, str], None]

SPECIFICITY_TARGET = 0.9
"""Specificity at which `sensitivity_at_specificity` is read (and its reference line drawn)."""
SENSITIVITY_TARGET = 0.9
CANDIDATE_RULES = ("youden", "sensitivity:0.9", "specificity:0.9", "0.5")
"""Operating points tabulated for every class in operating_points.csv, beside the one used."""
_SUM_TOLERANCE = 0.01
"""A multi-class (softmax) prediction row must sum to 1 within this tolerance (rounded CSV values)."""
_SHOWN = 5
_POOLED_CHUNK = 400_000
"""Cells (resamples x images x classes) per chunk of the joint bootstrap (bounds its memory)."""


# ------------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class ClassTable:
    """One CSV: images (rows), classes (columns), values (N, C) and optional 0/1 calls (N, C)."""

    path: Path
    images: list[str]
    classes: list[str]
    values: np.ndarray
    calls: np.ndarray | None = None

    def select(self, classes: Sequence[str], against: str | os.PathLike[str] | None = None) -> ClassTable:
        """These columns in this order; InputError naming this file when some are missing."""
        missing = [name for name in classes if name not in self.classes]
        if missing:
            where = f" (classes of {against})" if against is not None else ""
            raise InputError(f"class column(s) missing: {_few(missing)}; expected {len(classes)} class "
                             f"column(s) {_few(list(classes), 8)}{where}", self.path)
        index = [self.classes.index(name) for name in classes]
        calls = None if self.calls is None else self.calls[:, index]
        return replace(self, classes=list(classes), values=self.values[:, index], calls=calls)

    def aligned_to(self, reference: ClassTable, *, files: Sequence[str] | None = None) -> ClassTable:
        """Rows reordered to `reference.images` (the labels), paired by `medseg.evaluate.matching`.

        Images of the reference missing here are an InputError (a silently smaller test set biases every
        number); extra images here (predictions for unlabelled images) are dropped with a warning. `files`: the
        file each row here was computed from, when known.
        """
        from medseg.evaluate.matching import match_rows, prediction_order

        matching = match_rows(reference.images, reference.path, self.images, self.path, pred_files=files)
        order = prediction_order(matching, reference.images, reference.path, self.images, self.path)
        only_here = [image for image, label in zip(self.images, matching.label_of, strict=True) if label is None]
        if only_here:
            log.warning("%s: %d image(s) have no labels in %s and are left out (e.g. %s)", self.path,
                        len(only_here), reference.path, _few(only_here))
        calls = None if self.calls is None else self.calls[order]
        return replace(self, images=list(reference.images), values=self.values[order], calls=calls)


def _few(items: Sequence[str], shown: int = _SHOWN) -> str:
    text = ", ".join(repr(item) for item in items[:shown])
    return text + (f", … ({len(items) - shown} more)" if len(items) > shown else "")


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header cells (stripped) and the non-blank data rows with their line numbers."""
    if not path.exists():
        raise InputError("no such file", path)
    if not path.is_file():
        raise InputError("not a file (expected a CSV table)", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not a UTF-8 text CSV file (byte {exc.start})", path) from None
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
            else:
                rows.append((reader.line_num, [cell.strip() for cell in cells]))
    except csv.Error as exc:
        raise InputError(f"unreadable CSV at line {reader.line_num}: {exc}", path) from None
    if header is None:
        raise InputError("empty file (expected a CSV header starting with `image`)", path)
    return header, rows


def _check_header(path: Path, header: list[str]) -> None:
    if "image" not in header:
        raise InputError(f"missing `image` column (the first column must be `image`; header: {_few(header, 8)})",
                         path)
    seen: set[str] = set()
    for name in header:
        if not name:
            raise InputError(f"empty column name in the header (column {header.index(name) + 1})", path)
        if name in seen:
            raise InputError(f"column {name!r} appears twice in the header", path)
        seen.add(name)


def _numbers(path: Path, name: str, cells: list[str], lines: list[int], images: list[str]) -> np.ndarray:
    try:
        return np.asarray(cells, dtype=np.float64)
    except ValueError:
        for cell, line, image in zip(cells, lines, images, strict=True):
            try:
                float(cell)
            except ValueError:
                what = "empty value" if not cell else f"non-numeric value {cell!r}"
                raise InputError(f"{what} in column {name!r} at line {line} (image {image!r})", path) from None
        raise


def _first_bad(path: Path, name: str, values: np.ndarray, bad: np.ndarray, lines: list[int], images: list[str],
               problem: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{problem}: column {name!r} has {values[i]:g} at line {lines[i]} (image {images[i]!r}; "
                         f"{int(bad.sum())} such value(s) in the column)", path)


def read_prediction_table(path: str | os.PathLike[str], kind: Literal["labels", "predictions"],
                          classes: Sequence[str] | None = None) -> ClassTable:
    """Read and validate a labels (0/1) or predictions (probabilities, optional `<class>_call`) CSV.

    `classes`: the class columns to read (others are ignored; missing ones are an error). Without it a labels
    file uses every column but `image`, a predictions file every column but `image` and `*_call`.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    _check_header(path, header)
    if not rows:
        raise InputError("no data rows (only a header)", path)
    for line, cells in rows:
        if len(cells) != len(header):
            raise InputError(f"line {line} has {len(cells)} field(s), the header has {len(header)}", path)
    if classes is None:
        classes = [name for name in header
                   if name != "image" and (kind == "labels" or not name.endswith(CALL_SUFFIX))]
    if not classes:
        raise InputError("no class columns besides `image`", path)
    missing = [name for name in classes if name not in header]
    if missing:
        raise InputError(f"class column(s) missing: {_few(missing)} (expected the {len(classes)} label classes "
                         f"{_few(list(classes), 8)})", path)
    lines = [line for line, _ in rows]
    column = {name: i for i, name in enumerate(header)}
    images = [cells[column["image"]] for _, cells in rows]
    first_line: dict[str, int] = {}
    for line, image in zip(lines, images, strict=True):
        if not image:
            raise InputError(f"empty `image` value at line {line}", path)
        if image in first_line:
            raise InputError(f"image {image!r} appears twice (lines {first_line[image]} and {line})", path)
        first_line[image] = line

    def read(name: str) -> np.ndarray:
        return _numbers(path, name, [cells[column[name]] for _, cells in rows], lines, images)

    values = np.empty((len(rows), len(classes)))
    for j, name in enumerate(classes):
        values[:, j] = read(name)
        _first_bad(path, name, values[:, j], ~np.isfinite(values[:, j]), lines, images, "not a finite number")
        if kind == "labels":
            _first_bad(path, name, values[:, j], ~np.isin(values[:, j], (0, 1)), lines, images,
                       "labels must be 0 or 1")
        else:
            _first_bad(path, name, values[:, j], (values[:, j] < 0) | (values[:, j] > 1), lines, images,
                       "probabilities must lie in [0, 1]")
    calls = None
    call_columns = [f"{name}{CALL_SUFFIX}" for name in classes]
    present = [name for name in call_columns if name in column]
    if kind == "predictions" and present:
        if len(present) != len(call_columns):
            absent = [name for name in call_columns if name not in column]
            raise InputError(f"`_call` columns exist for some classes only (missing: {_few(absent)}); give every "
                             "class a `<class>_call` column or none", path)
        calls = np.empty((len(rows), len(classes)), dtype=np.int64)
        for j, name in enumerate(call_columns):
            decisions = read(name)
            _first_bad(path, name, decisions, ~np.isin(decisions, (0, 1)), lines, images, "calls must be 0 or 1")
            calls[:, j] = decisions
    return ClassTable(path, images, list(classes), values, calls)


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Estimate:
    """A point estimate with an interval (NaN when undefined)."""

    value: float
    low: float = math.nan
    high: float = math.nan


@dataclass(frozen=True)
class OperatingPoint:
    """Decisions of one class at one threshold rule. `threshold` is NaN when undefined; for calls it is the
    lowest score called positive (the stored threshold is not in the file)."""

    rule: str
    threshold: float
    source: str
    chosen_on_data: bool
    confusion: dict[str, int]
    metrics: dict[str, roc.Proportion]
    used: bool = False


@dataclass(frozen=True)
class ClassResult:
    """Every statistic of one class; curves are for plotting (ROC: fpr/tpr, PR: recall/precision)."""

    name: str
    n: int
    positives: int
    prevalence: float
    auc: Estimate
    auc_delong: Estimate
    average_precision: Estimate
    operating_point: OperatingPoint
    sensitivity_at_specificity: Estimate
    specificity_at_sensitivity: Estimate
    ece: float
    calibration: roc.CalibrationBins
    roc_curve: dict[str, list[float]]
    pr_curve: dict[str, list[float]]
    candidates: list[OperatingPoint]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """Paired DeLong test of one class: A = --pred, B = --compare."""

    name: str
    auc_a: float
    auc_b: float
    difference: float
    z: float
    p_value: float
    roc_curve_b: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassificationReport:
    labels_path: str
    predictions_path: str
    compare_path: str | None
    created: str
    task: str
    n_images: int
    classes: list[str]
    operating_point: str
    operating_point_source: str
    thresholds_chosen_on_data: bool
    n_resamples: int
    seed: int
    confidence: float
    specificity_target: float
    sensitivity_target: float
    per_class: list[ClassResult]
    summary: dict[str, Any]
    multiclass: dict[str, Any] | None
    comparison: list[Comparison] | None
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: NaN and infinities become null, arrays lists."""
        from medseg.jsonable import finite_json, to_json_types

        return finite_json(to_json_types(asdict(self)))

    def per_class_rows(self) -> list[dict[str, Any]]:
        """One flat row per class, then `macro` and `micro` rows (AUC and average precision only)."""
        rows = []
        for c in self.per_class:
            op = c.operating_point
            row: dict[str, Any] = {"class": c.name, "n": c.n, "positives": c.positives, "prevalence": c.prevalence}
            row.update(_estimate_columns("auc", c.auc))
            row.update({"auc_delong_low": c.auc_delong.low, "auc_delong_high": c.auc_delong.high})
            row.update(_estimate_columns("average_precision", c.average_precision))
            row.update({"operating_point": op.rule, "threshold": op.threshold,
                        "threshold_chosen_on_data": op.chosen_on_data, **op.confusion})
            for name in ("sensitivity", "specificity", "ppv", "npv"):
                row.update(_estimate_columns(name, op.metrics[name]))
            row.update(_estimate_columns(f"sensitivity_at_{_percent(self.specificity_target)}_specificity",
                                         c.sensitivity_at_specificity))
            row.update(_estimate_columns(f"specificity_at_{_percent(self.sensitivity_target)}_sensitivity",
                                         c.specificity_at_sensitivity))
            row.update({"ece": c.ece, "notes": "; ".join(c.notes)})
            rows.append(row)
        for kind in ("macro", "micro"):
            row = {"class": kind}
            row.update(_estimate_columns("auc", self.summary[f"{kind}_auc"]))
            row.update(_estimate_columns("average_precision", self.summary[f"{kind}_average_precision"]))
            rows.append(row)
        return rows


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}"


def _estimate_columns(name: str, estimate: Estimate | roc.Proportion) -> dict[str, float]:
    return {name: estimate.value, f"{name}_low": estimate.low, f"{name}_high": estimate.high}


# ------------------------------------------------------------------------------------------------ evaluation


def parse_operating_point(spec: str) -> tuple[str, float | None]:
    """"calls" | "youden" | "sensitivity:T" | "specificity:T" | a fixed threshold -> (rule, target)."""
    text = spec.strip().lower()
    if text in ("calls", "youden"):
        return text, None
    rule, _, target = text.partition(":")
    try:
        if rule in ("sensitivity", "specificity") and target:
            value = float(target)
            if 0 < value <= 1:
                return rule, value
        elif not target:
            value = float(rule)
            if 0 <= value <= 1:
                return "fixed", value
    except ValueError:
        pass
    raise ConfigError(f"unknown operating point {spec!r}: use calls, youden, sensitivity:T, specificity:T "
                      "(T in (0, 1]) or a fixed threshold in [0, 1]")


def _rule_name(rule: str, target: float | None) -> str:
    if rule == "fixed":
        return f"{target:g}"
    return rule if target is None else f"{rule}:{target:g}"


def _rule_source(rule: str, target: float | None) -> str:
    return {"calls": "model's stored thresholds (`_call` columns)",
            "youden": "Youden index (max sensitivity + specificity - 1)",
            "sensitivity": f"highest threshold with sensitivity ≥ {target}",
            "specificity": f"lowest threshold with specificity ≥ {target}",
            "fixed": f"fixed threshold {target}"}[rule]


def _operating_point(labels: np.ndarray, scores: np.ndarray, calls: np.ndarray | None, rule: str,
                     target: float | None, confidence: float, notes: list[str]) -> OperatingPoint:
    name, source = _rule_name(rule, target), _rule_source(rule, target)
    threshold = math.nan
    if rule == "calls":
        assert calls is not None
        decisions = calls.astype(bool)
        if decisions.any():
            threshold = float(scores[decisions].min())
            if (~decisions).any() and scores[~decisions].max() > threshold:  # equal: rounding in the CSV
                notes.append("the `_call` decisions are not one threshold of the scores")
    else:
        try:
            threshold = roc.choose_threshold(labels, scores, rule, target)  # type: ignore[arg-type]
        except ValueError:
            notes.append(f"operating point {name} undefined: needs positive and negative cases")
        decisions = scores >= threshold if math.isfinite(threshold) else None
    if decisions is None:
        empty = roc.Proportion(math.nan, math.nan, math.nan, 0, 0)
        return OperatingPoint(name, threshold, source, rule != "fixed", {"tp": 0, "fp": 0, "tn": 0, "fn": 0},
                              dict.fromkeys(("sensitivity", "specificity", "ppv", "npv", "accuracy"), empty))
    return OperatingPoint(name, threshold, source, rule not in ("calls", "fixed"), roc.confusion_at(labels, decisions),
                          roc.binary_metrics(labels, decisions, confidence))


def _curves(labels: np.ndarray, scores: np.ndarray) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores, drop_intermediate=True)
    return ({"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            {"recall": recall.tolist(), "precision": precision.tolist()})


def _evaluate_class(name: str, labels: np.ndarray, scores: np.ndarray, calls: np.ndarray | None, rule: str,
                    target: float | None, n_resamples: int, seed: int, confidence: float) -> ClassResult:
    from sklearn.metrics import average_precision_score

    notes: list[str] = []
    labels = labels.astype(np.int64)
    positives = int(labels.sum())
    n = labels.size
    defined = 0 < positives < n
    nan = Estimate(math.nan)
    auc, auc_delong, ap, sens_at, spec_at = nan, nan, nan, nan, nan
    roc_points: dict[str, list[float]] = {"fpr": [], "tpr": []}
    pr_points: dict[str, list[float]] = {"recall": [], "precision": []}
    if defined:
        value = roc.auc(labels, scores)
        point = [value, float(average_precision_score(labels, scores)),
                 roc.sensitivity_at_specificity(labels, scores, SPECIFICITY_TARGET),
                 roc.specificity_at_sensitivity(labels, scores, SENSITIVITY_TARGET)]
        intervals = [(math.nan, math.nan)] * 4
        if n_resamples > 0:
            distribution = roc.bootstrap_curve_statistics(labels, scores, n_resamples, seed,
                                                          specificity=SPECIFICITY_TARGET,
                                                          sensitivity=SENSITIVITY_TARGET)
            intervals = [roc.percentile_interval(distribution[:, k], confidence) for k in range(4)]
        auc, ap, sens_at, spec_at = (Estimate(v, *ci) for v, ci in zip(point, intervals, strict=True))
        auc_delong = Estimate(value, *roc.delong_ci(labels, scores, confidence))
        roc_points, pr_points = _curves(labels, scores)
        if min(positives, n - positives) < 2:
            notes.append("DeLong interval undefined: fewer than two cases in a class")
    else:
        missing = "positives" if positives == 0 else "negatives"
        notes.append(f"AUC undefined: no {missing}")
    ece, bins = roc.expected_calibration_error(labels, scores)
    candidates = []
    if calls is not None:
        candidates.append(("calls", None))
    candidates += [parse_operating_point(spec) for spec in CANDIDATE_RULES]
    if (rule, target) not in candidates:
        candidates.insert(0, (rule, target))
    points = []
    for candidate_rule, candidate_target in candidates:
        used = (candidate_rule, candidate_target) == (rule, target)
        point_notes: list[str] = []
        op = _operating_point(labels, scores, calls, candidate_rule, candidate_target, confidence, point_notes)
        points.append(replace(op, used=used))
        if used:
            notes.extend(point_notes)
    used_point = next(op for op in points if op.used)
    return ClassResult(name, n, positives, positives / n, auc, auc_delong, ap, used_point, sens_at, spec_at, ece,
                       bins, roc_points, pr_points, points, notes)


def _joint_summary(labels: np.ndarray, scores: np.ndarray, defined: np.ndarray, n_resamples: int, seed: int,
                   confidence: float) -> dict[str, Any]:
    """Macro (mean over classes with a defined AUC) and micro (all cells pooled) AUC and average precision,
    with percentile intervals from an ordinary bootstrap resampling images jointly."""
    from sklearn.metrics import average_precision_score

    columns = np.flatnonzero(defined)
    point: dict[str, float] = {}
    if columns.size:
        point["macro_auc"] = float(np.mean([roc.auc(labels[:, c], scores[:, c]) for c in columns]))
        point["macro_average_precision"] = float(np.mean(
            [average_precision_score(labels[:, c], scores[:, c]) for c in columns]))
    else:
        point["macro_auc"] = point["macro_average_precision"] = math.nan
    flat_labels, flat_scores = labels.ravel(), scores.ravel()
    pooled = 0 < flat_labels.sum() < flat_labels.size
    point["micro_auc"] = roc.auc(flat_labels, flat_scores) if pooled else math.nan
    point["micro_average_precision"] = (float(average_precision_score(flat_labels, flat_scores)) if pooled
                                        else math.nan)
    draws: dict[str, list[np.ndarray]] = {key: [] for key in point}
    if n_resamples > 0 and (columns.size or pooled):
        n, classes = labels.shape
        per_class = [roc.ResampledROC(labels[:, c], scores[:, c]) for c in columns]
        cells = roc.ResampledROC(flat_labels, flat_scores, units=np.repeat(np.arange(n), classes))
        rows = max(1, _POOLED_CHUNK // (n * classes))  # the micro statistics see n * classes cells per resample
        for index in roc.bootstrap_indices(n, n_resamples, seed, rows):
            counts = roc.resample_counts(index, n)
            stats = np.full((len(index), 2, max(columns.size, 1)), np.nan)
            for k, curves in enumerate(per_class):
                stats[:, :, k] = curves.statistics(counts)[:, :2]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample may lose a class's positives
                draws["macro_auc"].append(np.nanmean(stats[:, 0], axis=1))
                draws["macro_average_precision"].append(np.nanmean(stats[:, 1], axis=1))
            micro = cells.statistics(counts)
            draws["micro_auc"].append(micro[:, 0])
            draws["micro_average_precision"].append(micro[:, 1])
    summary: dict[str, Any] = {}
    for key, value in point.items():
        ci = roc.percentile_interval(np.concatenate(draws[key]), confidence) if draws[key] else (math.nan, math.nan)
        summary[key] = Estimate(value, *ci) if math.isfinite(value) else Estimate(math.nan)
    summary["macro_classes"] = int(columns.size)
    return summary


def _detect_task(labels: ClassTable, preds: ClassTable, task: Task) -> tuple[str, list[str]]:
    one_hot = (labels.values.sum(axis=1) == 1).all()
    sums = preds.values.sum(axis=1)
    normalised = bool(np.all(np.abs(sums - 1) <= _SUM_TOLERANCE))
    notes: list[str] = []
    if task == "auto":
        resolved = "multiclass" if len(labels.classes) > 1 and one_hot and normalised else "multilabel"
        notes.append(f"task detected: {resolved}" + (" (one-hot labels, prediction rows sum to 1)"
                                                     if resolved == "multiclass" else ""))
        return resolved, notes
    if task == "multiclass":
        if not one_hot:
            bad = np.flatnonzero(labels.values.sum(axis=1) != 1)
            raise InputError(f"multiclass evaluation needs one-hot labels: {bad.size} row(s) do not hold exactly "
                             f"one 1 (e.g. images {_few([labels.images[i] for i in bad])})", labels.path)
        if not normalised:
            notes.append("prediction rows do not sum to 1; the multi-class decision is still their argmax")
    return task, notes


def _multiclass(labels: np.ndarray, scores: np.ndarray, classes: list[str], confidence: float) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    truth, predicted = labels.argmax(axis=1), scores.argmax(axis=1)
    correct = int((truth == predicted).sum())
    matrix = confusion_matrix(truth, predicted, labels=list(range(len(classes))))
    return {"accuracy": roc.Proportion.of(correct, truth.size, confidence), "classes": classes,
            "confusion_matrix": matrix.tolist(), "confusion_axes": "rows: label, columns: argmax prediction"}


def evaluate_classification(labels: ClassTable, preds: ClassTable, *, operating_point: str = "calls",
                            n_resamples: int = 2000, seed: int = 0, compare: ClassTable | None = None,
                            task: Task = "auto", confidence: float = 0.95,
                            on_class: Progress | None = None) -> ClassificationReport:
    """Score `preds` against `labels` (rows matched by image, classes = the label file's classes).

    operating_point: "calls" (the `_call` columns; Youden with a note when absent), "youden",
    "sensitivity:T", "specificity:T" or a fixed threshold; every rule but calls and fixed picks the threshold
    on these very data (flagged as optimistic). `on_class(done, total, name)` reports progress.
    """
    if n_resamples < 0:
        raise ConfigError(f"the number of bootstrap resamples must be >= 0, got {n_resamples}")
    classes = labels.classes
    preds = preds.select(classes, labels.path).aligned_to(labels)
    if compare is not None:
        compare = compare.select(classes, labels.path).aligned_to(labels)
    resolved_task, notes = _detect_task(labels, preds, task)
    rule, target = parse_operating_point(operating_point)
    if rule == "calls" and preds.calls is None:
        notes.append("no `_call` columns in the predictions: thresholds chosen by the Youden index instead")
        rule, target = "youden", None
    chosen_on_data = rule not in ("calls", "fixed")
    if chosen_on_data:
        notes.append("thresholds were chosen on the evaluated data: sensitivity, specificity, PPV and NPV at the "
                     "operating point are optimistic")
    total = len(classes) + 1 + (compare is not None)
    results = []
    for j, name in enumerate(classes):
        if on_class is not None:
            on_class(j, total, name)
        calls = None if preds.calls is None else preds.calls[:, j]
        results.append(_evaluate_class(name, labels.values[:, j], preds.values[:, j], calls, rule, target,
                                       n_resamples, seed, confidence))
    if on_class is not None:
        on_class(len(classes), total, "macro/micro")
    defined = np.array([math.isfinite(r.auc.value) for r in results])
    undefined = [r.name for r in results if not math.isfinite(r.auc.value)]
    if undefined:
        notes.append(f"AUC undefined (a class without positives or negatives), left out of the macro mean: "
                     f"{', '.join(undefined)}")
    summary = _joint_summary(labels.values.astype(np.int64), preds.values, defined, n_resamples, seed, confidence)
    comparison = None
    if compare is not None:
        if on_class is not None:
            on_class(len(classes) + 1, total, "comparison")
        comparison = []
        for j, name in enumerate(classes):
            y = labels.values[:, j].astype(np.int64)
            auc_a, auc_b, z, p = roc.delong_test(y, preds.values[:, j], compare.values[:, j])
            curve = _curves(y, compare.values[:, j])[0] if 0 < y.sum() < y.size else {"fpr": [], "tpr": []}
            comparison.append(Comparison(name, auc_a, auc_b, auc_a - auc_b, z, p, curve))
    if on_class is not None:
        on_class(total, total, "done")
    multiclass = (_multiclass(labels.values, preds.values, classes, confidence) if resolved_task == "multiclass"
                  else None)
    return ClassificationReport(
        labels_path=str(labels.path), predictions_path=str(preds.path),
        compare_path=None if compare is None else str(compare.path),
        created=datetime.now().isoformat(timespec="seconds"), task=resolved_task, n_images=len(labels.images),
        classes=list(classes), operating_point=_rule_name(rule, target),
        operating_point_source=_rule_source(rule, target),
        thresholds_chosen_on_data=chosen_on_data, n_resamples=n_resamples, seed=seed, confidence=confidence,
        specificity_target=SPECIFICITY_TARGET, sensitivity_target=SENSITIVITY_TARGET, per_class=results,
        summary=summary, multiclass=multiclass, comparison=comparison, notes=notes)


# ------------------------------------------------------------------------------------------------ files


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else f"{float(value):.6g}"
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    from medseg.io.atomic import write_atomically

    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows({key: _csv_cell(value) for key, value in row.items()} for row in rows)

    return write_atomically(path, write)


def _operating_point_rows(report: ClassificationReport) -> list[dict[str, Any]]:
    rows = []
    for c in report.per_class:
        for op in c.candidates:
            row: dict[str, Any] = {"class": c.name, "rule": op.rule, "used": op.used, "threshold": op.threshold,
                                   "chosen_on_data": op.chosen_on_data, **op.confusion}
            for name in ("sensitivity", "specificity", "ppv", "npv"):
                row.update(_estimate_columns(name, op.metrics[name]))
            rows.append(row)
    return rows


def write_report(report: ClassificationReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, per_class.csv, operating_points.csv, the figures and report.html (all atomically)."""
    from medseg.evaluate.cls_report import write_figures, write_html
    from medseg.io.atomic import write_atomically
    from medseg.jsonable import dumps_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = report.to_json()
    paths = {"report.json": write_atomically(
        out / "report.json", lambda p: p.write_text(dumps_json(document) + "\n", encoding="utf-8"))}
    paths["per_class.csv"] = _write_csv(out / "per_class.csv", report.per_class_rows())
    paths["operating_points.csv"] = _write_csv(out / "operating_points.csv", _operating_point_rows(report))
    figures = write_figures(report, out)
    paths.update(figures)
    paths["report.html"] = write_html(report, out / "report.html", figures)
    return paths
