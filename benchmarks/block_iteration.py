"""Milliseconds per iteration of one Diff-A2C learner block, in this process, against one
centralised learner on the same simulators: the block's collect, update and mix timed apart.

    python benchmarks/block_iteration.py                      # 16 learners × 1 simulator, ring
    python benchmarks/block_iteration.py --learners 64
    python benchmarks/block_iteration.py --ops                # where the block's extra time goes, op by op

No `bench run`: no processes, checkpoints, result rows or evaluations, so what it times is the
batched arithmetic of a block (docs/scaling.md), the place to look when `learner_blocks.py`'s
ratios move. Both run `--warm-up` iterations first, then take turns, `--chunk` iterations at a
time, until each has run `--iterations`: this machine's speed drifts by a fifth within minutes,
so the ratio printed is the median of each chunk's against its neighbour's, with their range.
Each side runs on the torch threads its cell would give it: the block on the cores this process
may use (`--threads` to change), the centralised learner on one, as a process of its own does.
Both are `random-cartpole` with the default Diff-A2C settings; the block mixes on a ring with
the cell's `BlockMixer`. `--ops` profiles `--chunk` iterations of each instead (torch.profiler)
and lists the operators whose self time per iteration differs most between the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from benchbase.api.contracts import LearnerSpec, params_of
from benchbase.api.registry import load_registry
from benchbase.comm.block import BlockMixer
from benchbase.comm.mixing_plan import build_mixing_plan

PARTS = ("collect", "update", "mix")


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


class BlockSteps:
    """The block's iterations, each part's seconds added up in `spent`."""

    def __init__(self, block) -> None:
        self.block, self.mixer, self.iteration = block, ring_mixer(block.parameters()), 0
        self.spent = dict.fromkeys(PARTS, 0.0)

    def __call__(self, iterations: int) -> None:
        for _ in range(iterations):
            started = time.perf_counter()
            rollout, _ = self.block.collect()
            collected = time.perf_counter()
            self.block.update(rollout)
            updated = time.perf_counter()
            self.mixer.mix(self.iteration)
            mixed = time.perf_counter()
            self.iteration += 1
            self.spent["collect"] += collected - started
            self.spent["update"] += updated - collected
            self.spent["mix"] += mixed - updated


def learner_steps(learner) -> Callable[[int], None]:
    def run(iterations: int) -> None:
        for _ in range(iterations):
            learner.iterate()

    return run


def timed(run: Callable[[int], None], iterations: int, threads: int) -> float:
    """Seconds for `iterations` of `run` on `threads` torch threads."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    run(iterations)
    return time.perf_counter() - started


def compare(block_steps: BlockSteps, centralised, args) -> None:
    central_steps = learner_steps(centralised)
    timed(block_steps, args.warm_up, args.threads)
    timed(central_steps, args.warm_up, 1)
    block_steps.spent = dict.fromkeys(PARTS, 0.0)
    block_s, central_s = [], []
    for chunk in range(-(-args.iterations // args.chunk)):
        size = min(args.chunk, args.iterations - chunk * args.chunk)
        block_s.append(timed(block_steps, size, args.threads) / size)
        central_s.append(timed(central_steps, size, 1) / size)
    ratios = [central / block for block, central in zip(block_s, central_s)]
    steps = block_steps.block.n_steps * args.learners * args.envs_per_learner  # env steps per iteration, both sides
    block_ms, central_ms = 1000 * statistics.median(block_s), 1000 * statistics.median(central_s)
    parts = ", ".join(f"{name} {1000 * s / args.iterations:.3f}" for name, s in block_steps.spent.items())
    print(
        f"{args.learners} learners × {args.envs_per_learner} simulators, {steps} env steps per iteration; "
        f"{len(ratios)} turns of {args.chunk} iterations each"
    )
    block_rate = 1000 * steps / block_ms
    print(f"block ({args.threads} threads): {block_ms:.3f} ms per iteration ({block_rate:,.0f} steps/s); mean {parts}")
    print(f"centralised (1 thread): {central_ms:.3f} ms per iteration ({1000 * steps / central_ms:,.0f} steps/s)")
    print(
        f"block / centralised steps/s: median {statistics.median(ratios):.2f} over {len(ratios)} turns "
        f"({min(ratios):.2f}–{max(ratios):.2f})"
    )


def operator_times(run: Callable[[int], None], iterations: int, threads: int) -> dict[str, tuple[float, float]]:
    """Each operator's self CPU µs and calls per iteration over `iterations` of `run`."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        run(iterations)
    return {e.key: (e.self_cpu_time_total / iterations, e.count / iterations) for e in profiled.key_averages()}


def compare_operators(block_steps: BlockSteps, centralised, args, rows: int = 25) -> None:
    central_steps = learner_steps(centralised)
    timed(block_steps, args.warm_up, args.threads)
    timed(central_steps, args.warm_up, 1)
    block_ops = operator_times(block_steps, args.chunk, args.threads)
    central_ops = operator_times(central_steps, args.chunk, 1)
    print(f"self CPU µs per iteration (profiled: the profiler's own cost included), {args.chunk} iterations each")
    print(f"{'operator':52} {'block':>8} {'centr.':>8} {'diff':>8}  calls (block/centr.)")
    names = sorted(
        set(block_ops) | set(central_ops),
        key=lambda n: -abs(block_ops.get(n, (0, 0))[0] - central_ops.get(n, (0, 0))[0]),
    )
    for name in names[:rows]:
        (b, b_calls), (c, c_calls) = block_ops.get(name, (0.0, 0.0)), central_ops.get(name, (0.0, 0.0))
        print(f"{name[:52]:52} {b:8.1f} {c:8.1f} {b - c:+8.1f}  {b_calls:.1f}/{c_calls:.1f}")
    block_total, central_total = (sum(t for t, _ in ops.values()) for ops in (block_ops, central_ops))
    print(f"{'all operators':52} {block_total:8.1f} {central_total:8.1f} {block_total - central_total:+8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=16)
    parser.add_argument("--envs-per-learner", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2000, help="timed iterations of each side")
    parser.add_argument("--chunk", type=int, default=100, help="iterations per turn")
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        help="the block's torch threads (default: the cores this process may use, as in a cell)",
    )
    parser.add_argument("--ops", action="store_true", help="profile operators instead of timing")
    args = parser.parse_args()
    if min(args.learners, args.envs_per_learner, args.iterations, args.chunk, args.threads) < 1 or args.warm_up < 0:
        parser.error("--learners, --envs-per-learner, --iterations, --chunk and --threads must be at least 1")
    block, centralised = build(args.learners, args.envs_per_learner)
    (compare_operators if args.ops else compare)(BlockSteps(block), centralised, args)


if __name__ == "__main__":
    main()
