"""Robust statistics of the leaderboard, after Agarwal et al. (2021), "Deep reinforcement learning at
the edge of the statistical precipice" (NeurIPS).

Scores are normalised per env family (0 ≈ random, 1 ≈ reference or success), so that they can be
pooled. The data of one *entry* is a score matrix ``[runs, tasks]`` (runs = seeds, tasks = env
families), float64, where NaN marks a missing run; tasks may have different numbers of runs. A
1-D array is read as the runs of a single task.

Aggregates (`AGGREGATES`), computed on all the observed (non-NaN) scores pooled together:

* ``iqm``: the interquartile mean, the mean of the middle half of the sorted scores. Exactly
  ``scipy.stats.trim_mean(x, 0.25)``: ``int(0.25 n)`` values are cut from each end (so for n < 4
  nothing is cut and it is the mean). Robust to outlier runs like the median, but uses half of the
  data, so its interval is much tighter than the median's.
* ``median`` and ``mean``: as usual.
* ``optimality_gap``: the mean of ``max(threshold − x, 0)`` with threshold 1: how far the runs fall
  short of the reference score, with no credit for exceeding it. Lower is better.

Intervals are percentile bootstrap intervals from a *stratified* bootstrap: each repetition
resamples, independently within each task, that task's observed runs with replacement (as many as
were observed), pools them and applies the statistic. The per-task counts are therefore the same in
every resample, so a family with a different score scale never gains or loses weight by chance (an
unstratified bootstrap of the pooled runs would add that spurious variance). The interval for
confidence c is ``numpy.nanpercentile(replicates, [100 (1 − c) / 2, 100 (1 + c) / 2])`` with
NumPy's default ``"linear"`` method (Hyndman & Fan type 7: linear interpolation between the
order statistics). The point estimate is always the statistic of the observed data, not the
bootstrap mean, and the percentile interval is not forced to contain it (it almost always does,
but a skewed or very discrete bootstrap distribution can leave it just outside). With a single
run per task every resample is the data itself and the interval collapses to the point.

Other statistics:

* `probability_of_improvement`: P(X > Y), the probability that a random run of entry X scores above a
  random run of entry Y on the same task, ties counting one half; per task it is the Mann–Whitney
  statistic ``U / (n_x n_y)``, and it is averaged over the tasks on which both entries have runs.
  The interval resamples X's and Y's runs independently within each task.
* `performance_profile`: the run-score distribution, the fraction of the pooled runs that score
  above each threshold τ (with equal run counts per task this equals the mean over tasks of the
  per-task fractions, as in the paper; with missing runs tasks are weighted by their observed runs,
  as in the pooled aggregates), with a stratified-bootstrap band for each τ.
* `mean_with_interval`: for learning curves ``[runs, points]``, the mean over runs at each point
  with a bootstrap band; a whole run (curve) is resampled at once, since the points of one run are
  not independent. Runs with no observed point are dropped; a resample that holds no observation at
  some point gives no replicate there (hence ``nanpercentile``).
* `wilson_interval`: for one cell's success rate, the binomial Wilson score interval over its
  evaluation episodes (a single run has no bootstrap interval over runs).

Everything is vectorised over the repetitions (the only Python loops are over chunks of repetitions
and over tasks, or groups of tasks with the same number of runs, which are resampled with one
call), seeded with ``numpy.random.default_rng(seed)`` and deterministic for given inputs,
``repetitions`` and ``seed``. The repetitions are drawn in chunks so that the working memory stays
around ``_CHUNK_ELEMENTS`` values per array whatever the size of the matrix (50,000 repetitions of a
[10 runs, 5 tasks] matrix take about a tenth of a second and a few tens of MiB). The chunk size
depends only on the number of observed values, so it is reproducible; it decides which resamples a
seed draws, not their distribution. Statistics that are linear in the resample's empirical
distribution (P(X > Y), the profile, the curve means) are computed from the resample's
multiplicities (how many times each observed run was drawn) with a matrix product, which is
equivalent to gathering the resampled values and cheaper. All the aggregates of one call share the
same resamples, so the interval of one aggregate does not depend on which others are requested.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from statistics import NormalDist

import numpy as np

from benchbase.report.model import Estimate

__all__ = [
    "AGGREGATES",
    "aggregate_estimates",
    "iqm",
    "mean_with_interval",
    "optimality_gap",
    "performance_profile",
    "probability_of_improvement",
    "wilson_interval",
]

_CHUNK_ELEMENTS = 1 << 20  # values per working array of one chunk of repetitions (8 MiB of float64)
_NAN_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"))


# --- aggregates -----------------------------------------------------------------------------------


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the values left after cutting ``int(0.25 n)`` from each end
    of the sorted values; the same as ``scipy.stats.trim_mean(values, 0.25, axis)``.

    ``axis=None`` reduces the flattened array and returns a float; otherwise the array reduced
    along ``axis``. NaN anywhere in a slice gives NaN for it, and so does an empty slice.
    """
    array = np.asarray(values, dtype=np.float64)
    if axis is None:
        return float(iqm(array.reshape(-1), axis=-1))
    array = np.moveaxis(array, axis, -1)
    n = array.shape[-1]
    if n == 0:
        return np.full(array.shape[:-1], np.nan)
    cut = int(0.25 * n)
    trimmed = np.sort(array, axis=-1)[..., cut : n - cut]  # NaN sorts last; caught below
    result = trimmed.mean(axis=-1)
    return np.where(np.isnan(array).any(axis=-1), np.nan, result)


def optimality_gap(values: np.ndarray, threshold: float = 1.0, axis: int | None = None) -> np.ndarray | float:
    """Mean of ``max(threshold − x, 0)``: the average shortfall from ``threshold`` (lower is better).

    ``axis=None`` reduces the flattened array and returns a float. NaN propagates; an empty slice
    gives NaN.
    """
    array = np.asarray(values, dtype=np.float64)
    if axis is None:
        array, axis = array.reshape(-1), -1
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": NaN, the answer
        result = np.maximum(threshold - array, 0.0).mean(axis=axis)
    return float(result) if np.ndim(result) == 0 else result


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # Each reduces the LAST axis, which holds the pooled runs × tasks of one (re)sample; callers pass
    # observed values only (no NaN).
    "iqm": partial(iqm, axis=-1),
    "median": partial(np.median, axis=-1),
    "mean": partial(np.mean, axis=-1),
    "optimality_gap": partial(optimality_gap, threshold=1.0, axis=-1),
}


# --- validation and the stratified resampling -----------------------------------------------------


def _as_matrix(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a [runs, tasks] matrix (or 1-D runs), got shape {array.shape}")
    return array


def _check(repetitions: int, confidence: float) -> None:
    if isinstance(repetitions, bool) or not isinstance(repetitions, (int, np.integer)) or repetitions < 1:
        raise ValueError(f"repetitions must be an integer >= 1, got {repetitions!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


@dataclass(frozen=True)
class _Strata:
    """The observed values of a score matrix pooled task by task: ``values[bounds[t]:bounds[t + 1]]``
    are the observed runs of column ``tasks[t]``, in their order in the matrix. The tasks are laid
    out by increasing run count (then by column), so that the tasks with the same count are one
    contiguous group, drawn with one call."""

    values: np.ndarray  # [N]
    bounds: np.ndarray  # [T + 1] offsets into values
    tasks: np.ndarray  # [T] column indices of the matrix, in layout order

    @staticmethod
    def of(matrix: np.ndarray, tasks: np.ndarray | None = None) -> _Strata:
        """The strata of the given columns (default: all with an observed run; each must have one)."""
        observed = ~np.isnan(matrix)
        if tasks is None:
            tasks = np.flatnonzero(observed.any(axis=0))
        tasks = np.asarray(tasks, dtype=np.intp)
        tasks = tasks[np.argsort(observed[:, tasks].sum(axis=0), kind="stable")]
        columns = [matrix[observed[:, task], task] for task in tasks]
        bounds = np.cumsum([0] + [len(column) for column in columns])
        values = np.concatenate(columns) if columns else np.empty(0)
        return _Strata(values, bounds, tasks)

    @property
    def size(self) -> int:
        return len(self.values)

    def block(self, task: int) -> slice:
        """The slots of column ``task`` in ``values``."""
        t = int(np.flatnonzero(self.tasks == task)[0])
        return slice(int(self.bounds[t]), int(self.bounds[t + 1]))

    @cached_property
    def groups(self) -> list[tuple[int, int, int]]:
        """``(n, k, first)``: k consecutive tasks of n runs each, from slot ``first``."""
        sizes = np.diff(self.bounds)
        groups = []
        for n in np.unique(sizes):
            where = np.flatnonzero(sizes == n)
            groups.append((int(n), len(where), int(self.bounds[where[0]])))
        return groups

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """``rows`` stratified resamples as indices into ``values``, ``[rows, N]``: the slots of
        each task hold draws with replacement from that task's own runs."""
        indices = np.empty((rows, self.size), dtype=np.intp)
        for n, k, first in self.groups:
            local = rng.integers(0, n, size=(rows, k, n))
            local += (first + n * np.arange(k))[:, None]  # the first slot of each task
            indices[:, first : first + k * n] = local.reshape(rows, k * n)
        return indices

    def counts(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """The same resamples as `draw` (the same random stream) as multiplicities, ``[rows, N]``
        float64: how many times each observed run was drawn; each task's slots sum to its count."""
        counts = np.empty((rows, self.size))
        for n, k, first in self.groups:
            local = rng.integers(0, n, size=(rows, k, n))
            local += n * np.arange(rows * k).reshape(rows, k, 1)  # a distinct bin per (row, task, run)
            flat = np.bincount(local.reshape(-1), minlength=rows * k * n)
            counts[:, first : first + k * n] = flat.reshape(rows, k * n)
        return counts


def _chunks(repetitions: int, width: int) -> Iterator[tuple[int, int]]:
    """(first, stop) row ranges covering the repetitions, about `_CHUNK_ELEMENTS` values wide."""
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for first in range(0, repetitions, step):
        yield first, min(first + step, repetitions)


def _interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (``nanpercentile``, ``"linear"`` method); NaN where a column
    has no replicate."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, which is the answer
        low, high = np.nanpercentile(replicates, [tail, 100.0 - tail], axis=0)
    return low, high


def _column_blocks(repetitions: int, columns: int) -> Iterator[slice]:
    """Blocks of output columns such that ``repetitions × block`` stays near `_CHUNK_ELEMENTS`."""
    step = max(1, _CHUNK_ELEMENTS // repetitions)
    for first in range(0, columns, step):
        yield slice(first, min(first + step, columns))


# --- public statistics ----------------------------------------------------------------------------


def _aggregate_replicates(
    strata: _Strata, repetitions: int, seed: int, aggregates: Sequence[str]
) -> dict[str, np.ndarray]:
    """The bootstrap replicates ``[repetitions]`` of each aggregate (shared resamples)."""
    rng = np.random.default_rng(seed)
    replicates = {name: np.empty(repetitions) for name in aggregates}
    for first, stop in _chunks(repetitions, strata.size):
        sample = strata.values[strata.draw(rng, stop - first)]
        for name in aggregates:
            replicates[name][first:stop] = AGGREGATES[name](sample)
    return replicates


def aggregate_estimates(
    scores: np.ndarray,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    aggregates: Sequence[str] = ("iqm", "median", "mean", "optimality_gap"),
) -> dict[str, Estimate]:
    """Point estimates and stratified-bootstrap percentile intervals of the aggregates.

    ``scores`` is ``[runs, tasks]`` with NaN for missing runs (1-D: one task). The point estimate is
    the aggregate of all the observed scores pooled; each of the ``repetitions`` bootstrap samples
    resamples every task's observed runs with replacement, as many as observed, and pools them.
    Returns ``{name: Estimate}`` in the order of ``aggregates``; NaN estimates when nothing is
    observed. Raises ValueError for an unknown aggregate, ``repetitions < 1`` or a confidence
    outside (0, 1).
    """
    _check(repetitions, confidence)
    unknown = [name for name in aggregates if name not in AGGREGATES]
    if unknown:
        raise ValueError(f"unknown aggregates {unknown}; known: {sorted(AGGREGATES)}")
    strata = _Strata.of(_as_matrix("scores", scores))
    if strata.size == 0:
        return {name: _NAN_ESTIMATE for name in aggregates}
    replicates = _aggregate_replicates(strata, repetitions, seed, aggregates)
    estimates = {}
    for name in aggregates:
        low, high = _interval(replicates[name], confidence)
        estimates[name] = Estimate(float(AGGREGATES[name](strata.values)), float(low), float(high))
    return estimates


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, repetitions: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """P(X > Y): the probability that a random run of X scores above a random run of Y on the same
    task (ties count 1/2), averaged over the tasks on which both have observed runs.

    ``x`` is ``[runs_x, tasks]`` and ``y`` ``[runs_y, tasks]`` (NaN = missing; the same tasks, in
    the same columns). Per task this is the Mann–Whitney ``U / (n_x n_y)``. The interval is a
    percentile interval over bootstrap samples that resample X's and Y's runs independently within
    each task. NaN estimate when no task has runs of both.
    """
    _check(repetitions, confidence)
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks (columns), got {x.shape[1]} and {y.shape[1]}")
    shared = np.flatnonzero((~np.isnan(x)).any(axis=0) & (~np.isnan(y)).any(axis=0))
    if len(shared) == 0:
        return _NAN_ESTIMATE
    sx, sy = _Strata.of(x, shared), _Strata.of(y, shared)
    blocks = [(sx.block(task), sy.block(task)) for task in shared]
    wins = []  # per task: [n_x, n_y] with 1 where x_i > y_j, 1/2 where tied, 0 otherwise
    for bx, by in blocks:
        xv, yv = sx.values[bx, None], sy.values[None, by]
        wins.append((xv > yv) + 0.5 * (xv == yv))
    point = float(np.mean([w.mean() for w in wins]))

    rng = np.random.default_rng(seed)
    replicates = np.empty(repetitions)
    for first, stop in _chunks(repetitions, sx.size + sy.size):
        cx, cy = sx.counts(rng, stop - first), sy.counts(rng, stop - first)
        total = np.zeros(stop - first)
        for (bx, by), w in zip(blocks, wins):
            # Σ_ij count_x[i] count_y[j] W[i, j] = U of the resampled task
            total += ((cx[:, bx] @ w) * cy[:, by]).sum(axis=1) / w.size
        replicates[first:stop] = total / len(wins)
    low, high = _interval(replicates, confidence)
    return Estimate(point, float(low), float(high))


def performance_profile(
    scores: np.ndarray,
    thresholds: np.ndarray,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution: the fraction of the pooled observed runs scoring above each τ.

    ``scores`` is ``[runs, tasks]`` (NaN = missing), ``thresholds`` 1-D. Returns ``(fraction, low,
    high)``, each shaped like ``thresholds``, the band being the stratified-bootstrap percentile
    interval at each τ; all NaN when nothing is observed.
    """
    _check(repetitions, confidence)
    taus = np.asarray(thresholds, dtype=np.float64)
    if taus.ndim != 1 or np.isnan(taus).any():
        raise ValueError("thresholds must be a 1-D array without NaN")
    strata = _Strata.of(_as_matrix("scores", scores))
    if strata.size == 0:
        nan = np.full(taus.shape, np.nan)
        return nan, nan.copy(), nan.copy()
    above = (strata.values[:, None] > taus[None, :]).astype(np.float64)  # [N, T]
    fraction = above.mean(axis=0)
    low, high = np.empty_like(fraction), np.empty_like(fraction)
    for block in _column_blocks(repetitions, len(taus)):
        rng = np.random.default_rng(seed)  # the same resamples for every block of thresholds
        replicates = np.empty((repetitions, block.stop - block.start))
        for first, stop in _chunks(repetitions, max(strata.size, block.stop - block.start)):
            replicates[first:stop] = strata.counts(rng, stop - first) @ above[:, block] / strata.size
        low[block], high[block] = _interval(replicates, confidence)
    return fraction, low, high


def mean_with_interval(
    values: np.ndarray, repetitions: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs at each point of a learning curve, with a bootstrap band over runs.

    ``values`` is ``[runs, points]`` (NaN = missing; 1-D: runs at one point). Each bootstrap sample
    resamples whole runs with replacement (as many as there are runs with an observation), and the
    band at each point is the percentile interval of the resampled means there (ignoring resamples
    with no observation at that point). Returns ``(mean, low, high)`` of shape ``[points]``, NaN at
    points with no observation.
    """
    _check(repetitions, confidence)
    array = _as_matrix("values", values)
    observed = ~np.isnan(array)
    keep = observed.any(axis=1)
    array, observed = array[keep], observed[keep].astype(np.float64)
    filled = np.where(observed > 0, array, 0.0)
    points = array.shape[1]
    runs_at = observed.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(runs_at > 0, filled.sum(axis=0) / runs_at, np.nan)
    if len(array) == 0:
        return mean, mean.copy(), mean.copy()
    strata = _Strata(np.zeros(len(array)), np.array([0, len(array)]), np.array([0]))  # one stratum: the runs
    low, high = np.empty(points), np.empty(points)
    for block in _column_blocks(repetitions, points):
        rng = np.random.default_rng(seed)  # the same resamples for every block of points
        replicates = np.empty((repetitions, block.stop - block.start))
        for first, stop in _chunks(repetitions, max(strata.size, block.stop - block.start)):
            counts = strata.counts(rng, stop - first)
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates[first:stop] = (counts @ filled[:, block]) / (counts @ observed[:, block])
        low[block], high[block] = _interval(replicates, confidence)
    return mean, low, high


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (no continuity correction) of a success probability from
    ``successes`` out of ``trials`` Bernoulli trials; NaN bounds without trials.

    With z the normal quantile of (1 + confidence) / 2 and p = successes / trials, the interval is
    (p + z²/2n ± z √(p(1 − p)/n + z²/4n²)) / (1 + z²/n): unlike p ± z √(p(1 − p)/n) it stays
    inside [0, 1] and does not collapse to a point at 0 or 1 successes.
    """
    _check(1, confidence)
    if trials <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, shrink = successes / trials, z * z / trials
    centre = (p + shrink / 2) / (1 + shrink)
    half = z * math.sqrt(p * (1 - p) / trials + shrink / (4 * trials)) / (1 + shrink)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17 off
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
