"""Microseconds per mix of one learner block, by one K × K product, by shifted rows and by gathered
neighbour rows, on a ring and an exponential graph: the figures behind `BlockMixer`'s choice
(docs/scaling.md).

    python benchmarks/block_mixing.py                          # K = 16, 32, 64, 128, 256; 2 threads
    python benchmarks/block_mixing.py --learners 16 64 --threads 1

Rows of `--numel` float32 values (default 9,164: a 2 × 64 Diff-A2C learner on CartPole with its
mixed statistics). "shifts" is what `BlockMixer` does for a pattern of cyclic shifts from K = 16
with 4·D ≤ K (D: the most neighbours a learner has, itself included), "gathers" what it does for
other sparse graphs (10·D ≤ K); "-" where that way does not apply. The mixer's own choice is marked *.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.block import BlockMixer, _neighbour_slots, _shifts
from benchbase.comm.mixing_plan import build_mixing_plan


def microseconds(mix, repeats: int) -> float:
    for _ in range(3):
        mix()
    started = time.perf_counter()
    for _ in range(repeats):
        mix()
    return 1e6 * (time.perf_counter() - started) / repeats


def time_ways(plan, numel: int) -> tuple[int, dict[str, float | None], str]:
    """D, µs per mix by each way (None where it does not apply) and the way the mixer takes."""
    learners = plan.n_learners
    rows = torch.randn(learners, numel)
    mixer = BlockMixer(plan, rows, numel)
    weights = plan.weights[0]
    repeats = max(5, 200_000 // (learners * learners))
    chosen = "product"
    if mixer._own_shifts[0] is not None or mixer._own_neighbours[0] is not None:
        chosen = "shifts" if mixer._own_shifts[0] is not None else "gathers"
    product = microseconds(lambda: rows.copy_(mixer._own_weights[0] @ rows), repeats)
    times: dict[str, float | None] = {"product": product}
    for way, build in (("shifts", _shifts), ("gathers", _neighbour_slots)):
        built = build(weights, rows)
        times[way] = None
        if built is not None:  # that way alone, whatever the mixer would choose
            mixer._own_shifts[0], mixer._own_neighbours[0] = (built, None) if way == "shifts" else (None, built)
            times[way] = microseconds(lambda: rows.copy_(mixer._own_product(0)), repeats)
    return int((weights != 0).sum(axis=1).max()), times, chosen


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
    print(f"{'graph':<12} {'K':>4} {'D':>3} {'product':>9} {'shifts':>9} {'gathers':>9}")
    for name in ("ring", "exponential"):
        topology = registry.get("topology", name)
        for learners in args.learners:
            plan = build_mixing_plan(topology, params_of(topology, {}), learners, 0)
            neighbours, times, chosen = time_ways(plan, args.numel)
            shown = " ".join(
                f"{'-':>9}" if value is None else f"{value:8.0f}{'*' if way == chosen else ' '}"
                for way, value in times.items()
            )
            print(f"{name:<12} {learners:>4} {neighbours:>3} {shown}")


if __name__ == "__main__":
    main()
