"""Raw steps/s of the Atari families' vectorisations, and where the time of one step goes.

    python benchmarks/atari_speed.py            # PongNoFrameskip-v4, 8 simulators, 8,000 steps, best of 3 rounds
    python benchmarks/atari_speed.py --quick    # 2,000 steps
    python benchmarks/atari_speed.py --game Breakout --simulators 4

Figures (random actions, no learner; one agent step = 4 emulated frames): agent steps/s summed
over the simulators (wall clock), and CPU µs per agent step over all threads — the cost that
counts when several learners share the cores, and robust to other processes' load:
1. vectorisations of the same preprocessing (no-op starts, frame skip 4 with a max over the last
   two frames, 84×84 grayscale, 4-frame stack, episodic life, clipped rewards, raw scores):
   - python:           `PythonAtariVectorEnv`, one ALEInterface per simulator in a Python loop;
   - native, T threads: `NativeAtariVectorEnv`, ale-py's C++ vector env under our bookkeeping;
   - native raw:       ale-py's `AtariVectorEnv` alone (what our bookkeeping costs on top);
   - gymnasium:        `GymnasiumTaskVectorEnv` over `gym.make(<Game>NoFrameskip-v4)` with
                       Gymnasium's AtariPreprocessing and FrameStackObservation wrappers;
2. a profile of one Python-backend step, by adding one stage at a time to a bare loop over the
   simulators: emulation (4 × ALE.act), screen grabs (2 grayscale frames), max + resize, and the
   rest (frame stack, lives, clipping, episode bookkeeping: `env.step` minus the stages before).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchbase.api.contracts import params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from plugins.envs.atari.games import game_info, quiet_ale, require_game  # noqa: E402

ROUNDS = 3


def measure(
    configurations: dict[str, Callable[[np.ndarray], object]], actions: np.ndarray, simulators: int
) -> dict[str, tuple[float, float]]:
    """(agent steps/s, CPU µs per agent step) of each configuration over `actions` (one row per
    vector step). Rounds go through every configuration in turn, so that load from other processes
    hits them alike; each keeps its best round. CPU time counts every thread of this process."""
    best: dict[str, tuple[float, float]] = {name: (0.0, float("inf")) for name in configurations}
    for _ in range(ROUNDS):
        for name, step in configurations.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for row in actions:
                step(row)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            count = len(actions) * simulators
            rate, cost = best[name]
            best[name] = (max(rate, count / wall), min(cost, cpu / count * 1e6))
    return best


def family_env(env_id: str, simulators: int, **overrides):
    family = load_registry(only={"plugins.envs.atari.family"}).get("env", env_id)
    params = params_of(family, overrides)
    env = family.make_env(params, family.training_tasks(params, simulators, 0), seed=0)
    env.reset(seed=0)
    return env


def native_raw(rom: str, simulators: int):
    from ale_py.vector_env import AtariVectorEnv
    from gymnasium.vector import AutoresetMode

    env = AtariVectorEnv(rom, simulators, num_threads=1, autoreset_mode=AutoresetMode.SAME_STEP, reward_clipping=False)
    env.reset(seed=0)
    return env


def gymnasium_env(env_id: str, simulators: int):
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    from benchbase.api.contracts import Task
    from plugins.envs.gymnasium.vector import GymnasiumTaskVectorEnv

    def make() -> gym.Env:
        return FrameStackObservation(AtariPreprocessing(gym.make(env_id), noop_max=30, frame_skip=4), 4)

    env = GymnasiumTaskVectorEnv([make] * simulators, [Task(env_id)] * simulators)
    env.reset(seed=0)
    return env


def profile(rom: str, simulators: int, steps: int, rng: np.random.Generator) -> dict[str, float]:
    """Seconds per vector step of each stage of the Python backend's loop (see the docstring)."""
    from ale_py import roms

    info = game_info(rom)
    ales = []
    for _ in range(simulators):
        ale = quiet_ale()
        ale.setFloat("repeat_action_probability", 0.0)
        ale.loadROM(roms.get_rom_path(rom))
        ale.reset_game()
        ales.append(ale)
    screens = np.zeros((simulators, 2, 210, 160), np.uint8)
    stacks = np.zeros((simulators, 4, 84, 84), np.uint8)
    actions = rng.integers(0, len(info.minimal_actions), (steps, simulators))
    minimal = info.minimal_actions

    def emulate(row, grab: bool, shrink: bool) -> None:
        for i, ale in enumerate(ales):
            action = minimal[row[i]]
            for k in range(4):
                ale.act(action)
                if grab and k >= 2:
                    ale.getScreenGrayscale(screens[i, k - 2])
            if ale.game_over():
                ale.reset_game()
            if shrink:
                stacks[i, -1] = cv2.resize(
                    np.maximum(screens[i, 0], screens[i, 1]), (84, 84), interpolation=cv2.INTER_AREA
                )

    env = family_env(f"{info.name}NoFrameskip-v4", simulators, backend="python")
    configurations = {
        "emulation": lambda row: emulate(row, False, False),
        "screen grabs": lambda row: emulate(row, True, False),
        "max + resize": lambda row: emulate(row, True, True),
        "env.step": env.step,
    }
    results = measure(configurations, actions, simulators)
    env.close()
    # CPU time per vector step: robust to other processes' load.
    return {name: cost * simulators * 1e-6 for name, (_, cost) in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--simulators", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8_000, help="agent steps per measurement (all simulators)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 2_000 if args.quick else args.steps
    rom = require_game(args.game)
    info = game_info(rom)
    env_id = f"{info.name}NoFrameskip-v4"
    p = args.simulators
    rng = np.random.default_rng(0)
    actions = rng.integers(0, len(info.minimal_actions), (steps // p, p))

    print(
        f"{env_id}, {p} simulators, {steps:,} agent steps per run, best of {ROUNDS} interleaved rounds, "
        f"{os.cpu_count()} CPU cores"
    )
    print("== vectorisations (agent steps/s, ×4 for frames/s; CPU µs per agent step, all threads)")
    envs = {
        "python (PythonAtariVectorEnv)": family_env(env_id, p, backend="python"),
        "native, 1 thread (NativeAtariVectorEnv)": family_env(env_id, p, backend="native", native_threads=1),
        "native, 2 threads (NativeAtariVectorEnv)": family_env(env_id, p, backend="native", native_threads=2),
        "native raw (ale-py AtariVectorEnv, 1 thread)": native_raw(rom, p),
        "gymnasium wrappers (GymnasiumTaskVectorEnv)": gymnasium_env(env_id, p),
    }
    results = measure({name: env.step for name, env in envs.items()}, actions, p)
    for env in envs.values():
        env.close()
    for name, (rate, cost) in results.items():
        print(f"{name:<48} {rate:>8,.0f} steps/s {cost:>8.0f} µs CPU")

    print(f"== one Python-backend vector step ({p} simulators), CPU time by stage")
    stages = profile(rom, p, max(steps // p // 2, 50), rng)
    total = stages["env.step"]
    previous = 0.0
    for name in ("emulation", "screen grabs", "max + resize", "env.step"):
        label = "bookkeeping (rest of env.step)" if name == "env.step" else name
        share = stages[name] - previous
        print(f"{label:<32} {share * 1e3:>7.2f} ms  {share / total:>6.1%}")
        previous = stages[name]
    print(f"{'total':<32} {total * 1e3:>7.2f} ms")


if __name__ == "__main__":
    main()
