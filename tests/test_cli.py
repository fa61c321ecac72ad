"""`bench` end to end, as a user runs it: real processes, tiny budgets. Bad inputs: tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from benchbase.results import read_parquet

TINY = [
    "--seeds",
    "1",
    "--learners",
    "2",
    "--envs-per-learner",
    "2",
    "--env-steps",
    "400",
    "--evaluations",
    "1",
    "--eval-episodes",
    "1",
]


def bench(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cells(out: Path) -> dict[str, dict]:
    return {row["topology"] + "/" + str(row["seed"]): row for row in pq.read_table(out / "cells.parquet").to_pylist()}


def test_tiny_grid_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = bench(
        "run", "-a", "diff-a2c", "-t", "ring", "-t", "isolated", "-e", "random-cartpole", *TINY, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    rows = cells(out)
    assert {row["status"] for row in rows.values()} == {"completed"}
    ring = rows["ring/0"]
    assert ring["env_steps"] >= 400 and ring["steps_per_second"] > 0 and ring["startup_s"] >= 0
    # Two learners on a ring each send to one neighbour (the other learner) per mix.
    assert ring["bytes_sent_per_learner"] > 0 and rows["isolated/0"]["bytes_sent_per_learner"] == 0
    # Learners of a ring cell share one process as a block by default (docs/scaling.md).
    assert ring["transport"] == "block" and rows["isolated/0"]["transport"] == "none"
    episodes = ds.dataset(out / "episodes").to_table()
    assert episodes.num_rows > 0
    assert set(episodes.column("cell_id").to_pylist()) == {row["cell_id"] for row in rows.values()}
    assert {key for params in episodes.column("task_params").to_pylist() for key, _ in params} == {
        "force_mag",
        "length",
        "masspole",
    }
    evaluations = ds.dataset(out / "evaluations").to_table().to_pylist()
    assert {row["split"] for row in evaluations} == {"train", "D", "R", "E"}
    assert all(row["final"] for row in evaluations)
    metrics = {row["metric"] for row in ds.dataset(out / "metrics").to_table().to_pylist()}
    assert {"loss", "entropy", "consensus_distance", "bytes_sent", "steps_per_second"} <= metrics
    grid = json.loads((out / "grid.json").read_text())
    assert grid["versions"]["torch"] and grid["spec"]["topologies"] == ["ring", "isolated"]
    assert "random-cartpole" in result.stdout  # the summary table


def test_rerun_skips_completed_cells_and_reruns_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "-a", "diff-a2c", "-t", "ring", "-t", "isolated", "-e", "CartPole-v1", *TINY, "--out", str(out)]
    assert bench(*args).returncode == 0
    before = cells(out)
    # Pretend the isolated cell was interrupted: only it must run again.
    table = pq.read_table(out / "cells.parquet").to_pylist()
    for row in table:
        if row["topology"] == "isolated":
            row["status"] = "interrupted"
    from benchbase.results import RunFolder

    RunFolder(out).write_cells(table)
    result = bench(*args)
    assert result.returncode == 0, result.stderr
    after = cells(out)
    assert after["ring/0"]["wall_time_s"] == before["ring/0"]["wall_time_s"]  # skipped, untouched
    assert after["isolated/0"]["status"] == "completed"
    assert after["isolated/0"]["wall_time_s"] != before["isolated/0"]["wall_time_s"]
    assert "1 cell" in result.stdout and "skip" in result.stdout.lower()


FAILING_PLUGIN = textwrap.dedent(
    """
    import torch

    from benchbase.api.hookspecs import hookimpl
    from plugins.algorithms.diff_a2c import A2CLearner, DiffA2C

    class Exploding(A2CLearner):
        def update(self, rollout):
            self.updates = getattr(self, "updates", 0) + 1
            if self.updates == 3 and torch.distributed.get_rank() == 1:
                raise RuntimeError("boom in update 3")
            return super().update(rollout)

    class ExplodingA2C(DiffA2C):
        name = "exploding-a2c"
        description = "Diff-A2C whose learner 1 raises in its third update (a test plugin)"

        def make_learner(self, params, spec):
            return Exploding(params, spec)

    @hookimpl
    def register_algorithms(register):
        register(ExplodingA2C())
    """
)


def test_a_failing_learner_fails_only_its_cell(tmp_path: Path) -> None:
    (tmp_path / "exploding_plugin.py").write_text(FAILING_PLUGIN)
    out = tmp_path / "run"
    env = {
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "BENCHBASE_EXTRA_PLUGINS": "exploding_plugin",
    }
    started = time.time()
    result = bench(
        "run",
        "-a",
        "exploding-a2c",
        "-a",
        "diff-a2c",
        "-t",
        "ring",
        "-e",
        "CartPole-v1",
        *TINY,
        "--out",
        str(out),
        "--comm-timeout",
        "20",
        env=env,
    )
    assert time.time() - started < 60  # the neighbour blocked in a mix was stopped, not left to time out
    assert result.returncode == 1
    rows = {row["algorithm"]: row for row in pq.read_table(out / "cells.parquet").to_pylist()}
    assert rows["exploding-a2c"]["status"] == "failed"
    assert "boom in update 3" in rows["exploding-a2c"]["error"] and "Traceback" in rows["exploding-a2c"]["error"]
    assert rows["diff-a2c"]["status"] == "completed"
    # A failed cell leaves no learner files that could be mistaken for results.
    assert not (out / "episodes" / rows["exploding-a2c"]["cell_id"]).exists()


def test_same_seed_gives_the_same_episode_returns(tmp_path: Path) -> None:
    returns = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            bench("run", "-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole", *TINY, "--out", str(out)).returncode
            == 0
        )
        table = (
            ds.dataset(out / "episodes")
            .to_table()
            .sort_by([("learner", "ascending"), ("env_step", "ascending"), ("simulator", "ascending")])
        )
        returns.append(table.column("episode_return").to_pylist())
    assert returns[0] == returns[1] and len(returns[0]) > 5


def test_dry_run_lists_cells_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = bench("run", "--dry-run", "--out", str(out))
    assert result.returncode == 0
    assert "12 cells" in result.stdout and "gala-a2c" in result.stdout
    assert not out.exists()


def test_out_folder_with_a_different_grid_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        bench("run", "-a", "diff-a2c", "-t", "isolated", "-e", "CartPole-v1", *TINY, "--out", str(out)).returncode == 0
    )
    before = (out / "cells.parquet").read_bytes()
    result = bench("run", "-a", "diff-a2c", "-t", "ring", "-e", "CartPole-v1", *TINY, "--out", str(out))
    assert result.returncode == 2 and "holds a different grid" in result.stderr
    assert (out / "cells.parquet").read_bytes() == before


@pytest.mark.parametrize(
    "layout",
    [["--learners-per-process", "1", "--env-steps", "60000"], ["--env-steps", "240000"]],
    ids=["processes", "block"],
)
def test_ctrl_c_marks_the_running_cell_interrupted_and_a_rerun_completes(tmp_path: Path, layout: list[str]) -> None:
    """Ctrl-C reaches learners in processes of their own and a block's process alike (a block runs
    a cell faster: a larger budget keeps the first cell running when the signal comes)."""
    out = tmp_path / "run"
    args = [
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "ring",
        "-e",
        "CartPole-v1",
        "--seeds",
        "2",
        "--learners",
        "2",
        "--evaluations",
        "0",
        "--jobs",
        "1",  # one cell at a time: the second waits while the first is interrupted
        "--out",
        str(out),
        *layout,
    ]
    # A shell's background jobs inherit SIGINT as ignored (and Python then installs no handler):
    # give the child the default disposition, as a terminal's Ctrl-C would find it.
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbase", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the first cell is running
            path = out / "cells.parquet"
            if path.exists() and any(r["status"] == "running" for r in read_parquet(path).to_pylist()):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    statuses = sorted(row["status"] for row in pq.read_table(out / "cells.parquet").to_pylist())
    assert statuses == ["interrupted", "pending"]
    assert not any((out / "episodes").glob("*/*.parquet"))  # nothing half-written looks complete
    result = bench(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(row["status"] for row in pq.read_table(out / "cells.parquet").to_pylist()) == [
        "completed",
        "completed",
    ]


def test_shared_memory_and_gloo_transports_give_the_same_results(tmp_path: Path) -> None:
    returns = {}
    for transport in ("shm", "p2p"):
        out = tmp_path / transport
        result = bench(
            "run",
            "-a",
            "diff-a2c",
            "-t",
            "ring",
            "-e",
            "random-cartpole",
            *TINY[:2],
            "--learners",
            "3",
            *TINY[4:],
            "--transport",
            transport,
            "--learners-per-process",
            "1",
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        table = (
            ds.dataset(out / "episodes")
            .to_table()
            .sort_by([("learner", "ascending"), ("env_step", "ascending"), ("simulator", "ascending")])
        )
        returns[transport] = table.column("episode_return").to_pylist()
    assert returns["shm"] == returns["p2p"] and len(returns["shm"]) > 5


def test_version_and_short_help_through_python_m() -> None:
    version = bench("-V")
    assert version.returncode == 0 and version.stdout.startswith("benchbase ") and "torch " in version.stdout
    help_text = bench("run", "-h", env={"COLUMNS": "200"})
    assert help_text.returncode == 0 and "Usage: bench run" in help_text.stdout  # the name users type
    assert "--dry-run" in help_text.stdout and "<bool>" not in help_text.stdout


def test_dry_run_shows_each_cells_non_default_parameters(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = bench(
        "run", "-a", "diff-a2c:lr=0.1", "-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole", *TINY,
        "--out", str(out), "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "diff-a2c.lr=0.1" in rows[0] + rows[1] and "(defaults)" in rows[0] + rows[1]
    assert not out.exists()
