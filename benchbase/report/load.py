"""Reading run folders for `bench report`: one or many folders (or globs), merged into `Runs`.

A cell id found in several folders is taken once (the latest completed copy, and the report says
so). Only what the report needs is read, columnar (`EVALUATION_COLUMNS`, `EPISODE_COLUMNS`): the
evaluation rows of the completed cells, their final consensus distance, and their training
episodes (for the training curves, and to score completed cells without evaluations,
`--evaluations 0`). An older or newer schema version, an empty folder, a folder without a
completed cell, and a truncated or corrupted cells.parquet or learner file are each a one-line
UserError naming the file.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchbase.errors import UserError
from benchbase.results import (
    EPISODES_SCHEMA,
    EVALUATIONS_SCHEMA,
    METRICS_SCHEMA,
    PARAM_COLUMNS,
    SCHEMA_VERSION,
    read_parquet,
)

EVALUATION_COLUMNS = [
    "cell_id",
    "evaluation",
    "final",
    "cell_env_step",
    "split",
    "task_id",
    "episode_return",
    "success",
]
EPISODE_COLUMNS = ["cell_id", "learner", "cell_env_step", "task_id", "episode_return", "success"]


@dataclass
class Runs:
    """What `load_runs` read: every cell of the folders (one row per cell id) and the rows needed
    to score the completed ones and draw their learning curves."""

    sources: list[str]
    cells: list[dict[str, Any]]  # cells.parquet rows, `config` parsed ({} if unreadable), plus "source"
    evaluations: pa.Table  # EVALUATION_COLUMNS of the completed cells
    episodes: pa.Table  # EPISODE_COLUMNS, only for completed cells without evaluations
    training: pa.Table  # EPISODE_COLUMNS of every completed cell: its training episodes
    consensus: dict[str, float]  # cell id -> final consensus distance (mean over learners recording it)
    notes: list[str] = field(default_factory=list)  # what loading found worth saying


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


#: What a broken file's error says before its reason ("Could not open Parquet input source '…': ").
_ARROW_PREFIX = re.compile(r"^.*?Parquet input source '[^']*':\s*")


def _unreadable(path: Path | str, error: BaseException) -> UserError:
    """The one-line error for a results file that Parquet cannot read."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = _ARROW_PREFIX.sub("", lines[0]).split(". ")[0].rstrip(" :.") if lines else ""
    reason = reason or type(error).__name__
    reason = reason if len(reason) <= 120 else reason[:119] + "…"
    return UserError(
        f"{path} cannot be read ({reason}): the file is truncated or corrupted; restore it from a copy, "
        "or re-run its grid into a new --out folder and report that"
    )


def _schema_version(path: Path) -> str:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from error
    return metadata.get(b"benchbase.schema_version", b"none").decode(errors="replace")


def _check_version(folder: Path, path: Path) -> None:
    version = _schema_version(path)
    if version != str(SCHEMA_VERSION):
        raise UserError(
            f"{folder}: results written with schema version {version} ({path.name}); this benchbase reads "
            f"version {SCHEMA_VERSION}: report it with the benchbase that wrote it, or re-run the grid"
        )


def _run_folders(paths: Sequence[str]) -> list[Path]:
    """Expand globs; every folder named must be a run folder (one with cells.parquet)."""
    if not paths:
        raise UserError("bench report needs at least one run folder (e.g. results/grid-1a2b3c4d or 'results/*')")
    folders: list[Path] = []
    seen: set[Path] = set()
    for text in paths:
        if _is_glob(text) and not Path(text).exists():
            matches = sorted(Path(match) for match in glob.glob(text))
            runs = [m for m in matches if (m / "cells.parquet").is_file()]
            if not runs:
                raise UserError(f"{text} matches no run folder (a folder with cells.parquet)")
        else:
            path = Path(text)
            if not path.exists():
                raise UserError(f"{text}: no such folder")
            if not path.is_dir():
                raise UserError(f"{text} is not a folder: give a run folder (one with cells.parquet)")
            if not (path / "cells.parquet").is_file():
                inner = sorted(child.name for child in path.iterdir() if (child / "cells.parquet").is_file())
                if inner:
                    raise UserError(
                        f"{text} is not a run folder but holds {len(inner)} ({', '.join(inner[:3])}"
                        f"{', …' if len(inner) > 3 else ''}): pass them, e.g. '{path / '*'}'"
                    )
                what = "is empty" if not any(path.iterdir()) else "has no cells.parquet"
                raise UserError(f"{text} {what}: not a benchbase run folder (bench run --out writes one)")
            runs = [path]
        for run in runs:
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                folders.append(run)
    return folders


def _cell_files(folder: Path, table: str, cell_id: str) -> list[str]:
    directory = folder / table / cell_id
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [str(directory / name) for name in names if name.endswith(".parquet") and not name.startswith(".")]


def _recency(folder: Path, cell: dict[str, Any]) -> float:
    """When a cell's results were written: its learner files, else its folder's cells.parquet."""
    for table in ("evaluations", "episodes", "metrics"):
        try:
            return (folder / table / cell["cell_id"]).stat().st_mtime
        except FileNotFoundError:
            continue
    return (folder / "cells.parquet").stat().st_mtime


_CELL_COLUMNS = ("cell_id", "status", "algorithm", "topology", "env", "replay", "seed")


def _read_cells(folder: Path) -> list[dict[str, Any]]:
    path = folder / "cells.parquet"
    _check_version(folder, path)
    try:
        table = read_parquet(path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from error
    missing = [name for name in _CELL_COLUMNS if name not in table.column_names]
    if missing:
        raise UserError(
            f"{path} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}: not a benchbase cells "
            "table; restore it from a copy, or re-run its grid into a new --out folder"
        )
    # The typed parameter columns repeat `config`, which the report reads parsed.
    rows = table.drop_columns([name for name in ("config", *PARAM_COLUMNS) if name in table.column_names]).to_pylist()
    configs = table.column("config").to_pylist() if "config" in table.column_names else [None] * len(rows)
    for row, config in zip(rows, configs):
        row["source"] = str(folder)
        try:
            resolved = json.loads(config) if config else {}
        except json.JSONDecodeError:
            resolved = {}
        row["config"] = resolved if isinstance(resolved, dict) else {}
    return rows


def _read_table(files: list[str], schema: pa.Schema, columns: list[str], filter: Any = None) -> pa.Table:
    """`columns` of the learner files as one table; a file Parquet cannot read is a UserError."""
    if not files:
        return schema.empty_table().select(columns)
    try:
        return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns, filter=filter)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(_broken_file(files, schema, columns) or Path(files[0]).parents[1], error) from error


def _broken_file(files: list[str], schema: pa.Schema, columns: list[str]) -> str | None:
    """Which of `files` cannot be read (only looked for once reading them all failed)."""
    for path in files:
        try:
            ds.dataset([path], schema=schema, format="parquet").to_table(columns=columns)
        except (pa.ArrowException, OSError):
            return path
    return None


def _final_consensus(metrics: pa.Table) -> dict[str, float]:
    """Per cell: the consensus distance at its largest recorded iteration, mean over learners."""
    if metrics.num_rows == 0:
        return {}
    last = metrics.group_by("cell_id").aggregate([("iteration", "max")])
    joined = metrics.join(
        last, keys=["cell_id", "iteration"], right_keys=["cell_id", "iteration_max"], join_type="inner"
    )
    means = joined.group_by("cell_id").aggregate([("value", "mean")])
    return dict(zip(means.column("cell_id").to_pylist(), means.column("value_mean").to_pylist()))


def load_runs(paths: Sequence[str]) -> Runs:
    """Read run folders (or globs of them) into one `Runs`, de-duplicating cell ids."""
    folders = _run_folders(paths)
    cells, notes = _read_all_cells(folders)
    if not cells:
        raise UserError(f"{_names(folders)}: no cells listed (the run was set up but nothing ran): nothing to report")
    completed = [row for row in cells if row["status"] == "completed"]
    if not completed:
        raise UserError(f"{_names(folders)}: no completed cell ({_status_counts(cells)}): nothing to report")
    evaluations, episodes, training, metrics = _read_rows(completed)
    return Runs(
        sources=[str(folder) for folder in folders],
        cells=cells,
        evaluations=evaluations,
        episodes=episodes,
        training=training,
        consensus=_final_consensus(metrics),
        notes=notes,
    )


def _read_all_cells(folders: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every folder's cells, one row per cell id (the latest completed copy), sorted by source and
    id; and notes on folders without cells and on cells found more than once."""
    notes: list[str] = []
    copies: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        rows = _read_cells(folder)
        if not rows:
            notes.append(f"{folder} lists no cells")
        elif not any(row["status"] == "completed" for row in rows) and len(folders) > 1:
            notes.append(f"{folder} has no completed cell ({_status_counts(rows)})")
        for row in rows:
            copies.setdefault(row["cell_id"], []).append(row)
    chosen: dict[str, dict[str, Any]] = {}
    for cell_id, rows in copies.items():
        if len(rows) == 1:
            chosen[cell_id] = rows[0]
            continue
        for row in rows:
            row["_recency"] = _recency(Path(row["source"]), row)
        best = max(rows, key=lambda r: (r["status"] == "completed", r["_recency"]))
        chosen[cell_id] = best
        others = ", ".join(f"{r['source']} ({r['status']})" for r in rows if r is not best)
        notes.append(
            f"cell {cell_id} appears {len(rows)} times: using {best['source']} ({best['status']}"
            f"{', the latest' if best['status'] == 'completed' else ''}), not {others}"
        )
    cells = sorted(chosen.values(), key=lambda r: (r["source"], r["cell_id"]))
    for row in cells:
        row.pop("_recency", None)
    return cells, notes


def _read_rows(completed: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """The completed cells' evaluations, training episodes of the cells without evaluations, all
    their training episodes, and their consensus-distance metrics."""
    files: dict[str, list[str]] = {table: [] for table in ("evaluations", "episodes", "metrics")}
    checked: set[tuple[str, str]] = set()
    for row in completed:
        folder = Path(row["source"])
        for table, found_files in files.items():
            found = _cell_files(folder, table, row["cell_id"])
            if found and (row["source"], table) not in checked:  # the version is per run: one file each
                _check_version(folder, Path(found[0]))
                checked.add((row["source"], table))
            found_files += found
    evaluations = _read_table(files["evaluations"], EVALUATIONS_SCHEMA, EVALUATION_COLUMNS)
    training = _read_table(files["episodes"], EPISODES_SCHEMA, EPISODE_COLUMNS)
    # Cells without evaluation rows (--evaluations 0) are scored from their training episodes.
    present = pc.unique(evaluations.column("cell_id")) if evaluations.num_rows else pa.array([], pa.string())
    episodes = training.filter(pc.invert(pc.is_in(training.column("cell_id"), value_set=present)))
    consensus = pc.field("metric") == "consensus_distance"
    metrics = _read_table(files["metrics"], METRICS_SCHEMA, ["cell_id", "iteration", "value"], filter=consensus)
    return evaluations, episodes, training, metrics


def _names(folders: Sequence[Path]) -> str:
    return str(folders[0]) if len(folders) == 1 else f"{len(folders)} run folders"


def _status_counts(rows: Iterable[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
