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
DuckDB 2 `read_parquet('run/episodes')`), every file holding its `cell_id`. Every file is written
to a temporary name and renamed, so a crash never leaves a half-written file that looks complete,
and gets the mode the umask gives a new file (0644 under umask 022), so that others sharing the
folder can read it; only cells whose `status` is `completed` keep learner files.

cells.parquet holds each cell's resolved config twice: as JSON (`config`) and typed, one struct
column per plugin kind (`algorithm_params`, ...), computed from the JSON whenever the table is
written. The evaluation rows of training (evaluations/) and of `bench eval` (evals/) share one
schema; the columns only one of them fills are null in the other's rows. Every integer is int64.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
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

#: The plugin kinds whose resolved parameters cells.parquet also holds as typed struct columns.
PARAM_KINDS = ("algorithm", "topology", "env", "replay")
PARAM_COLUMNS = tuple(f"{kind}_params" for kind in PARAM_KINDS)


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
        pa.field("transport", pa.string()),  # shm | p2p | all-reduce | nccl | nccl-all-reduce | block | none
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
        pa.field("learner", pa.int64()),
        pa.field("simulator", pa.int64()),
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

#: Columns of the evaluation rows that only training (evaluations/) or only `bench eval` (evals/)
#: fills; they are null in the other's rows, and a row appended without them gets nulls.
TRAINING_ONLY_COLUMNS = ("evaluation", "final", "cell_env_step", "wall_time_s")
EVAL_ONLY_COLUMNS = ("checkpoint", "algorithm", "trained_env", "env", "env_params", "mode", "seed", "episode")

EVALUATIONS_SCHEMA = _schema(
    "evaluations",
    [
        pa.field("cell_id", pa.string()),
        pa.field("learner", pa.int64()),
        pa.field("evaluation", pa.int64()),  # training: 1..K; bench eval: null
        pa.field("final", pa.bool_()),  # training: the evaluation at the end of the budget
        pa.field("env_step", pa.int64()),  # the learner's own env steps (at the checkpoint, for bench eval)
        pa.field("cell_env_step", pa.int64()),  # training: the evaluation's nominal point k·budget/K
        pa.field("split", pa.string()),
        pa.field("task_id", pa.string()),
        pa.field("task_params", _TASK_PARAMS),
        pa.field("episode_return", pa.float64()),
        pa.field("episode_length", pa.int64()),
        pa.field("success", pa.bool_()),
        pa.field("wall_time_s", pa.float64()),  # training: since the learner's first step
        pa.field("checkpoint", pa.string()),  # bench eval: the .pt file evaluated
        pa.field("algorithm", pa.string()),  # bench eval: the cell's algorithm
        pa.field("trained_env", pa.string()),  # bench eval: the cell's env family
        pa.field("env", pa.string()),  # bench eval: the env family evaluated on
        pa.field("env_params", pa.string()),  # bench eval: its parameters, JSON
        pa.field("mode", pa.string()),  # bench eval: greedy | stochastic
        pa.field("seed", pa.int64()),  # bench eval: the evaluation envs' seed
        pa.field("episode", pa.int64()),  # bench eval: 0..N-1 within (learner, split)
    ],
)

METRICS_SCHEMA = _schema(
    "metrics",
    [
        pa.field("cell_id", pa.string()),
        pa.field("learner", pa.int64()),
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


_ONE_SOURCE_COLUMNS = frozenset(TRAINING_ONLY_COLUMNS + EVAL_ONLY_COLUMNS)


class RowBuffer:
    """Column lists for one table; cheap appends, one conversion at the end.

    `columns` are rows kept so far (from a checkpoint); one that a checkpoint written before a
    column existed lacks is filled with nulls, as is an evaluation row's column that only the other
    source fills (`TRAINING_ONLY_COLUMNS`, `EVAL_ONLY_COLUMNS`) when a row leaves it out."""

    def __init__(self, schema: pa.Schema, columns: dict[str, list[Any]] | None = None) -> None:
        self.schema = schema
        # Only the evaluation rows have columns a row may leave out; other tables need every column.
        self.optional = _ONE_SOURCE_COLUMNS if schema.names == EVALUATIONS_SCHEMA.names else frozenset()
        kept = len(next(iter(columns.values()))) if columns else 0
        self.columns: dict[str, list[Any]] = {
            name: list(columns[name]) if columns and name in columns else [None] * kept for name in schema.names
        }

    def copy_columns(self) -> dict[str, list[Any]]:
        """A copy of the rows so far (for a checkpoint, while appending goes on)."""
        return {name: list(column) for name, column in self.columns.items()}

    def append(self, **row: Any) -> None:
        for name, column in self.columns.items():
            column.append(row.get(name) if name in self.optional else row[name])

    def extend(self, shared: dict[str, Any], **varying: list[Any]) -> None:
        """Rows that have `shared`'s values in common and `varying`'s lists (of one length) apart:
        what `append` adds row by row, a column at a time."""
        count = len(next(iter(varying.values())))
        for name, column in self.columns.items():
            if name in varying:
                column.extend(varying[name])
            else:
                column.extend([shared.get(name) if name in self.optional else shared[name]] * count)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=self.schema)


_umask_lock = threading.Lock()
_file_mode: int | None = None


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under 022), read once.

    Linux reports the umask in /proc/self/status. Elsewhere it is read by setting it to 0 and back,
    which is not thread-safe: a file another thread creates in between gets mode 0666, hence reading
    it only once, and two threads swapping at once could leave it at 0, hence the lock."""
    global _file_mode
    if _file_mode is not None:
        return _file_mode
    with _umask_lock:
        if _file_mode is None:
            umask = None
            try:
                with open("/proc/self/status", encoding="ascii") as status:
                    umask = next((int(line.split()[1], 8) for line in status if line.startswith("Umask:")), None)
            except (OSError, ValueError, IndexError):
                pass
            if umask is None:
                umask = os.umask(0)
                os.umask(umask)
            _file_mode = 0o666 & ~umask
        return _file_mode


def write_atomic(path: Path, write: Any) -> None:
    """Call write(temporary_path), then rename it to `path` (same folder, so rename is atomic).

    mkstemp makes the temporary file private (0600); it gets the umask's mode before the rename,
    as a file written in place would, so that others sharing the results folder can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, file_mode())
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


def cells_table(rows: list[dict[str, Any]]) -> pa.Table:
    """cells.parquet's table: CELLS_SCHEMA's columns of `rows`, then one struct column per plugin
    kind holding the cells' resolved parameters, typed (`param_columns`)."""
    table = pa.Table.from_pylist(rows, schema=CELLS_SCHEMA)
    for name, column in param_columns([row.get("config") for row in rows]).items():
        table = table.append_column(name, column)
    return table


def param_columns(configs: list[str | None]) -> dict[str, pa.Array]:
    """`algorithm_params`, `topology_params`, `env_params`, `replay_params` of cells whose configs
    (JSON) are `configs`: a struct per cell whose fields are the union of the cells' parameters,
    null where a cell's plugin lacks one. A kind with no parameter in any cell has no column
    (Parquet has no empty struct)."""
    parsed = []
    for text in configs:
        try:
            config = json.loads(text) if text else {}
        except ValueError:
            config = {}
        parsed.append(config if isinstance(config, dict) else {})
    columns = {}
    for name in PARAM_COLUMNS:
        values = [config.get(name) if isinstance(config.get(name), dict) else None for config in parsed]
        arrow_type = _value_type(values)
        if pa.types.is_struct(arrow_type) and arrow_type.num_fields:
            columns[name] = pa.array([_typed(value, arrow_type) for value in values], type=arrow_type)
    return columns


_INT64 = (-(2**63), 2**63 - 1)


def _value_type(values: list[Any]) -> pa.DataType:
    """One Arrow type for a parameter's values across cells (None: absent): bool, int64, float64
    (ints and floats mixed), string, a struct of dicts' fields, or null when no cell has a value;
    lists and kinds that differ between cells are JSON text."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, dict) for value in present):
        fields: dict[str, list[Any]] = {}
        for value in present:
            for key in value:
                fields.setdefault(key, [])
        for key, field_values in fields.items():
            field_values += [value.get(key) for value in present]
        types = {key: _value_type(field_values) for key, field_values in fields.items()}
        # A field holding only empty dicts (a replay mix's strategy without parameters) is left out.
        return pa.struct([pa.field(key, type_) for key, type_ in types.items() if not _empty_struct(type_)])
    if not present:
        return pa.null()  # null in every cell (an optional parameter left unset): no type to tell
    if all(isinstance(value, bool) for value in present):
        return pa.bool_()
    numbers = [value for value in present if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if len(numbers) == len(present):
        if all(isinstance(value, int) and _INT64[0] <= value <= _INT64[1] for value in numbers):
            return pa.int64()
        return pa.float64()
    return pa.string()


def _empty_struct(arrow_type: pa.DataType) -> bool:
    return pa.types.is_struct(arrow_type) and arrow_type.num_fields == 0


def _typed(value: Any, arrow_type: pa.DataType) -> Any:
    """`value` as `arrow_type` takes it: a struct's fields recursively, JSON text for a string field
    whose value is no string (a list, or a kind that differs between cells)."""
    if value is None:
        return None
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, dict):
            return None
        return {field.name: _typed(value.get(field.name), field.type) for field in arrow_type}
    if pa.types.is_string(arrow_type):
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if pa.types.is_floating(arrow_type):
        return float(value)
    return value


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
        derived = [name for name in PARAM_COLUMNS if name in table.column_names]
        return {row["cell_id"]: row for row in table.drop_columns(derived).to_pylist()}

    def write_cells(self, rows: Iterable[dict[str, Any]]) -> None:
        write_table(self.cells_path, cells_table(list(rows)))

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
