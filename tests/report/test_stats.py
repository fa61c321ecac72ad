"""The robust leaderboard statistics (`benchbase.report.stats`), against hand-worked cases, scipy, and
naive (looped, unvectorised) bootstraps written here from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from benchbase.report.model import Estimate
from benchbase.report.stats import (
    AGGREGATES,
    _aggregate_replicates,
    _Strata,
    aggregate_estimates,
    iqm,
    mean_with_interval,
    optimality_gap,
    performance_profile,
    probability_of_improvement,
    wilson_interval,
)

# Independent implementations of the aggregates, applied to the rows of a [samples, pooled] array.
REFERENCE = {
    "iqm": lambda a: scipy.stats.trim_mean(a, 0.25, axis=-1),
    "median": lambda a: np.median(a, axis=-1),
    "mean": lambda a: np.mean(a, axis=-1),
    "optimality_gap": lambda a: np.mean(np.maximum(1.0 - a, 0.0), axis=-1),
}


def scores_with_gaps(seed: int = 0) -> np.ndarray:
    """[8 runs, 4 tasks] on different scales, with missing runs (tasks have 8, 6, 7 and 5 runs)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal([0.2, 0.8, 1.5, -0.3], [0.3, 0.1, 0.6, 0.2], size=(8, 4))
    scores[6:, 1] = np.nan
    scores[0, 2] = np.nan
    scores[[1, 4, 7], 3] = np.nan
    return scores


def observed_columns(scores: np.ndarray) -> list[np.ndarray]:
    return [column[~np.isnan(column)] for column in scores.T if (~np.isnan(column)).any()]


def naive_stratified(scores: np.ndarray, repetitions: int, seed: int) -> np.ndarray:
    """Stratified bootstrap with loops: per repetition, per task, resample its runs; [reps, pooled]."""
    rng = np.random.default_rng(seed)
    columns = observed_columns(scores)
    samples = []
    for _ in range(repetitions):
        samples.append(np.concatenate([rng.choice(column, size=len(column), replace=True) for column in columns]))
    return np.array(samples)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def is_nan_estimate(estimate: Estimate) -> bool:
    return all(math.isnan(v) for v in (estimate.value, estimate.low, estimate.high))


# --- aggregates ------------------------------------------------------------------------------------


def test_iqm_hand_cases():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # cut 2 each end: mean(3, 4, 5, 6)
    assert iqm([1.0, 2.0, 100.0]) == pytest.approx(103 / 3)  # n < 4: nothing cut
    assert iqm([5.0, 1.0, 2.0, 100.0]) == pytest.approx(3.5)  # cut 1 each end: mean(2, 5)
    assert iqm([-50.0, 1.0, 2.0, 3.0, 4.0, 500.0, 7.0, 8.0, 9.0]) == pytest.approx(np.mean([2, 3, 4, 7, 8]))
    assert isinstance(iqm([1.0, 2.0]), float)
    assert math.isnan(iqm([1.0, np.nan, 3.0, 4.0]))
    assert math.isnan(iqm(np.array([])))


def test_iqm_matches_scipy_trim_mean():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4, 5, 7, 10, 33, 101):
        x = rng.standard_cauchy(n)
        assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    matrix = rng.normal(size=(13, 6, 5))
    for axis in (0, 1, 2, -1):
        np.testing.assert_allclose(iqm(matrix, axis=axis), scipy.stats.trim_mean(matrix, 0.25, axis=axis))
    assert iqm(matrix) == pytest.approx(scipy.stats.trim_mean(matrix, 0.25, axis=None))


def test_median_mean_optimality_gap_by_hand():
    x = np.array([0.2, 0.5, 1.5, 0.9])
    assert float(AGGREGATES["median"](x)) == pytest.approx(0.7)
    assert float(AGGREGATES["mean"](x)) == pytest.approx(0.775)
    assert float(AGGREGATES["optimality_gap"](x)) == pytest.approx((0.8 + 0.5 + 0.0 + 0.1) / 4)
    assert float(AGGREGATES["iqm"](x)) == pytest.approx(0.7)
    assert optimality_gap(x, threshold=0.5) == pytest.approx(0.3 / 4)
    np.testing.assert_allclose(optimality_gap(np.array([[0.0, 2.0], [1.0, 0.5]]), axis=0), [0.5, 0.25])
    assert math.isnan(optimality_gap(np.array([])))
    # each aggregate reduces the last axis
    rows = np.random.default_rng(2).random((6, 9))
    for name, aggregate in AGGREGATES.items():
        np.testing.assert_allclose(aggregate(rows), REFERENCE[name](rows))


# --- aggregate_estimates -----------------------------------------------------------------------------


def test_point_estimates_are_the_pooled_observed_runs():
    scores = scores_with_gaps()
    pooled = np.concatenate(observed_columns(scores))
    assert len(pooled) == 26
    estimates = aggregate_estimates(scores, repetitions=500, seed=3)
    assert list(estimates) == ["iqm", "median", "mean", "optimality_gap"]
    for name, estimate in estimates.items():
        assert isinstance(estimate, Estimate)
        assert estimate.value == pytest.approx(float(REFERENCE[name](pooled)))
        assert estimate.low <= estimate.value <= estimate.high
        assert estimate.low < estimate.high


def test_matches_a_naive_stratified_bootstrap_in_distribution():
    scores = scores_with_gaps(4)
    repetitions = 20_000
    ours = _aggregate_replicates(_Strata.of(scores), repetitions, 11, tuple(AGGREGATES))
    naive = naive_stratified(scores, repetitions, seed=12)
    estimates = aggregate_estimates(scores, repetitions=repetitions, seed=11)
    for name, reference in REFERENCE.items():
        theirs = reference(naive)
        # the same bootstrap distribution: two-sample KS test, and equal moments within Monte-Carlo error
        assert scipy.stats.ks_2samp(ours[name], theirs).pvalue > 1e-3, name
        spread = theirs.std()
        assert abs(ours[name].mean() - theirs.mean()) < 5 * spread * math.sqrt(2 / repetitions), name
        assert ours[name].std() == pytest.approx(spread, rel=0.05), name
        # and the public intervals are those replicates' percentiles, close to the naive ones
        assert (estimates[name].low, estimates[name].high) == pytest.approx(percentile_interval(ours[name]))
        low, high = percentile_interval(theirs)
        assert abs(estimates[name].low - low) < 0.15 * spread, name
        assert abs(estimates[name].high - high) < 0.15 * spread, name


def test_each_resample_keeps_the_per_task_counts():
    # Task A (3 runs) always scores 0 and task B (7 runs) always 1: a stratified resample always
    # holds 3 zeros and 7 ones, so every aggregate is constant and the interval collapses.
    scores = np.full((7, 2), np.nan)
    scores[:3, 0] = 0.0
    scores[:, 1] = 1.0
    estimates = aggregate_estimates(scores, repetitions=2000, seed=0)
    # IQM: cut 2 of the 10 sorted values, leaving 0, 1, 1, 1, 1, 1
    expected = {"iqm": 5 / 6, "median": 1.0, "mean": 0.7, "optimality_gap": 0.3}
    for name, value in expected.items():
        assert estimates[name].value == pytest.approx(value)
        assert estimates[name].low == pytest.approx(value)
        assert estimates[name].high == pytest.approx(value)
    # whereas resampling the pooled runs (unstratified) lets the number of ones vary
    rng = np.random.default_rng(0)
    pooled = np.concatenate(observed_columns(scores))
    means = rng.choice(pooled, size=(2000, len(pooled))).mean(axis=1)
    low, high = percentile_interval(means)
    assert high - low > 0.4


def test_stratified_interval_reflects_only_within_task_spread():
    # Tasks on very different scales: the variance of the pooled mean under the stratified bootstrap
    # is Σ_t n_t σ_t² / N² (plug-in σ_t²), from the spread within each task only.
    rng = np.random.default_rng(5)
    scores = np.stack([rng.normal(0.0, 0.1, 10), rng.normal(100.0, 1.0, 10), rng.normal(-50.0, 0.5, 10)], axis=1)
    estimate = aggregate_estimates(scores, repetitions=20_000, seed=1, aggregates=("mean",))["mean"]
    expected_sd = math.sqrt(sum(len(c) * c.var() for c in scores.T)) / scores.size
    assert (estimate.high - estimate.low) == pytest.approx(2 * 1.959964 * expected_sd, rel=0.05)
    unstratified = rng.choice(scores.ravel(), size=(20_000, scores.size)).mean(axis=1)
    low, high = percentile_interval(unstratified)
    assert high - low > 20 * (estimate.high - estimate.low)


def test_missing_runs():
    scores = scores_with_gaps()
    estimates = aggregate_estimates(scores, repetitions=1000, seed=2)
    assert all(np.isfinite([e.value, e.low, e.high]).all() for e in estimates.values())
    # only the observed values and their order within each task matter, not where the NaN sit
    moved = np.full((10, 4), np.nan)
    for task, column in enumerate(observed_columns(scores)):
        moved[10 - len(column) :, task] = column
    assert aggregate_estimates(moved, repetitions=1000, seed=2) == estimates
    # a task with no run is the same as no task
    with_empty = np.insert(scores, 2, np.nan, axis=1)
    assert aggregate_estimates(with_empty, repetitions=1000, seed=2) == estimates
    # nothing observed: NaN estimates
    empty = aggregate_estimates(np.full((3, 2), np.nan), repetitions=10)
    assert set(empty) == set(AGGREGATES) and all(is_nan_estimate(e) for e in empty.values())
    assert all(is_nan_estimate(e) for e in aggregate_estimates(np.empty((0, 3))).values())


def test_single_run_collapses_the_interval():
    row = np.array([[0.3, 0.9, 0.4, 1.7]])
    for name, estimate in aggregate_estimates(row, repetitions=300).items():
        assert estimate.low == estimate.value == estimate.high, name
        assert estimate.value == pytest.approx(float(REFERENCE[name](row[0])))
    single = aggregate_estimates(np.array([0.25]), repetitions=10)["mean"]
    assert single == Estimate(0.25, 0.25, 0.25)


def test_deterministic_for_a_seed_and_subset_of_aggregates():
    scores = scores_with_gaps(7)
    first = aggregate_estimates(scores, repetitions=700, seed=9)
    assert aggregate_estimates(scores, repetitions=700, seed=9) == first
    assert aggregate_estimates(scores, repetitions=700, seed=10) != first
    # the aggregates share the resamples: asking for one gives that one's interval unchanged
    assert aggregate_estimates(scores, repetitions=700, seed=9, aggregates=("median",)) == {"median": first["median"]}


def test_confidence_level_widens_the_interval():
    scores = scores_with_gaps(8)
    narrow = aggregate_estimates(scores, repetitions=2000, confidence=0.5, seed=1)["iqm"]
    wide = aggregate_estimates(scores, repetitions=2000, confidence=0.99, seed=1)["iqm"]
    assert wide.low < narrow.low <= narrow.value <= narrow.high < wide.high


def test_fifty_thousand_repetitions():
    scores = np.random.default_rng(3).random((10, 5))
    estimates = aggregate_estimates(scores, repetitions=50_000, seed=0)
    for estimate in estimates.values():
        assert estimate.low <= estimate.value <= estimate.high
    assert np.isfinite(probability_of_improvement(scores, scores[::-1] * 0.9, repetitions=50_000).low)


def test_chunked_repetitions_cover_all_rows(monkeypatch):
    # many small chunks give the same kind of result as one: every replicate is filled
    import benchbase.report.stats as stats

    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7)
    scores = scores_with_gaps(1)
    replicates = stats._aggregate_replicates(_Strata.of(scores), 1001, 0, ("mean",))["mean"]
    assert np.isfinite(replicates).all() and len(np.unique(replicates)) > 500
    fraction, low, high = stats.performance_profile(scores, np.linspace(-1, 2, 9), repetitions=301)
    assert np.all(low <= fraction) and np.all(fraction <= high)
    mean, low, high = stats.mean_with_interval(scores, repetitions=301)
    assert np.all(low <= high)


def test_validation():
    scores = np.ones((3, 2))
    for repetitions in (0, -5, 2.5, True):
        with pytest.raises(ValueError):
            aggregate_estimates(scores, repetitions=repetitions)
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            aggregate_estimates(scores, confidence=confidence)
    with pytest.raises(ValueError):
        aggregate_estimates(scores, aggregates=("iqm", "max"))
    with pytest.raises(ValueError):
        aggregate_estimates(np.ones((2, 2, 2)))
    with pytest.raises(ValueError):
        probability_of_improvement(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError):
        performance_profile(scores, np.array([[0.5]]))
    with pytest.raises(ValueError):
        mean_with_interval(scores, repetitions=0)


def test_strata_counts_are_the_draws_multiplicities():
    strata = _Strata.of(scores_with_gaps())
    indices = strata.draw(np.random.default_rng(4), 50)
    counts = strata.counts(np.random.default_rng(4), 50)
    np.testing.assert_array_equal(counts, [np.bincount(row, minlength=strata.size) for row in indices])
    for start, stop in zip(strata.bounds[:-1], strata.bounds[1:]):
        assert ((indices[:, start:stop] >= start) & (indices[:, start:stop] < stop)).all()
        assert (counts[:, start:stop].sum(axis=1) == stop - start).all()


# --- probability of improvement ------------------------------------------------------------------


def test_probability_of_improvement_hand_cases():
    x = np.array([[2.0, 5.0], [3.0, 6.0]])
    assert probability_of_improvement(x, x - 10, repetitions=200) == Estimate(1.0, 1.0, 1.0)
    assert probability_of_improvement(x - 10, x, repetitions=200) == Estimate(0.0, 0.0, 0.0)
    same = probability_of_improvement(x, x, repetitions=2000)
    assert same.value == 0.5 and same.low < 0.5 < same.high
    constant = np.full((4, 3), 0.7)
    assert probability_of_improvement(constant, constant, repetitions=100) == Estimate(0.5, 0.5, 0.5)
    # 2×2 with a tie: pairs (1,2)→0, (1,0)→1, (2,2)→½, (2,0)→1
    assert probability_of_improvement(np.array([1.0, 2.0]), np.array([2.0, 0.0])).value == pytest.approx(0.625)
    # averaged over tasks, not pooled: task 0 gives 1, task 1 gives 0.625
    two_tasks = probability_of_improvement(np.array([[5.0, 1.0], [6.0, 2.0]]), np.array([[0.0, 2.0], [1.0, 0.0]]))
    assert two_tasks.value == pytest.approx((1.0 + 0.625) / 2)


def test_probability_of_improvement_is_mann_whitney_averaged_over_tasks():
    rng = np.random.default_rng(6)
    x = np.round(rng.normal(0.5, 0.3, size=(7, 5)), 1)  # rounded: ties
    y = np.round(rng.normal(0.3, 0.3, size=(9, 5)), 1)
    x[5:, 1] = np.nan
    y[:4, 2] = np.nan
    x[:, 3] = np.nan  # skipped: x has no run on task 3
    per_task = []
    for task in (0, 1, 2, 4):
        xs, ys = x[~np.isnan(x[:, task]), task], y[~np.isnan(y[:, task]), task]
        per_task.append(scipy.stats.mannwhitneyu(xs, ys).statistic / (len(xs) * len(ys)))
    single = scipy.stats.mannwhitneyu(x[:, 0], y[:, 0]).statistic / (7 * 9)
    assert probability_of_improvement(x[:, 0], y[:, 0], repetitions=10).value == pytest.approx(single)
    estimate = probability_of_improvement(x, y, repetitions=4000, seed=1)
    assert estimate.value == pytest.approx(np.mean(per_task))
    assert estimate.low <= estimate.value <= estimate.high
    reverse = probability_of_improvement(y, x, repetitions=10)
    assert reverse.value == pytest.approx(1 - estimate.value)
    assert probability_of_improvement(x, y, repetitions=4000, seed=1) == estimate
    assert is_nan_estimate(probability_of_improvement(x[:, 3:4], y[:, 3:4]))


def test_probability_of_improvement_interval_matches_a_naive_bootstrap():
    rng = np.random.default_rng(7)
    x = rng.normal(0.6, 0.4, size=(6, 3))
    y = rng.normal(0.4, 0.4, size=(8, 3))
    x[0, 2] = np.nan
    repetitions = 4000
    naive_rng = np.random.default_rng(8)
    replicates = []
    for _ in range(repetitions):
        per_task = []
        for task in range(3):
            xs, ys = x[~np.isnan(x[:, task]), task], y[:, task]
            xs = naive_rng.choice(xs, size=len(xs))
            ys = naive_rng.choice(ys, size=len(ys))
            wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in xs for b in ys)
            per_task.append(wins / (len(xs) * len(ys)))
        replicates.append(np.mean(per_task))
    replicates = np.array(replicates)
    estimate = probability_of_improvement(x, y, repetitions=20_000, seed=2)
    low, high = percentile_interval(replicates)
    spread = replicates.std()
    assert abs(estimate.low - low) < 0.2 * spread
    assert abs(estimate.high - high) < 0.2 * spread


# --- performance profile -------------------------------------------------------------------------


def test_performance_profile_hand_case():
    scores = np.array([[0.0, 0.5], [1.0, 2.0], [np.nan, 1.0]])  # pooled: 0, 1, 0.5, 2, 1
    taus = np.array([-1.0, 0.0, 0.5, 1.0, 1.5, 3.0])
    fraction, low, high = performance_profile(scores, taus, repetitions=500)
    np.testing.assert_allclose(fraction, [1.0, 0.8, 0.6, 0.2, 0.2, 0.0])
    assert np.all(low <= fraction) and np.all(fraction <= high)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0
    # one run per task: every resample is the data
    fraction, low, high = performance_profile(scores[:1], taus, repetitions=100)
    np.testing.assert_array_equal(low, fraction)
    np.testing.assert_array_equal(high, fraction)


def test_performance_profile_monotone_with_band():
    scores = scores_with_gaps(9)
    taus = np.linspace(-1.0, 3.0, 81)
    fraction, low, high = performance_profile(scores, taus, repetitions=3000, seed=4)
    pooled = np.concatenate(observed_columns(scores))
    np.testing.assert_allclose(fraction, (pooled[:, None] > taus).mean(axis=0))
    for curve in (fraction, low, high):
        assert np.all(np.diff(curve) <= 1e-12)
    assert np.all(low <= fraction) and np.all(fraction <= high)
    assert np.any(high - low > 0.1)
    again = performance_profile(scores, taus, repetitions=3000, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(again, (fraction, low, high)))
    nan = performance_profile(np.full((2, 2), np.nan), taus[:3])
    assert all(np.isnan(part).all() and part.shape == (3,) for part in nan)


# --- learning curves -----------------------------------------------------------------------------


def test_mean_with_interval_hand_case():
    values = np.array([[1.0, 2.0, 3.0, np.nan], [3.0, 4.0, np.nan, np.nan]])
    mean, low, high = mean_with_interval(values, repetitions=4000, seed=0)
    np.testing.assert_allclose(mean[:3], [2.0, 3.0, 3.0])
    assert np.isnan(mean[3]) and np.isnan(low[3]) and np.isnan(high[3])
    # point 0: resampled means are 1, 2 or 3 with probabilities ¼, ½, ¼
    assert (low[0], high[0]) == (1.0, 3.0)
    assert (low[1], high[1]) == (2.0, 4.0)
    # point 2: only run 0 is observed there; resamples without it give no replicate
    assert low[2] == high[2] == 3.0


def test_mean_with_interval_nan_handling_and_determinism():
    rng = np.random.default_rng(10)
    values = rng.normal(size=(6, 20)).cumsum(axis=1)
    values[4, 12:] = np.nan  # a shorter run
    mean, low, high = mean_with_interval(values, repetitions=2000, seed=3)
    np.testing.assert_allclose(mean, np.nanmean(values, axis=0))
    assert np.all(low <= mean) and np.all(mean <= high)
    # a run with no observation at all is no run
    padded = np.vstack([values, np.full((1, 20), np.nan)])
    for a, b in zip(mean_with_interval(padded, repetitions=2000, seed=3), (mean, low, high)):
        np.testing.assert_array_equal(a, b)
    # a single run: the band is the curve
    one = mean_with_interval(values[:1], repetitions=50)
    np.testing.assert_array_equal(one[1], values[0])
    np.testing.assert_array_equal(one[2], values[0])
    nothing = mean_with_interval(np.full((3, 4), np.nan))
    assert all(np.isnan(part).all() and part.shape == (4,) for part in nothing)


@pytest.mark.parametrize("trials", [1, 2, 7, 20, 40, 333])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_matches_scipy(trials: int, confidence: float) -> None:
    for successes in sorted({0, 1, trials // 3, trials // 2, trials - 1, trials}):
        expected = scipy.stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
        low, high = wilson_interval(successes, trials, confidence)
        assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)
        assert 0.0 <= low <= successes / trials <= high <= 1.0


def test_wilson_interval_without_trials_is_nan_and_checks_its_input() -> None:
    assert all(math.isnan(bound) for bound in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=95)
