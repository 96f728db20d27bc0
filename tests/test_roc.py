"""ROC statistics of medseg.evaluate.roc against sklearn, slow direct formulas and hand-made examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medseg.evaluate import roc


def _separated(n: int, shift: float, prevalence: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binormal scores: negatives N(0, 1), positives N(shift, 1)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    labels[:2] = (0, 1)
    return labels, rng.normal(size=n) + shift * labels


def _tied(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one or two decimals: many ties, also between positives and negatives."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    return labels, np.round(rng.random(n) + 0.3 * labels, 1 + seed % 2)


# A hand-made example: negatives 0.1 0.2 0.3 0.5, positives 0.4 0.6 0.7 0.8 0.9.
# t = 0.6: sensitivity 4/5, specificity 4/4 (J 0.80); t = 0.4: 5/5, 3/4 (J 0.75); t = 0.3: 5/5, 2/4.
HAND_LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1])
HAND_SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_sklearn_with_ties(seed: int) -> None:
    labels, scores = _tied(50 + 37 * seed, seed)
    assert roc.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc.auc(np.zeros(5), np.linspace(0, 1, 5)))
    assert math.isnan(roc.auc(np.ones(5), np.linspace(0, 1, 5)))
    assert math.isnan(roc.bootstrap_auc_ci(np.ones(5), np.linspace(0, 1, 5))[0])


def test_batch_statistics_equal_sklearn_on_the_resampled_cases() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(40):
        labels, scores = _tied(int(rng.integers(5, 40)), trial)
        index = rng.integers(0, labels.size, size=(6, labels.size))
        stats = roc.batch_curve_statistics(labels, scores, roc.resample_counts(index, labels.size), 0.8, 0.7)
        for row, drawn in zip(stats, index, strict=True):
            y, s = labels[drawn], scores[drawn]
            if y.min() == y.max():
                assert np.isnan(row).all()
                continue
            expected = [roc_auc_score(y, s), average_precision_score(y, s), roc.sensitivity_at_specificity(y, s, 0.8),
                        roc.specificity_at_sensitivity(y, s, 0.7)]
            np.testing.assert_allclose(row, expected, atol=1e-12)
            checked += 1
    assert checked > 150


def test_stratified_resamples_keep_the_positive_count() -> None:
    labels, _ = _separated(157, 1.0)
    chunks = list(roc.stratified_indices(labels, 3000, seed=1))
    index = np.concatenate(chunks)
    assert len(chunks) > 1 and index.shape == (3000, labels.size)
    assert (labels[index].sum(axis=1) == labels.sum()).all()
    assert (labels[index[:, : labels.sum()]] == 1).all()
    assert len(np.unique(index[:, 0])) > 10  # really resampled
    counts = roc.resample_counts(index[:5], labels.size)
    assert (counts.sum(axis=1) == labels.size).all()


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 2000):
        labels, scores = _separated(n, 1.0, seed=n)
        low, high = roc.bootstrap_auc_ci(labels, scores, n_resamples=1000, seed=0)
        assert low < roc.auc(labels, scores) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # ~ sqrt(20) narrower


def test_bootstrap_is_reproducible() -> None:
    """Same seed, same interval; another seed, another one (speed: benchmarks/roc_bench.py)."""
    labels, scores = _separated(400, 1.0)
    first = roc.bootstrap_auc_ci(labels, scores, n_resamples=2000, seed=7)
    assert first == roc.bootstrap_auc_ci(labels, scores, n_resamples=2000, seed=7)
    assert first != roc.bootstrap_auc_ci(labels, scores, n_resamples=2000, seed=8)


def _slow_delong_variance(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong 1988 from the pairwise kernel psi(x, y) = 1, 1/2, 0 (structural components by definition)."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(np.var(v10, ddof=1) / x.size + np.var(v01, ddof=1) / y.size)


@pytest.mark.parametrize("seed", range(4))
def test_delong_variance_matches_the_direct_formula(seed: int) -> None:
    labels, scores = _tied(30 + 11 * seed, seed)
    assert roc.delong_auc_variance(labels, scores) == pytest.approx(_slow_delong_variance(labels, scores), rel=1e-10)


def test_delong_se_agrees_with_the_bootstrap() -> None:
    labels, scores = _separated(600, 1.2, seed=5)
    low, high = roc.delong_ci(labels, scores)
    assert low < roc.auc(labels, scores) < high
    draws = roc.bootstrap_curve_statistics(labels, scores, 2000, seed=0)[:, 0]
    assert math.sqrt(roc.delong_auc_variance(labels, scores)) == pytest.approx(draws.std(), rel=0.15)


def test_delong_test_identical_scores() -> None:
    labels, scores = _separated(200, 1.0)
    auc_a, auc_b, z, p = roc.delong_test(labels, scores, scores)
    assert auc_a == auc_b == pytest.approx(roc_auc_score(labels, scores))
    assert (z, p) == (0.0, 1.0)


def test_delong_test_detects_a_better_model() -> None:
    rng = np.random.default_rng(2)
    labels, scores = _separated(300, 2.0)
    worse = scores + rng.normal(scale=2.0, size=scores.size)
    auc_a, auc_b, z, p = roc.delong_test(labels, scores, worse)
    assert auc_a > auc_b and z > 0 and p < 1e-4
    assert roc.delong_test(labels, worse, scores)[2] == pytest.approx(-z)


def test_delong_test_p_values_under_the_null() -> None:
    """Two equally good, correlated models: about 5 % of tests reject at 0.05, p-values spread over (0, 1)."""
    rng = np.random.default_rng(11)
    p_values = []
    for _ in range(300):
        labels = (rng.random(150) < 0.4).astype(int)
        signal = rng.normal(size=150) + labels
        p_values.append(roc.delong_test(labels, signal + rng.normal(size=150), signal + rng.normal(size=150))[3])
    p_values = np.array(p_values)
    assert 0.01 <= (p_values < 0.05).mean() <= 0.11
    assert 0.35 < np.median(p_values) < 0.65


def test_choose_threshold_rules() -> None:
    y, s = HAND_LABELS, HAND_SCORES
    assert roc.choose_threshold(y, s, "youden") == 0.6
    assert roc.choose_threshold(y, s, "sensitivity", 0.9) == 0.4
    assert roc.choose_threshold(y, s, "sensitivity", 0.8) == 0.6
    assert roc.choose_threshold(y, s, "specificity", 0.75) == 0.4
    assert roc.choose_threshold(y, s, "specificity", 1.0) == 0.6
    assert roc.choose_threshold(y, s, "fixed", 0.5) == 0.5
    with pytest.raises(ValueError):
        roc.choose_threshold(np.ones(4), s[:4], "youden")


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_choose_threshold_reaches_targets_on_random_data(target: float) -> None:
    labels, scores = _separated(300, 1.0, seed=3)
    scores = 1 / (1 + np.exp(-scores))
    t = roc.choose_threshold(labels, scores, "sensitivity", target)
    sensitivity = (scores[labels == 1] >= t).mean()
    assert sensitivity >= target
    higher = np.unique(scores[scores > t])
    assert higher.size == 0 or (scores[labels == 1] >= higher[0]).mean() < target  # the highest such threshold
    t = roc.choose_threshold(labels, scores, "specificity", target)
    assert (scores[labels == 0] < t).mean() >= target
    lower = np.unique(scores[scores < t])
    assert lower.size == 0 or (scores[labels == 0] < lower[-1]).mean() < target  # the lowest such threshold
    assert 0 <= roc.choose_threshold(labels, scores, "youden") <= 1


def test_choose_threshold_is_finite_when_nothing_may_be_positive() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.9, 0.2, 0.1, 0.3])  # the top score is a negative: 100 % specificity calls nothing positive
    t = roc.choose_threshold(y, s, "specificity", 1.0)
    assert math.isfinite(t) and 0.9 < t <= 1.0
    assert not (s >= t).any()


def test_wilson_interval_known_values() -> None:
    assert roc.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert roc.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert roc.wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-4)
    assert all(math.isnan(v) for v in roc.wilson_interval(0, 0))


def test_binary_metrics_and_confusion() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    assert roc.confusion_at(y, pred) == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    m = roc.binary_metrics(y, pred)
    assert (m["sensitivity"].value, m["specificity"].value, m["ppv"].value, m["npv"].value, m["accuracy"].value) == \
        pytest.approx((0.75, 5 / 6, 0.75, 5 / 6, 0.8))
    assert (m["accuracy"].low, m["accuracy"].high) == pytest.approx(roc.wilson_interval(8, 10))
    none_called = roc.binary_metrics(y, np.zeros(10))
    assert math.isnan(none_called["ppv"].value) and none_called["ppv"].total == 0
    assert none_called["specificity"].value == 1.0


def test_sensitivity_at_specificity_hand_made() -> None:
    y, s = HAND_LABELS, HAND_SCORES
    assert roc.sensitivity_at_specificity(y, s, 0.9) == pytest.approx(0.8)
    assert roc.sensitivity_at_specificity(y, s, 0.75) == pytest.approx(1.0)
    assert roc.specificity_at_sensitivity(y, s, 0.9) == pytest.approx(0.75)
    assert roc.specificity_at_sensitivity(y, s, 0.8) == pytest.approx(1.0)
    labels, scores = _separated(500, 1.5)
    value = roc.sensitivity_at_specificity(labels, scores, 0.9)
    low, high = roc.sensitivity_at_specificity_ci(labels, scores, 0.9, n_resamples=500)
    assert low < value < high


def test_expected_calibration_error() -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.random(20000)
    calibrated = (rng.random(probabilities.size) < probabilities).astype(int)
    ece, table = roc.expected_calibration_error(calibrated, probabilities, bins=15)
    assert ece < 0.02
    assert table.count.sum() == probabilities.size and table.edges.size == 16
    overconfident = np.where(probabilities > 0.5, 0.99, 0.01)  # right 3/4 of the time, claims 99 %
    ece, _ = roc.expected_calibration_error(calibrated, overconfident)
    assert ece > 0.1
    ece, table = roc.expected_calibration_error([1, 0], [1.0, 0.0], bins=10)
    assert ece == 0.0 and table.count[-1] == 1 and table.count[0] == 1
