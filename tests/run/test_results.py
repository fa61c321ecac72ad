"""Result files other tools and users can read: modes that follow the umask, typed hyperparameter
columns in cells.parquet, one schema for evaluations/ and evals/, int64 integers, table folders
that DuckDB reads without a glob, and folders written before these changes still read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from benchbase import results
from benchbase.api.registry import load_registry
from benchbase.evaluate.evaluate import EVALS_SCHEMA
from benchbase.grid.cell import variant
from benchbase.grid.expand import expand
from benchbase.grid.spec import make_spec, parse_axis_entry
from benchbase.report.load import load_runs
from benchbase.results import (
    EVALUATIONS_SCHEMA,
    SCHEMAS,
    RowBuffer,
    RunFolder,
    param_columns,
    write_json,
    write_table,
)
from benchbase.run.records import cell_row

RUN = (
    *("run", "-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "2"),
    *("--envs-per-learner", "1", "--env-steps", "400", "--seeds", "1", "--evaluations", "2", "--eval-episodes", "1"),
)


def bench(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=300, umask=umask
    )


@pytest.fixture(scope="module", params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A finished two-learner cell with checkpoints and one `bench eval`, under umask 022 or 077."""
    out = tmp_path_factory.mktemp("results") / "run"
    started = bench(*RUN, "--out", str(out), umask=request.param)
    assert started.returncode == 0, started.stderr
    evaluated = bench("eval", str(out), "--episodes", "1", "--split", "train", "--split", "E", umask=request.param)
    assert evaluated.returncode == 0, evaluated.stderr
    return out, request.param


@pytest.fixture
def umask_022():
    """Umask 022 for the test, the cached file mode re-read before and after."""
    previous = os.umask(0o022)
    results._file_mode = None
    yield
    os.umask(previous)
    results._file_mode = None


def test_files_and_folders_get_the_modes_the_umask_gives(run: tuple[Path, int]) -> None:
    out, umask = run
    files = [path for path in out.rglob("*") if path.is_file() and path.name != ".cells.lock"]
    kinds = {path.suffix for path in files}
    assert {".parquet", ".json", ".pt"} <= kinds and any(path.parts[-3] == "evals" for path in files)
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {oct(0o666 & ~umask)}
    folders = [path for path in out.rglob("*") if path.is_dir()]
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in folders} == {oct(0o777 & ~umask)}
    assert not list(out.rglob("*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writers_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    results._file_mode = None
    try:
        write_table(tmp_path / "table.parquet", pa.table({"x": [1]}))
        write_json(tmp_path / "data.json", {"x": 1})
        results.write_atomic(tmp_path / "raw.bin", lambda temporary: Path(temporary).write_bytes(b"1"))
    finally:
        os.umask(previous)
        results._file_mode = None
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == dict.fromkeys(("table.parquet", "data.json", "raw.bin"), 0o666 & ~umask)
    assert results.file_mode() == 0o666 & ~previous  # the process's own umask, read back unchanged
    assert os.umask(previous) == previous


def test_every_integer_column_is_int64() -> None:
    for name, schema in {**SCHEMAS, "evals": EVALS_SCHEMA}.items():
        widths = {field.name: field.type for field in schema if pa.types.is_integer(field.type)}
        assert widths and set(widths.values()) == {pa.int64()}, name


def test_evaluations_and_evals_share_one_schema(run: tuple[Path, int]) -> None:
    out, _ = run
    (evals,) = (out / "evals").glob("*/evaluations.parquet")
    written = {table: pq.read_schema(path) for table, path in (("evals", evals), ("training", _first(out)))}
    for schema in written.values():
        assert schema.remove_metadata() == EVALUATIONS_SCHEMA.remove_metadata()
    assert written["evals"].metadata[b"benchbase.table"] == b"evals"
    training = ds.dataset(out / "evaluations").to_table().to_pylist()
    assert len(training) == 2 * 2 * 4  # learners × evaluations × splits (1 episode each)
    assert all(row[name] is None for row in training for name in results.EVAL_ONLY_COLUMNS)
    assert all(row[name] is not None for row in training for name in ("evaluation", "final", "cell_env_step"))
    evaluated = pq.read_table(evals).to_pylist()
    assert sorted((row["learner"], row["split"], row["episode"]) for row in evaluated) == [
        (learner, split, 0) for learner in (0, 1) for split in ("E", "train")
    ]
    assert all(row[name] is None for row in evaluated for name in results.TRAINING_ONLY_COLUMNS)
    assert {(row["mode"], row["env"], row["trained_env"], row["algorithm"]) for row in evaluated} == {
        ("greedy", "random-cartpole", "random-cartpole", "diff-a2c")
    }
    both = ds.dataset([str(evals), *map(str, (out / "evaluations").rglob("*.parquet"))], schema=EVALUATIONS_SCHEMA)
    assert both.to_table().num_rows == len(training) + len(evaluated)


def _first(out: Path) -> Path:
    return next((out / "evaluations").rglob("learner-0.parquet"))


def test_cells_table_holds_every_resolved_parameter_typed(run: tuple[Path, int]) -> None:
    out, _ = run
    table = pq.read_table(out / "cells.parquet")
    (row,) = table.to_pylist()
    config = json.loads(row["config"])
    for kind in ("algorithm", "topology", "env"):
        assert row[f"{kind}_params"] == config[f"{kind}_params"]  # defaults included
    assert "replay_params" not in table.column_names  # replay none: no parameter, no column
    types = {field.name: field.type for field in table.schema.field("algorithm_params").type}
    assert types["lr"] == pa.float64() and types["n_steps"] == pa.int64() and types["normaliser"] == pa.string()
    assert types["normalise_rewards"] == pa.bool_() and types["gae_lambda"] == pa.null()  # unset everywhere
    assert table.schema.metadata[b"benchbase.schema_version"] == str(results.SCHEMA_VERSION).encode()
    assert RunFolder(out).read_cells()[row["cell_id"]].keys() == set(results.CELLS_SCHEMA.names)


def test_parameter_columns_are_the_union_over_cells(tmp_path: Path) -> None:
    registry = load_registry()
    spec = make_spec(
        {},
        {
            "algorithms": [parse_axis_entry(text, "--algorithm") for text in ("diff-a2c:lr=0.002", "gala")],
            "topologies": [parse_axis_entry(text, "--topology") for text in ("ring", "fully-connected")],
            "envs": [parse_axis_entry("random-cartpole", "--env")],
            "replay": [],
            "set_items": [],
            **dict(learners=2, envs_per_learner=1, env_steps=1000, evaluations=1, eval_episodes=1),
        },
    )
    cells = expand(spec, registry).cells
    folder = RunFolder(tmp_path)
    folder.write_cells([cell_row(cell, variant(cell, registry), "pending") for cell in cells])
    table = pq.read_table(folder.cells_path)
    rows = {(row["algorithm"], row["topology"]): row for row in table.to_pylist()}
    assert len(rows) == len(cells) == 4
    resolved = {cell.algorithm: cell.algorithm_params for cell in cells}
    a2c, gala = rows["diff-a2c", "ring"]["algorithm_params"], rows["gala-a2c", "ring"]["algorithm_params"]
    assert a2c["lr"] == 0.002 and gala["lr"] == resolved["gala-a2c"]["lr"] != 0.002
    assert gala["num_peers"] == resolved["gala-a2c"]["num_peers"] and a2c["num_peers"] is None
    assert set(a2c) == set(gala) == set(resolved["diff-a2c"]) | set(resolved["gala-a2c"])
    # Rows read back and rewritten (what update_cells does) give the same table.
    folder.write_cells(folder.read_cells().values())
    assert pq.read_table(folder.cells_path).equals(table)
    duckdb = pytest.importorskip("duckdb")
    query = f"SELECT algorithm, algorithm_params.lr FROM '{folder.cells_path}' WHERE topology = 'ring' ORDER BY 1"
    assert duckdb.sql(query).fetchall() == [("diff-a2c", 0.002), ("gala-a2c", gala["lr"])]


def test_parameter_types_from_values() -> None:
    configs = [
        {"algorithm_params": {"lr": 1, "steps": 5, "on": True, "weights": "auto", "sizes": [64, 64]}},
        {"algorithm_params": {"lr": 0.5, "steps": 6, "weights": 3, "clip": None}},
        {"replay_params": {"uniform": {"capacity": 10}, "elite": {}}},
        {"replay_params": {"capacity": 20}},
    ]
    columns = param_columns([json.dumps(config) for config in configs] + [None, "not json"])
    assert set(columns) == {"algorithm_params", "replay_params"}  # no topology or env parameter anywhere
    algorithm = columns["algorithm_params"]
    assert algorithm.type == pa.struct(
        [("lr", pa.float64()), ("steps", pa.int64()), ("on", pa.bool_()), ("weights", pa.string())]
        + [("sizes", pa.string()), ("clip", pa.null())]
    )
    assert algorithm.to_pylist()[:2] == [
        {"lr": 1.0, "steps": 5, "on": True, "weights": "auto", "sizes": "[64, 64]", "clip": None},
        {"lr": 0.5, "steps": 6, "on": None, "weights": "3", "sizes": None, "clip": None},
    ]
    assert algorithm.to_pylist()[2:] == [None] * 4
    replay = columns["replay_params"]
    assert replay.type == pa.struct([("uniform", pa.struct([("capacity", pa.int64())])), ("capacity", pa.int64())])
    assert replay.to_pylist()[2:4] == [
        {"uniform": {"capacity": 10}, "capacity": None},
        {"uniform": None, "capacity": 20},
    ]


def test_duckdb_reads_each_table_folder_without_a_glob(run: tuple[Path, int]) -> None:
    duckdb = pytest.importorskip("duckdb")
    out, _ = run
    for table in results.TABLES:
        expected = ds.dataset(out / table).to_table()
        found = duckdb.sql(f"SELECT cell_id, learner FROM read_parquet('{out / table}')").fetchall()
        assert sorted(found) == sorted(zip(*expected.select(["cell_id", "learner"]).to_pydict().values()))
    joined = duckdb.sql(
        f"SELECT c.algorithm_params.lr, count(*) FROM '{out / 'cells.parquet'}' c "
        f"JOIN read_parquet('{out / 'evaluations'}') e USING (cell_id) WHERE e.final GROUP BY 1"
    ).fetchall()
    assert joined == [(0.0007, 2 * 4)]  # the default lr; 2 learners × 4 splits × 1 episode


def _v1_folder(root: Path) -> str:
    """A folder as benchbase wrote it before: int32 learner columns, no typed parameter columns, and
    evaluation rows without bench eval's columns."""
    cell_id = "0123456789ab"
    config = {"algorithm": "diff-a2c", "algorithm_params": {"lr": 0.001}, "topology": "ring", "env": "random-cartpole"}
    cells = pa.Table.from_pylist(
        [cell_row_v1(cell_id, config)], schema=results.CELLS_SCHEMA.remove_metadata()
    ).replace_schema_metadata({"benchbase.table": "cells", "benchbase.schema_version": "1"})
    pq.write_table(cells, root / "cells.parquet")
    v1 = {"benchbase.table": "evaluations", "benchbase.schema_version": "1"}
    evaluations = pa.table(
        {
            "cell_id": [cell_id] * 2,
            "learner": pa.array([0, 1], pa.int32()),
            "evaluation": pa.array([1, 1], pa.int32()),
            "final": [True, True],
            "env_step": [100, 100],
            "cell_env_step": [200, 200],
            "split": ["train", "train"],
            "task_id": ["t", "t"],
            "task_params": pa.array([[("length", 0.5)]] * 2, pa.map_(pa.string(), pa.float64())),
            "episode_return": [10.0, 30.0],
            "episode_length": [10, 30],
            "success": [None, None],
            "wall_time_s": [1.0, 1.0],
        }
    ).replace_schema_metadata(v1)
    (root / "evaluations" / cell_id).mkdir(parents=True)
    for learner in (0, 1):
        pq.write_table(evaluations.slice(learner, 1), root / "evaluations" / cell_id / f"learner-{learner}.parquet")
    return cell_id


def cell_row_v1(cell_id: str, config: dict) -> dict:
    row = dict.fromkeys(results.CELLS_SCHEMA.names)
    row.update(cell_id=cell_id, algorithm="diff-a2c", topology="ring", env="random-cartpole", replay="none")
    row.update(seed=0, learners=2, status="completed", config=json.dumps(config))
    return row


def test_folders_written_before_are_read(tmp_path: Path, umask_022: None) -> None:
    cell_id = _v1_folder(tmp_path)
    folder = RunFolder(tmp_path)
    assert folder.read_cells()[cell_id]["status"] == "completed"
    table = folder.dataset("evaluations").to_table()
    assert table.schema.field("learner").type == pa.int64() and table.column("learner").to_pylist() == [0, 1]
    assert table.column("checkpoint").null_count == 2
    runs = load_runs([str(tmp_path)])
    assert runs.evaluations.column("episode_return").to_pylist() == [10.0, 30.0]
    # Rewriting the rows (a resumed run updating a cell) adds the typed columns, version unchanged.
    folder.update_cells({})
    rewritten = pq.read_table(folder.cells_path)
    assert rewritten.column("algorithm_params").to_pylist() == [{"lr": 0.001}]
    assert rewritten.schema.metadata[b"benchbase.schema_version"] == b"1"
    assert stat.S_IMODE(folder.cells_path.stat().st_mode) == 0o644


def test_row_buffers_from_older_checkpoints_get_null_columns() -> None:
    """A checkpoint's rows kept from before bench eval's columns were added to the evaluations."""
    old = {name: [1] for name in EVALUATIONS_SCHEMA.names if name not in results.EVAL_ONLY_COLUMNS}
    buffer = RowBuffer(EVALUATIONS_SCHEMA, old)
    buffer.append(**{name: 2 for name in old})
    assert len(buffer) == 2 and buffer.columns["checkpoint"] == [None, None] and buffer.columns["learner"] == [1, 2]
    with pytest.raises(KeyError):  # a column both sources fill may not be left out
        buffer.append(**{name: 2 for name in old if name != "episode_return"})
    episodes = RowBuffer(results.EPISODES_SCHEMA)
    with pytest.raises(KeyError):  # nor may any column of the other tables
        episodes.append(**{name: 1 for name in results.EPISODES_SCHEMA.names if name != "wall_time_s"})


def test_extending_a_row_buffer_adds_the_rows_append_would() -> None:
    """`extend`: rows sharing some values, a column at a time, as `append` adds them one by one."""
    shared = {"cell_id": "c", "learner": 3, "iteration": 7, "env_step": 70, "cell_env_step": 280, "wall_time_s": 1.5}
    extended, appended = RowBuffer(results.METRICS_SCHEMA), RowBuffer(results.METRICS_SCHEMA)
    extended.extend(shared, metric=["loss", "entropy"], value=[0.25, 0.5])
    for metric, value in (("loss", 0.25), ("entropy", 0.5)):
        appended.append(**shared, metric=metric, value=value)
    assert extended.columns == appended.columns and len(extended) == 2
    with pytest.raises(KeyError):  # a column neither shared nor varying may not be left out
        extended.extend({name: shared[name] for name in shared if name != "learner"}, metric=["x"], value=[1.0])
