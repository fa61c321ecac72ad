"""Microseconds per RMSprop step inside a Diff-A2C learner's loop: torch.optim's `step()` against
`lean_step` (plugins/algorithms/common/optimisers.py), for one learner and for a learner block.

    python benchmarks/optimiser_step.py                  # 1 learner × 16 simulators; a block of 16 × 1
    python benchmarks/optimiser_step.py --rounds 5 --threads 1

The learners are `block_iteration.py`'s (random-cartpole, default Diff-A2C settings). Each round
runs `--iterations` iterations with each kind of step, alternated, and times the steps and the
whole iterations; medians over the rounds are printed. Both kinds give the same bits (tested in
tests/plugins/algorithms/test_optimisers.py), so only the time differs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from block_iteration import build

from plugins.algorithms.common import optimisers


def time_steps(iterate, lean: bool, iterations: int) -> tuple[float, float]:
    """µs per step and per iteration over `iterations` iterations stepping `lean`ly or not."""
    spent = [0.0]
    original = optimisers.RMSprop.lean_step

    def timed(optimizer: optimisers.RMSprop) -> None:
        started = time.perf_counter()
        original(optimizer) if lean else optimizer.step()
        spent[0] += time.perf_counter() - started

    optimisers.RMSprop.lean_step = timed  # what the learners call
    try:
        started = time.perf_counter()
        for _ in range(iterations):
            iterate()
        whole = time.perf_counter() - started
    finally:
        optimisers.RMSprop.lean_step = original
    return 1e6 * spent[0] / iterations, 1e6 * whole / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    if min(args.iterations, args.rounds, args.threads) < 1:
        parser.error("--iterations, --rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    block, learner = build(16, 1)
    sides = {
        "1 learner × 16 simulators": learner.iterate,
        "block of 16 learners × 1": block.iterate,
    }
    for label, iterate in sides.items():
        for _ in range(50):
            iterate()  # warm up (and torch's first step makes the state)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for lean in (False, True):
                results[lean].append(time_steps(iterate, lean, args.iterations))
        print(f"{label} ({args.rounds} rounds of {args.iterations} iterations, {args.threads} thread(s)):")
        for lean, name in ((False, "torch.optim step()"), (True, "lean_step")):
            steps = [s for s, _ in results[lean]]
            whole = [w for _, w in results[lean]]
            print(
                f"  {name:<19} {statistics.median(steps):6.0f} µs a step ({min(steps):.0f}–{max(steps):.0f}), "
                f"{statistics.median(whole) / 1000:.3f} ms an iteration"
            )


if __name__ == "__main__":
    main()
