"""Scoring for `bench report`: how each env family's returns are normalised, and every completed
cell's score per evaluation split.

A family's score is its success rate where its rows record success; else
(R − random) / (reference − random) with the family's declared `score_range` (or each task's
`task_score_range`, for families whose tasks score on different scales); else the raw return,
which the report lists as a problem.

Everything row-sized is columnar (pyarrow → numpy, `np.bincount`): per-row normalised scores are
reduced per (cell, split, evaluation). Cells without evaluations are scored from their training
episodes on the train split.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchbase.api.contracts import EnvFamily
from benchbase.errors import UserError
from benchbase.report.load import Runs

SUCCESS, NORMALISED, RAW = "success rate", "normalised return", "raw return"
#: Curve points of cells scored from training episodes (no evaluations).
EPISODE_BINS = 10

NAN = float("nan")


# ============================================================================================
# Families: how each one's scores are normalised


def env_registry(only: Iterable[str] | None = None, blocked: Iterable[str] = ()) -> Any:
    """The plugin registry that reports look env families' score ranges up in.

    Built-ins of other kinds are skipped (the algorithms would import torch); third-party plugins
    are all loaded, so a report finds whichever plugin provides a family.
    """
    from benchbase.api.registry import load_registry

    return load_registry(only=set(only) if only is not None else None, blocked=set(blocked), kinds={"env"})


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # SUCCESS, NORMALISED or RAW
    low: float  # normalised = (R - low) / (high - low); 0, 1 for success rates and raw returns
    high: float
    #: task id -> (low, high), for families whose tasks score on different scales (Atari games)
    per_task: dict[str, tuple[float, float]] = field(default_factory=dict)


def _usable(declared: Any) -> bool:
    return declared is not None and len(declared) == 2 and declared[1] != declared[0]


def task_ids(runs: Runs, cells: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The task ids each env family's completed cells report, over evaluations and episodes."""
    env_of = {cell["cell_id"]: cell["env"] for cell in cells}
    found: dict[str, set[str]] = {}
    for table in (runs.evaluations, runs.episodes):
        if table.num_rows:
            pairs = table.select(["cell_id", "task_id"]).group_by(["cell_id", "task_id"]).aggregate([])
            for cell_id, task_id in zip(pairs.column("cell_id").to_pylist(), pairs.column("task_id").to_pylist()):
                if cell_id in env_of:
                    found.setdefault(env_of[cell_id], set()).add(task_id)
    return {name: sorted(tasks) for name, tasks in found.items()}


def family(name: str, has_success: bool, registry: Any, tasks: list[str], problems: list[str]) -> Family:
    """How env family `name` is scored; a family left on raw returns adds a line to `problems`."""
    if has_success:
        return Family(name, SUCCESS, 0.0, 1.0)
    declared, why, per_task = None, "", {}
    try:
        component: EnvFamily = registry.get("env", name)
        declared = component.score_range
        why = "declares no success criterion and no score_range"
        per_task = {task: component.task_score_range(task) for task in tasks}
    except UserError:
        why = "is not installed here"
    if per_task and all(_usable(found) for found in per_task.values()):
        ranges = {task: (float(low), float(high)) for task, (low, high) in per_task.items()}
        return Family(name, NORMALISED, 0.0, 1.0, ranges)
    if _usable(declared):
        return Family(name, NORMALISED, float(declared[0]), float(declared[1]))
    problems.append(f"env family {name} {why}: scored by its raw return, which does not pool with other families")
    return Family(name, RAW, 0.0, 1.0)


# ============================================================================================
# Scoring: per-row normalised scores, reduced per (cell, split, evaluation) with bincount


@dataclass
class Scores:
    splits: list[str]
    final: np.ndarray  # [cells, splits]: mean score of the final evaluation (NaN: none)
    auc: np.ndarray  # [cells, splits]: mean over evaluation points
    curve: np.ndarray  # [cells, splits, points]: mean score per evaluation (NaN: none)
    steps: np.ndarray  # [cells, splits, points]: mean cell_env_step per evaluation
    #: [cells, splits]: the episodes (rows with a score) behind `final`; 0 where it came from an older
    #: writer's last evaluation
    final_episodes: np.ndarray


@dataclass
class CellScores:
    """Every completed cell (in `Runs.cells` order), its family and its scores."""

    completed: list[dict[str, Any]]
    cell_ids: list[str]
    env_names: list[str]  # sorted
    cell_family: np.ndarray  # [cells]: index into env_names
    families: dict[str, Family]
    scores: Scores


def _indices(column: pa.ChunkedArray, values: list[str]) -> np.ndarray:
    """Each row's position in `values`; -1 where it is not there."""
    found = pc.index_in(column, value_set=pa.array(values, pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.cast(column, pa.float64()), NAN).to_numpy()


def _success_by_family(runs: Runs, cell_ids: list[str], cell_family: np.ndarray, n_families: int) -> list[bool]:
    """Whether each family's rows record success (then its score is the success rate)."""
    counts = np.zeros(n_families)
    for table in (runs.evaluations, runs.episodes):
        if table.num_rows and n_families:
            cells = _indices(table.column("cell_id"), cell_ids)
            valid = pc.is_valid(table.column("success")).to_numpy(zero_copy_only=False) & (cells >= 0)
            counts += np.bincount(cell_family[np.maximum(cells, 0)], weights=valid, minlength=n_families)
    return [bool(count) for count in counts > 0]


def normalised_scores(table: pa.Table, family_of_row: np.ndarray, families: list[Family]) -> np.ndarray:
    """Each row's score: its success, or its return normalised by its family's (or task's) range;
    NaN for a row of a family scored task by task whose task has no range."""
    low = np.array([f.low for f in families])
    scale = np.array([f.high - f.low for f in families])
    success_kind = np.array([f.kind == SUCCESS for f in families])
    returns = table.column("episode_return").to_numpy()
    success = _floats(table.column("success"))
    row_low, row_scale = low[family_of_row], scale[family_of_row]
    for index, found in enumerate(families):
        if found.per_task:  # each task on its own scale: look its range up by task id
            tasks = list(found.per_task)
            position = _indices(table.column("task_id"), tasks)
            rows = (family_of_row == index) & (position >= 0)
            ranges = np.array([found.per_task[task] for task in tasks])
            task_low, task_high = ranges[np.maximum(position, 0), 0], ranges[np.maximum(position, 0), 1]
            row_low = np.where(rows, task_low, row_low)
            # A task without a range of its own (seen only in training episodes) has no score.
            row_scale = np.where(rows, task_high - task_low, np.where(family_of_row == index, NAN, row_scale))
    return np.where(success_kind[family_of_row], success, (returns - row_low) / row_scale)


def _evaluation_rows(
    evaluations: pa.Table, cell_ids: list[str], cell_family: np.ndarray, families: list[Family]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The completed cells' evaluation rows as arrays, and the splits they name."""
    cells = _indices(evaluations.column("cell_id"), cell_ids)
    keep = cells >= 0
    encoded = evaluations.column("split").combine_chunks().dictionary_encode()
    part = {
        "cell": cells,
        "split": encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        "evaluation": evaluations.column("evaluation").to_numpy().astype(np.int64),
        "final": pc.fill_null(evaluations.column("final"), False).to_numpy(zero_copy_only=False),
        "step": evaluations.column("cell_env_step").to_numpy().astype(np.float64),
        "score": normalised_scores(evaluations, cell_family[np.where(keep, cells, 0)], families),
    }
    return {key: value[keep] for key, value in part.items()}, encoded.dictionary.to_pylist()


def _episode_rows(
    episodes: pa.Table, cell_ids: list[str], cell_family: np.ndarray, families: list[Family], train: int
) -> dict[str, np.ndarray]:
    """Training episodes as pseudo-evaluations on split index `train`: EPISODE_BINS bins of each
    cell's env steps, the last bin being the final one."""
    cells = _indices(episodes.column("cell_id"), cell_ids)
    keep = cells >= 0
    episodes, cells = episodes.filter(pa.array(keep)), cells[keep]
    steps = episodes.column("cell_env_step").to_numpy().astype(np.float64)
    most = np.zeros(len(cell_ids))
    np.maximum.at(most, cells, steps)
    bins = np.minimum((steps * EPISODE_BINS / np.maximum(most[cells], 1.0)).astype(np.int64), EPISODE_BINS - 1)
    return {
        "cell": cells,
        "evaluation": bins + 1,
        "final": bins == EPISODE_BINS - 1,
        "step": steps,
        "split": np.full(len(cells), train),
        "score": normalised_scores(episodes, cell_family[cells], families),
    }


def _reduce(rows: dict[str, np.ndarray], n_cells: int, splits: list[str]) -> Scores:
    """Mean score per (cell, split, evaluation), the final one and their mean (AUC)."""
    n_splits = max(len(splits), 1)
    n_points = int(rows["evaluation"].max()) + 1 if len(rows["evaluation"]) else 1
    valid = ~np.isnan(rows["score"])
    weights = np.where(valid, rows["score"], 0.0)
    key = (rows["cell"] * n_splits + rows["split"]) * n_points + rows["evaluation"]
    size = n_cells * n_splits * n_points
    totals = np.bincount(key, weights=weights, minlength=size)
    counts = np.bincount(key, weights=valid, minlength=size)
    step_totals = np.bincount(key, weights=rows["step"], minlength=size)
    step_counts = np.bincount(key, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = (totals / counts).reshape(n_cells, n_splits, n_points)
        steps = (step_totals / step_counts).reshape(n_cells, n_splits, n_points)
        final_key = rows["cell"][rows["final"]] * n_splits + rows["split"][rows["final"]]
        final_totals = np.bincount(final_key, weights=weights[rows["final"]], minlength=n_cells * n_splits)
        final_counts = np.bincount(final_key, weights=valid[rows["final"]], minlength=n_cells * n_splits)
        final = (final_totals / final_counts).reshape(n_cells, n_splits)
    # A cell without a row marked final (an older writer): its last evaluation is the final one.
    missing = np.isnan(final)
    if missing.any():
        has = ~np.isnan(curve)
        last = n_points - 1 - np.argmax(has[:, :, ::-1], axis=2)
        last_values = np.take_along_axis(curve, last[:, :, None], axis=2)[:, :, 0]
        final = np.where(missing & has.any(axis=2), last_values, final)
    with np.errstate(invalid="ignore"), quiet():
        auc = np.nanmean(curve, axis=2)
    episodes = np.where(missing, 0, final_counts.reshape(n_cells, n_splits)).astype(np.int64)
    return Scores(splits, final, auc, curve, steps, episodes)


def score(runs: Runs, cell_ids: list[str], cell_family: np.ndarray, families: list[Family]) -> Scores:
    """Every cell's scores on every split, from its evaluations, else its training episodes."""
    parts: list[dict[str, np.ndarray]] = []
    splits: list[str] = []
    if runs.evaluations.num_rows:
        part, splits = _evaluation_rows(runs.evaluations, cell_ids, cell_family, families)
        parts.append(part)
    if runs.episodes.num_rows:
        if "train" not in splits:
            splits.append("train")
        parts.append(_episode_rows(runs.episodes, cell_ids, cell_family, families, splits.index("train")))
    if not parts:
        n_cells, n_splits = len(cell_ids), max(len(splits), 1)
        empty = np.full((n_cells, n_splits), NAN)
        points = np.full((n_cells, n_splits, 1), NAN)
        return Scores(splits, empty, empty.copy(), points, points.copy(), np.zeros((n_cells, n_splits), np.int64))
    rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return _reduce(rows, len(cell_ids), splits)


def score_completed_cells(runs: Runs, registry: Any, problems: list[str]) -> CellScores:
    """Normalise every env family and score every completed cell; what is worth saying goes to
    `problems`."""
    completed = [cell for cell in runs.cells if cell["status"] == "completed"]
    cell_ids = [cell["cell_id"] for cell in completed]
    env_names = sorted({cell["env"] for cell in completed})
    cell_family = np.array([env_names.index(cell["env"]) for cell in completed], dtype=np.int64)
    has_success = _success_by_family(runs, cell_ids, cell_family, len(env_names))
    tasks = task_ids(runs, completed)
    families = {
        name: family(name, success, registry, tasks.get(name, []), problems)
        for name, success in zip(env_names, has_success)
    }
    scores = score(runs, cell_ids, cell_family, [families[name] for name in env_names])
    if runs.episodes.num_rows:
        unevaluated = sorted(set(pc.unique(runs.episodes.column("cell_id")).to_pylist()))
        problems.append(
            f"{len(unevaluated)} completed cell(s) have no evaluations (e.g. {unevaluated[0]}): scored from their "
            f"training episodes on the train split (final: the last {100 // EPISODE_BINS}% of their env steps)"
        )
    return CellScores(completed, cell_ids, env_names, cell_family, families, scores)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' RuntimeWarning (an all-NaN slice is a missing value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
