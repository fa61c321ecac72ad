"""`bench eval`: saved models evaluated outside their run, on any split of any compatible family."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from benchbase.api.contracts import FinishedEpisode, StepResult, Task, params_of
from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.errors import UserError
from benchbase.evaluate.evaluate import EvalRequest, evaluate
from benchbase.evaluate.video import can_render
from benchbase.grid.cell import Cell
from benchbase.learner.build import build_learner, simulator_tasks
from benchbase.learner.episodes import run_episodes
from benchbase.learner.evaluation import Evaluator

REGISTRY = load_registry()
EPISODES = 3
SPLITS = {"train", "D", "R", "E"}
KEY = ("learner", "split", "task_id", "episode_return", "episode_length", "success")


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-learner cell trained just enough to score unevenly (2,000 env steps)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    result = bench(
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "isolated",
        "-e",
        "random-cartpole",
        "--learners",
        "2",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "2000",
        "--seeds",
        "1",
        "--eval-episodes",
        str(EPISODES),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def cell_folder(run: Path) -> Path:
    (folder,) = (run / "checkpoints").iterdir()
    return folder


def final_checkpoint(run: Path, learner: int) -> Path:
    return max((cell_folder(run) / f"learner-{learner}").glob("step-*.pt"))


def rows(table_or_path) -> list[tuple]:
    table = pq.read_table(table_or_path) if isinstance(table_or_path, Path) else table_or_path
    return sorted(tuple(row[key] for key in KEY) for row in table.to_pylist())


def test_run_folder_reproduces_the_runs_final_evaluation(run: Path) -> None:
    result = bench("eval", str(run))  # by default as many episodes as the run's own evaluations
    assert result.returncode == 0, result.stderr
    (written,) = (run / "evals").glob("*/evaluations.parquet")  # the default: inside the run folder
    table = pq.read_table(written)
    assert table.num_rows == EPISODES * len(SPLITS) * 2
    assert table.schema.metadata[b"benchbase.table"] == b"evals"
    assert set(table.column("split").to_pylist()) == SPLITS and set(table.column("mode").to_pylist()) == {"greedy"}
    assert set(table.column("episode").to_pylist()) == set(range(EPISODES))
    assert {Path(path).name for path in table.column("checkpoint").to_pylist()} == {final_checkpoint(run, 0).name}
    # Same tasks, seeds and model as the run's own final evaluation: the same episodes.
    final = ds.dataset(run / "evaluations").to_table().filter(ds.field("final"))
    assert rows(table) == rows(final)
    assert len({row[3] for row in rows(table)}) > 1  # the returns vary: the comparison means something
    assert "random-cartpole" in result.stdout and "±" in result.stdout


def test_greedy_is_deterministic_and_is_the_checkpoints_model(run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = final_checkpoint(run, 1)
    request = EvalRequest(source=str(path), episodes=EPISODES, out=tmp_path / "a")
    first = evaluate(request, REGISTRY)
    second = evaluate(EvalRequest(source=str(path), episodes=EPISODES, out=tmp_path / "b"), REGISTRY)
    assert rows(first.table) == rows(second.table) == rows(tmp_path / "a" / "evaluations.parquet")
    assert set(first.table.column("learner").to_pylist()) == {1}
    # An in-process learner given that checkpoint's state, evaluated by the run's own Evaluator.
    found = checkpoint.load(path)
    cell = Cell.from_config(found.info["cell_config"])
    family = REGISTRY.get("env", cell.env)
    params = params_of(family, cell.env_params)
    env = family.make_env(params, family.training_tasks(params, 1, cell.seed), 0)
    learner = build_learner(REGISTRY, cell, env)
    learner.load_state_dict(found.state["learner"], mode="model")
    own = simulator_tasks(family.training_tasks(params, cell.learners, cell.seed), cell, 1)
    evaluator = Evaluator(family, params, own, cell, 1)
    expected = sorted(
        (1, split, e.task.task_id, e.episode_return, e.episode_length, e.success)
        for split, episodes in evaluator.run(learner.act_greedy).items()
        for e in episodes
    )
    evaluator.close()
    assert rows(first.table) == expected


def test_stochastic_differs_from_greedy_and_repeats(run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    source = str(cell_folder(run))
    greedy = evaluate(EvalRequest(source=source, episodes=EPISODES, out=tmp_path / "g"), REGISTRY)
    sampled = [
        evaluate(EvalRequest(source=source, episodes=EPISODES, stochastic=True, out=tmp_path / f"s{k}"), REGISTRY)
        for k in range(2)
    ]
    assert set(sampled[0].table.column("mode").to_pylist()) == {"stochastic"}
    assert rows(sampled[0].table) == rows(sampled[1].table)  # seeded
    assert rows(sampled[0].table) != rows(greedy.table)
    assert sampled[0].table.num_rows == greedy.table.num_rows == EPISODES * len(SPLITS) * 2


def test_other_family_and_split(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = bench(
        "eval",
        str(cell_folder(run)),
        "--env",
        "extreme-cartpole",
        "--split",
        "E",
        "--learner",
        "0",
        "--episodes",
        "2",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert len(table) == 2
    assert {(row["env"], row["trained_env"], row["split"], row["learner"], row["seed"]) for row in table} == {
        ("extreme-cartpole", "random-cartpole", "E", 0, 5)
    }
    assert all(row["task_id"].startswith("E-eval-") and dict(row["task_params"]) for row in table)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_records_simulator_zero(run: Path, tmp_path: Path, suffix: str) -> None:
    torch.set_num_threads(1)
    path = tmp_path / f"episodes{suffix}"
    outcome = evaluate(
        EvalRequest(
            source=str(cell_folder(run)), splits=("D", "E"), episodes=2, learner=0, out=tmp_path / "out", video=path
        ),
        REGISTRY,
    )
    lengths = {
        row["split"]: row["episode_length"]
        for row in outcome.table.to_pylist()
        if row["episode"] == 0 and row["learner"] == 0
    }
    # Simulator 0's episode of each split, every state before its last step.
    assert outcome.video == path and outcome.video_frames == sum(lengths.values())
    frames = np.stack(
        imageio.mimread(path, memtest=False)
        if suffix == ".gif"
        else imageio.mimread(path, format="FFMPEG", memtest=False)
    )
    assert frames.ndim == 4 and len(frames) > 10 and frames.std(axis=0).max() > 0  # it moves
    assert not list(tmp_path.glob(".*partial*"))


def test_every_classic_family_renders() -> None:
    for name in ("random-cartpole", "random-mountaincar", "random-acrobot", "random-pendulum"):
        family = REGISTRY.get("env", name)
        params = params_of(family, {})
        env = family.make_env(params, family.evaluation_tasks(params, "E", 2, 0), 3)
        before = env.render(1)
        # Seeded actions, and enough steps that every family's simulator 1 moves by pixels: five
        # unseeded random steps sometimes left the mountain car within a pixel of where it was.
        env.action_space.seed(0)
        for _ in range(20):
            env.step(np.array([env.action_space.sample() for _ in range(2)]))
        after = env.render(1)
        assert before.dtype == np.uint8 and before.ndim == 3 and before.shape[2] == 3, name
        assert before.shape == after.shape and (before != after).any(), name


class _Counting:
    """Two simulators; simulator i's episodes last i + 1 steps (no render method)."""

    num_envs = 2

    def reset(self, seed: int) -> np.ndarray:
        self.steps = np.zeros(2, dtype=int)
        return np.zeros((2, 1), dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        self.steps += 1
        done = self.steps >= np.array([1, 2])
        finished = [FinishedEpisode(int(i), 1.0, int(self.steps[i]), None, Task(f"t{i}")) for i in np.flatnonzero(done)]
        self.steps[done] = 0
        observations = np.zeros((2, 1), dtype=np.float32)
        return StepResult(observations, np.ones(2, np.float32), done, np.zeros(2, bool), observations, finished)


def test_run_episodes_takes_fixed_quotas_per_simulator() -> None:
    episodes = run_episodes(_Counting(), lambda obs: np.zeros(2, dtype=int), 5, seed=0)
    # Simulator 0 ends an episode every step but contributes only its quota of 3.
    assert [(e.simulator, e.episode_length) for e in episodes] == [(0, 1), (0, 1), (0, 1), (1, 2), (1, 2)]
    with pytest.raises(UserError, match="cannot render"):
        can_render(_Counting(), "counting")


def test_bad_input_is_one_line(run: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no such": [str(tmp_path / "missing")],
        "not a checkpoint": [str(empty)],
        'did you mean "extreme-cartpole"': [str(run), "--env", "extreme-cartpol"],
        'unknown split of random-cartpole "X"': [str(run), "--split", "X"],
        "out of range": [str(run), "--learner", "5"],
        "--episodes 0": [str(run), "--episodes", "0"],
        ".mp4 or .gif": [str(run), "--video", str(tmp_path / "clip.avi")],
        "differ from the model's": [str(run), "--env", "random-pendulum"],
    }
    # In parallel: each is a fresh interpreter that imports torch.
    processes = {
        expected: subprocess.Popen(
            [sys.executable, "-m", "benchbase", "eval", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for expected, args in cases.items()
    }
    for expected, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (expected, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (expected, stderr)
    assert not (run / "evals").exists() or all(any(folder.iterdir()) for folder in (run / "evals").iterdir())


def test_a_learner_with_a_corrupt_checkpoint_is_named_and_the_others_evaluated(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    bad = copy / "checkpoints" / cell_folder(run).name / "learner-1"
    for path in bad.glob("step-*.pt"):
        path.write_bytes(path.read_bytes()[:100])  # truncated: its sidecar's size no longer matches
    result = bench("eval", str(copy), "--episodes", str(EPISODES), "--out", str(tmp_path / "evals"))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "evals" / "evaluations.parquet")
    assert set(table.column("learner").to_pylist()) == {0}
    assert "learner-1" in result.stdout and "truncated" in result.stdout
    # --init-from needs every source learner (learner r starts from learner r mod N): refused, naming it.
    refused = bench(
        "run", "-a", "diff-a2c", "-t", "isolated", "-e", "random-cartpole", "--dry-run", "--init-from", str(bad.parent)
    )
    assert refused.returncode == 2 and "learner-1" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
