"""`bench report --export`: the report's per-run scores in the formats of other evaluation tools.

Both exports use the report's own numbers: every completed cell scored and normalised by
`benchbase.report.scoring` (the success rate where the family records success, else the
normalised or raw return), grouped into the report's entries and tasks by
`benchbase.report.entries` with the same `group_by`. Every evaluation split gets its own files.

`rliable` (Agarwal et al. 2021; `rliable.library` takes dicts algorithm -> array), in
`<out>/rliable/`:

- `final-<split>.npz`: entry label -> float64 [runs, tasks], each cell's final normalised score
  (the leaderboard's `final` metric on that split): `dict(np.load(path))` is rliable's score dict;
- `curves-<split>.npz`: entry label -> float64 [runs, tasks, points], each cell's normalised
  score at each evaluation (rliable's sample-efficiency curves);
- `steps-<split>.npz`: entry label -> float64 [runs, tasks, points], the cell's env steps (all
  its learners together) at each of those points;
- `layout.json`: per split, the task (column) names, each entry's cells and seeds per
  [run][task] and its points' evaluation numbers; the score kind of each task.

Tasks (columns) are the split's tasks with a score, sorted, the same for every entry; run i of
task j is the entry's cell with the i-th smallest seed on that task (cells pooled by `group_by`
with equal seeds in cell id order), so a row is one seed where every task has the same seeds.
NaN marks what is missing: a task an entry has fewer runs on (or none), an evaluation a run does
not have. The report's statistics take the same values per task, in another order.
rliable's aggregates need complete matrices: `layout.json` says per entry whether it is.

`marl-eval` (Gorsane et al. 2022), `<out>/marl-eval/<split>.json`: environment (the env family)
-> task (the report's task) -> algorithm (the entry label) -> `run_<i>` (the rliable export's run
i) -> `step_<k>` (k: the
evaluation number) -> {`step_count`: the cell's env steps, `return`: [each evaluation episode's
raw return], `score`: [its normalised score]}, and last `absolute_metrics`: the final
evaluation's episodes. Environment and task names are lower-cased (marl-eval lower-cases the
names it is asked for). Give marl-eval `metrics_to_normalize=["return"]` to have it min-max
normalise returns; `score` is normalised already. marl-eval needs the same runs and steps for
every algorithm and task of an environment.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchbase.errors import UserError, close_match
from benchbase.report import scoring
from benchbase.report.entries import GROUP_FIELDS, Entries, EntryKey, group_entries, score_matrix
from benchbase.report.load import Runs
from benchbase.results import write_atomic

EXPORT_FORMATS: tuple[str, ...] = ("rliable", "marl-eval")
LAYOUT_VERSION = 1


def check_export_formats(values: Sequence[str]) -> tuple[str, ...]:
    """The formats `--export` names (repeated or comma-separated), each once; a UserError with a
    close match for an unknown one."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    for name in names:
        if name not in EXPORT_FORMATS:
            suggestion = close_match(name, EXPORT_FORMATS)
            hint = f'; did you mean "{suggestion}"?' if suggestion else ""
            raise UserError(f"--export {name}: unknown format{hint} (choose from {', '.join(EXPORT_FORMATS)})")
    if values and not names:
        raise UserError(f"--export is empty: name some of {', '.join(EXPORT_FORMATS)}")
    return tuple(dict.fromkeys(names))


@dataclass
class _Split:
    """One evaluation split's scores, grouped as the report groups them."""

    name: str
    index: int  # into cells.scores.splits
    value_of: dict[str, float]  # cell id -> its final score on this split (NaN: none)
    entries: Entries
    tasks: list[str]  # sorted: the tasks with a score
    keys: list[EntryKey]  # the entries with a score, by label


def _splits(runs: Runs, cells: scoring.CellScores, group_by: Sequence[str]) -> list[_Split]:
    found = []
    for index, name in enumerate(cells.scores.splits):
        value_of = {cid: float(cells.scores.final[i, index]) for i, cid in enumerate(cells.cell_ids)}
        entries = group_entries(runs, cells.cell_ids, value_of, group_by)
        for members in entries.members.values():  # run i: the i-th seed on every task
            for cell_ids in members.values():
                cell_ids.sort(key=lambda cid: (not isinstance(entries.seed_of[cid], int), entries.seed_of[cid], cid))
        tasks = sorted({entries.task_of[cid] for cid, value in value_of.items() if not math.isnan(value)})
        keys = sorted((key for key in entries.keys if any(entries.members[key].values())), key=entries.labels.get)
        if keys:
            found.append(_Split(name, index, value_of, entries, tasks, keys))
    return found


def export_report(
    runs: Runs,
    out_dir: Path | str,
    formats: Sequence[str],
    *,
    group_by: Sequence[str] = GROUP_FIELDS,
    registry: Any = None,
) -> list[Path]:
    """Write each of `formats` (`EXPORT_FORMATS`) for `runs` into `out_dir`, entries grouped by
    `group_by` as in the report; the paths written. Everything is computed before anything is
    written, and each file is written whole or not at all."""
    formats = check_export_formats(formats)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the report")
    cells = scoring.score_completed_cells(
        runs, registry if registry is not None else scoring.env_registry(), problems=[]
    )
    splits = _splits(runs, cells, tuple(dict.fromkeys(group_by)))
    if not splits:
        raise UserError("--export: no completed cell has a score: nothing to export")
    contents: dict[Path, bytes] = {}
    if "rliable" in formats:
        contents.update(_rliable(cells, splits, group_by, out / "rliable"))
    if "marl-eval" in formats:
        contents.update(_marl_eval(runs, cells, splits, out / "marl-eval"))
    for path, data in contents.items():
        write_atomic(path, lambda temporary, data=data: Path(temporary).write_bytes(data))
    return list(contents)


# ============================================================================================
# rliable


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """What `np.savez` writes (a zip of `<key>.npy` files), for keys of any text: savez takes
    them as keyword arguments, so a label such as "file" would collide with its own."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _rliable(
    cells: scoring.CellScores, splits: list[_Split], group_by: Sequence[str], folder: Path
) -> dict[Path, bytes]:
    scores = cells.scores
    row_of = {cid: i for i, cid in enumerate(cells.cell_ids)}
    contents: dict[Path, bytes] = {}
    layout: dict[str, Any] = {
        "schema_version": LAYOUT_VERSION,
        "group_by": list(group_by),
        "axes": {"final": ["run", "task"], "curves": ["run", "task", "point"], "steps": ["run", "task", "point"]},
        "splits": {},
    }
    kinds: dict[str, str] = {}
    for split in splits:
        entries, s = split.entries, split.index
        final, curves, steps, described = {}, {}, {}, {}
        for key in split.keys:
            label, members = entries.labels[key], entries.members[key]
            matrix = score_matrix(members, split.value_of, split.tasks)
            runs = matrix.shape[0]
            grid = [
                [members.get(task, [])[i] if i < len(members.get(task, [])) else None for task in split.tasks]
                for i in range(runs)
            ]
            rows = [row_of[cid] for column in members.values() for cid in column]
            points = np.flatnonzero(~np.isnan(scores.curve[rows, s, :]).all(axis=0))
            curve = np.full((runs, len(split.tasks), len(points)), np.nan)
            step = np.full_like(curve, np.nan)
            for i, cells_of_run in enumerate(grid):
                for j, cid in enumerate(cells_of_run):
                    if cid is not None:
                        curve[i, j] = scores.curve[row_of[cid], s, points]
                        step[i, j] = scores.steps[row_of[cid], s, points]
            final[label], curves[label], steps[label] = matrix, curve, step
            described[label] = {
                "cells": grid,
                "seeds": [[None if cid is None else entries.seed_of[cid] for cid in run] for run in grid],
                "points": [int(point) for point in points],  # evaluation numbers (training bins: 1…)
                "complete": bool(not np.isnan(matrix).any()),
            }
            for task in members:
                kinds[task] = cells.families[entries.env_of_task[task]].kind
        names = {kind: f"{kind}-{split.name}.npz" for kind in ("final", "curves", "steps")}
        contents[folder / names["final"]] = _npz(final)
        contents[folder / names["curves"]] = _npz(curves)
        contents[folder / names["steps"]] = _npz(steps)
        layout["splits"][split.name] = {"files": names, "tasks": split.tasks, "entries": described}
    layout["score_kinds"] = dict(sorted(kinds.items()))
    contents[folder / "layout.json"] = json.dumps(layout, indent=1, default=str).encode()
    return contents


# ============================================================================================
# marl-eval


def _returns(table: pa.Table) -> np.ndarray:
    return pc.fill_null(pc.cast(table.column("episode_return"), pa.float64()), math.nan).to_numpy()


def _episode_level(runs: Runs, cells: scoring.CellScores) -> dict[str, np.ndarray]:
    """Every scored row (evaluation episodes; training episodes of cells without evaluations, as
    the report's pseudo-evaluations on train) with its cell, split, evaluation, final flag,
    normalised score and raw return: the rows the report reduces into its scores."""
    families = [cells.families[name] for name in cells.env_names]
    parts: list[dict[str, np.ndarray]] = []
    splits: list[str] = []
    if runs.evaluations.num_rows:
        part, splits = scoring._evaluation_rows(runs.evaluations, cells.cell_ids, cells.cell_family, families)
        keep = scoring._indices(runs.evaluations.column("cell_id"), cells.cell_ids) >= 0
        parts.append({**part, "return": _returns(runs.evaluations)[keep]})
    if runs.episodes.num_rows:
        if "train" not in splits:
            splits.append("train")
        part = scoring._episode_rows(runs.episodes, cells.cell_ids, cells.cell_family, families, splits.index("train"))
        keep = scoring._indices(runs.episodes.column("cell_id"), cells.cell_ids) >= 0
        parts.append({**part, "return": _returns(runs.episodes)[keep]})
    if splits != cells.scores.splits:  # the same construction as scoring.score: a mismatch is a bug
        raise RuntimeError(f"marl-eval export: splits {splits} differ from the report's {cells.scores.splits}")
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _metrics(rows: dict[str, np.ndarray], selected: np.ndarray) -> dict[str, list[float]]:
    returns, scores = rows["return"][selected], rows["score"][selected]
    return {
        "return": [float(v) for v in returns if not math.isnan(v)],
        "score": [float(v) for v in scores if not math.isnan(v)],  # the report's mean ignores NaN too
    }


def _marl_eval(runs: Runs, cells: scoring.CellScores, splits: list[_Split], folder: Path) -> dict[Path, bytes]:
    rows = _episode_level(runs, cells)
    scores = cells.scores
    row_of = {cid: i for i, cid in enumerate(cells.cell_ids)}
    # Rows of each (cell, split), in evaluation order.
    order = np.lexsort((rows["evaluation"], rows["split"], rows["cell"]))
    group = rows["cell"][order] * len(scores.splits) + rows["split"][order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(order)]
    of_group = {int(group[a]): order[a:b] for a, b in zip(starts, ends)}
    contents: dict[Path, bytes] = {}
    for split in splits:
        entries, s = split.entries, split.index
        data: dict[str, Any] = {}
        for key in split.keys:
            label = entries.labels[key]
            for task, members in sorted(entries.members[key].items()):
                env = entries.env_of_task[task].lower()
                algorithm = data.setdefault(env, {}).setdefault(task.lower(), {}).setdefault(label, {})
                for i, cid in enumerate(members):
                    selected = of_group.get(row_of[cid] * len(scores.splits) + s, np.array([], np.int64))
                    run: dict[str, Any] = {}
                    evaluations = rows["evaluation"][selected]
                    for evaluation in np.unique(evaluations):
                        at = selected[evaluations == evaluation]
                        steps = scores.steps[row_of[cid], s, int(evaluation)]
                        run[f"step_{int(evaluation)}"] = {"step_count": int(round(float(steps))), **_metrics(rows, at)}
                    final = selected[rows["final"][selected]]
                    if not len(final) and len(selected):  # an older writer: its last evaluation is the final one
                        final = selected[evaluations == evaluations.max()]
                    run["absolute_metrics"] = _metrics(rows, final)
                    algorithm[f"run_{i}"] = run
        contents[folder / f"{split.name}.json"] = json.dumps(data, indent=1).encode()
    return contents
