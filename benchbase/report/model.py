"""What a report is, independent of how it is computed (`benchbase.report.build`) or drawn
(`benchbase.report.html`, and the console and Markdown writers of `benchbase.report.text`).

An *entry* is one thing being compared: an algorithm (with its non-default parameters, the
cells' `variant`) on a topology with a replay strategy, aggregated over env families and seeds.
A *run* is one cell (one seed of one entry on one family). Scores are normalised per family so
that they can be pooled: the success rate where the family defines success, otherwise
(R − random) / (reference − random) with the family's declared `score_range`, otherwise the raw
return (and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a (95%) confidence interval; NaN where there is no data."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class LeaderboardRow:
    entry: str  # "diff-a2c · ring · none", with " (variant)" when parameters differ from defaults
    algorithm: str
    topology: str
    replay: str
    variant: str
    runs: int  # scored runs (cells) pooled into the statistics
    excluded: int  # failed or interrupted cells of this entry, left out of the scores
    iqm: Estimate
    median: Estimate
    mean: Estimate
    optimality_gap: Estimate
    auc: Estimate  # IQM of the normalised area under the learning curve
    probability_of_improvement: Estimate | None  # P(this entry > the baseline), None without one
    steps_per_second: float  # mean over its cells
    wall_time_s: float
    bytes_sent_per_learner: float
    consensus_distance: float | None  # mean of the cells' final consensus distance, where recorded


@dataclass(frozen=True)
class GeneralisationCell:
    """Packer-style table: an entry's score on one family's evaluation split."""

    entry: str
    family: str
    split: str  # "train" (the learners' own tasks), or a family split such as "D", "R", "E"
    score: Estimate
    runs: int


@dataclass(frozen=True)
class Curve:
    """Normalised score against the cell's env steps: mean over seeds with a confidence band."""

    entry: str
    family: str
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class Profile:
    """Performance profile: fraction of runs whose score exceeds each threshold τ."""

    entry: str
    thresholds: np.ndarray
    fraction: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class Improvement:
    """P(X > Y): the probability that a random run of X scores above a random run of Y."""

    better: str  # entry X
    worse: str  # entry Y
    probability: Estimate


@dataclass
class Report:
    sources: list[str]  # the run folders read
    metric: str  # "final" (final evaluation) or "auc" (area under the learning curve)
    split: str  # the evaluation split the leaderboard ranks on
    score_kinds: dict[str, str]  # family -> "success rate" | "normalised return" | "raw return"
    leaderboard: list[LeaderboardRow]  # best first
    generalisation: list[GeneralisationCell] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    improvements: list[Improvement] = field(default_factory=list)
    baseline: str | None = None
    problems: list[str] = field(default_factory=list)  # excluded cells, missing seeds, …
    repetitions: int = 0  # bootstrap repetitions behind every interval
    confidence: float = 0.95
    #: family -> (random, reference) behind its "normalised return" scores
    score_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
