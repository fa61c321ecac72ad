"""Our side of a claim, from its grids' run folders, with the report's code: `load_runs` reads the
folders, `scoring.score` gives every completed cell's final greedy evaluation per split (mean return
or success rate, as the quantity asks), and `stats` gives the intervals over runs (seeds).

Intervals follow the report's rules: none from fewer than 2 runs, except one cell's success rate,
which carries its Wilson interval over its evaluation episodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from benchbase.errors import UserError
from benchbase.grid.cell import parse_straggler
from benchbase.report import stats
from benchbase.report.load import load_runs
from benchbase.report.model import INTERVAL_RUNS
from benchbase.report.scoring import RAW, SUCCESS, Family, score
from benchbase.reproduce.catalogue import Quantity, Selection
from benchbase.results import RunFolder

NAN = float("nan")


@dataclass(frozen=True)
class Measured:
    """Our figure for one quantity: the point, its interval (NaN: none) and the runs behind it."""

    value: float
    low: float
    high: float
    runs: int
    problem: str = ""  # why there is no figure, when there is none


@dataclass
class GridScores:
    """One grid's completed cells and their final score per split, for one measure."""

    cells: list[dict[str, Any]]
    splits: list[str]
    final: np.ndarray  # [cells, splits]
    episodes: np.ndarray  # [cells, splits]: evaluation episodes behind `final`


class Scorer:
    """Scores of the claim's grids, read once per (grid, measure)."""

    def __init__(self, folders: Mapping[str, Path]) -> None:
        self.folders = folders
        self._cache: dict[tuple[str, str], GridScores | str] = {}

    def grid(self, grid: str, measure: str) -> GridScores | str:
        """The grid's scores, or the reason there are none."""
        key = (grid, measure)
        if key not in self._cache:
            self._cache[key] = self._read(self.folders[grid], measure)
        return self._cache[key]

    @staticmethod
    def _read(folder: Path, measure: str) -> GridScores | str:
        try:
            runs = load_runs([str(folder)])
        except UserError as error:
            return str(error)
        completed = [cell for cell in runs.cells if cell["status"] == "completed"]
        env_names = sorted({cell["env"] for cell in completed})
        kind = SUCCESS if measure == "success" else RAW
        families = [Family(name, kind, 0.0, 1.0) for name in env_names]  # raw returns: (R − 0) / 1
        cell_family = np.array([env_names.index(cell["env"]) for cell in completed], dtype=np.int64)
        scores = score(runs, [cell["cell_id"] for cell in completed], cell_family, families)
        return GridScores(completed, scores.splits, scores.final, scores.final_episodes)

    def learner_speeds(self, selection: Selection) -> tuple[dict[int, tuple[int | None, dict[int, float]]], str]:
        """Seed -> (the cell's straggler rank or None, learner -> env steps/s over its training loop,
        the last `steps_per_second` metric row) for the selected completed cells; a problem."""
        folder = self.folders[selection.grid]
        try:
            runs = load_runs([str(folder)])
        except UserError as error:
            return {}, str(error)
        cells = {c["cell_id"]: c for c in runs.cells if c["status"] == "completed" and selection.matches(c)}
        if not cells:
            return {}, f"no completed cell of {selection}"
        table = (
            RunFolder(folder)
            .dataset("metrics")
            .to_table(
                columns=["cell_id", "learner", "iteration", "value"], filter=pc.field("metric") == "steps_per_second"
            )
        )
        last: dict[tuple[str, int], tuple[int, float]] = {}
        for row in table.to_pylist():
            key = (row["cell_id"], int(row["learner"]))
            if row["cell_id"] in cells and row["iteration"] >= last.get(key, (-1, 0.0))[0]:
                last[key] = (row["iteration"], float(row["value"]))
        speeds: dict[int, tuple[int | None, dict[int, float]]] = {}
        for cell_id, cell in cells.items():
            straggler = (cell.get("config") or {}).get("straggler")
            rank = parse_straggler(straggler)[0] if straggler else None
            learners = {learner: value for (found, learner), (_, value) in last.items() if found == cell_id}
            speeds[int(cell["seed"])] = (rank, learners)
        return speeds, ""

    def per_run(self, selection: Selection, measure: str, split: str) -> tuple[dict[int, list[float]], int, str]:
        """Seed -> the final scores of the selected cells on `split`; evaluation episodes; a problem."""
        found = self.grid(selection.grid, measure)
        if isinstance(found, str):
            return {}, 0, found
        if split not in found.splits:
            return {}, 0, f"no evaluation on split {split} in {selection.grid}"
        column = found.splits.index(split)
        values: dict[int, list[float]] = {}
        episodes = 0
        for index, cell in enumerate(found.cells):
            if selection.matches(cell) and not math.isnan(found.final[index, column]):
                values.setdefault(int(cell["seed"]), []).append(float(found.final[index, column]))
                episodes += int(found.episodes[index, column])
        return values, episodes, "" if values else f"no completed cell of {selection} scored on {split}"


def _mean_over_runs(values: list[float]) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=np.float64)
    if len(array) < INTERVAL_RUNS:
        return float(array.mean()), NAN, NAN
    estimate = stats.aggregate_estimates(array, aggregates=("mean",))["mean"]
    return estimate.value, estimate.low, estimate.high


def _value(quantity: Quantity, scorer: Scorer) -> Measured:
    per_seed, episodes, problem = scorer.per_run(quantity.cells, quantity.measure, quantity.split)
    if not per_seed:
        return Measured(NAN, NAN, NAN, 0, problem)
    runs = [float(np.mean(scores)) for _, scores in sorted(per_seed.items())]
    value, low, high = _mean_over_runs(runs)
    if quantity.measure == "return":
        return Measured(value, low, high, len(runs))
    if len(runs) == 1 and episodes > 0:
        low, high = stats.wilson_interval(round(value * episodes), episodes)
    return Measured(100 * value, 100 * low, 100 * high, len(runs))  # success rates in percent


def _packer(quantity: Quantity, scorer: Scorer) -> Measured:
    """Packer et al.'s summary in percent: per run the mean over the bases of D→D, R→R or the
    geometric mean of D→R, D→E and R→E."""
    pairs = {
        "default": (("default", "D"),),
        "interpolation": (("random", "R"),),
        "extrapolation": (("default", "R"), ("default", "E"), ("random", "E")),
    }[quantity.summary]
    by_seed: dict[int, list[float]] = {}
    for base in quantity.bases:
        results = []
        for trained, tested in pairs:
            cells = quantity.cells
            selection = Selection(cells.grid, cells.algorithm, cells.topology, f"{trained}-{base}")
            per_seed, _, problem = scorer.per_run(selection, "success", tested)
            if not per_seed:
                return Measured(NAN, NAN, NAN, 0, problem)
            results.append({seed: float(np.mean(scores)) for seed, scores in per_seed.items()})
        for seed in set.intersection(*(set(result) for result in results)):
            rates = [result[seed] for result in results]
            by_seed.setdefault(seed, []).append(float(np.prod(rates) ** (1 / len(rates))))
    runs = [100 * float(np.mean(rates)) for _, rates in sorted(by_seed.items()) if len(rates) == len(quantity.bases)]
    if not runs:
        return Measured(NAN, NAN, NAN, 0, "no run has every base")
    return Measured(*_mean_over_runs(runs), len(runs))


def _improvement(quantity: Quantity, scorer: Scorer) -> Measured:
    assert quantity.versus is not None
    x, _, problem_x = scorer.per_run(quantity.cells, quantity.measure, quantity.split)
    y, _, problem_y = scorer.per_run(quantity.versus, quantity.measure, quantity.split)
    if not x or not y:
        return Measured(NAN, NAN, NAN, 0, problem_x or problem_y)
    x_runs = np.array([np.mean(scores) for scores in x.values()])
    y_runs = np.array([np.mean(scores) for scores in y.values()])
    estimate = stats.probability_of_improvement(x_runs, y_runs)
    runs = min(len(x_runs), len(y_runs))
    if runs < INTERVAL_RUNS:
        return Measured(estimate.value, NAN, NAN, runs)
    return Measured(estimate.value, estimate.low, estimate.high, runs)


def _throughput(quantity: Quantity, scorer: Scorer) -> Measured:
    """Per seed: the subject learners' steps/s in the `cells` cell as a percentage of theirs in the
    `versus` cell, averaged over those learners; then the mean over seeds."""
    assert quantity.versus is not None
    slowed, problem_x = scorer.learner_speeds(quantity.cells)
    base, problem_y = scorer.learner_speeds(quantity.versus)
    runs = []
    for seed in sorted(set(slowed) & set(base)):
        straggler, speeds = slowed[seed]
        if straggler is None:
            return Measured(NAN, NAN, NAN, 0, f"the cells of {quantity.cells} run no straggler")
        ranks = [r for r in speeds if (r == straggler) == (quantity.subject == "straggler") and r in base[seed][1]]
        if ranks:
            runs.append(100 * float(np.mean([speeds[r] / base[seed][1][r] for r in ranks])))
    if not runs:
        return Measured(NAN, NAN, NAN, 0, problem_x or problem_y or "no seed has both cells")
    return Measured(*_mean_over_runs(runs), len(runs))


def measure(quantity: Quantity, scorer: Scorer) -> Measured:
    """Our figure for `quantity` from the claim's run folders."""
    kinds = {"value": _value, "packer": _packer, "improvement": _improvement, "throughput": _throughput}
    return kinds[quantity.kind](quantity, scorer)


def agrees(quantity: Quantity, ours: Measured) -> bool | None:
    """Whether ours agrees with the published figure by the quantity's rule; None where that cannot
    be decided (no published figure, no figure of ours, or no interval where the rule needs one).

    overlap: our interval overlaps the published band. at-least (at-most): our point estimate ≥ (≤)
    published, from at least INTERVAL_RUNS runs.
    """
    band = quantity.band
    if band is None or math.isnan(ours.value):
        return None
    if quantity.rule in ("at-least", "at-most"):
        if ours.runs < INTERVAL_RUNS:
            return None
        return ours.value >= quantity.published if quantity.rule == "at-least" else ours.value <= quantity.published
    if math.isnan(ours.low) or math.isnan(ours.high):
        return None
    return ours.low <= band[1] and ours.high >= band[0]
