"""One benchbase Diff-A2C learner against Stable-Baselines3's A2C on identical work, in one run.

    python benchmarks/vs_sb3.py                      # 3 rounds of 100,000 env steps each
    python benchmarks/vs_sb3.py --steps 20000 --rounds 1
    python benchmarks/vs_sb3.py --venv /tmp/sb3      # where Stable-Baselines3 is installed

The work: CartPole-v1, 8 simulators, 5-step rollouts (40 env steps per update), RMSprop (lr 7e-4,
alpha 0.99, eps 1e-5), n-step returns with γ = 0.99 (SB3's GAE with λ = 1 is the same target),
value weight 0.5, entropy weight 0.01, gradient norm clipped to 0.5, separate actor and critic
of 2×64 tanh units, CPU, one torch thread, observations and rewards normalised (running
statistics, clipped to ±10). Each side first runs 2,000 env steps unmeasured, then N timed.

- benchbase: the registry's Diff-A2C learner driven in this process by `iterate()` (as in
  `learner_throughput.py`); only the training loop is timed, not the model build.
- SB3: `A2C("MlpPolicy", VecNormalize(make_vec_env("CartPole-v1", n_envs=8)))` (DummyVecEnv) in
  a subprocess of its own virtual environment; `model.learn(N)` is timed.

Stable-Baselines3 is never a dependency of benchbase: the benchmark creates (or reuses) a virtual
environment of its own (default ~/.cache/benchbase/sb3-venv) with stable-baselines3 and the
same torch (the CPU build, through this repository's constraints.txt) and gymnasium versions
as benchbase's environment.

What differs, by design of each library: the simulators (benchbase steps its own numpy
vectorised CartPole, the same dynamics; SB3 steps 8 Gymnasium CartPole-v1 in a Python loop,
each wrapped in a Monitor), and the normalisers (benchbase refreshes its observation
statistics once per rollout, SB3's VecNormalize at every step; benchbase's default "mixed"
statistics are its own with one learner). Rounds alternate which side runs first, so both
share the machine's conditions; the load average before and after says whether it was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gymnasium  # noqa: E402
import torch  # noqa: E402

from benchbase.api.contracts import LearnerSpec, params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402

DEFAULT_VENV = Path.home() / ".cache" / "benchbase" / "sb3-venv"
SIMULATORS = 8
WARM_UP_STEPS = 2_000  # 50 updates, unmeasured, on both sides
SEED = 0
TARGET_RATIO = 3.0  # issue 15: one learner ≥ 3× SB3 A2C

# SB3's side, run by the SB3 environment's interpreter: argv = steps, warm-up steps, seed. It
# prints one JSON line with the timed env steps and seconds of `learn()`.
SB3_PROGRAM = """
import json, sys, time
import torch
torch.set_num_threads(1)
import gymnasium, stable_baselines3
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

steps, warm_up, seed = (int(a) for a in sys.argv[1:4])
env = VecNormalize(
    make_vec_env("CartPole-v1", n_envs=8, seed=seed, vec_env_cls=DummyVecEnv),
    norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0, gamma=0.99,
)
model = A2C(
    "MlpPolicy", env, n_steps=5, learning_rate=7e-4, gamma=0.99, gae_lambda=1.0, ent_coef=0.01, vf_coef=0.5,
    max_grad_norm=0.5, rms_prop_eps=1e-5, use_rms_prop=True, normalize_advantage=False,
    policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh),
    device="cpu", seed=seed, verbose=0,
)
model.learn(warm_up)
before = model.num_timesteps
start = time.perf_counter()
model.learn(steps, reset_num_timesteps=False)
seconds = time.perf_counter() - start
print(json.dumps({
    "env_steps": model.num_timesteps - before, "seconds": seconds, "torch": torch.__version__,
    "sb3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__, "threads": torch.get_num_threads(),
}))
"""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def sb3_ready(venv: Path) -> bool:
    """Whether `venv` already has stable-baselines3 with benchbase's torch and gymnasium versions."""
    python = venv_python(venv)
    if not python.exists():
        return False
    check = "import torch, gymnasium, stable_baselines3; print(torch.__version__, gymnasium.__version__)"
    found = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    return found.returncode == 0 and found.stdout.split() == [torch.__version__, gymnasium.__version__]


def ensure_sb3_venv(venv: Path) -> Path:
    """The SB3 environment's interpreter, creating the environment first when needed. torch is
    pinned to benchbase's own version under constraints.txt, so pip reuses its CPU build instead
    of resolving the CUDA one."""
    if sb3_ready(venv):
        print(f"reusing the Stable-Baselines3 environment {venv}")
        return venv_python(venv)
    print(f"installing Stable-Baselines3 into {venv} (once; torch {torch.__version__} from constraints.txt)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(venv_python(venv)), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    packages = [f"torch=={torch.__version__}", f"gymnasium=={gymnasium.__version__}", "stable-baselines3"]
    subprocess.run(install + packages, check=True)
    if not sb3_ready(venv):
        raise SystemExit(f"error: {venv} still lacks stable-baselines3 with torch {torch.__version__}")
    return venv_python(venv)


def benchbase_rate(steps: int) -> dict:
    """Env steps/s of one Diff-A2C learner's `iterate()` loop over `steps` env steps (after the
    warm-up), with SB3's gradient clipping (benchbase's default is none; the norm is computed
    either way)."""
    torch.set_num_threads(1)
    registry = load_registry()
    family = registry.get("env", "CartPole-v1")
    env_params = params_of(family)
    env = family.make_env(env_params, family.training_tasks(env_params, 1, 0) * SIMULATORS, seed=SEED)
    algorithm = registry.get("algorithm", "diff-a2c")
    params = params_of(algorithm, {"n_steps": 5, "lr": 7e-4, "entropy_coef": 0.01, "max_grad_norm": 0.5})
    learner = algorithm.make_learner(params, LearnerSpec(env, 0, 1, SEED, torch.device("cpu")))
    done = 0
    while done < WARM_UP_STEPS:
        done += learner.iterate().env_steps
    done = 0
    start = time.perf_counter()
    while done < steps:
        done += learner.iterate().env_steps
    seconds = time.perf_counter() - start
    return {"env_steps": done, "seconds": seconds, "threads": torch.get_num_threads()}


def sb3_rate(python: Path, steps: int) -> dict:
    result = subprocess.run(
        [str(python), "-c", SB3_PROGRAM, str(steps), str(WARM_UP_STEPS), str(SEED)], capture_output=True, text=True
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the Stable-Baselines3 run failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="timed env steps per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing both sides")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the Stable-Baselines3 virtual environment")
    args = parser.parse_args()
    if args.steps < 40 or args.rounds < 1:
        parser.error("--steps must be at least 40 (one update) and --rounds at least 1")

    python = ensure_sb3_venv(args.venv.expanduser())
    print(f"load average (1, 5, 15 min) before: {load_average()}   cores: {os.cpu_count()}")
    print(
        f"CartPole-v1, {SIMULATORS} simulators, T=5, RMSprop, 1 torch thread; {args.steps:,} timed env steps "
        f"per side and round (after {WARM_UP_STEPS:,} unmeasured)"
    )
    print(f"{'round':>5}  {'first':<9}  {'benchbase steps/s':>17}  {'SB3 steps/s':>11}  {'ratio':>6}")
    ratios = []
    versions = {}
    for round_index in range(args.rounds):
        # Alternate the order so neither side always runs on a machine the other just warmed or loaded.
        sb3_first = round_index % 2 == 1
        if sb3_first:
            sb3 = sb3_rate(python, args.steps)
            ours = benchbase_rate(args.steps)
        else:
            ours = benchbase_rate(args.steps)
            sb3 = sb3_rate(python, args.steps)
        versions = {key: sb3[key] for key in ("sb3", "torch", "gymnasium", "threads")}
        ours_rate = ours["env_steps"] / ours["seconds"]
        sb3_rate_value = sb3["env_steps"] / sb3["seconds"]
        ratios.append(ours_rate / sb3_rate_value)
        first = "SB3" if sb3_first else "benchbase"
        print(f"{round_index + 1:>5}  {first:<9}  {ours_rate:>17,.0f}  {sb3_rate_value:>11,.0f}  {ratios[-1]:>5.2f}×")
    median = statistics.median(ratios)
    verdict = "met" if median >= TARGET_RATIO else "not met"
    print(f"median ratio benchbase / SB3: {median:.2f}×   (target ≥ {TARGET_RATIO:.0f}×: {verdict})")
    print(f"load average (1, 5, 15 min) after:  {load_average()}")
    print(
        f"versions: benchbase torch {torch.__version__}, gymnasium {gymnasium.__version__}; "
        f"SB3 {versions['sb3']} with torch {versions['torch']}, gymnasium {versions['gymnasium']}; "
        f"torch threads: benchbase {ours['threads']}, SB3 {versions['threads']}"
    )


if __name__ == "__main__":
    main()
