"""What a report is, independent of how it is computed (`benchbase.report.build`) or drawn
(`benchbase.report.html`, and the console and Markdown writers of `benchbase.report.text`).

An *entry* is one thing being compared: an algorithm (with its non-default parameters, the
cells' `variant`) on a topology with a replay strategy, aggregated over env families and seeds.
Cells that differ in anything but the seed (a start from checkpoints, the env-step budget, the
number of learners, …) are separate entries, labelled by what differs. A *run* is one seed of an
entry on one family; an entry's `runs` is the fewest seeds it has on any of its families. Scores
are normalised per family so that they can be pooled: the success rate where the family defines
success, otherwise (R − random) / (reference − random) with the family's declared `score_range`,
otherwise the raw return (and the report says so).

Few runs make for unreliable claims (Agarwal et al., 2021), so the suite's rule is: an interval
from fewer than `INTERVAL_RUNS` runs is not given (NaN bounds, shown as "n/a"), and fewer than
`RELIABLE_RUNS` runs put a warning in the problems. Entries are ranked by standard competition
ranking ("1, 1, 3") of the IQM point estimate: equal scores share a rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Runs (seeds) an interval needs: with one, every bootstrap resample is the data itself.
INTERVAL_RUNS = 2
#: Runs below which intervals are unreliable and no difference is called meaningful.
RELIABLE_RUNS = 5


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
    runs: int  # independent seeds behind the statistics: the fewest on any of the entry's families
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
    #: what sets this entry apart from others with the same label ("init_from=…", "env_steps=200000")
    setting: str = ""


@dataclass(frozen=True)
class GeneralisationCell:
    """Packer-style table: an entry's score on one family's evaluation split."""

    entry: str
    family: str
    split: str  # "train" (the learners' own tasks), or a family split such as "D", "R", "E"
    score: Estimate
    runs: int  # seeds
    #: evaluation episodes behind `score`'s interval when it is a single cell's Wilson interval for its
    #: success rate (0: the interval is a bootstrap over runs, or absent)
    episodes: int = 0


@dataclass(frozen=True)
class Curve:
    """Normalised score of the greedy evaluations against the cell's env steps (all its learners
    together): mean over runs with a confidence band (NaN bounds: fewer than `INTERVAL_RUNS` runs)."""

    entry: str
    family: str
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    #: independent runs (seeds) behind each point; None where not recorded
    runs: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingCurve(Curve):
    """The same, from the training episodes (the stochastic policy): each cell's episodes binned
    by the cell's env steps into equal bins of its budget, the score per bin the mean over its
    episodes (normalised like the evaluations), then the mean over the runs with episodes in
    the bin. `steps` is each bin's middle."""

    bin_start: np.ndarray  # env steps where each bin starts (exclusive) …
    bin_end: np.ndarray  # … and ends (inclusive)
    episode_return: np.ndarray  # mean over runs of the bin's mean raw return
    episodes: np.ndarray  # training episodes in the bin, over all runs


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


@dataclass(frozen=True)
class RunHeader:
    """What one run folder says about how it was made (its ``grid.json``), for the report's header.

    None: not recorded (folders written before the command and the machine were kept, or without a
    readable grid.json; `note` says which)."""

    folder: str
    benchbase_version: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    written_at: str | None = None  # ISO 8601, as grid.json has it
    command: str | None = None  # "bench run -a diff-a2c ..."
    env_steps: int | None = None  # budget per cell, all its learners together
    learners: int | None = None
    envs_per_learner: int | None = None  # simulators per learner
    evaluations: int | None = None
    eval_episodes: int | None = None
    seeds: tuple[int, ...] | None = None
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ("algorithms", ("diff-a2c", …)), …
    host: str | None = None
    cpus: int | None = None
    cpu_model: str | None = None
    gpus: tuple[str, ...] | None = None  # () when the machine was recorded without a GPU
    note: str = ""  # why nothing was read ("no grid.json", "grid.json is not JSON")


@dataclass
class Report:
    sources: list[str]  # the run folders read
    metric: str  # "final" (final evaluation) or "auc" (area under the learning curve)
    split: str  # the evaluation split the leaderboard ranks on
    score_kinds: dict[str, str]  # family -> "success rate" | "normalised return" | "raw return"
    leaderboard: list[LeaderboardRow]  # best first
    generalisation: list[GeneralisationCell] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)  # from the greedy evaluations
    training_curves: list[TrainingCurve] = field(default_factory=list)  # from the training episodes
    profiles: list[Profile] = field(default_factory=list)
    improvements: list[Improvement] = field(default_factory=list)
    baseline: str | None = None
    problems: list[str] = field(default_factory=list)  # excluded cells, missing seeds, …
    repetitions: int = 0  # bootstrap repetitions behind every interval
    confidence: float = 0.95
    #: family -> (random, reference) behind its "normalised return" scores
    score_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: how each run folder read was made (its grid.json), in the order of `sources`
    run_headers: list[RunHeader] = field(default_factory=list)
    benchbase_version: str = ""  # the benchbase that wrote this report


def coincident_profiles(profiles: Sequence[Profile]) -> dict[str, str]:
    """Entry -> the earlier entry whose performance profile it equals point for point (same
    thresholds, fractions within 1e-12), so that a chart can say which curves lie on top of another."""
    same_as: dict[str, str] = {}
    for i, profile in enumerate(profiles):
        for earlier in profiles[:i]:
            if earlier.entry in same_as or earlier.entry == profile.entry:
                continue
            if _same_curve(profile.thresholds, earlier.thresholds) and _same_curve(profile.fraction, earlier.fraction):
                same_as[profile.entry] = earlier.entry
                break
    return same_as


def _same_curve(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=1e-12, equal_nan=True))


def ranks(rows: Sequence[LeaderboardRow]) -> list[int | None]:
    """Standard competition ranking ("1, 1, 3") of the rows' IQM point estimates, best first: equal
    scores share a rank, and the next rank skips as many places as were tied. None: no score."""
    values = [row.iqm.value for row in rows]
    order = sorted((i for i, v in enumerate(values) if math.isfinite(v)), key=lambda i: -values[i])
    out: list[int | None] = [None] * len(rows)
    for position, i in enumerate(order):
        previous = order[position - 1] if position else None
        tied = previous is not None and math.isclose(values[i], values[previous], rel_tol=1e-9, abs_tol=1e-12)
        out[i] = out[previous] if tied else position + 1  # type: ignore[index]
    return out


def fewest_runs(rows: Sequence[LeaderboardRow]) -> int | None:
    """The smallest run count among the scored rows (None: nothing scored)."""
    counts = [row.runs for row in rows if row.runs > 0]
    return min(counts) if counts else None


def runs_warning(rows: Sequence[LeaderboardRow]) -> str | None:
    """The warning "intervals from N runs are unreliable: …" when a scored entry has fewer than
    `RELIABLE_RUNS` runs (N: the fewest), else None."""
    fewest = fewest_runs(rows)
    if fewest is None or fewest >= RELIABLE_RUNS:
        return None
    short = sum(1 for row in rows if 0 < row.runs < RELIABLE_RUNS)
    scored = sum(1 for row in rows if row.runs > 0)
    return (
        f"intervals from {fewest} run{'' if fewest == 1 else 's'} are unreliable: {short} of {scored} entries "
        f"have fewer than {RELIABLE_RUNS} seeds per env family (intervals need {INTERVAL_RUNS}, shown as n/a "
        f"below that); run at least {RELIABLE_RUNS} seeds before reading a difference into them"
    )
