"""Categorical actions drawn by `torch.multinomial` against `distributions.sample` (the same draws
without multinomial's checks of the probabilities): µs per draw, and one Diff-A2C learner's
steps/s with each (vs_sb3.py's learner: CartPole-v1, 8 simulators, 5-step rollouts, one thread).

    python benchmarks/categorical_sampling.py                # 10 alternated rounds of 30,000 steps
    python benchmarks/categorical_sampling.py --rounds 4 --steps 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_sb3 import benchbase_rate  # noqa: E402

from plugins.algorithms.common import distributions  # noqa: E402

SAMPLE = distributions.sample


def multinomial_sample(actor_out: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
    """`distributions.sample` as it was: torch.multinomial on one row per draw."""
    if log_std is not None:
        return SAMPLE(actor_out, log_std)
    probs = torch.softmax(actor_out, dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])


def microseconds_per_draw(sample, logits: torch.Tensor, repeats: int = 20_000) -> float:
    for _ in range(500):
        sample(logits, None)
    started = time.perf_counter()
    for _ in range(repeats):
        sample(logits, None)
    return 1e6 * (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30_000, help="timed env steps per learner run")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    torch.set_num_threads(1)
    samplers = {"torch.multinomial": multinomial_sample, "distributions.sample": SAMPLE}
    for rows in (8, 16, 256):
        logits = torch.randn(rows, 2)
        times = ", ".join(f"{name} {microseconds_per_draw(f, logits):.1f}" for name, f in samplers.items())
        print(f"µs per draw of {rows} actions out of 2: {times}")
    rates: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(args.rounds):
        for name, sampler in samplers.items():
            distributions.sample = sampler
            run = benchbase_rate(args.steps)
            rates[name].append(run["env_steps"] / run["seconds"])
    distributions.sample = SAMPLE
    for name, values in rates.items():
        print(f"{name:<21} median {statistics.median(values):,.0f} steps/s; rounds {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
