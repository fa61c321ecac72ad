"""Training curves for `bench report`: each completed cell's training episodes (its learners'
stochastic policy, `episodes/<cell_id>/learner-<r>.parquet`) binned by env steps.

The x axis is the cell's env steps, all its learners together (`cell_env_step`, as on the
evaluation curves). A cell's budget (its config's `env_steps`; else its last episode's env step)
is cut into `TRAINING_BINS` equal bins, bin k holding the episodes that finished in
(k·budget/bins, (k+1)·budget/bins] (an episode at step 0 in the first, one past the budget, from
the last iteration's overshoot, in the last). Cells of one entry share their budget (a different
budget makes a different entry), so bin k is the same span of env steps in every run and runs can
be averaged bin by bin. Per cell and bin: the episodes, their mean raw return and their mean
score, normalised exactly as the evaluations are (`scoring.normalised_scores`: the success rate
where the family records success, else the normalised or raw return).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchbase.report.scoring import CellScores, normalised_scores

#: Bins of a cell's budget: 25 points per training curve.
TRAINING_BINS = 25


@dataclass
class TrainingBins:
    """Per completed cell (in `CellScores.cell_ids` order) and bin: its training episodes."""

    bins: int
    budget: np.ndarray  # [cells]: the env steps the bins span
    episodes: np.ndarray  # [cells, bins]: episodes that finished in the bin
    episode_return: np.ndarray  # [cells, bins]: their mean return (NaN: none)
    score: np.ndarray  # [cells, bins]: their mean normalised score (NaN: none with a score)

    def edges(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Where each bin starts and ends, in env steps, averaged over the cells `rows` (equal for
        cells of one entry)."""
        width = float(np.mean(self.budget[rows])) / self.bins
        start = np.arange(self.bins) * width
        return start, start + width


def _budget(cell: dict) -> int | None:
    value = (cell.get("config") or {}).get("env_steps")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        return None
    return int(value)


def bin_training_episodes(training: pa.Table, cells: CellScores, bins: int = TRAINING_BINS) -> TrainingBins:
    """Every completed cell's training episodes in `bins` bins of its budget (see the module
    docstring); a cell without episodes has zero counts and NaN means."""
    n_cells = len(cells.cell_ids)
    index = pc.index_in(training.column("cell_id"), value_set=pa.array(cells.cell_ids, pa.string()))
    position = pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = position >= 0
    table, position = training.filter(pa.array(keep)), position[keep]
    steps = pc.fill_null(table.column("cell_env_step"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    last = np.zeros(n_cells, dtype=np.int64)
    np.maximum.at(last, position, steps)
    declared = [_budget(cell) for cell in cells.completed]
    budget = np.array([d if d is not None else max(int(m), 1) for d, m in zip(declared, last)], dtype=np.int64)
    # ceil(step · bins / budget) − 1 in integers: (k·w, (k+1)·w] is bin k, with no rounding at the edges.
    which = np.clip((steps * bins - 1) // budget[position], 0, bins - 1)
    key = position * bins + which
    size = n_cells * bins
    families = [cells.families[name] for name in cells.env_names]
    score = normalised_scores(table, cells.cell_family[position], families)
    returns = pc.fill_null(pc.cast(table.column("episode_return"), pa.float64()), math.nan).to_numpy()
    scored, returned = ~np.isnan(score), ~np.isnan(returns)
    count = np.bincount(key, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(key, np.where(scored, score, 0.0), size) / np.bincount(key, scored, size)
        mean_return = np.bincount(key, np.where(returned, returns, 0.0), size) / np.bincount(key, returned, size)
    shape = (n_cells, bins)
    return TrainingBins(bins, budget, count.reshape(shape), mean_return.reshape(shape), mean_score.reshape(shape))
