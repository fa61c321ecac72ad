"""Steps/s of one `vtrace` learner with uniform, elite and attentive replay, with and without
background batch preparation.

    python benchmarks/replay_speed.py                  # CartPole-v1, 8 simulators, 60k steps per cell
    python benchmarks/replay_speed.py --env-steps 20000

Each cell runs through `bench run` (real processes), one learner, no evaluations; the figure is
the cell's steps/s over its training loop (start-up excluded). Elite and attentive recompute the
features of λ·n candidates with the current network at every sample: background preparation
draws the next batch while the update runs, so that cost overlaps with learning.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("uniform", "elite", "attentive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--env-steps", type=int, default=60_000)
    parser.add_argument("--envs-per-learner", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        command = [
            sys.executable,
            "-m",
            "benchbase",
            "run",
            "-a",
            "vtrace:background_preparation=true",
            "-a",
            "vtrace:background_preparation=false",
            *[option for strategy in STRATEGIES for option in ("-r", strategy)],
            "-t",
            "isolated",
            "-e",
            args.env,
            "--learners",
            "1",
            "--envs-per-learner",
            str(args.envs_per_learner),
            "--env-steps",
            str(args.env_steps),
            "--seeds",
            "1",
            "--evaluations",
            "0",
            "--out",
            str(out),
        ]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
        if result.returncode != 0:
            sys.exit(f"bench run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        rows = pq.read_table(out / "cells.parquet").to_pylist()

    rate = {}
    for row in rows:
        background = "background_preparation=False" not in (row["variant"] or "")
        rate[(row["replay"], background)] = row["steps_per_second"]
    print(
        f"vtrace, 1 learner × {args.envs_per_learner} simulators, {args.env}, {args.env_steps:,} env steps per cell, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'replay':<10} {'background':>14} {'foreground':>14} {'gain':>6} {'vs uniform (bg)':>16}")
    for strategy in STRATEGIES:
        bg, fg = rate[(strategy, True)], rate[(strategy, False)]
        of_uniform = bg / rate[("uniform", True)]
        print(f"{strategy:<10} {bg:>10,.0f} st/s {fg:>10,.0f} st/s {bg / fg:>5.2f}× {of_uniform:>15.2f}×")
    print(
        "'vs uniform (bg)': steps/s with background preparation relative to uniform's; the issue asks elite to "
        "keep at least 0.75×."
    )


if __name__ == "__main__":
    main()
