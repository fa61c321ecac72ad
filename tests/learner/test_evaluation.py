"""Evaluations: how many episodes a cell's evaluations rest on by default or when told, and when in
the budget they happen (the same nominal points in every cell, whatever its iteration size)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
from bench_helpers import bench_run

from benchbase.api.contracts import params_of
from benchbase.api.registry import BUILTIN_PLUGINS, load_registry
from benchbase.grid.expand import expand
from benchbase.grid.spec import CELL_EVAL_EPISODES, default_grid, make_spec, parse_axis_entry
from benchbase.learner.build import simulator_tasks
from benchbase.learner.evaluation import Evaluator, episodes_per_process, evaluation_due, nominal_env_step


@pytest.fixture(scope="module")
def registry():
    return load_registry(only=set(BUILTIN_PLUGINS), blocked=set(), extra=())


def cells(registry, topology: str, learners: int, **scalars: Any) -> list:
    """The cells of a one-cell grid on random-cartpole, as `bench run` would expand it."""
    values = {
        "algorithms": [parse_axis_entry("diff-a2c", "--algorithm")],
        "topologies": [parse_axis_entry(topology, "--topology")],
        "envs": [parse_axis_entry("random-cartpole", "--env")],
        "learners": learners,
        "env_steps": 200_000,
        **scalars,
    }
    return expand(make_spec({}, values), registry).cells


def evaluator_for(registry, cell, rank: int = 0) -> Evaluator:
    family = registry.get("env", cell.env)
    params = params_of(family, cell.env_params)
    own = simulator_tasks(family.training_tasks(params, cell.learners, cell.seed), cell, rank)
    return Evaluator(family, params, own, cell, rank)


# -- episodes ----------------------------------------------------------------------------------


CASES = [("isolated", 1), ("centralised", 1)] + [
    (topology, learners) for learners in (4, 16) for topology in ("ring", "isolated", "centralised")
]  # (a ring needs two learners)


@pytest.mark.parametrize(("topology", "learners"), CASES)
def test_by_default_a_cell_evaluates_at_least_100_episodes_per_split(registry, topology: str, learners: int):
    (cell,) = cells(registry, topology, learners)
    per_cell = episodes_per_process(cell) * cell.learner_processes
    assert CELL_EVAL_EPISODES <= per_cell < CELL_EVAL_EPISODES + cell.learners  # enough, and not much more
    assert cell.eval_episodes == math.ceil(CELL_EVAL_EPISODES / learners)


def test_the_default_grid_has_a_learning_curve_of_100_episode_points(registry):
    spec = make_spec(default_grid(), {})
    for cell in expand(spec, registry).cells:
        assert cell.evaluations == 10
        assert episodes_per_process(cell) * cell.learner_processes >= CELL_EVAL_EPISODES


def balance(observations: np.ndarray) -> np.ndarray:
    """A fair CartPole controller: push towards where the pole falls."""
    return (observations[:, 2] + 0.5 * observations[:, 3] > 0).astype(np.int64)


def test_the_evaluator_runs_one_simulator_per_episode_on_every_split(registry):
    (cell,) = cells(registry, "ring", 4)
    evaluator = evaluator_for(registry, cell)
    try:
        final = evaluator.run(balance)
        assert {split: env.num_envs for split, env in evaluator.split_envs().items()} == dict.fromkeys(
            ["train", "D", "R", "E"], 25
        )
        # Earlier evaluations: the same tasks, every split's simulators in one env.
        earlier = evaluator.run(balance, final=False)
        assert evaluator.combined_env().num_envs == 100
        for split, episodes in final.items():
            assert [e.task.task_id for e in earlier[split]] == [e.task.task_id for e in episodes]
            assert [e.task.task_id for e in episodes] == [t.task_id for t in evaluator.tasks[split]]
        assert evaluator.run(balance, final=False) == earlier  # deterministic
    finally:
        evaluator.close()


def test_an_explicit_eval_episodes_is_honoured(registry):
    (cell,) = cells(registry, "ring", 4, eval_episodes=3)
    assert cell.eval_episodes == 3 and episodes_per_process(cell) == 3
    evaluator = evaluator_for(registry, cell, rank=2)
    try:
        assert {env.num_envs for env in evaluator.split_envs().values()} == {3}
    finally:
        evaluator.close()
    # From a grid file too, and the command line wins over the file.
    values = {"algorithms": ["diff-a2c"], "topologies": ["ring"], "envs": ["random-cartpole"], "eval_episodes": 7}
    assert make_spec(values, {}).eval_episodes == 7
    assert make_spec(values, {"eval_episodes": 2}).eval_episodes == 2
    # Per learner asked for: the centralised learner runs the episodes of all of them.
    (central,) = cells(registry, "centralised", 4, eval_episodes=3)
    assert episodes_per_process(central) == 12


# -- when ---------------------------------------------------------------------------------------


def schedule(cell_steps_per_iteration: int, budget: int, learners: int, evaluations: int) -> list[tuple[int, int]]:
    """(evaluation, cell env step of its iteration) as a learner's loop meets them."""
    per_learner = math.ceil(budget / learners)
    iterations = math.ceil(per_learner / (cell_steps_per_iteration // learners))
    found = []
    for iteration in range(1, iterations + 1):
        after = iteration * cell_steps_per_iteration
        number = evaluation_due(after - cell_steps_per_iteration, after, budget, evaluations, iteration == iterations)
        if number:
            found.append((number, after))
    return found


def test_cells_with_different_iteration_sizes_share_their_evaluation_points():
    budget, evaluations = 200_000, 10
    # Diff-A2C (T = 5), 4 learners of 8 or of 6 simulators: 160 or 120 cell env steps per iteration.
    for size in (4 * 5 * 8, 4 * 5 * 6, 4 * 5 * 7):
        found = schedule(size, budget, 4, evaluations)
        assert [number for number, _ in found] == list(range(1, evaluations + 1))
        for number, cell_step in found:
            nominal = nominal_env_step(number, budget, evaluations)
            assert nominal == 20_000 * number
            assert nominal <= cell_step < nominal + size  # the first iteration at or past the point


def test_iterations_that_pass_several_points_run_the_latest_and_the_last_runs_the_final():
    # 3 iterations of 400 cell steps for 5 points of 240: iterations end at 400 (point 1), 800
    # (points 2 and 3: runs 3), 1,200 (the last: 5).
    assert schedule(400, 1_200, 2, 5) == [(1, 400), (3, 800), (5, 1_200)]
    assert schedule(400, 1_200, 2, 1) == [(1, 1_200)]
    assert evaluation_due(0, 400, 1_200, 0, True) == 0  # no evaluations


def test_a_real_run_records_the_nominal_points_and_the_evaluation_time(tmp_path: Path):
    """Two cells whose iterations differ (2 or 3 simulators per learner) evaluate at the same points."""
    steps: dict[int, set[tuple[int, int]]] = {}
    for simulators in (2, 3):
        out = tmp_path / f"p{simulators}"
        bench_run(
            out,
            *("-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "2", "--seeds", "1"),
            *("--envs-per-learner", str(simulators), "--env-steps", "3000", "--evaluations", "3"),
            *("--eval-episodes", "2"),
            timeout=300,
        )
        rows = ds.dataset(out / "evaluations").to_table().to_pylist()
        assert len(rows) == 2 * 3 * 4 * 2  # learners × evaluations × splits × episodes
        steps[simulators] = {(row["evaluation"], row["cell_env_step"]) for row in rows}
        for row in rows:
            assert row["cell_env_step"] <= row["env_step"] * 2 < row["cell_env_step"] + 2 * 5 * simulators
            assert row["final"] == (row["evaluation"] == 3)
        timings = [row for row in ds.dataset(out / "metrics").to_table().to_pylist() if row["metric"] == "eval_time_s"]
        assert sorted(row["learner"] for row in timings) == [0, 0, 0, 1, 1, 1]
        assert all(0 < row["value"] < row["wall_time_s"] for row in timings)
    assert steps[2] == steps[3] == {(1, 1000), (2, 2000), (3, 3000)}
