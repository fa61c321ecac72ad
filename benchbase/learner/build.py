"""Building a cell's learner: its simulators' tasks, its replay buffers, its algorithm's learner,
and starting it from another run's checkpoint (`--init-from`, checked to fit before anything runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchbase.api.contracts import LearnerSpec, Task, params_of
from benchbase.api.replay import ReplayMix, batch_shares
from benchbase.checkpoints import checkpoint
from benchbase.errors import UserError
from benchbase.grid.cell import Cell, replay_parts


def simulator_tasks(tasks: Sequence[Task], cell: Cell, rank: int) -> list[Task]:
    """The task of each of this process's simulators. Learner k of the grid owns task k; the
    centralised baseline's single process runs every learner's simulators."""
    simulators_per_task = cell.envs_per_learner * cell.learner_processes // cell.learners
    first = rank * cell.envs_per_learner
    return [tasks[(first + k) // simulators_per_task] for k in range(cell.envs_per_learner)]


def simulator_seed(cell: Cell, rank: int) -> int:
    """The seed of learner `rank`'s simulators, whether it runs in a process of its own or in a block."""
    return cell.seed * 1_000_003 + 1_009 * rank


def initialise_from(learner: Any, source: dict[str, Any], rank: int) -> None:
    """`bench run --init-from`: this learner starts from source learner (rank mod N)'s model,
    normalisation statistics and optimiser moments, with the new cell's hyperparameters."""
    paths = source["checkpoints"]
    found = checkpoint.load_run_checkpoint(paths[rank % len(paths)])
    learner.load_state_dict(found.state["learner"], mode="init")


def build_learner(registry: Any, cell: Cell, env: Any, *, rank: int = 0, world: int = 1, device: str = "cpu") -> Any:
    """The cell's algorithm's learner number `rank` of `world`, on `env` (also used outside a
    cell: bench eval, checking that a checkpoint fits a cell's model)."""
    algorithm = registry.get("algorithm", cell.algorithm)
    algorithm_params = params_of(algorithm, cell.algorithm_params)
    spec = learner_spec(registry, cell, algorithm, algorithm_params, env, rank, world, torch.device(device))
    return algorithm.make_learner(algorithm_params, spec)


def learner_spec(
    registry: Any, cell: Cell, algorithm: Any, algorithm_params: Any, env: Any, rank: int, world: int, device: Any
) -> LearnerSpec:
    """What learner `rank` of `world` is built from, in a process of its own or in a block: its
    env, its replay mix (off-policy algorithms) and its share of the cell's env-step budget."""
    return LearnerSpec(
        env,
        rank,
        world,
        cell.seed,
        device,
        replay=replay_mix(registry, algorithm, algorithm_params, cell, rank),
        env_steps_budget=math.ceil(cell.env_steps / world),
    )


def replay_mix(registry: Any, algorithm: Any, algorithm_params: Any, cell: Cell, rank: int) -> ReplayMix | None:
    """The learner's replay buffers, one per strategy of the cell's mix (off-policy algorithms)."""
    if not algorithm.uses_replay:
        return None
    parts = batch_shares(
        [
            (name, params_of(registry.get("replay", name), values))
            for name, values in replay_parts(cell.replay, cell.replay_params)
        ],
        algorithm_params.batch_size,
        owner=f"replay {cell.replay}",
    )
    buffers = [
        registry.get("replay", part.name).make_buffer(part.params, cell.seed * 1_000_003 + 7_919 * rank + k)
        for k, part in enumerate(parts)
    ]
    return ReplayMix(parts, buffers)


def check_fits(cells: list[Any], source: dict[str, Any], registry: Any) -> None:
    """A UserError unless every cell's model has the shape of the checkpoint's (built once per
    distinct algorithm and env setting, with one simulator)."""
    import json

    from benchbase.api.contracts import params_of, without_resampling

    try:
        saved = checkpoint.load_run_checkpoint(Path(source["checkpoints"][0])).state["learner"]["parameters"].numel()
    except checkpoint.CheckpointError as error:
        raise UserError(f"--init-from: {error}") from None
    seen: set[str] = set()
    for cell in cells:
        key = json.dumps(
            [cell.algorithm, cell.algorithm_params, cell.env, cell.env_params], sort_keys=True, default=str
        )
        if key in seen:
            continue
        seen.add(key)
        family = registry.get("env", cell.env)
        env_params = without_resampling(params_of(family, cell.env_params))
        env = family.make_env(env_params, family.training_tasks(env_params, 1, cell.seed), 0)
        try:
            learner = build_learner(registry, cell, env)
            built = learner.model_parameters().numel()
            learner.close()
        finally:
            env.close()
        if built != saved:
            raise UserError(
                f"--init-from: the checkpoint's model ({source['algorithm']} on {source['env']}) has {saved:,} "
                f"parameters, {cell.algorithm} on {cell.env} builds {built:,}: the architecture or the env differs"
            )
