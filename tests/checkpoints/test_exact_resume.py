"""Exact resume over algorithm × replay: a cell stopped (Ctrl-C's checkpoint) and later killed (back to
its last periodic checkpoint), resumed each time, ends with the same parameters and the same rows, row
for row, as the same cell run straight through. Timings aside: their values differ, their rows do not.

The learner runs in this process (`run_learner`, one learner, as a forked learner process would run
it), so the interruptions land at chosen iterations: a stop requested during iteration STOP_AT, before
the first periodic checkpoint; a crash at CRASH_AT, after the writer finished a periodic checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.grid.cell import Cell
from benchbase.grid.expand import expand
from benchbase.grid.spec import make_spec
from benchbase.learner import loop
from benchbase.learner.process import run_learner
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch

# 2 simulators × 8 steps = 16 env steps an iteration: 100 iterations, a periodic checkpoint every
# 30 (iterations 30, 60, 90), metric rows every iteration, evaluations at iterations 34, 67, 100.
ENV_STEPS = 1_600
CHECKPOINT_EVERY = 480
STOP_AT = 13  # before the first periodic checkpoint: the stop's own must not count as one
CRASH_AT = 47  # after the checkpoint at 30 and the evaluation at 34: both are done again
SMALL = {"hidden": 16}
ALGORITHM_PARAMS = {
    "diff-a2c": {**SMALL, "n_steps": 8},
    "diff-ppo": {**SMALL, "n_steps": 8, "n_epochs": 2, "minibatch_size": 8},
    "vtrace": {**SMALL, "unroll_length": 8, "batch_size": 4},  # background_preparation on: the default
}
TIMING = {"steps_per_second"}  # and every metric ending in _s


class Crash(Exception):
    """The learner dies (as if killed) once its newest periodic checkpoint is on disk."""


def cell_of(algorithm: str, replay: str) -> Cell:
    values = {
        "algorithms": [algorithm],
        "topologies": ["isolated"],
        "envs": ["random-cartpole"],
        "replay": [replay],
        "seeds": 1,
        "learners": 1,
        "envs_per_learner": 2,
        "env_steps": ENV_STEPS,
        "evaluations": 3,
        "eval_episodes": 1,
        "set": {algorithm: ALGORITHM_PARAMS[algorithm]},
    }
    plan = expand(make_spec(values, {}), load_registry())
    assert not plan.invalid, plan.invalid
    (cell,) = plan.cells
    return cell


def run(cell: Cell, out: Path) -> dict[str, Any]:
    settings = ExecutionSettings(checkpoint_every=CHECKPOINT_EVERY, checkpoint_replay=True)
    launch = LearnerLaunch(cell.config(), str(out), 0, 1, "", 0, "cpu", time.time(), settings)
    return run_learner(launch, lambda event: None)


def interrupting(monkeypatch: pytest.MonkeyPatch, *, stop_at: int | None = None, crash_at: int | None = None) -> None:
    """The next run asks to stop during iteration `stop_at` (as SIGUSR1 would), or dies after `crash_at`."""
    iterate = loop._Training.iterate

    def interrupted(training: Any) -> Any:
        output = iterate(training)
        if training.state.iteration == stop_at:
            training.context.stop.requested = True
        if training.state.iteration == crash_at:
            training.context.keeper.close()  # the periodic checkpoint is written; this iteration's rows are lost
            raise Crash
        return output

    monkeypatch.setattr(loop._Training, "iterate", interrupted)


def table(out: Path, name: str, cell_id: str) -> list[dict]:
    return pq.read_table(out / name / cell_id / "learner-0.parquet").drop(["wall_time_s"]).to_pylist()


def timing(metric: str) -> bool:
    return metric.endswith("_s") or metric in TIMING


def final_parameters(out: Path, cell_id: str) -> torch.Tensor:
    found, _ = checkpoint.latest_good(out / "checkpoints" / cell_id / "learner-0")
    assert found is not None and found.env_steps == ENV_STEPS
    return found.state["learner"]["parameters"]


@pytest.mark.parametrize(
    "algorithm,replay",
    [
        ("diff-a2c", "none"),
        ("diff-ppo", "none"),
        ("vtrace", "uniform:capacity=64,min_fill=8"),
        ("vtrace", "queue"),
        ("vtrace", "queue:ratio=0.5+uniform:ratio=0.5,capacity=64,min_fill=8"),
        ("vtrace", "elite:capacity=64,min_fill=8"),
        ("vtrace", "attentive:capacity=64,min_fill=8"),
    ],
)
def test_an_interrupted_and_resumed_cell_equals_an_uninterrupted_one_row_for_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str, replay: str
):
    cell = cell_of(algorithm, replay)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert not run(cell, straight)["stopped"]

    with monkeypatch.context() as patch:
        interrupting(patch, stop_at=STOP_AT)
        assert run(cell, resumed)["stopped"]
    folder = resumed / "checkpoints" / cell.cell_id / "learner-0"
    assert [checkpoint.steps_of(path) for path in sorted(folder.glob("step-*.pt"))] == [STOP_AT * 16]
    with monkeypatch.context() as patch:
        interrupting(patch, crash_at=CRASH_AT)
        with pytest.raises(Crash):
            run(cell, resumed)
    assert checkpoint.latest_good(folder)[0].env_steps == 30 * 16  # the crashed run resumes from here
    assert not run(cell, resumed)["stopped"]

    assert torch.equal(final_parameters(resumed, cell.cell_id), final_parameters(straight, cell.cell_id))
    for name in ("episodes", "evaluations"):
        expected = table(straight, name, cell.cell_id)
        assert expected and table(resumed, name, cell.cell_id) == expected, name
    expected, got = table(straight, "metrics", cell.cell_id), table(resumed, "metrics", cell.cell_id)
    assert Counter(row["metric"] for row in got) == Counter(row["metric"] for row in expected)
    assert Counter(row["metric"] for row in expected)["checkpoint_copy_s"] == 100 - 30  # after the first one
    untimed = lambda rows: [row for row in rows if not timing(row["metric"])]  # noqa: E731
    assert untimed(got) == untimed(expected)
    if algorithm == "vtrace":  # the cell trained from replay before the first interruption
        updated = [row for row in expected if row["metric"] == "updated"]
        assert updated[STOP_AT - 1]["value"] == 1.0


# -- the same through bench run: two learners in lockstep, Ctrl-C ------------------------------------

TWO_LEARNERS = [
    *("run", "-a", "vtrace", "-t", "ring", "-e", "random-cartpole", "-r", "uniform:min_fill=16"),
    *("--learners", "2", "--env-steps", "24000", "--seeds", "1", "--evaluations", "2", "--eval-episodes", "2"),
    *("--checkpoint-every", "4800", "--checkpoint-replay"),
]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=180)


def learner_rows(out: Path) -> dict[str, list[dict]]:
    """Every learner's rows of each table, in the order written; the metrics without the timings' values."""
    found = {}
    for name in ("episodes", "evaluations", "metrics"):
        for path in sorted(out.glob(f"{name}/*/learner-*.parquet")):
            rows = pq.read_table(path).drop(["wall_time_s"]).to_pylist()
            for row in rows:
                if name == "metrics" and timing(row["metric"]):
                    row["value"] = None  # its row must be there, its value may differ
            found[f"{name}/{path.stem}"] = rows
    return found


def test_ctrl_c_in_a_two_learner_vtrace_cell_resumes_exactly(tmp_path: Path):
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    result = bench(*TWO_LEARNERS, "--out", str(straight))
    assert result.returncode == 0, result.stderr
    # A shell's background jobs inherit SIGINT as ignored: give the child the default, as a terminal's Ctrl-C finds it.
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbase", *TWO_LEARNERS, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("checkpoints/*/learner-1/step-*.json")):
            time.sleep(0.05)  # the first periodic checkpoint is on disk: the learners train from replay
        process.send_signal(signal.SIGINT)  # wherever it lands, the resumed cell must be the same
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stdout[-2000:]
    result = bench(*TWO_LEARNERS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resuming from its checkpoint" in result.stdout

    expected, got = learner_rows(straight), learner_rows(out)
    assert sorted(got) == sorted(expected) and len(expected) == 6
    for name, rows in expected.items():
        assert got[name] == rows, name
