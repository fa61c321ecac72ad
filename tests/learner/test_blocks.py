"""Learner blocks end to end: a block's cell against the same cell with one process per learner,
a block interrupted and resumed against one that was not, a learner failing inside a block, and
the one-line refusals of `--learners-per-process`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.grid.cell import Cell
from benchbase.grid.expand import expand
from benchbase.grid.spec import make_spec
from benchbase.learner import loop
from benchbase.learner.block import run_block
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch
from benchbase.run.blocks import learners_per_process

TESTS = Path(__file__).resolve().parents[1]


def cell_of(topology: str = "ring", learners: int = 3, env_steps: int = 1920, **values: Any) -> Cell:
    spec = {
        "algorithms": ["diff-a2c"],
        "topologies": [topology],
        "envs": ["random-cartpole"],
        "replay": ["none"],
        "seeds": 1,
        "learners": learners,
        "envs_per_learner": 2,
        "env_steps": env_steps,
        "evaluations": 3,
        "eval_episodes": 1,
        "set": {"diff-a2c": {"hidden": 16, "n_steps": 8}},
        **values,
    }
    plan = expand(make_spec(spec, {}), load_registry())
    assert not plan.invalid, plan.invalid
    (cell,) = plan.cells
    return cell


def bench(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# -- which cells run as blocks --------------------------------------------------------------------


def test_cells_that_allow_a_block_take_one_and_the_others_keep_a_process_per_learner():
    registry = load_registry()
    auto = ExecutionSettings()
    assert learners_per_process(cell_of(), registry, auto) == 3
    assert learners_per_process(cell_of(), registry, ExecutionSettings(learners_per_process=1)) == 1
    assert learners_per_process(cell_of("isolated"), registry, auto) == 3
    assert learners_per_process(cell_of("isolated", learners=1), registry, auto) == 1
    assert learners_per_process(cell_of("centralised", learners=4), registry, auto) == 1  # one process already
    # Asynchronous mixing, a straggler and GALA's gossip keep one learner per process.
    stale = cell_of(set={"diff-a2c": {"hidden": 16, "n_steps": 8, "staleness": 2}})
    assert learners_per_process(stale, registry, auto) == 1
    assert learners_per_process(cell_of(straggler="1:2"), registry, auto) == 1
    gala = cell_of(algorithms=["gala-a2c"], set={})
    assert learners_per_process(gala, registry, auto) == 1


def test_cells_of_frames_take_a_block_on_the_cpu_only_with_more_learners_than_cores(monkeypatch):
    """A process per learner convolves on cores of its own, faster than a block's threads while
    there is a core per learner; asked for, a block runs them anyway."""
    registry = load_registry()
    frames = cell_of(envs=["atari-games"], set={"diff-a2c": {"n_steps": 5}})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert learners_per_process(frames, registry, ExecutionSettings()) == 1
    assert learners_per_process(frames, registry, ExecutionSettings(learners_per_process=3)) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert learners_per_process(frames, registry, ExecutionSettings()) == 3


def test_an_atari_cell_runs_as_a_block_of_nature_cnns(tmp_path: Path):
    out = tmp_path / "run"
    result = bench(
        *("run", "-a", "diff-a2c", "-t", "ring", "-e", "atari-games", "--set", "atari-games.max_episode_steps=50"),
        *("--learners", "2", "--envs-per-learner", "2", "--env-steps", "400", "--seeds", "1", "--evaluations", "1"),
        *("--eval-episodes", "1", "--learners-per-process", "2", "--out", str(out)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = pq.read_table(out / "cells.parquet").to_pylist()
    assert row["status"] == "completed" and row["transport"] == "block"
    assert ds.dataset(out / "evaluations" / row["cell_id"]).to_table().num_rows > 0


def test_a_subclass_with_a_learner_of_its_own_is_not_run_as_an_inherited_block(monkeypatch):
    """A plugin that derives Diff-A2C and overrides only make_learner would lose its learner in
    Diff-A2C's block: its cells keep one learner per process."""
    from benchbase.run.blocks import block_refusal
    from plugins.algorithms.diff_a2c import DiffA2C

    class OwnLearner(DiffA2C):
        def make_learner(self, params, spec):
            return super().make_learner(params, spec)

    registry = load_registry()
    get = registry.get
    monkeypatch.setattr(registry, "get", lambda kind, name: OwnLearner() if kind == "algorithm" else get(kind, name))
    assert block_refusal(cell_of(), registry) == ("diff-a2c overrides make_learner but not make_learner_block")


# -- a block's run against one process per learner ---------------------------------------------------


def run(cell: Cell, out: Path, settings: ExecutionSettings) -> dict[int, dict[str, Any]]:
    launch = LearnerLaunch(cell.config(), str(out), 0, 1, "", 0, "cpu", time.time(), settings, learners=cell.learners)
    return run_block(launch, lambda event: None)


def learner_rows(out: Path, table: str, cell: Cell, rank: int) -> list[dict]:
    return pq.read_table(out / table / cell.cell_id / f"learner-{rank}.parquet").drop(["wall_time_s"]).to_pylist()


def timing(metric: str) -> bool:
    return metric.endswith("_s") or metric == "steps_per_second"


def final_parameters(out: Path, cell: Cell, rank: int) -> torch.Tensor:
    found, _ = checkpoint.latest_good(out / "checkpoints" / cell.cell_id / f"learner-{rank}")
    return found.state["learner"]["parameters"]


def stopping_at(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """The next run is asked to stop in block iteration `iteration`, as SIGUSR1 would ask it."""
    advance = loop._Training.advance

    def interrupted(training: Any, output: Any) -> Any:
        result = advance(training, output)
        if training.state.iteration == iteration:
            training.context.stop.requested = True
        return result

    monkeypatch.setattr(loop._Training, "advance", interrupted)


STOP_AT = 13  # of 1920 / 3 / 16 = 40 iterations; a periodic checkpoint every 192 cell steps (4 iterations)


VTRACE = {
    "algorithms": ["vtrace"],
    "replay": ["uniform"],
    "set": {"vtrace": {"hidden": 32, "unroll_length": 8, "batch_size": 8}, "uniform": {"min_fill": 8}},
}


@pytest.mark.parametrize("algorithm", ["diff-a2c", "vtrace"])
def test_a_stopped_and_resumed_block_equals_an_uninterrupted_one_row_for_row(tmp_path: Path, monkeypatch, algorithm):
    """V-trace's checkpoints carry the replay buffers and the batch drawn in the background."""
    cell = cell_of(**(VTRACE if algorithm == "vtrace" else {}))
    settings = ExecutionSettings(checkpoint_every=192, checkpoint_replay=algorithm == "vtrace")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summaries = run(cell, straight, settings)
    assert sorted(summaries) == [0, 1, 2] and not any(summary["stopped"] for summary in summaries.values())
    assert {summary["transport"] for summary in summaries.values()} == {"block"}

    with monkeypatch.context() as patch:
        stopping_at(patch, STOP_AT)
        assert all(summary["stopped"] for summary in run(cell, resumed, settings).values())
    for rank in range(3):  # every learner stopped at the same iteration, with its own checkpoint
        folder = resumed / "checkpoints" / cell.cell_id / f"learner-{rank}"
        assert checkpoint.latest_good(folder)[0].env_steps == STOP_AT * 16
    assert not (resumed / "episodes").exists()  # an unfinished cell writes no result files
    assert not any(summary["stopped"] for summary in run(cell, resumed, settings).values())

    for rank in range(3):
        assert torch.equal(final_parameters(resumed, cell, rank), final_parameters(straight, cell, rank))
        for table in ("episodes", "evaluations"):
            expected = learner_rows(straight, table, cell, rank)
            assert expected and learner_rows(resumed, table, cell, rank) == expected, (table, rank)
        untimed = lambda rows: [row for row in rows if not timing(row["metric"])]  # noqa: E731
        expected = untimed(learner_rows(straight, "metrics", cell, rank))
        assert untimed(learner_rows(resumed, "metrics", cell, rank)) == expected
        assert {"consensus_distance", "bytes_sent", "loss"} <= {row["metric"] for row in expected}


@pytest.mark.parametrize("algorithm", ["diff-a2c", "vtrace"])
def test_a_block_and_a_process_per_learner_run_the_same_cell_alike(tmp_path: Path, algorithm):
    """The same ring cell both ways: the same rows of the same shape, the same bytes counted,
    consensus measured alike, and both learn. The runs differ in rounding and in the random
    stream that samples actions, so their curves agree within noise, not bit for bit."""
    cell = cell_of(learners=4, env_steps=24_000, evaluations=2, **(VTRACE if algorithm == "vtrace" else {}))
    from benchbase.run.local import run_cell

    outcomes = {}
    for name, per_process in (("block", None), ("processes", 1)):
        settings = ExecutionSettings(learners_per_process=per_process, comm_timeout_s=60)
        outcomes[name] = run_cell(cell, str(tmp_path / name), lambda event: None, settings)
    for name, outcome in outcomes.items():
        assert outcome.status == "completed", (name, outcome.error)
    block, processes = outcomes["block"], outcomes["processes"]
    assert [s["transport"] for s in block.summaries] == ["block"] * 4
    assert {s["transport"] for s in processes.summaries} <= {"shm", "p2p"}
    assert [s["env_steps"] for s in block.summaries] == [s["env_steps"] for s in processes.summaries]
    assert [s["bytes_sent"] for s in block.summaries] == [s["bytes_sent"] for s in processes.summaries]

    late, early = {}, {}
    for name in outcomes:
        episodes = ds.dataset(tmp_path / name / "episodes" / cell.cell_id).to_table().to_pylist()
        returns = [row["episode_return"] for row in sorted(episodes, key=lambda row: row["cell_env_step"])]
        early[name], late[name] = np.mean(returns[: len(returns) // 4]), np.mean(returns[-len(returns) // 4 :])
        metrics = ds.dataset(tmp_path / name / "metrics" / cell.cell_id).to_table().to_pylist()
        # recent_return appears once an episode has ended, which depends on the sampled actions
        counts = Counter(
            row["metric"] for row in metrics if not timing(row["metric"]) and row["metric"] != "recent_return"
        )
        evaluations = ds.dataset(tmp_path / name / "evaluations" / cell.cell_id).to_table().num_rows
        outcomes[name] = (counts, evaluations)
    assert outcomes["block"] == outcomes["processes"]  # the same metrics, as often; the same evaluations
    for name in late:  # both learn: CartPole episodes grow from about 20 steps
        assert late[name] > 2 * early[name], (name, early[name], late[name])
    assert abs(np.log(late["block"] / late["processes"])) < np.log(3), late


def test_blocks_in_several_processes_give_the_same_run_over_shared_memory_and_gloo(tmp_path: Path):
    """A 6-learner ring as 3 blocks of 2: the rows each block reads from its neighbours travel
    through shared memory by default and as gloo messages with `--transport p2p`; the bytes are
    the same and so is every parameter at the end, bit for bit."""
    from benchbase.run.local import run_cell

    cell = cell_of(learners=6, env_steps=2880, evaluations=0)
    finals = {}
    for transport in ("auto", "p2p"):
        settings = ExecutionSettings(learners_per_process=2, transport=transport, comm_timeout_s=60)
        outcome = run_cell(cell, str(tmp_path / transport), lambda event: None, settings)
        assert outcome.status == "completed", outcome.error
        expected = "block/shm" if transport == "auto" else "block/p2p"
        assert [summary["transport"] for summary in outcome.summaries] == [expected] * 6
        finals[transport] = [final_parameters(tmp_path / transport, cell, rank) for rank in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(finals["auto"], finals["p2p"]))
    assert not torch.equal(finals["auto"][0], finals["auto"][3])  # learners of different blocks differ


def test_a_learner_that_raises_inside_a_block_fails_its_cell_with_its_traceback(tmp_path: Path):
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"rank": 1, "at_step": 400, "how": "raise"}))
    env = {"PYTHONPATH": str(TESTS), "BENCHBASE_EXTRA_PLUGINS": "fault_plugin", "BENCHBASE_FAULT": str(fault)}
    grid = [
        *("run", "-a", "faulty-block-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "3"),
        *("--envs-per-learner", "2", "--env-steps", "6000", "--seeds", "2", "--evaluations", "1"),
        # One cell at a time: the fault fires once, in the first cell to reach it.
        *("--eval-episodes", "1", "--jobs", "1", "--out", str(tmp_path / "run")),
    ]
    result = bench(*grid, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {row["seed"]: row for row in pq.read_table(tmp_path / "run" / "cells.parquet").to_pylist()}
    assert rows[0]["status"] == "failed" and rows[1]["status"] == "completed"  # the grid went on
    error = rows[0]["error"]
    assert "injected fault in learner 1 of a block" in error and "Traceback" in error and "iterate" in error
    assert error.startswith("learners 0-2 (one process) failed:")  # the block's process, not "learner 0"
    assert not (tmp_path / "run" / "episodes" / rows[0]["cell_id"]).exists()


def test_a_learner_that_raises_in_one_of_two_blocks_is_named_with_its_process(tmp_path: Path):
    """Learner 3 raises in the second of two blocks of 2: the cell fails with its traceback, under
    the learners of its process (2-3), not under the block's index; the other block follows."""
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"rank": 3, "at_step": 1000, "how": "raise"}))
    env = {"PYTHONPATH": str(TESTS), "BENCHBASE_EXTRA_PLUGINS": "fault_plugin", "BENCHBASE_FAULT": str(fault)}
    result = bench(
        *("run", "-a", "faulty-block-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "4"),
        *("--envs-per-learner", "2", "--env-steps", "16000", "--seeds", "1", "--evaluations", "0"),
        *("--learners-per-process", "2", "--set", "faulty-block-a2c.hidden=16", "--out", str(tmp_path / "run")),
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = pq.read_table(tmp_path / "run" / "cells.parquet").to_pylist()
    assert row["status"] == "failed"
    assert row["error"].startswith("learners 2-3 (one process) failed:\nTraceback")
    assert "injected fault in learner 3 of a block" in row["error"] and "shares" not in row["error"]


def test_a_cells_error_names_each_block_process_by_its_learners_once():
    """The cause first (its process's learners named together), then one line per other process."""
    from benchbase.run.local import _root_cause

    errors = [
        (2.0, 1, "learner 1 shares learner 0's process"),
        (2.0, 0, "Traceback (most recent call last):\nTimeoutError: no parameters from learner 3"),
        (1.0, 3, "learner 3 shares learner 2's process"),
        (1.0, 2, "Traceback (most recent call last):\nRuntimeError: injected"),
    ]
    assert _root_cause(errors, 2) == (
        "learners 2-3 (one process) failed:\nTraceback (most recent call last):\nRuntimeError: injected"
        "\n(then learners 0-1 (one process): TimeoutError: no parameters from learner 3)"
    )
    one_each = _root_cause([(1.0, 1, "boom"), (2.0, 0, "x\nbroken pipe")])
    assert one_each == "learner 1: boom\n(then learner 0: broken pipe)"


def test_blocks_in_two_processes_stop_together_and_resume_bit_for_bit(tmp_path: Path):
    """A 4-learner ring as two blocks of 2 (two processes exchanging rows through shared memory). One process is asked
    to stop; both stop at the iteration they agree on, each learner with its checkpoint; the run
    resumed from there ends with the parameters and episodes of a run that was never stopped."""
    fault = tmp_path / "fault.json"
    env = {"PYTHONPATH": str(TESTS), "BENCHBASE_EXTRA_PLUGINS": "fault_plugin", "BENCHBASE_FAULT": str(fault)}
    grid = [
        *("run", "-a", "faulty-block-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "4"),
        *("--envs-per-learner", "2", "--env-steps", "16000", "--seeds", "1", "--evaluations", "0"),
        *("--learners-per-process", "2", "--checkpoint-every", "2000", "--set", "faulty-block-a2c.hidden=16"),
    ]
    straight = bench(*grid, "--out", str(tmp_path / "straight"), env=env)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    fault.write_text(json.dumps({"rank": 3, "at_step": 1000, "how": "stop"}))
    stopped = bench(*grid, "--out", str(tmp_path / "resumed"), env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    fault.unlink()
    (row,) = pq.read_table(tmp_path / "resumed" / "cells.parquet").to_pylist()
    assert row["status"] == "interrupted"
    cell = Cell.from_config(json.loads(row["config"]))
    stops = {
        checkpoint.latest_good(tmp_path / "resumed" / "checkpoints" / cell.cell_id / f"learner-{rank}")[0].env_steps
        for rank in range(4)
    }
    assert len(stops) == 1 and 0 < stops.pop() < 4000  # every learner at the same agreed step
    resumed = bench(*grid, "--out", str(tmp_path / "resumed"), env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (row,) = pq.read_table(tmp_path / "resumed" / "cells.parquet").to_pylist()
    assert row["status"] == "completed" and row["transport"] == "block/shm"  # the rows each block reads
    for rank in range(4):
        assert torch.equal(
            final_parameters(tmp_path / "resumed", cell, rank), final_parameters(tmp_path / "straight", cell, rank)
        )
        assert learner_rows(tmp_path / "resumed", "episodes", cell, rank) == learner_rows(
            tmp_path / "straight", "episodes", cell, rank
        )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--learners-per-process", "0"], "--learners-per-process 0: give at least 1"),
        (["--learners-per-process", "5"], "--learners-per-process 5: more than the 4 learners of cell"),
        (["--learners-per-process", "3"], "does not divide the 4 learners of cell"),
        (["-a", "gala-a2c", "--learners-per-process", "4"], "gala-a2c gossips asynchronously between processes"),
        (["--straggler", "1:2", "--learners-per-process", "4"], "--straggler paces one learner's process"),
        (["--launcher", "torchrun", "--learners-per-process", "4"], "torchrun starts one process per learner"),
        (["--transport", "p2p", "--learners-per-process", "4"], "shares one process, so nothing travels"),
    ],
)
def test_learners_per_process_that_no_cell_can_take_is_one_line_and_exit_2(tmp_path: Path, args, message):
    algorithm = [] if "-a" in args else ["-a", "diff-a2c"]
    result = bench(
        *("run", *algorithm, "-t", "ring", "-e", "random-cartpole", "--learners", "4", "--env-steps", "4000"),
        *args,
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_shared_memory_asked_for_a_graph_it_cannot_carry_is_one_line_and_exit_2(tmp_path: Path):
    """On a directed ring of 16 a learner can lead the reader behind it by 15 iterations, more than
    a segment's slots: `--transport shm` is refused before anything runs, not a failed cell."""
    result = bench(
        *("run", "-a", "diff-a2c", "-t", "directed-ring", "-e", "random-cartpole", "--learners", "16"),
        *("--envs-per-learner", "1", "--env-steps", "2000", "--transport", "shm", "--out", str(tmp_path / "run")),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--transport shm: cell" in result.stderr and "more than a shared-memory segment holds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_learners_that_would_not_fit_on_a_gpu_are_refused_in_one_line(monkeypatch):
    """The learners one GPU would host (its share of the cell's processes times the learners a
    process hosts), each with its model's copies, against the smallest GPU's memory; checked on
    this CPU machine with the GPUs' sizes given and CUDA said to be present."""
    from benchbase.errors import UserError
    from benchbase.grid.expand import in_a_block, memory_needs
    from benchbase.run import blocks

    registry = load_registry()
    cell = cell_of(learners=16)
    ((_, _, _, model),) = memory_needs([cell], registry, in_blocks=in_a_block)
    assert model > 0

    def check(gpus: list[int], device: str = "cuda", per_process: int | None = None) -> None:
        settings = ExecutionSettings(device=device, learners_per_process=per_process)
        blocks.check_gpu_memory([cell], registry, settings, gpus)

    check([1], device="cpu")  # the CPU: no GPU to fit
    monkeypatch.setattr(blocks, "device_for", lambda rank, requested, gpus=(): "cpu")
    check([1], device="auto")  # auto without CUDA runs on the CPU
    monkeypatch.setattr(blocks, "device_for", lambda rank, requested, gpus=(): "cuda:0")
    check([16 * model])  # one block of 16 on one GPU
    with pytest.raises(UserError, match="puts 16 learners on one GPU.*than the .* of this GPU: fewer learners per"):
        check([16 * model - 1])
    check([4 * model] * 4, per_process=4)  # a block of 4 on each of 4 GPUs
    with pytest.raises(UserError, match="puts 8 learners on one GPU.*of the smallest GPU"):
        check([4 * model] * 2, per_process=4)  # 4 blocks on 2 GPUs: two on each
    with pytest.raises(UserError, match="puts 8 learners on one GPU"):
        check([8 * model, 4 * model, 8 * model], per_process=4)  # the smallest GPU sets the bound
    check([model] * 16, per_process=1)  # a learner per GPU
    with pytest.raises(UserError, match=r"puts 2 learners on one GPU.*: more GPUs, fewer learners"):
        check([model] * 8, per_process=1)


def test_gpu_memory_reads_nvidia_smi_for_the_gpus_cuda_sees(monkeypatch):
    from benchbase.run import placement

    listing = "0, GPU-aaaa, 81559\n1, GPU-bbbb, 40960\n"

    def nvidia_smi(command, **kwargs):
        assert command[0] == "nvidia-smi"
        return subprocess.CompletedProcess(command, 0, stdout=listing, stderr="")

    monkeypatch.setattr(placement.subprocess, "run", nvidia_smi)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.gpu_memory() == [81559 * 2**20, 40960 * 2**20]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert placement.gpu_memory() == [40960 * 2**20]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
    assert placement.gpu_memory() == [81559 * 2**20]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert placement.gpu_memory() == []

    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(placement.subprocess, "run", missing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert placement.gpu_memory() == []
