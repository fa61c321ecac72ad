"""Classic-control env families: Packer et al. (2018) D/R/E families and Gymnasium's defaults.

Registers, for CartPole, MountainCar, Acrobot and Pendulum:

- ``default-<env>``, ``random-<env>``, ``extreme-<env>``: Packer's parameter families (D = the
  default physics, R = independent uniform draws on the middle range, E = uniform on the union of
  the two intervals around it), Packer's episode limits and success criteria, and held-out
  evaluation splits D, R and E. ``RandomExtremeAcrobot-v1`` / ``RandomNormalAcrobot-v1`` (the
  Diff-DAC names) are aliases of ``extreme-acrobot`` / ``random-acrobot``.
- ``CartPole-v1``, ``MountainCar-v0``, ``Acrobot-v1``, ``Pendulum-v1``: one task with Gymnasium's
  own physics and time limits; success is the Gymnasium spec's ``reward_threshold``.

All of them run on the numpy-vectorised simulators of `classic_dynamics`, which reproduce
Gymnasium's dynamics for the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase import (
    EnvBlock,
    EnvFamily,
    EnvFamilyParams,
    Register,
    Task,
    hookimpl,
    param,
    unknown_name,
)
from plugins.envs.classic.dynamics import (
    AcrobotDynamics,
    CartPoleDynamics,
    Dynamics,
    MountainCarDynamics,
    PendulumDynamics,
)
from plugins.envs.classic.vector import ClassicVectorEnv, EpisodeEnds, SuccessRule

SPLITS: tuple[str, ...] = ("D", "R", "E")
# Distinct SeedSequence keys keep evaluation draws disjoint from the training draws, which use
# SeedSequence([seed, learner]) (two words; these use four).
_EVALUATION_KEY = 0xE7A1


# --------------------------------------------------------------------------------------------
# Parameter ranges (reference/envs.md)


@dataclass(frozen=True)
class ParameterRange:
    """One physics parameter: default (D), middle range (R) and the two extreme intervals (E)."""

    name: str
    default: float
    middle: tuple[float, float]
    extremes: tuple[tuple[float, float], tuple[float, float]]

    def sample(self, split: str, rng: np.random.Generator) -> float:
        if split == "D":
            return self.default
        if split == "R":
            return float(rng.uniform(*self.middle))
        # One uniform draw over the total length of both intervals picks a side with probability
        # proportional to its length and a point uniformly inside it.
        (low1, high1), (low2, high2) = self.extremes
        u = float(rng.uniform(0.0, (high1 - low1) + (high2 - low2)))
        return low1 + u if u < high1 - low1 else low2 + (u - (high1 - low1))


def _shared(name: str) -> ParameterRange:
    return ParameterRange(name, 1.0, (0.75, 1.25), ((0.5, 0.75), (1.25, 1.5)))


# --------------------------------------------------------------------------------------------
# Success rules (vectorised over the episodes that ended in one step)

CARTPOLE_BALANCE_STEPS = 195
MOUNTAINCAR_GOAL_STEPS = 110
PENDULUM_UPRIGHT_STEPS = 100


def cartpole_success(ends: EpisodeEnds) -> np.ndarray:
    """Packer: the pole stayed up for at least 195 steps."""
    return ends.lengths >= CARTPOLE_BALANCE_STEPS


def mountaincar_success(ends: EpisodeEnds) -> np.ndarray:
    """Packer: the car reached the goal within 110 steps."""
    return ends.terminated & (ends.lengths <= MOUNTAINCAR_GOAL_STEPS)


def acrobot_success(step_limit: int) -> SuccessRule:
    """Packer: the tip reached the target height within `step_limit` steps."""

    def rule(ends: EpisodeEnds) -> np.ndarray:
        return ends.terminated & (ends.lengths <= step_limit)

    return rule


def pendulum_success(ends: EpisodeEnds) -> np.ndarray:
    """Packer: within π/3 of upright for each of the last 100 steps."""
    assert ends.upright_streak is not None
    return ends.upright_streak >= PENDULUM_UPRIGHT_STEPS


def return_threshold(threshold: float) -> SuccessRule:
    """Gymnasium's `reward_threshold`: the episode's return reached it."""

    def rule(ends: EpisodeEnds) -> np.ndarray:
        return ends.returns >= threshold

    return rule


# --------------------------------------------------------------------------------------------
# Parameters of the families


@dataclass(frozen=True)
class CartPoleParams(EnvFamilyParams):
    max_episode_steps: int = param(200, "time limit per episode (Packer et al.)", min=1)


@dataclass(frozen=True)
class MountainCarParams(EnvFamilyParams):
    max_episode_steps: int = param(200, "time limit per episode (Packer et al.)", min=1)


@dataclass(frozen=True)
class AcrobotParams(EnvFamilyParams):
    max_episode_steps: int = param(500, "time limit per episode (Packer et al.)", min=1)
    success_steps: int = param(
        80,
        "success: reach the target within this many steps (Packer's paper: 80; their released code used 90)",
        min=1,
    )


@dataclass(frozen=True)
class PendulumParams(EnvFamilyParams):
    max_episode_steps: int = param(200, "time limit per episode (Packer et al.)", min=1)


@dataclass(frozen=True)
class GymCartPoleParams(EnvFamilyParams):
    max_episode_steps: int = param(500, "time limit per episode (Gymnasium CartPole-v1)", min=1)


@dataclass(frozen=True)
class GymMountainCarParams(EnvFamilyParams):
    max_episode_steps: int = param(200, "time limit per episode (Gymnasium MountainCar-v0)", min=1)


@dataclass(frozen=True)
class GymAcrobotParams(EnvFamilyParams):
    max_episode_steps: int = param(500, "time limit per episode (Gymnasium Acrobot-v1)", min=1)


@dataclass(frozen=True)
class GymPendulumParams(EnvFamilyParams):
    max_episode_steps: int = param(200, "time limit per episode (Gymnasium Pendulum-v1)", min=1)


# --------------------------------------------------------------------------------------------
# The four base environments


@dataclass(frozen=True)
class BaseEnv:
    """What the families of one base environment share."""

    key: str  # "cartpole"
    title: str  # "CartPole"
    dynamics: type[Dynamics]
    ranges: tuple[ParameterRange, ...]
    params: type  # Packer families' Params
    packer_success: Callable[[Any], SuccessRule]  # params -> rule
    packer_criterion: str
    gym_id: str
    gym_params: type
    gym_threshold: float | None  # the Gymnasium spec's reward_threshold
    #: (random policy, reference) returns of the Gymnasium id, for ids without a reward_threshold
    gym_score_range: tuple[float, float] | None = None

    def sample(self, split: str, rng: np.random.Generator) -> dict[str, float]:
        return {r.name: r.sample(split, rng) for r in self.ranges}


CARTPOLE = BaseEnv(
    key="cartpole",
    title="CartPole",
    dynamics=CartPoleDynamics,
    ranges=(
        ParameterRange("force_mag", 10.0, (5.0, 15.0), ((1.0, 5.0), (15.0, 20.0))),
        ParameterRange("length", 0.5, (0.25, 0.75), ((0.05, 0.25), (0.75, 1.0))),
        ParameterRange("masspole", 0.1, (0.05, 0.5), ((0.01, 0.05), (0.5, 1.0))),
    ),
    params=CartPoleParams,
    packer_success=lambda params: cartpole_success,
    packer_criterion=f"balance the pole for at least {CARTPOLE_BALANCE_STEPS} steps",
    gym_id="CartPole-v1",
    gym_params=GymCartPoleParams,
    gym_threshold=475.0,
)

MOUNTAINCAR = BaseEnv(
    key="mountaincar",
    title="MountainCar",
    dynamics=MountainCarDynamics,
    ranges=(
        ParameterRange("force", 0.001, (0.0005, 0.005), ((0.0001, 0.0005), (0.005, 0.01))),
        # Packer's "mass" row: it scales the gravity term of the velocity update.
        ParameterRange("gravity", 0.0025, (0.001, 0.005), ((0.0005, 0.001), (0.005, 0.01))),
    ),
    params=MountainCarParams,
    packer_success=lambda params: mountaincar_success,
    packer_criterion=f"reach the goal within {MOUNTAINCAR_GOAL_STEPS} steps",
    gym_id="MountainCar-v0",
    gym_params=GymMountainCarParams,
    gym_threshold=-110.0,
)

ACROBOT = BaseEnv(
    key="acrobot",
    title="Acrobot",
    dynamics=AcrobotDynamics,
    ranges=(_shared("link_length"), _shared("link_mass"), _shared("link_moi")),
    params=AcrobotParams,
    packer_success=lambda params: acrobot_success(params.success_steps),
    packer_criterion="reach the target height within success_steps steps (default 80, Packer's "
    "paper; their code used 90)",
    gym_id="Acrobot-v1",
    gym_params=GymAcrobotParams,
    gym_threshold=-100.0,
)

PENDULUM = BaseEnv(
    key="pendulum",
    title="Pendulum",
    dynamics=PendulumDynamics,
    ranges=(_shared("length"), _shared("mass")),
    params=PendulumParams,
    packer_success=lambda params: pendulum_success,
    packer_criterion=f"within π/3 of upright for each of the last {PENDULUM_UPRIGHT_STEPS} steps",
    gym_id="Pendulum-v1",
    gym_params=GymPendulumParams,
    gym_threshold=None,
    # Random: −1222, the mean return of uniformly random torques over 1,000 episodes of Gymnasium's
    # Pendulum-v1 (200 steps; measured here, standard error 9). Reference: −150, what trained
    # agents reach (RL Baselines Zoo's benchmark.md lists about −150 to −200, e.g. A2C −162 on v0).
    gym_score_range=(-1222.0, -150.0),
)

BASE_ENVS: tuple[BaseEnv, ...] = (CARTPOLE, MOUNTAINCAR, ACROBOT, PENDULUM)


def _seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in keys])


# --------------------------------------------------------------------------------------------
# Families


_SPLIT_WORDS = {"D": "default", "R": "random", "E": "extreme"}
_SPLIT_TEXT = {
    "D": "default physics",
    "R": "physics drawn uniformly from the middle range",
    "E": "physics drawn uniformly from the extreme ranges",
}
_ALIASES = {("acrobot", "E"): ("RandomExtremeAcrobot-v1",), ("acrobot", "R"): ("RandomNormalAcrobot-v1",)}


class PackerFamily(EnvFamily):
    """One of Packer's D/R/E families of a base environment: ``<default|random|extreme>-<env>``."""

    splits = SPLITS

    def __init__(self, base: BaseEnv, split: str) -> None:
        self.base = base
        self.split = split  # the family's own range: "D", "R" or "E"
        self.name = f"{_SPLIT_WORDS[split]}-{base.key}"
        names = ", ".join(r.name for r in base.ranges)
        self.description = f"{base.title}, {_SPLIT_TEXT[split]} ({names}; Packer et al. 2018)"
        self.Params = base.params
        self.aliases = _ALIASES.get((base.key, split), ())
        self.success_criterion = base.packer_criterion

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        # One generator per learner: reproducible, distinct, independent of `count`.
        return [Task(f"{self.split}-{k}", self._draw(self.split, seed, k)) for k in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        if split not in self.splits:
            raise unknown_name(f"evaluation split of {self.name}", split, self.splits)
        index = self.splits.index(split)
        keys = (seed, _EVALUATION_KEY, index)
        return [Task(f"{split}-eval-{k}", self._draw(split, *keys, k)) for k in range(count)]

    def _draw(self, split: str, *keys: int) -> dict[str, float]:
        return self.base.sample(split, np.random.default_rng(_seed_sequence(*keys)))

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int | Sequence[int]) -> ClassicVectorEnv:
        sampler = (lambda rng: self.base.sample(self.split, rng)) if params.resample else None
        return ClassicVectorEnv(
            self.base.dynamics(len(tasks)),
            tasks,
            max_episode_steps=params.max_episode_steps,
            success=self.base.packer_success(params),
            seed=seed,
            sampler=sampler,
            resampled_task_prefix=f"{self.split}-resampled",
        )

    def make_env_block(self, params: Any, tasks: Sequence[Sequence[Task]], seeds: Sequence[int]) -> EnvBlock:
        return merged_env(self, params, tasks, seeds)


class GymnasiumDefaultFamily(EnvFamily):
    """A Gymnasium classic-control id as one task (``<Gymnasium id>``), on the fast vectorised
    simulators."""

    def __init__(self, base: BaseEnv) -> None:
        self.base = base
        threshold = base.gym_threshold
        self.name = base.gym_id
        self.description = f"Gymnasium {base.gym_id} (default physics), vectorised in numpy"
        self.Params = base.gym_params
        self.success_criterion = (
            "" if threshold is None else f"episode return ≥ {threshold:g} (Gymnasium reward_threshold)"
        )
        self.score_range = base.gym_score_range if threshold is None else None

    def _task(self) -> Task:
        return Task(self.name, {})

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        return [self._task() for _ in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        raise unknown_name(f"evaluation split of {self.name}", split, self.splits)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int | Sequence[int]) -> ClassicVectorEnv:
        threshold = self.base.gym_threshold
        return ClassicVectorEnv(
            self.base.dynamics(len(tasks)),
            tasks,
            max_episode_steps=params.max_episode_steps,
            success=None if threshold is None else return_threshold(threshold),
            seed=seed,
        )

    def make_env_block(self, params: Any, tasks: Sequence[Sequence[Task]], seeds: Sequence[int]) -> EnvBlock:
        return merged_env(self, params, tasks, seeds)


def merged_env(
    family: PackerFamily | GymnasiumDefaultFamily, params: Any, tasks: Sequence[Sequence[Task]], seeds: Sequence[int]
) -> EnvBlock:
    """A learner block's simulators as one `ClassicVectorEnv` of one group per learner: one call
    steps them all, each group drawing as the learner's own env would. Learners with different
    numbers of simulators fall back to stepping their envs in turn (the base's block)."""
    if len({len(own) for own in tasks}) != 1:
        return EnvFamily.make_env_block(family, params, tasks, seeds)
    return family.make_env(params, [task for own in tasks for task in own], list(seeds))


@hookimpl
def register_env_families(register: Register) -> None:
    for base in BASE_ENVS:
        for split in SPLITS:
            register(PackerFamily(base, split))
        register(GymnasiumDefaultFamily(base))
