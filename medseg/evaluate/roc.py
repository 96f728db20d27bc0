"""ROC analysis for one binary finding: AUC, confidence intervals, comparisons, operating points, calibration.

Conventions
-----------
* `y_true` holds 0/1 labels, `y_score` any real scores (probabilities for calibration). A case is predicted
  positive when `score >= threshold`.
* AUC is the Mann-Whitney statistic with midranks (a tied positive/negative pair counts 1/2), equal to
  `sklearn.metrics.roc_auc_score`; it is NaN when only one class is present.
* Bootstrap intervals are percentile intervals. The stratified bootstrap resamples the positives and the
  negatives separately, each with replacement and at its own size, so every resample keeps the prevalence
  and every statistic stays defined. Resamples are vectorised: a (resamples, n) index matrix per chunk becomes
  case multiplicities, and the ROC statistics of every resample are read from cumulative counts over tie groups
  of the cases sorted once (`ResampledROC`; no per-resample sort).
* DeLong intervals and tests use the structural components of DeLong et al. (1988) computed with the midrank
  algorithm of Sun & Xu (2014); the interval is AUC ± z·SE clipped to [0, 1].
* Proportions (sensitivity, specificity, PPV, NPV, accuracy) carry Wilson score intervals; NaN when their
  denominator is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "CURVE_STATISTICS",
    "CalibrationBins",
    "Proportion",
    "ResampledROC",
    "auc",
    "batch_curve_statistics",
    "binary_metrics",
    "bootstrap_auc_ci",
    "bootstrap_curve_statistics",
    "bootstrap_indices",
    "choose_threshold",
    "confusion_at",
    "delong_auc_variance",
    "delong_ci",
    "delong_test",
    "expected_calibration_error",
    "percentile_interval",
    "resample_counts",
    "sensitivity_at_specificity",
    "sensitivity_at_specificity_ci",
    "specificity_at_sensitivity",
    "specificity_at_sensitivity_ci",
    "stratified_bootstrap",
    "stratified_indices",
    "wilson_interval",
]

ThresholdRule = Literal["youden", "sensitivity", "specificity", "fixed"]
BatchStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]

CURVE_STATISTICS = ("auc", "average_precision", "sensitivity_at_specificity", "specificity_at_sensitivity")
"""Columns of `batch_curve_statistics`."""

_CHUNK_ELEMENTS = 400_000
"""Index-matrix elements per bootstrap chunk (bounds the memory of the vectorised statistics, ~30 MB)."""
_TOLERANCE = 1e-9


# ------------------------------------------------------------------------------------------------ inputs


def _binary(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true).ravel()
    scores = np.asarray(y_score, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"y_true has {labels.size} values, y_score {scores.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(scores).all():
        raise ValueError("y_score must be finite")
    return labels.astype(np.int64), scores


def _both_classes(labels: np.ndarray) -> bool:
    positives = int(labels.sum())
    return 0 < positives < labels.size


# ------------------------------------------------------------------------------------------------ AUC


def _midrank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives = int(labels.sum())
    negatives = labels.size - positives
    ranks = stats.rankdata(scores)  # midranks
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve (Mann-Whitney with midranks); NaN when only one class is present."""
    labels, scores = _binary(y_true, y_score)
    return _midrank_auc(labels, scores) if _both_classes(labels) else math.nan


# ------------------------------------------------------------------------------------------------ bootstrap


def bootstrap_indices(n: int, n_resamples: int, seed: int = 0, chunk_rows: int | None = None) -> Iterator[np.ndarray]:
    """Chunks of a (n_resamples, n) matrix of indices drawn with replacement (ordinary, non-stratified);
    `chunk_rows` resamples per chunk (default: about 400 000 indices per chunk)."""
    rng = np.random.default_rng(seed)
    rows = chunk_rows or max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def stratified_indices(y_true: Any, n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Chunks of a (n_resamples, n) index matrix; each row resamples the positives and the negatives
    separately with replacement (positives first), so every row keeps the positive count."""
    labels = np.asarray(y_true).ravel()
    positive = np.flatnonzero(labels == 1)
    negative = np.flatnonzero(labels != 1)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(labels.size, 1))
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        yield np.concatenate([positive[rng.integers(0, positive.size, size=(size, positive.size))],
                              negative[rng.integers(0, negative.size, size=(size, negative.size))]], axis=1)


def resample_counts(index: np.ndarray, n: int) -> np.ndarray:
    """(b, n) multiplicities: how often each of the n cases occurs in each row of a (b, m) index matrix."""
    rows = index.shape[0]
    flat = (index + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def stratified_bootstrap(y_true: Any, y_score: Any, statistic: BatchStatistic, n_resamples: int = 2000,
                         seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of a vectorised `statistic(labels (b, n), scores (b, n)) -> (b,) or (b, k)`
    over stratified resamples; shape (n_resamples,) or (n_resamples, k). Requires both classes."""
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels):
        raise ValueError("the stratified bootstrap needs at least one positive and one negative")
    parts = [statistic(labels[index], scores[index]) for index in stratified_indices(labels, n_resamples, seed)]
    return np.concatenate(parts, axis=0)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution (NaN entries ignored; NaN when none is left)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


class ResampledROC:
    """ROC statistics of many weighted resamples of fixed cases, without a sort per resample.

    The cases are grouped by tied score once, in descending order. A resample keeps that order and those tie
    groups, so its ROC points are cumulative sums of the per-group positive and negative multiplicities: one
    sparse (groups x units) product per chunk of resamples. `units` maps every case to the resampling unit
    whose multiplicity it takes (default: itself; for micro statistics the image of each (image, class) cell).
    """

    def __init__(self, y_true: Any, y_score: Any, units: Any = None) -> None:
        from scipy import sparse

        labels, scores = _binary(y_true, y_score)
        order = np.argsort(-scores, kind="stable")
        first = np.append(True, scores[order][1:] != scores[order][:-1]) if scores.size else np.zeros(0, bool)
        group = np.empty(labels.size, dtype=np.int64)
        group[order] = np.cumsum(first) - 1
        self.groups = int(first.sum())
        units = np.arange(labels.size) if units is None else np.asarray(units, dtype=np.int64).ravel()
        self.units = int(units.max()) + 1 if units.size else 0
        # row 2g: negatives of tie group g, row 2g + 1: its positives; columns: resampling units
        self._cases = sparse.csr_matrix((np.ones(labels.size), (2 * group + labels, units)),
                                        shape=(2 * self.groups, self.units))

    def statistics(self, counts: np.ndarray, specificity: float = 0.9, sensitivity: float = 0.9) -> np.ndarray:
        """(b, 4) `CURVE_STATISTICS` for (b, units) multiplicities; NaN where a resample lacks a class."""
        counts = np.atleast_2d(counts)
        per_group = self._cases @ np.ascontiguousarray(counts.T, dtype=np.float64)  # (2 groups, b)
        zero = np.zeros((1, counts.shape[0]))  # the "nothing positive" point
        fps = np.concatenate([zero, np.cumsum(per_group[0::2], axis=0)])
        tps = np.concatenate([zero, np.cumsum(per_group[1::2], axis=0)])
        positives, negatives = tps[-1], fps[-1]
        out = np.empty((counts.shape[0], len(CURVE_STATISTICS)))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, 0] = (np.diff(fps, axis=0) * (tps[1:] + tps[:-1])).sum(axis=0) / (2 * positives * negatives)
            called = tps[1:] + fps[1:]
            precision = np.divide(tps[1:], called, out=np.zeros_like(called), where=called > 0)
            out[:, 1] = (np.diff(tps, axis=0) * precision).sum(axis=0) / positives
            allowed = fps <= negatives * (1 - specificity) + _TOLERANCE
            out[:, 2] = np.where(allowed, tps, 0).max(axis=0) / positives
            enough = tps >= positives * sensitivity - _TOLERANCE
            out[:, 3] = 1 - np.where(enough, fps, np.inf).min(axis=0) / negatives
        out[(positives == 0) | (negatives == 0)] = np.nan
        return out


def batch_curve_statistics(y_true: Any, y_score: Any, counts: np.ndarray, specificity: float = 0.9,
                           sensitivity: float = 0.9) -> np.ndarray:
    """AUC, average precision, sensitivity at `specificity` and specificity at `sensitivity` (columns
    `CURVE_STATISTICS`) of the resamples given by the rows of `counts` (b, n): how often each case is drawn.

    Same definitions as `auc`, `sklearn.metrics.average_precision_score`, `sensitivity_at_specificity` and
    `specificity_at_sensitivity` on the resampled cases; NaN where a row lacks a class. See `ResampledROC`.
    """
    return ResampledROC(y_true, y_score).statistics(counts, specificity, sensitivity)


def bootstrap_curve_statistics(y_true: Any, y_score: Any, n_resamples: int = 2000, seed: int = 0, *,
                               stratified: bool = True, specificity: float = 0.9,
                               sensitivity: float = 0.9) -> np.ndarray:
    """(n_resamples, 4) bootstrap distribution of `CURVE_STATISTICS`, stratified unless told otherwise."""
    labels, scores = _binary(y_true, y_score)
    if stratified and not _both_classes(labels):
        raise ValueError("the stratified bootstrap needs at least one positive and one negative")
    curves = ResampledROC(labels, scores)
    chunks = (stratified_indices(labels, n_resamples, seed) if stratified
              else bootstrap_indices(labels.size, n_resamples, seed))
    parts = [curves.statistics(resample_counts(index, labels.size), specificity, sensitivity) for index in chunks]
    return np.concatenate(parts, axis=0) if parts else np.empty((0, len(CURVE_STATISTICS)))


def bootstrap_auc_ci(y_true: Any, y_score: Any, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap percentile interval of the AUC; NaN when only one class is present."""
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels) or n_resamples < 1:
        return math.nan, math.nan
    return percentile_interval(bootstrap_curve_statistics(labels, scores, n_resamples, seed)[:, 0], confidence)


# ------------------------------------------------------------------------------------------------ DeLong


def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,) and structural components V10 (k, m) over positives and V01 (k, n) over negatives
    for k score rows (Sun & Xu 2014: midranks within the positives, the negatives and all cases)."""
    scores = np.atleast_2d(scores)
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    m, n = x.shape[1], y.shape[1]
    rank_x = stats.rankdata(x, axis=1)
    rank_y = stats.rankdata(y, axis=1)
    rank_all = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (rank_all[:, :m] - rank_x) / n
    v01 = 1 - (rank_all[:, m:] - rank_y) / m
    return aucs, v10, v01


def _delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aucs, v10, v01 = _delong_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return aucs, np.full((aucs.size, aucs.size), np.nan)
    return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def delong_auc_variance(y_true: Any, y_score: Any) -> float:
    """DeLong variance of the AUC; NaN with fewer than two positives or two negatives."""
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels):
        return math.nan
    return float(_delong_covariance(labels, scores)[1][0, 0])


def delong_ci(y_true: Any, y_score: Any, confidence: float = 0.95) -> tuple[float, float]:
    """AUC ± z·SE (DeLong), clipped to [0, 1]; NaN when the variance is undefined."""
    labels, scores = _binary(y_true, y_score)
    variance = delong_auc_variance(labels, scores)
    if math.isnan(variance):
        return math.nan, math.nan
    half = float(stats.norm.ppf((1 + confidence) / 2)) * math.sqrt(max(variance, 0.0))
    value = _midrank_auc(labels, scores)
    return max(0.0, value - half), min(1.0, value + half)


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> tuple[float, float, float, float]:
    """Paired DeLong test of two correlated ROC curves on the same cases: (auc_a, auc_b, z, two-sided p).

    z = (auc_a - auc_b) / SE of the difference. Identical curves give z = 0, p = 1; NaN when a class has
    fewer than two cases.
    """
    labels, a = _binary(y_true, score_a)
    _, b = _binary(labels, score_b)
    if a.shape != b.shape:
        raise ValueError("score_a and score_b must have the same length")
    if not _both_classes(labels):
        return math.nan, math.nan, math.nan, math.nan
    aucs, covariance = _delong_covariance(labels, np.stack([a, b]))
    auc_a, auc_b = float(aucs[0]), float(aucs[1])
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = auc_a - auc_b
    if math.isnan(variance):
        return auc_a, auc_b, math.nan, math.nan
    if variance <= 1e-15:
        z = 0.0 if abs(difference) <= 1e-12 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    return auc_a, auc_b, float(z), float(2 * stats.norm.sf(abs(z)))


# ------------------------------------------------------------------------------------------------ operating points


def _roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def _finite_threshold(threshold: float, scores: np.ndarray) -> float:
    """roc_curve's first threshold is +inf (nothing positive): the smallest float above the top score,
    clipped to 1 for probabilities (then cases scored exactly 1.0 still count positive)."""
    if math.isfinite(threshold):
        return float(threshold)
    above = float(np.nextafter(scores.max(), np.inf))
    probabilities = scores.min() >= 0 and scores.max() <= 1
    return min(above, 1.0) if probabilities else above


def choose_threshold(y_true: Any, y_score: Any, rule: ThresholdRule, target: float | None = None) -> float:
    """A score threshold (positive means score >= threshold) picked on the ROC curve of these cases.

    youden: the threshold maximising sensitivity + specificity - 1 (the highest one on ties);
    sensitivity: the highest threshold whose sensitivity >= target;
    specificity: the lowest threshold whose specificity >= target;
    fixed: `target` itself. Needs both classes except for fixed (ValueError otherwise).
    """
    if rule == "fixed":
        if target is None or not math.isfinite(target):
            raise ValueError("the fixed rule needs a finite target threshold")
        return float(target)
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels):
        raise ValueError(f"the {rule} rule needs at least one positive and one negative case")
    fpr, tpr, thresholds = _roc(labels, scores)
    if rule == "youden":
        finite = np.isfinite(thresholds)
        j = np.where(finite, tpr - fpr, -np.inf)
        index = int(np.argmax(j))
    elif rule in ("sensitivity", "specificity"):
        if target is None or not 0 <= target <= 1:
            raise ValueError(f"the {rule} rule needs a target in [0, 1], got {target}")
        if rule == "sensitivity":
            index = int(np.flatnonzero(tpr >= target - _TOLERANCE)[0])
        else:
            index = int(np.flatnonzero(1 - fpr >= target - _TOLERANCE)[-1])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    return _finite_threshold(float(thresholds[index]), scores)


def confusion_at(y_true: Any, y_pred: Any) -> dict[str, int]:
    """2x2 counts of 0/1 decisions against 0/1 labels: tp, fp, tn, fn."""
    labels = np.asarray(y_true).ravel().astype(bool)
    predicted = np.asarray(y_pred).ravel().astype(bool)
    if labels.shape != predicted.shape:
        raise ValueError(f"y_true has {labels.size} values, y_pred {predicted.size}")
    return {"tp": int((labels & predicted).sum()), "fp": int((~labels & predicted).sum()),
            "tn": int((~labels & ~predicted).sum()), "fn": int((labels & ~predicted).sum())}


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; NaN when total is 0."""
    if total <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf((1 + confidence) / 2))
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """successes / total with a Wilson interval (NaN when total is 0)."""

    value: float
    low: float
    high: float
    successes: int
    total: int

    @classmethod
    def of(cls, successes: int, total: int, confidence: float = 0.95) -> Proportion:
        value = successes / total if total else math.nan
        return cls(value, *wilson_interval(successes, total, confidence), successes, total)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binary_metrics(y_true: Any, y_pred: Any, confidence: float = 0.95) -> dict[str, Proportion]:
    """Sensitivity, specificity, PPV, NPV and accuracy of 0/1 decisions, each with a Wilson interval."""
    c = confusion_at(y_true, y_pred)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {"sensitivity": Proportion.of(tp, tp + fn, confidence),
            "specificity": Proportion.of(tn, tn + fp, confidence),
            "ppv": Proportion.of(tp, tp + fp, confidence),
            "npv": Proportion.of(tn, tn + fn, confidence),
            "accuracy": Proportion.of(tp + tn, tp + fp + tn + fn, confidence)}


def sensitivity_at_specificity(y_true: Any, y_score: Any, specificity: float = 0.9) -> float:
    """Best sensitivity among the ROC thresholds whose specificity >= `specificity` (no interpolation)."""
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = _roc(labels, scores)
    return float(tpr[1 - fpr >= specificity - _TOLERANCE].max())


def specificity_at_sensitivity(y_true: Any, y_score: Any, sensitivity: float = 0.9) -> float:
    """Best specificity among the ROC thresholds whose sensitivity >= `sensitivity` (no interpolation)."""
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = _roc(labels, scores)
    return float((1 - fpr[tpr >= sensitivity - _TOLERANCE]).max())


def _curve_statistic_ci(column: int, y_true: Any, y_score: Any, n_resamples: int, confidence: float, seed: int,
                        **targets: float) -> tuple[float, float]:
    labels, scores = _binary(y_true, y_score)
    if not _both_classes(labels) or n_resamples < 1:
        return math.nan, math.nan
    values = bootstrap_curve_statistics(labels, scores, n_resamples, seed, **targets)[:, column]
    return percentile_interval(values, confidence)


def sensitivity_at_specificity_ci(y_true: Any, y_score: Any, specificity: float = 0.9, n_resamples: int = 2000,
                                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap percentile interval of `sensitivity_at_specificity`."""
    return _curve_statistic_ci(2, y_true, y_score, n_resamples, confidence, seed, specificity=specificity)


def specificity_at_sensitivity_ci(y_true: Any, y_score: Any, sensitivity: float = 0.9, n_resamples: int = 2000,
                                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap percentile interval of `specificity_at_sensitivity`."""
    return _curve_statistic_ci(3, y_true, y_score, n_resamples, confidence, seed, sensitivity=sensitivity)


# ------------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width probability bins: edges (bins + 1,), and per bin the mean predicted probability, the
    observed positive frequency (NaN for empty bins) and the number of cases."""

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "mean_predicted": self.mean_predicted.tolist(),
                "observed": self.observed.tolist(), "count": self.count.tolist()}


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = 15) -> tuple[float, CalibrationBins]:
    """ECE = sum over equal-width bins of (count / n) * |mean predicted - observed frequency|.

    Bin i holds probabilities in [i/bins, (i+1)/bins); 1.0 falls in the last bin.
    """
    labels, probabilities = _binary(y_true, y_prob)
    if probabilities.size and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError("y_prob must lie in [0, 1]")
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=probabilities, minlength=bins) / count
        observed = np.bincount(index, weights=labels, minlength=bins) / count
    table = CalibrationBins(np.linspace(0, 1, bins + 1), mean_predicted, observed, count)
    if not labels.size:
        return math.nan, table
    filled = count > 0
    ece = float((count[filled] / labels.size * np.abs(mean_predicted[filled] - observed[filled])).sum())
    return ece, table
