"""Microseconds per mix of one learner block, by one K × K product and by gathered neighbour rows,
on a ring and an exponential graph: the figures behind `BlockMixer`'s choice (docs/scaling.md).

    python benchmarks/block_mixing.py                          # K = 16, 32, 64, 128, 256; 2 threads
    python benchmarks/block_mixing.py --learners 16 64 --threads 1

Rows of `--numel` float32 values (default 9,164: a 2 × 64 Diff-A2C learner on CartPole with its
mixed statistics). "rows" is what `BlockMixer` does when 10·D ≤ K (D: the most neighbours a
learner has, itself included); it prints "-" where the mixer would take the product.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.block import BlockMixer
from benchbase.comm.mixing_plan import build_mixing_plan


def microseconds(mix, repeats: int) -> float:
    for _ in range(3):
        mix()
    started = time.perf_counter()
    for _ in range(repeats):
        mix()
    return 1e6 * (time.perf_counter() - started) / repeats


def time_both(plan, numel: int) -> tuple[int, float, float | None]:
    """D, and µs per mix by the product and by gathered rows (None where the mixer takes the product)."""
    learners = plan.n_learners
    rows = torch.randn(learners, numel)
    mixer = BlockMixer(plan, rows, numel)
    weights = mixer._own_weights[0]
    repeats = max(5, 200_000 // (learners * learners))
    product = microseconds(lambda: rows.copy_(weights @ rows), repeats)
    gathered = None
    if mixer._own_neighbours[0] is not None:
        gathered = microseconds(lambda: rows.copy_(mixer._own_product(0)), repeats)
    return int((plan.weights[0] != 0).sum(axis=1).max()), product, gathered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--numel", type=int, default=9164)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if min(args.learners) < 2 or args.numel < 1 or args.threads < 1:
        parser.error("--learners must be at least 2, --numel and --threads at least 1")
    torch.set_num_threads(args.threads)
    registry = load_registry()
    print(f"rows of {args.numel:,} float32, {args.threads} thread(s); µs per mix (first phase of the graph)")
    print(f"{'graph':<12} {'K':>4} {'D':>3} {'product':>9} {'rows':>9}")
    for name in ("ring", "exponential"):
        topology = registry.get("topology", name)
        for learners in args.learners:
            plan = build_mixing_plan(topology, params_of(topology, {}), learners, 0)
            neighbours, product, gathered = time_both(plan, args.numel)
            shown = f"{gathered:9.0f}" if gathered is not None else f"{'-':>9}"
            print(f"{name:<12} {learners:>4} {neighbours:>3} {product:9.0f} {shown}")


if __name__ == "__main__":
    main()
