"""Checkpoints inside a cell, end to end with real processes: a killed learner, Ctrl-C, a
corrupted checkpoint, and resuming exactly where the cell left off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from benchbase.checkpoints import checkpoint

TESTS = Path(__file__).resolve().parents[1]  # tests/, where fault_plugin.py lives
FAULTY = {"PYTHONPATH": str(TESTS), "BENCHBASE_EXTRA_PLUGINS": "fault_plugin"}


def bench(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cell_rows(out: Path) -> dict[int, dict]:
    return {row["seed"]: row for row in pq.read_table(out / "cells.parquet").to_pylist()}


def final_parameters(out: Path, cell_id: str, learners: int) -> list[torch.Tensor]:
    found = [checkpoint.latest_good(out / "checkpoints" / cell_id / f"learner-{r}")[0] for r in range(learners)]
    return [item.state["learner"]["parameters"] for item in found]


def rows(out: Path, table: str, cell_id: str) -> list[dict]:
    found = ds.dataset(out / table / cell_id).to_table().drop(["wall_time_s"]).to_pylist()
    return sorted(found, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def newest_steps(out: Path, cell_id: str) -> list[int]:
    folders = sorted((out / "checkpoints" / cell_id).glob("learner-*"))
    return [max(checkpoint.steps_of(path) for path in folder.glob("step-*.pt")) for folder in folders]


def faulty_grid(learners: int, envs_per_learner: int, env_steps: int, seeds: int, checkpoint_every: int) -> list[str]:
    """`bench run` arguments for a ring of `faulty-a2c` learners on random-cartpole (fault_plugin)."""
    return [
        *("run", "-a", "faulty-a2c", "-t", "ring", "-e", "random-cartpole"),
        *("--learners", str(learners), "--envs-per-learner", str(envs_per_learner)),
        *("--env-steps", str(env_steps), "--seeds", str(seeds), "--checkpoint-every", str(checkpoint_every)),
        *("--evaluations", "2", "--eval-episodes", "2", "--comm-timeout", "60"),
    ]


KILL_GRID = faulty_grid(learners=4, envs_per_learner=8, env_steps=40000, seeds=2, checkpoint_every=8000)


def test_a_killed_learner_fails_its_cell_the_grid_goes_on_and_a_rerun_resumes_it_exactly(tmp_path: Path):
    straight = tmp_path / "straight"
    result = bench(*KILL_GRID, "--out", str(straight), env=FAULTY)
    assert result.returncode == 0, result.stderr

    out = tmp_path / "killed"
    fault = tmp_path / "fault.json"
    # Learner 1 of the first cell dies by SIGKILL after its second checkpoint (every 2,000 of its steps).
    fault.write_text(json.dumps({"rank": 1, "at_step": 4500, "how": "kill"}))
    started = time.perf_counter()
    result = bench(*KILL_GRID, "--out", str(out), env={**FAULTY, "BENCHBASE_FAULT": str(fault)})
    assert result.returncode == 1, result.stderr
    assert time.perf_counter() - started < 60  # failed at once, not after the 60 s collective timeout
    first = cell_rows(out)
    assert first[0]["status"] == "failed" and "killed by signal 9" in first[0]["error"]
    assert first[1]["status"] == "completed"  # the grid went on
    cell_id = first[0]["cell_id"]
    assert not (out / "episodes" / cell_id).exists()  # a failed cell leaves no rows that look complete
    assert newest_steps(out, cell_id) == [4000] * 4

    # A damaged newest checkpoint of one learner: the cell falls back to the previous common one.
    damaged = out / "checkpoints" / cell_id / "learner-2" / "step-000000004000.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    result = bench(*KILL_GRID, "--out", str(out), env=FAULTY)
    assert result.returncode == 0, result.stderr
    assert "step-000000004000.pt is truncated" in result.stdout
    assert f"{cell_id}: resuming from its checkpoint at learner step 2,000" in result.stdout
    cells = cell_rows(out)
    assert cells[0]["status"] == "completed" and cells[0]["resumed_from_env_step"] == 8000
    assert cells[0]["env_steps"] == 40000  # exactly the budget
    assert cells[1]["resumed_from_env_step"] is None

    # Interrupted and resumed = straight through: same parameters, same rows (timings aside).
    for resumed, reference in zip(final_parameters(out, cell_id, 4), final_parameters(straight, cell_id, 4)):
        assert torch.equal(resumed, reference)
    for table in ("episodes", "evaluations"):
        assert rows(out, table, cell_id) == rows(straight, table, cell_id)
    episodes = rows(out, "episodes", cell_id)
    keys = [(row["learner"], row["simulator"], row["env_step"]) for row in episodes]
    assert len(keys) == len(set(keys))  # nothing duplicated


@pytest.mark.parametrize(
    "algorithm,topology,lockstep",
    [
        ("diff-a2c", "ring", True),  # synchronous: every learner stops at one agreed iteration
        ("gala-a2c", "directed-ring", False),  # asynchronous: each stops where it is
    ],
)
def test_ctrl_c_checkpoints_the_running_cell_and_a_rerun_completes_the_grid(
    tmp_path: Path, algorithm: str, topology: str, lockstep: bool
):
    out = tmp_path / "run"
    args = [
        "run",
        "-a",
        algorithm,
        "-t",
        topology,
        "-e",
        "random-cartpole",
        "--learners",
        "4",
        "--seeds",
        "2",
        "--env-steps",
        "160000",
        "--checkpoint-every",
        "16000",
        "--evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--jobs",
        "1",  # one cell at a time: the second waits while the first is interrupted
        "--out",
        str(out),
    ]
    # A shell's background jobs inherit SIGINT as ignored: give the child the default, as a terminal's Ctrl-C finds it.
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbase", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("checkpoints/*/learner-3/step-*.json")):
            time.sleep(0.05)  # the first cell is running and has written its first checkpoint
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stdout[-2000:]
    cells = cell_rows(out)
    assert [cells[0]["status"], cells[1]["status"]] == ["interrupted", "pending"]
    cell_id = cells[0]["cell_id"]
    assert not (out / "episodes").exists() or not any((out / "episodes").glob("*/*.parquet"))
    stopped_at = newest_steps(out, cell_id)
    assert min(stopped_at) > 0
    if lockstep:  # one agreed stop iteration, past the first periodic checkpoint (4,000 steps)
        assert len(set(stopped_at)) == 1 and stopped_at[0] > 4_000

    result = bench(*args)
    assert result.returncode == 0, result.stderr
    cells = cell_rows(out)
    assert [cells[0]["status"], cells[1]["status"]] == ["completed", "completed"]
    assert cells[0]["resumed_from_env_step"] == sum(stopped_at)
    assert cells[0]["env_steps"] == 160_000
    episodes = rows(out, "episodes", cell_id)
    keys = [(row["learner"], row["simulator"], row["env_step"]) for row in episodes]
    assert len(keys) == len(set(keys))
    # The rows before the stop came back from the checkpoint: every learner's episodes cover the run.
    # A learner's 8 simulators each end an episode at least every 200 steps (random-cartpole's time
    # limit), so its last episode ends within its last 200 * 8 env steps of its 40,000.
    for learner in range(4):
        steps = sorted(row["env_step"] for row in episodes if row["learner"] == learner)
        assert steps[0] < 2_000 and steps[-1] > 40_000 - 200 * 8


def test_init_from_starts_every_learner_from_the_checkpoint(tmp_path: Path):
    source = tmp_path / "source"
    base = [
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "isolated",
        "-e",
        "random-cartpole",
        "--learners",
        "2",
        "--seeds",
        "1",
        "--envs-per-learner",
        "4",
        "--evaluations",
        "0",
    ]
    assert bench(*base, "--env-steps", "8000", "--out", str(source)).returncode == 0
    source_cell = cell_rows(source)[0]["cell_id"]
    cell_folder = source / "checkpoints" / source_cell

    # With lr = 0 nothing changes the parameters: the new cell ends where the source ended.
    out = tmp_path / "continued"
    result = bench(
        *base, "--env-steps", "4000", "--set", "diff-a2c.lr=0", "--init-from", str(cell_folder), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    row = cell_rows(out)[0]
    config = json.loads(row["config"])
    assert config["init_from"]["cell_id"] == source_cell and config["init_from"]["env_steps"] == 8000
    assert config["algorithm_params"]["lr"] == 0
    for continued, original in zip(final_parameters(out, row["cell_id"], 2), final_parameters(source, source_cell, 2)):
        assert torch.equal(continued, original)

    result = bench(
        *base,
        "--env-steps",
        "4000",
        "--set",
        "diff-a2c.hidden=32",
        "--init-from",
        str(cell_folder),
        "--out",
        str(tmp_path / "other"),
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "the architecture or the env differs" in result.stderr
    result = bench(*base, "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "no such file or folder" in result.stderr


DISK_GRID = faulty_grid(learners=2, envs_per_learner=4, env_steps=24000, seeds=1, checkpoint_every=4000)


def test_a_disk_that_fills_mid_run_fails_the_cell_in_one_line_and_a_rerun_completes_it_exactly(tmp_path: Path):
    straight = tmp_path / "straight"
    result = bench(*DISK_GRID, "--out", str(straight), env=FAULTY)
    assert result.returncode == 0, result.stderr

    out = tmp_path / "full"
    fault = tmp_path / "fault.json"
    # From learner step 5,000 on, learner 0's disk is full: its checkpoint at step 6,000 cannot be written.
    fault.write_text(json.dumps({"rank": 0, "at_step": 5000, "how": "enospc"}))
    result = bench(*DISK_GRID, "--out", str(out), env={**FAULTY, "BENCHBASE_FAULT": str(fault)})
    assert result.returncode == 1, result.stderr
    (cell,) = cell_rows(out).values()
    assert cell["status"] == "failed"
    # One line that names the file and what to do (a neighbour's broken connection may follow it).
    first = cell["error"].splitlines()[0]
    assert first.startswith("learner 0: cannot write ") and "learner-0 (No space left on device)" in first, first
    assert "free some space" in first and "Traceback" not in cell["error"], cell["error"]
    cell_id = cell["cell_id"]
    assert not (out / "episodes" / cell_id).exists()  # nothing that looks complete
    assert newest_steps(out, cell_id)[0] == 4000  # the checkpoints before the disk filled are intact

    # Space freed: the re-run resumes from the newest checkpoint both learners have and ends as if uninterrupted.
    result = bench(*DISK_GRID, "--out", str(out), env=FAULTY)
    assert result.returncode == 0, result.stderr
    (cell,) = cell_rows(out).values()
    assert cell["status"] == "completed" and cell["resumed_from_env_step"] == 8000, result.stdout
    for resumed, reference in zip(final_parameters(out, cell_id, 2), final_parameters(straight, cell_id, 2)):
        assert torch.equal(resumed, reference)
    for table in ("episodes", "evaluations"):
        assert rows(out, table, cell_id) == rows(straight, table, cell_id)
