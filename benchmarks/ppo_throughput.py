"""Throughput of one Diff-PPO learner against raw env stepping.

    python benchmarks/ppo_throughput.py            # 200k learner steps
    python benchmarks/ppo_throughput.py --quick    # 50k

Figures (CartPole-v1, 8 simulators, one torch thread, the learner in this process):
1. raw stepping of benchbase's vectorised CartPole with random actions (the ceiling);
2. one diff-ppo learner with its defaults (T = 32, 20 epochs of one 256-sample minibatch),
   env steps per second, and its ratio to (1);
3. where the learner's time goes: collecting rollouts against the PPO update.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner_throughput import cartpole_learner, raw_benchbase_cartpole  # noqa: E402  (same folder)


def one_ppo_learner(steps: int) -> dict[str, float]:
    """Env steps/s of one diff-ppo learner, and the seconds it spent collecting and updating."""
    # No budget: no annealing, so the timed updates are full-size ones.
    learner = cartpole_learner("diff-ppo")
    for _ in range(10):  # warm-up
        learner.iterate()
    done, collect_s, update_s = 0, 0.0, 0.0
    while done < steps:
        started = time.perf_counter()
        rollout, _ = learner.collect()
        collected = time.perf_counter()
        learner.update(rollout)
        update_s += time.perf_counter() - collected
        collect_s += collected - started
        done += rollout.rewards.size
    return {"steps_per_s": done / (collect_s + update_s), "collect_s": collect_s, "update_s": update_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 50_000 if args.quick else 200_000

    raw = raw_benchbase_cartpole(2 * steps)
    learner = one_ppo_learner(steps)
    total = learner["collect_s"] + learner["update_s"]
    print("== CartPole-v1, 8 simulators, 1 torch thread")
    print(f"raw env stepping (random actions): {raw:>10,.0f} steps/s")
    print(
        f"diff-ppo learner (defaults):       {learner['steps_per_s']:>10,.0f} env steps/s "
        f"({learner['steps_per_s'] / raw:.3f}× raw)"
    )
    print(
        f"  time in collection {learner['collect_s']:.1f} s ({learner['collect_s'] / total:.0%}), "
        f"in PPO updates {learner['update_s']:.1f} s ({learner['update_s'] / total:.0%})"
    )


if __name__ == "__main__":
    main()
