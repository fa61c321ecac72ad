"""`bench report`: read run folders, score every completed cell, aggregate into a `Report`.

Three steps, each usable on its own:

- `load_runs(paths)` (`benchbase.report_load`) reads one or many run folders (or globs) into one
  `Runs`;
- `build_report(runs, …)` normalises scores per env family (success rate; else
  (R − random) / (reference − random) with the family's `score_range`; else the raw return),
  scores each cell (final evaluation or area under the learning curve, on one split), groups
  cells into entries and computes the statistics of `benchbase.stats` over runs (cells) ×
  tasks (env families);
- `write_report(report, out_dir)` writes `leaderboard.parquet`, `report.md` and `report.html`.

Everything row-sized is columnar (pyarrow → numpy, `np.bincount`); Python loops run over cells,
entries and families only. Failed, interrupted, pending and running cells are never scored and
never dropped silently: they are counted per entry and listed in `Report.problems`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchbase.errors import UserError, close_match
from benchbase.report.load import Runs, load_runs
from benchbase.report.model import (
    Curve,
    Estimate,
    GeneralisationCell,
    Improvement,
    LeaderboardRow,
    Profile,
    Report,
)
from benchbase.results import write_atomic

__all__ = ["Runs", "load_runs", "build_report", "write_report", "leaderboard_arrow", "GROUP_FIELDS", "METRICS", "env_registry"]

GROUP_FIELDS: tuple[str, ...] = ("algorithm", "variant", "topology", "replay")
METRICS: tuple[str, ...] = ("final", "auc")
SUCCESS, NORMALISED, RAW = "success rate", "normalised return", "raw return"
#: Entries up to which every ordered pair gets a probability of improvement.
PAIRWISE_LIMIT = 8
#: Curve points of cells scored from training episodes (no evaluations).
EPISODE_BINS = 10
NOT_SCORED = ("failed", "interrupted", "pending", "running")

_NAN = float("nan")
_NO_ESTIMATE = Estimate(_NAN, _NAN, _NAN)


# ============================================================================================
# Families: how each one's scores are normalised


def env_registry(only: Iterable[str] | None = None, blocked: Iterable[str] = ()) -> Any:
    """A registry for reports: every plugin except the built-in algorithms, topologies and replay
    strategies (they declare no env family, and importing torch for nothing costs seconds)."""
    from benchbase.api.registry import BUILTIN_PLUGINS, load_registry

    skip = {name for name in BUILTIN_PLUGINS if not name.startswith("plugins.envs.")}
    return load_registry(only=set(only) if only is not None else None, blocked=set(blocked) | skip)


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # SUCCESS, NORMALISED or RAW
    low: float  # normalised = (R - low) / (high - low); 0, 1 for success rates and raw returns
    high: float
    #: task id -> (low, high), for families whose tasks score on different scales (Atari games)
    per_task: dict[str, tuple[float, float]] = field(default_factory=dict)


def _usable(declared: Any) -> bool:
    return declared is not None and len(declared) == 2 and declared[1] != declared[0]


def _task_ids(runs: Runs, cells: list[dict[str, Any]]) -> dict[str, list[str]]:
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


def _families(names: list[str], has_success: dict[str, bool], registry: Any, problems: list[str],
              task_ids: dict[str, list[str]]) -> dict[str, _Family]:
    families = {}
    for name in names:
        if has_success.get(name):
            families[name] = _Family(name, SUCCESS, 0.0, 1.0)
            continue
        declared, why, per_task = None, "", {}
        try:
            component = registry.get("env", name)
            declared = getattr(component, "score_range", None)
            why = "declares no success criterion and no score_range"
            if hasattr(component, "task_score_range"):
                per_task = {task: component.task_score_range(task) for task in task_ids.get(name, [])}
        except UserError:
            why = "is not installed here"
        if per_task and all(_usable(found) for found in per_task.values()):
            families[name] = _Family(name, NORMALISED, 0.0, 1.0,
                                     {task: (float(low), float(high)) for task, (low, high) in per_task.items()})
        elif _usable(declared):
            families[name] = _Family(name, NORMALISED, float(declared[0]), float(declared[1]))
        else:
            families[name] = _Family(name, RAW, 0.0, 1.0)
            problems.append(f"env family {name} {why}: scored by its raw return, which does not pool with other families")
    return families


# ============================================================================================
# Scoring: per-row normalised scores, reduced per (cell, split, evaluation) with bincount


@dataclass
class _Scores:
    splits: list[str]
    final: np.ndarray  # [cells, splits]: mean score of the final evaluation (NaN: none)
    auc: np.ndarray  # [cells, splits]: mean over evaluation points
    curve: np.ndarray  # [cells, splits, points]: mean score per evaluation (NaN: none)
    steps: np.ndarray  # [cells, splits, points]: mean cell_env_step per evaluation


def _indices(column: pa.ChunkedArray, values: list[str]) -> np.ndarray:
    return pc.index_in(column, value_set=pa.array(values, pa.string())).to_numpy(zero_copy_only=False)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.cast(column, pa.float64()), _NAN).to_numpy()


def _success_by_family(runs: Runs, cell_ids: list[str], cell_family: np.ndarray, n_families: int) -> list[bool]:
    """Whether each family's rows record success (then its score is the success rate)."""
    counts = np.zeros(n_families)
    for table in (runs.evaluations, runs.episodes):
        if table.num_rows and n_families:
            cells = _indices(table.column("cell_id"), cell_ids)
            valid = pc.is_valid(table.column("success")).to_numpy(zero_copy_only=False) & (cells >= 0)
            counts += np.bincount(cell_family[np.maximum(cells, 0)], weights=valid, minlength=n_families)
    return [bool(count) for count in counts > 0]


def _episode_rows(episodes: pa.Table, cell_index: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """Training episodes as pseudo-evaluations: EPISODE_BINS bins of each cell's env steps on the
    train split, the last bin being the final one."""
    steps = episodes.column("cell_env_step").to_numpy().astype(np.float64)
    most = np.zeros(n_cells)
    np.maximum.at(most, cell_index, steps)
    bins = np.minimum((steps * EPISODE_BINS / np.maximum(most[cell_index], 1.0)).astype(np.int64), EPISODE_BINS - 1)
    return {"cell": cell_index, "evaluation": bins + 1, "final": bins == EPISODE_BINS - 1, "step": steps}


def _score(runs: Runs, cell_ids: list[str], cell_family: np.ndarray, families: list[_Family]) -> _Scores:
    n_cells = len(cell_ids)
    parts: list[dict[str, np.ndarray]] = []
    split_names: list[str] = []
    evaluations, episodes = runs.evaluations, runs.episodes
    low = np.array([f.low for f in families])
    scale = np.array([f.high - f.low for f in families])
    success_kind = np.array([f.kind == SUCCESS for f in families])

    def normalised(cells: np.ndarray, table: pa.Table) -> np.ndarray:
        family = cell_family[cells]
        returns = table.column("episode_return").to_numpy()
        success = _floats(table.column("success"))
        row_low, row_scale = low[family], scale[family]
        for index, found in enumerate(families):
            if found.per_task:  # each task on its own scale: look its range up by task id
                tasks = list(found.per_task)
                position = _indices(table.column("task_id"), tasks)
                rows = (family == index) & (position >= 0)
                ranges = np.array([found.per_task[task] for task in tasks])
                row_low = np.where(rows, ranges[np.maximum(position, 0), 0], row_low)
                row_scale = np.where(rows, ranges[np.maximum(position, 0), 1] - ranges[np.maximum(position, 0), 0], row_scale)
        return np.where(success_kind[family], success, (returns - row_low) / row_scale)

    if evaluations.num_rows:
        cells = _indices(evaluations.column("cell_id"), cell_ids)
        keep = cells >= 0
        encoded = evaluations.column("split").combine_chunks().dictionary_encode()
        split_names = encoded.dictionary.to_pylist()
        part = {
            "cell": cells,
            "split": encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            "evaluation": evaluations.column("evaluation").to_numpy().astype(np.int64),
            "final": pc.fill_null(evaluations.column("final"), False).to_numpy(zero_copy_only=False),
            "step": evaluations.column("cell_env_step").to_numpy().astype(np.float64),
            "score": normalised(np.where(keep, cells, 0), evaluations),
        }
        parts.append({key: value[keep] for key, value in part.items()})
    if episodes.num_rows:
        cells = _indices(episodes.column("cell_id"), cell_ids)
        keep = cells >= 0
        episodes, cells = episodes.filter(pa.array(keep)), cells[keep]
        if "train" not in split_names:
            split_names.append("train")
        part = _episode_rows(episodes, cells, n_cells)
        part["split"] = np.full(len(cells), split_names.index("train"))
        part["score"] = normalised(cells, episodes)
        parts.append(part)
    rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else None
    n_splits = max(len(split_names), 1)
    n_points = int(rows["evaluation"].max()) + 1 if rows is not None and len(rows["evaluation"]) else 1
    if rows is None:
        empty = np.full((n_cells, n_splits), _NAN)
        return _Scores(split_names, empty, empty.copy(), np.full((n_cells, n_splits, 1), _NAN), np.full((n_cells, n_splits, 1), _NAN))

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
    with np.errstate(invalid="ignore"), _quiet():
        auc = np.nanmean(curve, axis=2)
    return _Scores(split_names, final, auc, curve, steps)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' RuntimeWarning (an all-NaN slice is a missing value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ============================================================================================
# Entries


_PART_SEPARATOR = " "


def _split_variant(cell: dict[str, Any]) -> tuple[str, str]:
    """(entry variant, env variant): the env's own non-default parameters belong to the task."""
    text = cell.get("variant") or ""
    if not text:
        return "", ""
    names = [str(cell.get(k)) for k in ("algorithm", "topology", "env", "replay") if cell.get(k)]
    pattern = r" (?=(?:" + "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)) + r")\.)"
    parts = re.split(pattern, text)
    env_prefix = f"{cell.get('env')}."
    entry = [p for p in parts if not p.startswith(env_prefix)]
    env = [p[len(env_prefix):] for p in parts if p.startswith(env_prefix)]
    return _PART_SEPARATOR.join(entry), ",".join(env)


def _entry_key(cell: dict[str, Any], variant: str, group_by: Sequence[str]) -> tuple[str, str, str, str]:
    values = {"algorithm": str(cell["algorithm"]), "variant": variant, "topology": str(cell["topology"]), "replay": str(cell["replay"])}
    return tuple(values[f] if f in group_by else "*" for f in GROUP_FIELDS)  # type: ignore[return-value]


def _label(key: tuple[str, str, str, str], group_by: Sequence[str]) -> str:
    algorithm, variant, topology, replay = key
    parts = [value for name, value in (("algorithm", algorithm), ("topology", topology), ("replay", replay)) if name in group_by]
    label = " · ".join(parts) if parts else "all"
    if "variant" in group_by and variant:
        label += f" ({variant})"
    return label


def _first_line(error: str | None) -> str:
    if not error:
        return "no error recorded"
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):
        return lines[-1]  # a traceback's first line says nothing; its last names the exception
    return lines[0] if lines else "no error recorded"


def _cell_name(cell: dict[str, Any]) -> str:
    return f"{cell['cell_id']} ({cell['algorithm']} · {cell['topology']} · {cell['env']} · {cell['replay']} · seed {cell['seed']})"


def _resolve_baseline(baseline: str, labels: list[str]) -> str:
    if baseline in labels:
        return baseline
    lowered = baseline.lower()
    matches = [label for label in labels if lowered in label.lower()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = "; ".join(f'"{m}"' for m in matches[:5]) + ("; …" if len(matches) > 5 else "")
        raise UserError(f'baseline "{baseline}" matches {len(matches)} entries ({shown}): name one exactly')
    # Suggest an entry, or a part of one ("ring" for "rnig") that names exactly one entry.
    parts: dict[str, set[str]] = {}
    for label in labels:
        for part in re.split(r" · | \(|\)", label):
            if part.strip():
                parts.setdefault(part.strip(), set()).add(label)
    candidates = labels + [part for part, owners in parts.items() if len(owners) == 1 and part not in labels]
    suggestion = close_match(baseline, candidates)
    hint = f'; did you mean "{suggestion}"?' if suggestion else ""
    shown = ", ".join(f'"{label}"' for label in labels[:8]) + (", …" if len(labels) > 8 else "")
    return _raise(UserError(f'unknown baseline entry "{baseline}"{hint} (entries: {shown})'))


def _raise(error: Exception) -> Any:
    raise error


def _mean(values: Iterable[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else _NAN


# ============================================================================================
# The report


@dataclass
class _Entries:
    """Completed cells grouped into entries and tasks (an env family, with its own non-default
    parameters when it has some)."""

    keys: list[tuple[str, str, str, str]]  # (algorithm, variant, topology, replay); "*" = pooled
    labels: dict[tuple, str]
    key_of: dict[str, tuple]  # every cell id (any status) -> its entry
    task_of: dict[str, str]  # every cell id -> its task
    members: dict[tuple, dict[str, list[str]]]  # entry -> task -> scored cell ids
    env_of_task: dict[str, str]


def _group(runs: Runs, completed_ids: list[str], value_of: dict[str, float], group_by: Sequence[str]) -> _Entries:
    key_of: dict[str, tuple] = {}
    task_of: dict[str, str] = {}
    for cell in runs.cells:
        entry_variant, env_variant = _split_variant(cell)
        key_of[cell["cell_id"]] = _entry_key(cell, entry_variant, group_by)
        task_of[cell["cell_id"]] = cell["env"] + (f" ({env_variant})" if env_variant else "")
    keys = sorted(set(key_of.values()))
    members: dict[tuple, dict[str, list[str]]] = {key: {} for key in keys}
    for cid in completed_ids:
        if not math.isnan(value_of[cid]):
            members[key_of[cid]].setdefault(task_of[cid], []).append(cid)
    env_of_task = {task_of[cell["cell_id"]]: cell["env"] for cell in runs.cells}
    return _Entries(keys, {key: _label(key, group_by) for key in keys}, key_of, task_of, members, env_of_task)


def _matrix(cell_ids_by_task: dict[str, list[str]], values: dict[str, float], tasks: Sequence[str]) -> np.ndarray:
    """[runs, tasks] with NaN padding where a task has fewer runs."""
    columns = [[values[cid] for cid in cell_ids_by_task.get(task, [])] for task in tasks]
    out = np.full((max([len(c) for c in columns] + [1]), len(tasks)), _NAN)
    for j, column in enumerate(columns):
        out[: len(column), j] = column
    return out


def _check_options(metric: str, group_by: Sequence[str], repetitions: int, confidence: float) -> None:
    if metric not in METRICS:
        suggestion = close_match(metric, METRICS)
        hint = f'; did you mean "{suggestion}"?' if suggestion else ""
        raise UserError(f'unknown metric "{metric}"{hint} (choose final: the final evaluation, or auc: the area under the learning curve)')
    for name in group_by:
        if name not in GROUP_FIELDS:
            suggestion = close_match(name, GROUP_FIELDS)
            hint = f'; did you mean "{suggestion}"?' if suggestion else ""
            raise UserError(f'cannot group by "{name}"{hint} (choose from {", ".join(GROUP_FIELDS)})')
    if isinstance(repetitions, bool) or int(repetitions) != repetitions or repetitions < 1:
        raise UserError(f"repetitions {repetitions}: give a whole number of bootstrap repetitions, at least 1")
    if not 0 < confidence < 1:
        raise UserError(f"confidence {confidence}: give a level strictly between 0 and 1, e.g. 0.95")


def _excluded_line(cell: dict[str, Any]) -> str:
    status = cell["status"]
    if status == "failed":
        return f"excluded {_cell_name(cell)}: failed — {_first_line(cell.get('error'))}"
    if status == "running":
        return f"excluded {_cell_name(cell)}: running (still running, or its run was killed: re-run the grid)"
    return f"excluded {_cell_name(cell)}: {status} (re-run the grid to finish it)"


def build_report(
    runs: Runs,
    *,
    metric: str = "final",
    split: str = "train",
    group_by: Sequence[str] = GROUP_FIELDS,
    baseline: str | None = None,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    registry: Any = None,
) -> Report:
    """Score, group and aggregate the runs into a `Report` (see the module docstring).

    `metric`: "final" (the final evaluation) or "auc" (mean score over the evaluations: the
    normalised area under the learning curve), on evaluation split `split`. `group_by`: the
    fields that tell entries apart (a subset of `GROUP_FIELDS`). `baseline`: an entry's label or
    an unambiguous part of it. `registry`: where env families' `score_range` is looked up
    (default: `env_registry()`).
    """
    from benchbase.report import stats

    group_by = tuple(dict.fromkeys(group_by))
    _check_options(metric, group_by, repetitions, confidence)
    repetitions = int(repetitions)
    if registry is None:
        registry = env_registry()
    problems = list(runs.notes)
    options = dict(repetitions=repetitions, confidence=confidence, seed=seed)

    # -- score every completed cell ----------------------------------------------------------------
    completed = [cell for cell in runs.cells if cell["status"] == "completed"]
    cell_ids = [cell["cell_id"] for cell in completed]
    env_names = sorted({cell["env"] for cell in completed})
    cell_family = np.array([env_names.index(cell["env"]) for cell in completed], dtype=np.int64)
    has_success = _success_by_family(runs, cell_ids, cell_family, len(env_names))
    families_by_name = _families(env_names, dict(zip(env_names, has_success)), registry, problems,
                                 _task_ids(runs, completed))
    scores = _score(runs, cell_ids, cell_family, [families_by_name[name] for name in env_names])
    if runs.episodes.num_rows:
        unevaluated = sorted(set(pc.unique(runs.episodes.column("cell_id")).to_pylist()))
        problems.append(
            f"{len(unevaluated)} completed cell(s) have no evaluations (e.g. {unevaluated[0]}): scored from their "
            f"training episodes on the train split (final: the last {100 // EPISODE_BINS}% of their env steps)"
        )
    if split not in scores.splits:
        if not scores.splits:
            raise UserError("the completed cells have no evaluation or episode rows: nothing to score")
        available = _split_order(scores.splits)
        same = [name for name in available if name.lower() == split.lower()]
        suggestion = same[0] if same else close_match(split, available)
        hint = f'; did you mean "{suggestion}"?' if suggestion else ""
        raise UserError(f'no evaluations on split "{split}"{hint} (available: {", ".join(available)})')
    s = scores.splits.index(split)
    chosen = scores.final if metric == "final" else scores.auc
    value_of = {cid: float(chosen[i, s]) for i, cid in enumerate(cell_ids)}
    auc_of = {cid: float(scores.auc[i, s]) for i, cid in enumerate(cell_ids)}

    without_split = []
    for f, env in enumerate(env_names):
        if np.isnan(chosen[cell_family == f, s]).all():
            without_split.append(env)
            problems.append(f"env family {env} has no evaluations on split {split}: left out of the scores")
    for i, cell in enumerate(completed):
        if math.isnan(value_of[cell["cell_id"]]) and cell["env"] not in without_split:
            problems.append(f"completed cell {_cell_name(cell)} has no score on split {split}: left out")

    # -- entries ---------------------------------------------------------------------------------
    entries = _group(runs, cell_ids, value_of, group_by)
    labels, members = entries.labels, entries.members
    excluded: dict[tuple, int] = {}
    for cell in runs.cells:
        if cell["status"] != "completed":
            key = entries.key_of[cell["cell_id"]]
            excluded[key] = excluded.get(key, 0) + 1
            problems.append(_excluded_line(cell))
    tasks = sorted({entries.task_of[cid] for cid in cell_ids if not math.isnan(value_of[cid])})
    for key in entries.keys:
        counts = {task: len(cids) for task, cids in members[key].items()}
        if counts and len(set(counts.values())) > 1:
            most = max(counts.values())
            short = ", ".join(f"{task} {n} of {most}" for task, n in sorted(counts.items()) if n < most)
            problems.append(f"{labels[key]}: missing runs ({short}); its scores use the runs it has")
        absent = [task for task in tasks if task not in counts]
        if counts and absent:
            problems.append(f"{labels[key]}: no runs on {', '.join(absent)}; its scores pool its other families only")
        budgets = {c["budget"] for c in completed if entries.key_of[c["cell_id"]] == key and c.get("budget") is not None}
        if len(budgets) > 1:
            problems.append(f"{labels[key]}: pools cells with different env-step budgets ({', '.join(f'{b:,}' for b in sorted(budgets))})")

    matrices: dict[tuple, tuple[list[str], np.ndarray]] = {}  # entry -> (its tasks, [runs, tasks])
    estimates: dict[tuple, dict[str, Estimate]] = {}
    auc_estimates: dict[tuple, Estimate] = {}
    for key in entries.keys:
        own = [task for task in tasks if members[key].get(task)]
        if not own:
            estimates[key] = {name: _NO_ESTIMATE for name in ("iqm", "median", "mean", "optimality_gap")}
            auc_estimates[key] = _NO_ESTIMATE
            continue
        matrices[key] = (own, _matrix(members[key], value_of, own))
        estimates[key] = stats.aggregate_estimates(matrices[key][1], **options)
        if metric == "auc":
            auc_estimates[key] = estimates[key]["iqm"]
        else:
            auc_estimates[key] = stats.aggregate_estimates(_matrix(members[key], auc_of, own), aggregates=("iqm",), **options)["iqm"]

    def rank(key: tuple) -> tuple:
        value, mean = estimates[key]["iqm"].value, estimates[key]["mean"].value
        return (math.isnan(value), -value if not math.isnan(value) else 0.0, -mean if not math.isnan(mean) else 0.0, labels[key])

    ordered = sorted(entries.keys, key=rank)
    scored = [key for key in ordered if key in matrices]
    baseline_label = _resolve_baseline(baseline, [labels[key] for key in ordered]) if baseline is not None else None
    key_of_label = {labels[key]: key for key in entries.keys}
    if baseline_label is not None and key_of_label[baseline_label] not in matrices:
        problems.append(f"baseline {baseline_label} has no scored run: no probability of improvement against it")

    # -- probability of improvement ------------------------------------------------------------------
    def improvement(x: tuple, y: tuple) -> Estimate | None:
        if x not in matrices or y not in matrices:
            return None
        common = [task for task in matrices[x][0] if task in matrices[y][0]]
        if not common:
            return None
        return stats.probability_of_improvement(_matrix(members[x], value_of, common), _matrix(members[y], value_of, common), **options)

    improvements: list[Improvement] = []
    if len(scored) <= PAIRWISE_LIMIT:
        for i, x in enumerate(scored):
            for y in scored[i + 1:]:
                estimate = improvement(x, y)
                if estimate is None:
                    problems.append(f"{labels[x]} and {labels[y]} share no env family: no probability of improvement")
                    continue
                improvements.append(Improvement(labels[x], labels[y], estimate))
                # P(Y > X) = 1 − P(X > Y) on the very same bootstrap samples (ties count one half).
                improvements.append(Improvement(labels[y], labels[x], Estimate(1 - estimate.value, 1 - estimate.high, 1 - estimate.low)))
    elif scored:
        reference = key_of_label[baseline_label] if baseline_label is not None else scored[0]
        for x in scored:
            estimate = improvement(x, reference) if x != reference else None
            if estimate is not None:
                improvements.append(Improvement(labels[x], labels[reference], estimate))
    found = {(imp.better, imp.worse): imp.probability for imp in improvements}

    # -- leaderboard with costs ----------------------------------------------------------------------
    completed_of: dict[tuple, list[dict[str, Any]]] = {}
    for cell in completed:
        completed_of.setdefault(entries.key_of[cell["cell_id"]], []).append(cell)
    rows: list[LeaderboardRow] = []
    for key in ordered:
        cells = completed_of.get(key, [])
        p_baseline = None
        if baseline_label is not None and labels[key] != baseline_label:
            p_baseline = found.get((labels[key], baseline_label)) or improvement(key, key_of_label[baseline_label])
        recorded = [runs.consensus[c["cell_id"]] for c in cells if runs.consensus.get(c["cell_id"]) is not None]
        algorithm, variant, topology, replay = key
        rows.append(LeaderboardRow(
            entry=labels[key], algorithm=algorithm, topology=topology, replay=replay, variant=variant,
            runs=int((~np.isnan(matrices[key][1])).sum()) if key in matrices else 0,
            excluded=excluded.get(key, 0),
            iqm=estimates[key]["iqm"], median=estimates[key]["median"], mean=estimates[key]["mean"],
            optimality_gap=estimates[key]["optimality_gap"], auc=auc_estimates[key],
            probability_of_improvement=p_baseline,
            steps_per_second=_mean(c.get("steps_per_second") for c in cells),
            wall_time_s=_mean(c.get("wall_time_s") for c in cells),
            bytes_sent_per_learner=_mean(c.get("bytes_sent_per_learner") for c in cells),
            consensus_distance=_mean(recorded) if recorded else None,
        ))

    # -- performance profiles ------------------------------------------------------------------------
    values = np.array([v for v in value_of.values() if not math.isnan(v)])
    kinds = {families_by_name[entries.env_of_task[task]].kind for task in tasks}
    if kinds == {RAW}:  # raw returns: the data's own range
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        high = high if high > low else low + 1.0
    else:
        low = min(0.0, float(values.min())) if len(values) else 0.0
        high = max(1.0, float(values.max())) if len(values) else 1.0
    thresholds = np.linspace(low, high, 101)
    profiles = []
    for key in scored:
        fraction, f_low, f_high = stats.performance_profile(matrices[key][1], thresholds, **options)
        profiles.append(Profile(labels[key], thresholds, fraction, f_low, f_high))

    # -- learning curves and the generalisation table --------------------------------------------------
    index_of = {cid: i for i, cid in enumerate(cell_ids)}
    split_columns = _split_order(scores.splits)
    curves: list[Curve] = []
    generalisation: list[GeneralisationCell] = []
    ragged: list[str] = []
    for key in scored:
        for task in matrices[key][0]:
            rows_of = [index_of[cid] for cid in members[key][task]]
            curve = scores.curve[rows_of, s, :]
            present = ~np.isnan(curve)
            points = np.flatnonzero(present.all(axis=0))
            if len(points) < np.count_nonzero(present.any(axis=0)):
                ragged.append(f"{labels[key]} on {task}")
            if len(points):
                mean, c_low, c_high = stats.mean_with_interval(curve[:, points], **options)
                with _quiet():
                    steps = np.nanmean(scores.steps[rows_of, s][:, points], axis=0)
                curves.append(Curve(labels[key], task, steps, mean, c_low, c_high))
            finals = scores.final[rows_of][:, [scores.splits.index(name) for name in split_columns]]
            observed = ~np.isnan(finals).all(axis=0)
            if observed.any():
                mean, g_low, g_high = stats.mean_with_interval(finals[:, observed], **options)
                runs_at = (~np.isnan(finals[:, observed])).sum(axis=0)
                for j, name in enumerate(np.array(split_columns)[observed]):
                    generalisation.append(GeneralisationCell(
                        labels[key], task, str(name), Estimate(float(mean[j]), float(g_low[j]), float(g_high[j])), int(runs_at[j])))
    if ragged:
        problems.append(f"learning curves keep only the evaluations that every run has ({'; '.join(ragged[:3])}"
                        f"{'; …' if len(ragged) > 3 else ''}): its runs were evaluated a different number of times")

    score_kinds = {task: families_by_name[entries.env_of_task[task]].kind for task in tasks}
    if RAW in score_kinds.values() and len(set(score_kinds.values())) > 1:
        problems.append("raw returns are pooled with normalised scores: compare entries within one family, or declare score_range")
    return Report(
        sources=list(runs.sources), metric=metric, split=split, score_kinds=score_kinds, leaderboard=rows,
        generalisation=generalisation, curves=curves, profiles=profiles, improvements=improvements,
        baseline=baseline_label, problems=problems, repetitions=repetitions, confidence=confidence,
        score_ranges={task: (families_by_name[entries.env_of_task[task]].low, families_by_name[entries.env_of_task[task]].high)
                      for task, kind in score_kinds.items()
                      if kind == NORMALISED and not families_by_name[entries.env_of_task[task]].per_task},
    )


def _split_order(splits: Sequence[str]) -> list[str]:
    order = {"train": 0, "D": 1, "R": 2, "E": 3}
    return sorted(splits, key=lambda s: (order.get(s, 4), s))


# ============================================================================================
# Writing


LEADERBOARD_SCHEMA_VERSION = 1


def leaderboard_arrow(report: Report) -> pa.Table:
    """The leaderboard as an Arrow table: one row per entry, estimates as value/low/high columns."""
    columns: dict[str, list[Any]] = {"rank": [], "entry": [], "algorithm": [], "topology": [], "replay": [], "variant": [],
                                     "runs": [], "excluded": []}
    estimate_names = ("iqm", "median", "mean", "optimality_gap", "auc", "probability_of_improvement")
    for name in estimate_names:
        for suffix in ("", "_low", "_high"):
            columns[name + suffix] = []
    for name in ("steps_per_second", "wall_time_s", "bytes_sent_per_learner", "consensus_distance"):
        columns[name] = []
    for position, row in enumerate(report.leaderboard, start=1):
        columns["rank"].append(position)
        for name in ("entry", "algorithm", "topology", "replay", "variant", "runs", "excluded"):
            columns[name].append(getattr(row, name))
        for name in estimate_names:
            estimate = getattr(row, name)
            for suffix, part in (("", "value"), ("_low", "low"), ("_high", "high")):
                columns[name + suffix].append(None if estimate is None or math.isnan(getattr(estimate, part))
                                              else float(getattr(estimate, part)))
        for name in ("steps_per_second", "wall_time_s", "bytes_sent_per_learner", "consensus_distance"):
            value = getattr(row, name)
            columns[name].append(None if value is None or math.isnan(value) else float(value))
    fields = [pa.field(name, pa.int64() if name in ("rank", "runs", "excluded") else
                       pa.string() if name in ("entry", "algorithm", "topology", "replay", "variant") else pa.float64())
              for name in columns]
    metadata = {
        "benchbase.table": "leaderboard", "benchbase.schema_version": str(LEADERBOARD_SCHEMA_VERSION),
        "benchbase.metric": report.metric, "benchbase.split": report.split,
        "benchbase.baseline": report.baseline or "", "benchbase.checkpoints.sources": json.dumps(report.sources),
        "benchbase.repetitions": str(report.repetitions), "benchbase.confidence": str(report.confidence),
        "benchbase.score_kinds": json.dumps(report.score_kinds, sort_keys=True),
    }
    return pa.Table.from_pydict(columns, schema=pa.schema(fields, metadata=metadata))


def write_report(report: Report, out_dir: Path | str, *, html: bool = True) -> list[Path]:
    """Write leaderboard.parquet, report.md and (unless html=False) report.html into `out_dir`.

    Everything is rendered before anything is written, and each file is written to a temporary
    name and renamed, so a failure leaves the folder as it was, file by file.
    """
    from benchbase.report.text import render_markdown

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the report")
    table = leaderboard_arrow(report)
    texts = {"report.md": render_markdown(report)}
    if html:
        from benchbase.report.html import render_html

        texts["report.html"] = render_html(report)

    def readable(write: Any) -> Any:
        def write_then_share(temporary: str) -> None:
            write(temporary)
            os.chmod(temporary, 0o644)  # the temporary file is private (mkstemp); a report is for sharing
        return write_then_share

    def text(content: str) -> Any:
        def write(temporary: str) -> None:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(content)
        return write

    written = [out / "leaderboard.parquet"]
    write_atomic(written[0], readable(lambda temporary: pq.write_table(table, temporary)))
    for name, content in texts.items():
        written.append(out / name)
        write_atomic(written[-1], readable(text(content)))
    return written
