"""Microseconds per optimiser step inside a learner's loop: torch.optim's `step()` against
`lean_step` (plugins/algorithms/common/optimisers.py), for one learner and for a learner block.

    python benchmarks/optimiser_step.py                  # Diff-A2C's RMSprop: 1 learner × 16 simulators; 16 × 1
    python benchmarks/optimiser_step.py --adam           # Diff-PPO's Adam: 1 learner × 32 simulators; 4 × 8
    python benchmarks/optimiser_step.py --rounds 5 --threads 1

The learners are `block_iteration.py`'s (random-cartpole, default settings; Diff-PPO's shape is the
default grid's). Each round runs `--iterations` iterations (default 1,000 for Diff-A2C, 20 for
Diff-PPO, whose iteration takes 20 steps) with each kind of step, alternated, and times the steps
and the whole iterations; medians over the rounds are printed, per step. Both kinds give the same
bits (tested in tests/plugins/algorithms/test_optimisers.py), so only the time differs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch
from block_iteration import build

from plugins.algorithms.common import optimisers


def time_steps(kind: type, iterate, lean: bool, iterations: int) -> tuple[float, float]:
    """µs per step and ms per iteration over `iterations` iterations stepping optimisers of
    `kind` `lean`ly or not."""
    spent, steps = [0.0], [0]
    original = kind.lean_step

    def timed(optimizer: torch.optim.Optimizer) -> None:
        started = time.perf_counter()
        original(optimizer) if lean else optimizer.step()
        spent[0] += time.perf_counter() - started
        steps[0] += 1

    with mock.patch.object(kind, "lean_step", timed):  # what the learners call
        started = time.perf_counter()
        for _ in range(iterations):
            iterate()
        whole = time.perf_counter() - started
    return 1e6 * spent[0] / steps[0], 1e3 * whole / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adam", action="store_true", help="Diff-PPO's Adam (4 × 8) instead of Diff-A2C's RMSprop")
    parser.add_argument("--iterations", type=int, default=None, help="per round and kind (1,000; 20 with --adam)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    iterations = args.iterations if args.iterations is not None else (20 if args.adam else 1000)
    if min(iterations, args.rounds, args.threads) < 1:
        parser.error("--iterations, --rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    learners, simulators = (4, 8) if args.adam else (16, 1)
    kind = optimisers.Adam if args.adam else optimisers.RMSprop
    block, learner = build(learners, simulators, "diff-ppo" if args.adam else "diff-a2c")
    sides = {
        f"1 learner × {learners * simulators} simulators": learner.iterate,
        f"block of {learners} learners × {simulators}": block.iterate,
    }
    for label, iterate in sides.items():
        for _ in range(max(2, iterations // 20)):
            iterate()  # warm up (and torch's first step makes the state)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for lean in (False, True):
                results[lean].append(time_steps(kind, iterate, lean, iterations))
        print(f"{label} ({args.rounds} rounds of {iterations} iterations, {args.threads} thread(s)):")
        for lean, name in ((False, "torch.optim step()"), (True, "lean_step")):
            steps = [s for s, _ in results[lean]]
            whole = [w for _, w in results[lean]]
            print(
                f"  {name:<19} {statistics.median(steps):6.0f} µs a step ({min(steps):.0f}–{max(steps):.0f}), "
                f"{statistics.median(whole):.3f} ms an iteration"
            )


if __name__ == "__main__":
    main()
