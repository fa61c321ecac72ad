"""Speed of the leaderboard statistics (`benchbase.report.stats`) at a publication-grade repetition count.

    python benchmarks/stats_speed.py                         # 10 entries of [10 runs × 5 tasks], 50,000 repetitions
    python benchmarks/stats_speed.py --entries 20 --runs 5 --tasks 12 --repetitions 2000

Times `aggregate_estimates` (IQM, median, mean, optimality gap, stratified bootstrap) for every entry
and `probability_of_improvement` for every ordered pair of distinct entries, on random scores with a
few missing runs, and prints the seconds (best of `--rounds`).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import permutations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchbase.report.stats import aggregate_estimates, probability_of_improvement  # noqa: E402


def best_of(rounds: int, work) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    entries = []
    for shift in np.linspace(0.0, 0.5, args.entries):
        scores = rng.normal(0.4 + shift, 0.3, size=(args.runs, args.tasks))
        scores[rng.random(scores.shape) < 0.05] = np.nan  # a few missing runs
        entries.append(scores)
    pairs = list(permutations(range(args.entries), 2))

    aggregate_s = best_of(args.rounds, lambda: [aggregate_estimates(s, args.repetitions, seed=1) for s in entries])
    improvement_s = best_of(
        args.rounds,
        lambda: [probability_of_improvement(entries[i], entries[j], args.repetitions, seed=1) for i, j in pairs],
    )
    shape = f"[{args.runs} runs × {args.tasks} tasks]"
    print(f"{args.repetitions:,} bootstrap repetitions, best of {args.rounds}")
    print(
        f"aggregate_estimates, {args.entries} entries {shape}: {aggregate_s:.3f} s "
        f"({aggregate_s / args.entries * 1e3:.1f} ms per entry)"
    )
    print(
        f"probability_of_improvement, {len(pairs)} ordered pairs: {improvement_s:.3f} s "
        f"({improvement_s / len(pairs) * 1e3:.1f} ms per pair)"
    )


if __name__ == "__main__":
    main()
