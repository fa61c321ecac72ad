"""Speed of the MuJoCo families: raw env stepping against one learner training on them.

    python benchmarks/mujoco_speed.py            # all figures, best of 3 runs each
    python benchmarks/mujoco_speed.py --quick    # shorter runs, best of 1

Figures (8 simulators, one torch thread, everything in this process but the async workers):
1. raw steps/s of HalfCheetah-v5 and Hopper-v5 under uniformly random actions:
   - a plain Python loop over 8 `gym.make` envs (reset when done): the familiar baseline;
   - benchbase's `GymnasiumTaskVectorEnv` (SyncVectorEnv with same-step autoreset);
   - Gymnasium's `AsyncVectorEnv` (8 worker processes, same-step autoreset);
   - the families' own `MujocoVectorEnv` on `default-<env>` (still air, Packer's D) and on the
     family the learners train on (air medium, random wind and/or mass);
2. env steps/s of one diff-a2c and one diff-ppo learner (defaults) training on
   random-mujoco-halfcheetah and random-mass-hopper, and their ratio to that family's raw rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner_throughput import learner_on, training_rate  # noqa: E402  (same folder)

from benchbase.api.contracts import Task, params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from plugins.envs.gymnasium.vector import GymnasiumTaskVectorEnv  # noqa: E402
from plugins.envs.mujoco.physics import quiet_known_asset_warnings  # noqa: E402

SIMULATORS = 8
LEARNER_FAMILIES = {"HalfCheetah-v5": "random-mujoco-halfcheetah", "Hopper-v5": "random-mass-hopper"}


def best_of(repeats: int, measure: Callable[[], float]) -> float:
    """The highest rate of `repeats` runs (the machine is shared: the best run is the least disturbed)."""
    return max(measure() for _ in range(repeats))


def _make(env_id: str) -> gym.Env:
    with quiet_known_asset_warnings():  # HalfCheetah's asset warns on every compile
        return gym.make(env_id)


def _random_actions(env_id: str, steps: int) -> np.ndarray:
    size = _make(env_id).action_space.shape[0]
    return np.random.default_rng(0).uniform(-1.0, 1.0, (steps, SIMULATORS, size)).astype(np.float32)


def raw_gym_loop(env_id: str, steps: int) -> float:
    envs = [_make(env_id) for _ in range(SIMULATORS)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    actions = _random_actions(env_id, steps)
    start = time.perf_counter()
    for k in range(steps):
        for env, action in zip(envs, actions[k]):
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
    return steps * SIMULATORS / (time.perf_counter() - start)


def _timed_vector_steps(env, actions: np.ndarray) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for batch in actions:
        env.step(batch)
    rate = len(actions) * SIMULATORS / (time.perf_counter() - start)
    env.close()
    return rate


def raw_sync_vector(env_id: str, steps: int) -> float:
    env = GymnasiumTaskVectorEnv([lambda: _make(env_id)] * SIMULATORS, [Task(env_id)] * SIMULATORS)
    return _timed_vector_steps(env, _random_actions(env_id, steps))


def raw_async_vector(env_id: str, steps: int) -> float:
    env = gym.vector.AsyncVectorEnv(
        [lambda: _make(env_id)] * SIMULATORS, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    return _timed_vector_steps(env, _random_actions(env_id, steps))


def raw_family(family_name: str, env_id: str, steps: int) -> float:
    family = load_registry().get("env", family_name)
    params = params_of(family)
    env = family.make_env(params, family.training_tasks(params, SIMULATORS, 0), seed=0)
    return _timed_vector_steps(env, _random_actions(env_id, steps))


def learner_rate(algorithm_name: str, family_name: str, steps: int) -> float:
    """Env steps/s of one learner with its defaults, after a short warm-up (nothing anneals)."""
    learner = learner_on(algorithm_name, family_name, SIMULATORS)
    rate = training_rate(learner, steps, warm_up=5)
    learner.env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, scale = (1, 0.25) if args.quick else (3, 1.0)
    vector_steps = int(2_000 * scale)  # per simulator
    learner_steps = int(40_000 * scale)

    print(f"== raw env steps/s, {SIMULATORS} simulators, random actions (best of {repeats})")
    family_rates = {}
    for env_id, trained_on in LEARNER_FAMILIES.items():
        key = env_id.split("-")[0].lower()
        rows = {  # each measured at once, inside this iteration
            "gym.make envs, python loop": partial(raw_gym_loop, env_id, vector_steps),
            "GymnasiumTaskVectorEnv (sync)": partial(raw_sync_vector, env_id, vector_steps),
            "gymnasium AsyncVectorEnv": partial(raw_async_vector, env_id, vector_steps // 2),
            f"MujocoVectorEnv default-{key}": partial(raw_family, f"default-{key}", env_id, vector_steps),
            f"MujocoVectorEnv {trained_on}": partial(raw_family, trained_on, env_id, vector_steps),
        }
        for label, measure in rows.items():
            rate = best_of(repeats, measure)
            print(f"{env_id:<15} {label:<42} {rate:>9,.0f}")
        family_rates[trained_on] = rate  # the last row: what the learners below step

    print(f"== one learner in-process, {SIMULATORS} simulators, defaults, 1 torch thread (best of {repeats})")
    for algorithm_name in ("diff-a2c", "diff-ppo"):
        for family_name, raw in family_rates.items():
            rate = best_of(repeats, partial(learner_rate, algorithm_name, family_name, learner_steps))
            print(f"{algorithm_name:<9} {family_name:<27} {rate:>9,.0f} env steps/s  ({rate / raw:.2f}× raw)")


if __name__ == "__main__":
    main()
