"""Result tables: Parquet schemas, atomic writers, readers and resume bookkeeping.

A run folder::

    grid.json                         grid spec, cells, package versions, schema version
    cells.parquet                     one row per cell: axes, status, error, wall time, throughput
    configs/<cell_id>.json            the cell's fully resolved config
    episodes/<cell_id>/learner-<r>.parquet
    evaluations/<cell_id>/learner-<r>.parquet
    metrics/<cell_id>/learner-<r>.parquet
    .run-holder.json                  the bench run writing the folder, while it runs (benchbase.run.ownership)

Each of episodes/, evaluations/, metrics/ reads as one dataset (`pyarrow.dataset.dataset(path)`,
DuckDB `read_parquet('run/episodes/**/*.parquet')`). Every file is written to a temporary name
and renamed, so a crash never leaves a half-written file that looks complete; only cells whose
`status` is `completed` keep learner files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchbase.errors import UserError

SCHEMA_VERSION = 1
TABLES = ("episodes", "evaluations", "metrics")

_TASK_PARAMS = pa.map_(pa.string(), pa.float64())


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"benchbase.table": table, "benchbase.schema_version": str(SCHEMA_VERSION)})


CELLS_SCHEMA = _schema(
    "cells",
    [
        pa.field("cell_id", pa.string()),
        pa.field("algorithm", pa.string()),
        pa.field("topology", pa.string()),
        pa.field("env", pa.string()),
        pa.field("replay", pa.string()),
        pa.field("variant", pa.string()),  # non-default parameters, e.g. "diff-a2c.lr=0.002 random.p=0.3"
        pa.field("seed", pa.int64()),
        pa.field("learners", pa.int64()),
        pa.field("status", pa.string()),  # completed | failed | interrupted
        pa.field("error", pa.string()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("startup_s", pa.float64()),
        pa.field("env_steps", pa.int64()),
        pa.field("steps_per_second", pa.float64()),
        pa.field("final_return", pa.float64()),
        pa.field("final_success", pa.float64()),
        pa.field("bytes_sent_per_learner", pa.float64()),
        pa.field("transport", pa.string()),  # shm | p2p | all-reduce | nccl | nccl-all-reduce | none
        pa.field("resumed_from_env_step", pa.int64()),  # cell env steps restored from checkpoints; null: from scratch
        pa.field("config", pa.string()),  # JSON of the resolved cell config
        # JSON {host, pid, boot_id, pid_started, started_at}: the process that ran (or runs) the cell.
        # Null in folders written before it existed; nullable, so the schema version stays.
        pa.field("runner", pa.string()),
    ],
)

EPISODES_SCHEMA = _schema(
    "episodes",
    [
        pa.field("cell_id", pa.string()),
        pa.field("learner", pa.int32()),
        pa.field("simulator", pa.int32()),
        pa.field("task_id", pa.string()),
        pa.field("task_params", _TASK_PARAMS),
        pa.field("env_step", pa.int64()),
        pa.field("cell_env_step", pa.int64()),
        pa.field("episode_return", pa.float64()),
        pa.field("episode_length", pa.int64()),
        pa.field("success", pa.bool_()),
        pa.field("wall_time_s", pa.float64()),
    ],
)

EVALUATIONS_SCHEMA = _schema(
    "evaluations",
    [
        pa.field("cell_id", pa.string()),
        pa.field("learner", pa.int32()),
        pa.field("evaluation", pa.int32()),
        pa.field("final", pa.bool_()),
        pa.field("env_step", pa.int64()),
        pa.field("cell_env_step", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("task_id", pa.string()),
        pa.field("task_params", _TASK_PARAMS),
        pa.field("episode_return", pa.float64()),
        pa.field("episode_length", pa.int64()),
        pa.field("success", pa.bool_()),
        pa.field("wall_time_s", pa.float64()),
    ],
)

METRICS_SCHEMA = _schema(
    "metrics",
    [
        pa.field("cell_id", pa.string()),
        pa.field("learner", pa.int32()),
        pa.field("iteration", pa.int64()),
        pa.field("env_step", pa.int64()),
        pa.field("cell_env_step", pa.int64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
    ],
)

SCHEMAS = {
    "cells": CELLS_SCHEMA,
    "episodes": EPISODES_SCHEMA,
    "evaluations": EVALUATIONS_SCHEMA,
    "metrics": METRICS_SCHEMA,
}


class RowBuffer:
    """Column lists for one table; cheap appends, one conversion at the end."""

    def __init__(self, schema: pa.Schema, columns: dict[str, list[Any]] | None = None) -> None:
        self.schema = schema
        self.columns: dict[str, list[Any]] = {name: list(columns[name]) if columns else [] for name in schema.names}

    def copy_columns(self) -> dict[str, list[Any]]:
        """A copy of the rows so far (for a checkpoint, while appending goes on)."""
        return {name: list(column) for name, column in self.columns.items()}

    def append(self, **row: Any) -> None:
        for name, column in self.columns.items():
            column.append(row[name])

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=self.schema)


def write_atomic(path: Path, write: Any) -> None:
    """Call write(temporary_path), then rename it to `path` (same folder, so rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_table(path: Path, table: pa.Table) -> None:
    write_atomic(path, lambda temporary: pq.write_table(table, temporary))


def write_json(path: Path, data: Any) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)

    write_atomic(path, write)


def read_parquet(path: Path) -> pa.Table:
    """One Parquet file read through one open handle. `pq.read_table(path)` opens the path more than
    once, so a reader racing an atomic rewrite (cells.parquet during a run) can pair the old file's
    footer with the new file's pages; a handle keeps the file it opened."""
    with open(path, "rb") as handle:
        return pq.ParquetFile(handle).read()


class RunFolder:
    """One run's results folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def cells_path(self) -> Path:
        return self.root / "cells.parquet"

    @property
    def grid_path(self) -> Path:
        return self.root / "grid.json"

    def learner_path(self, table: str, cell_id: str, learner: int) -> Path:
        return self.root / table / cell_id / f"learner-{learner}.parquet"

    def read_grid(self) -> dict[str, Any] | None:
        if not self.grid_path.exists():
            return None
        return json.loads(self.grid_path.read_text())

    def read_cells(self) -> dict[str, dict[str, Any]]:
        """Rows of cells.parquet by cell id ({} for a new folder)."""
        if not self.cells_path.exists():
            return {}
        table = read_parquet(self.cells_path)
        version = (table.schema.metadata or {}).get(b"benchbase.schema_version", b"?").decode()
        if version != str(SCHEMA_VERSION):
            raise UserError(
                f"{self.cells_path} has result schema version {version}; this benchbase reads version "
                f"{SCHEMA_VERSION}: use a new --out folder"
            )
        return {row["cell_id"]: row for row in table.to_pylist()}

    def write_cells(self, rows: Iterable[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(list(rows), schema=CELLS_SCHEMA)
        write_table(self.cells_path, table)

    def update_cells(self, changed: dict[str, dict[str, Any]]) -> None:
        """Replace some rows of cells.parquet, the others kept as they are on disk: read, apply
        and write under an exclusive lock, since several torchrun jobs may finish cells of one
        run folder at the same time."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".cells.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = self.read_cells()
            rows.update(changed)
            self.write_cells(rows.values())

    def clear_cell(self, cell_id: str) -> None:
        """Remove a cell's learner files (before a rerun, or after it failed)."""
        for table in TABLES:
            shutil.rmtree(self.root / table / cell_id, ignore_errors=True)

    def dataset(self, table: str) -> ds.Dataset:
        """All learner files of `table` as one pyarrow dataset."""
        return ds.dataset(self.root / table, format="parquet", schema=SCHEMAS[table])
