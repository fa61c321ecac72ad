"""Throughput of benchbase's Diff-A2C learner against raw env stepping, and of whole cells.

    python benchmarks/learner_throughput.py            # all figures
    python benchmarks/learner_throughput.py --quick    # shorter runs

Figures:
1. raw CartPole stepping, 8 simulators (benchbase's vectorised env, and Gymnasium's CartPole-v1
   in a plain Python loop), random actions;
2. one Diff-A2C learner in this process: CartPole-v1, 8 simulators, T = 5, one torch thread;
3. cells through the launcher (real processes): 1 learner, and 4 learners on isolated, ring,
   fully connected and exponential topologies, exchanging through shared memory (shm) or gloo
   messages (p2p) — aggregate steps/s, the ratio to one learner, start-up to first step;
4. bytes sent per learner per combine on a ring for N = 4 and N = 8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchbase.api.contracts import LearnerSpec, params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from benchbase.grid.expand import expand
from benchbase.grid.spec import make_spec, parse_axis_entry  # noqa: E402
from benchbase.learner.settings import ExecutionSettings  # noqa: E402
from benchbase.run.local import run_cell, warm_up  # noqa: E402


def raw_benchbase_cartpole(steps: int) -> float:
    family = load_registry().get("env", "CartPole-v1")
    params = params_of(family)
    env = family.make_env(params, family.training_tasks(params, 1, 0) * 8, seed=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(steps // 8 + 1, 8))
    start = time.perf_counter()
    for k in range(steps // 8):
        env.step(actions[k])
    return steps / (time.perf_counter() - start)


def raw_gymnasium_cartpole(steps: int) -> float:
    import gymnasium as gym

    envs = [gym.make("CartPole-v1") for _ in range(8)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // 8):
        for env in envs:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
            if terminated or truncated:
                env.reset()
    return steps / (time.perf_counter() - start)


def learner_on(algorithm_name: str, family_name: str, simulators: int = 8):
    """One learner of `algorithm_name` with defaults on `simulators` simulators of the family's
    first task, one torch thread, no budget (so nothing anneals while it is timed)."""
    torch.set_num_threads(1)
    registry = load_registry()
    family = registry.get("env", family_name)
    env_params = params_of(family)
    env = family.make_env(env_params, family.training_tasks(env_params, 1, 0) * simulators, seed=0)
    algorithm = registry.get("algorithm", algorithm_name)
    return algorithm.make_learner(params_of(algorithm), LearnerSpec(env, 0, 1, 0, torch.device("cpu")))


def cartpole_learner(algorithm_name: str):
    return learner_on(algorithm_name, "CartPole-v1")


def training_rate(learner, steps: int, warm_up: int) -> float:
    """Env steps/s of `learner.iterate()` over at least `steps` env steps, after `warm_up` iterations."""
    for _ in range(warm_up):
        learner.iterate()
    done = 0
    start = time.perf_counter()
    while done < steps:
        done += learner.iterate().env_steps
    return done / (time.perf_counter() - start)


def one_learner(steps: int) -> float:
    return training_rate(cartpole_learner("diff-a2c"), steps, warm_up=50)


def cell(topology: str, learners: int, steps: int, registry, transport: str = "auto") -> dict:
    spec = make_spec(
        {},
        {
            "algorithms": [parse_axis_entry("diff-a2c", "-a")],
            "topologies": [parse_axis_entry(topology, "-t")],
            "envs": [parse_axis_entry("CartPole-v1", "-e")],
            "learners": learners,
            "envs_per_learner": 8,
            "env_steps": steps,
            "evaluations": 0,
            "seeds": 1,
        },
    )
    (only,) = expand(spec, registry).cells
    with tempfile.TemporaryDirectory() as out:
        outcome = run_cell(only, out, lambda event: None, ExecutionSettings(transport=transport))
    assert outcome.status == "completed", outcome.error
    total = sum(s["env_steps"] for s in outcome.summaries)
    train = max(s["train_time_s"] for s in outcome.summaries)
    iterations = outcome.summaries[0]["env_steps"] // (8 * 5)
    return {
        "steps_per_s": total / train,
        "startup_s": outcome.startup_s,
        "bytes_per_combine": outcome.summaries[0]["bytes_sent"] / iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    warm_up()
    registry = load_registry()

    print("== raw env stepping (8 simulators, random actions)")
    print(f"benchbase CartPole-v1 vector env: {raw_benchbase_cartpole(int(400_000 * scale)):>10,.0f} steps/s")
    print(f"gymnasium CartPole-v1, python loop: {raw_gymnasium_cartpole(int(200_000 * scale)):>8,.0f} steps/s")

    print("== one Diff-A2C learner in-process (CartPole-v1, 8 simulators, T=5, 1 thread)")
    print(f"diff-a2c learner: {one_learner(int(200_000 * scale)):>10,.0f} env steps/s")

    print("== cells through the launcher (real processes, 8 simulators per learner)")
    single = cell("isolated", 1, int(200_000 * scale), registry)
    print(f"1 learner:             {single['steps_per_s']:>8,.0f} steps/s   start-up {single['startup_s']:.2f} s")
    for topology, transport in (
        ("isolated", "auto"),
        ("ring", "shm"),
        ("ring", "p2p"),
        ("fully-connected", "shm"),
        ("fully-connected", "p2p"),
        ("exponential", "shm"),
    ):
        result = cell(topology, 4, int(600_000 * scale), registry, transport)
        ratio = result["steps_per_s"] / single["steps_per_s"]
        label = f"{topology} ({transport})" if topology != "isolated" else topology
        print(
            f"4 learners {label:<23} {result['steps_per_s']:>8,.0f} steps/s  ({ratio:.2f}× one learner)   "
            f"start-up {result['startup_s']:.2f} s"
        )

    print("== bytes sent per learner per combine, ring")
    for n in (4, 8):
        result = cell("ring", n, n * 8 * 5 * 20, registry)
        print(f"N={n}: {result['bytes_per_combine']:,.0f} bytes (out-degree 2 × parameter bytes)")


if __name__ == "__main__":
    main()
