"""One Nature-CNN learner on Pong: training steps/s beside raw stepping, where the time goes, and
what a checkpoint costs it.

    python benchmarks/cnn_learner.py              # diff-a2c and diff-ppo, PongNoFrameskip-v4, 8 simulators
    python benchmarks/cnn_learner.py --quick      # fewer iterations
    python benchmarks/cnn_learner.py --device cuda

Figures:
1. raw env steps/s (random actions) of the learner's own vector env;
2. training env steps/s of one learner in this process (one torch thread, as in a cell), split
   into stepping the simulators, acting (the CNN's forward passes during the rollout) and the
   update (forward, backward, optimiser), by timing each part of `iterate`;
3. checkpoints: the learner's state (model, optimiser, RNG, simulators' bookkeeping), how long the
   learner itself pauses to copy it (the only time its neighbours could wait for it), how long the
   background thread takes to serialise, hash and write it, its size, and the iteration time
   while a write is in flight against the iterations without one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchbase.api.contracts import LearnerSpec, params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from benchbase.checkpoints.checkpoint import BackgroundWriter  # noqa: E402

ENV = "PongNoFrameskip-v4"


def make_env(registry, simulators: int):
    family = registry.get("env", ENV)
    params = params_of(family)
    return family.make_env(params, family.training_tasks(params, 1, 0) * simulators, seed=0)


def raw_rate(registry, simulators: int, steps: int) -> float:
    env = make_env(registry, simulators)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // simulators):
        env.step(rng.integers(0, env.action_space.n, size=simulators))
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


class Timed:
    """Wraps the learner's env and acting to split an iteration's time."""

    def __init__(self, learner) -> None:
        self.env_s = self.act_s = 0.0
        env, act = learner.env, learner.act
        original_step = env.step

        def step(actions):
            started = time.perf_counter()
            result = original_step(actions)
            self.env_s += time.perf_counter() - started
            return result

        def timed_act(t, observations):
            started = time.perf_counter()
            result = act(t, observations)
            self.act_s += time.perf_counter() - started
            return result

        env.step = step
        learner.act = timed_act


def training(registry, name: str, simulators: int, iterations: int, device: str) -> dict[str, float]:
    algorithm = registry.get("algorithm", name)
    params = params_of(algorithm)
    env = make_env(registry, simulators)
    learner = algorithm.make_learner(params, LearnerSpec(env, 0, 1, 0, torch.device(device), env_steps_budget=10**7))
    learner.iterate()  # warm-up
    timer = Timed(learner)
    steps = 0
    start = time.perf_counter()
    for _ in range(iterations):
        steps += learner.iterate().env_steps
    total = time.perf_counter() - start
    figures = {
        "steps_per_s": steps / total,
        "env": timer.env_s / total,
        "act": timer.act_s / total,
        "update": 1 - (timer.env_s + timer.act_s) / total,
    }

    # Checkpoints: the pause to copy the state, the background write, iterations during a write.
    writer = BackgroundWriter()
    copies, plain, during = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for k in range(6):
            started = time.perf_counter()
            state = {"learner": learner.state_dict()}
            copies.append(time.perf_counter() - started)
            writer.submit(Path(folder), state, env_steps=k, cell_config={"benchmark": name})
            thread = writer._thread
            while thread is not None and thread.is_alive():
                started = time.perf_counter()
                learner.iterate()
                during.append(time.perf_counter() - started)
            writer.wait()
            for _ in range(3):
                started = time.perf_counter()
                learner.iterate()
                plain.append(time.perf_counter() - started)
        size = max(p.stat().st_size for p in Path(folder).glob("*.pt"))
    figures.update(
        copy_ms=1000 * statistics.median(copies),
        write_ms=1000 * writer.write_s / 6,
        size_mb=size / 2**20,
        iteration_ms=1000 * statistics.median(plain),
        iteration_during_write_ms=1000 * statistics.median(during) if during else float("nan"),
    )
    env.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulators", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = load_registry()
    iterations = 10 if args.quick else 40
    print(f"{ENV}, {args.simulators} simulators, device {args.device}, one torch thread")
    print(f"raw stepping: {raw_rate(registry, args.simulators, 2_000 if args.quick else 8_000):,.0f} env steps/s")
    for name in ("diff-a2c", "diff-ppo"):
        f = training(
            registry, name, args.simulators, iterations if name == "diff-a2c" else max(2, iterations // 10), args.device
        )
        print(
            f"{name}: {f['steps_per_s']:,.0f} env steps/s training "
            f"(stepping {f['env']:.0%}, acting {f['act']:.0%}, update {f['update']:.0%})"
        )
        print(
            f"  checkpoint: {f['size_mb']:.1f} MiB; the learner pauses {f['copy_ms']:.1f} ms to copy its state, "
            f"the writer thread takes {f['write_ms']:.0f} ms; iteration {f['iteration_ms']:.0f} ms, "
            f"{f['iteration_during_write_ms']:.0f} ms while a write is in flight"
        )


if __name__ == "__main__":
    main()
