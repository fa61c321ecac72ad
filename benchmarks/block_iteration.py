"""Milliseconds per iteration of one Diff-A2C learner block, in this process, against one
centralised learner on the same simulators: the block's collect, update and mix timed apart.

    python benchmarks/block_iteration.py                      # 16 learners × 1 simulator, ring
    python benchmarks/block_iteration.py --learners 64 --threads 2

No `bench run`: no processes, checkpoints, result rows or evaluations, so what it times is the
batched arithmetic of a block (docs/scaling.md), the place to look when `learner_blocks.py`'s
ratios move. Both sides run `--warm-up` iterations first, then `--iterations` timed ones, on
`random-cartpole` with the default Diff-A2C settings; the block mixes on a ring with the cell's
`BlockMixer` (one process: one product, or gathered neighbour rows for large blocks).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchbase.api.contracts import LearnerSpec, params_of
from benchbase.api.registry import load_registry
from benchbase.comm.block import BlockMixer
from benchbase.comm.mixing_plan import build_mixing_plan


def build(learners: int, envs_per_learner: int, algorithm_name: str = "diff-a2c"):
    """The block of `learners` learners of `algorithm_name` (default settings) and one learner
    with all their simulators."""
    registry = load_registry()
    family = registry.get("env", "random-cartpole")
    env_params = params_of(family, {})
    tasks = family.training_tasks(env_params, learners, 0)
    algorithm = registry.get("algorithm", algorithm_name)
    params = params_of(algorithm, {})
    own = [[tasks[rank]] * envs_per_learner for rank in range(learners)]
    seeds = [1009 * rank for rank in range(learners)]
    envs = family.make_env_block(env_params, own, seeds)
    specs = [LearnerSpec(env, rank, learners, 0, torch.device("cpu")) for rank, env in enumerate(envs.members)]
    block = algorithm.make_learner_block(params, specs, envs)
    every_task = [task for tasks_of_one in own for task in tasks_of_one]
    alone = family.make_env(env_params, every_task, 0)
    centralised = algorithm.make_learner(params, LearnerSpec(alone, 0, 1, 0, torch.device("cpu")))
    return block, centralised


def ring_mixer(rows: torch.Tensor) -> BlockMixer:
    """The mixing of a ring of `len(rows)` learners whose buffers are `rows`, as a cell's block mixes."""
    topology = load_registry().get("topology", "ring")
    params = params_of(topology, {})
    plan = build_mixing_plan(topology, params, len(rows), 0)
    return BlockMixer(plan, rows, rows.shape[1])


def time_block(block, iterations: int, warm_up: int) -> dict[str, float]:
    mixer = ring_mixer(block.parameters())
    spent = {"collect": 0.0, "update": 0.0, "mix": 0.0}
    for iteration in range(warm_up + iterations):
        started = time.perf_counter()
        rollout, _ = block.collect()
        collected = time.perf_counter()
        block.update(rollout)
        updated = time.perf_counter()
        mixer.mix(iteration)
        mixed = time.perf_counter()
        if iteration >= warm_up:
            spent["collect"] += collected - started
            spent["update"] += updated - collected
            spent["mix"] += mixed - updated
    return {name: 1000 * seconds / iterations for name, seconds in spent.items()}


def time_learner(learner, iterations: int, warm_up: int) -> float:
    for _ in range(warm_up):
        learner.iterate()
    started = time.perf_counter()
    for _ in range(iterations):
        learner.iterate()
    return 1000 * (time.perf_counter() - started) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=16)
    parser.add_argument("--envs-per-learner", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a cell's block takes its cores')")
    args = parser.parse_args()
    if min(args.learners, args.envs_per_learner, args.iterations, args.threads) < 1 or args.warm_up < 0:
        parser.error("--learners, --envs-per-learner, --iterations and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    block, centralised = build(args.learners, args.envs_per_learner)
    steps = block.n_steps * args.learners * args.envs_per_learner  # env steps per iteration, both sides
    parts = time_block(block, args.iterations, args.warm_up)
    whole = time_learner(centralised, args.iterations, args.warm_up)
    total = sum(parts.values())
    print(f"{args.learners} learners × {args.envs_per_learner} simulators, {steps} env steps per iteration")
    print(
        f"block:       {total:.3f} ms per iteration ({1000 * steps / total:,.0f} steps/s): "
        + ", ".join(f"{name} {ms:.3f}" for name, ms in parts.items())
    )
    print(f"centralised: {whole:.3f} ms per iteration ({1000 * steps / whole:,.0f} steps/s)")
    print(f"block / centralised steps/s: {whole / total:.2f}")


if __name__ == "__main__":
    main()
