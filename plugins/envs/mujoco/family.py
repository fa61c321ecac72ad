"""MuJoCo env families on Gymnasium's Hopper-v5 and HalfCheetah-v5 models.

Registers, for ``hopper`` and ``halfcheetah``:

- Diff-DAC variants, all in an air medium (density 1.2, viscosity 0.0002; without a medium wind
  exerts no force): ``air-<env>`` (one task, still air), ``random-wind-<env>`` (``wind_x``,
  ``wind_y`` each 30·(Beta(0.4, 0.4) − 0.5) m/s), ``random-mass-<env>`` (``mass_scale``
  1 + 1.9·(Beta(0.1, 0.1) − 0.5) on every body's mass and inertia) and ``random-mujoco-<env>``
  (wind and mass), drawn once per task from the task's seed. Aliases keep the Diff-DAC ids
  (``RandomWindHopper-v2``, ``RandomMassHopper-v2``, ``RandomMuJoCoHopper-v2``, ``AirHopper-v2``,
  and the same for HalfCheetah). Held-out splits: ``D`` (the nominal task: still air, unit mass)
  and ``R`` (fresh draws from the family's own distribution, on seeds disjoint from the learners'
  tasks: generalisation to unseen wind and mass). Scored against a random policy and PPO.
  Wind is a world-frame velocity; y is lateral, and these planar runners cannot move along it,
  so ``wind_y`` is drawn and recorded (as Diff-DAC did) but exerts no force.
- Packer et al. (2018) families ``default-<env>``, ``random-<env>``, ``extreme-<env>`` with
  parameters ``power``, ``density``, ``friction`` (D/R/E ranges and splits exactly as for the
  classic-control families). Packer's values are relative to their Roboschool defaults, so each
  maps to a scale of the MuJoCo model's own default: actuator gears × power / default power
  (HalfCheetah 0.9, Hopper 0.75), the torso's mass and inertia × density / 1000 (the torso body
  alone, as Packer's HeavyTorso/LightTorso variants; the other bodies keep theirs), sliding
  friction of every geom × friction / 0.8. Success: the torso's x at the episode's last step is at
  least 20 m beyond its x after the reset, however the episode ended (time limit or a fall).

Every family runs episodes of at most ``max_episode_steps`` (1000, Packer's and Gymnasium's limit)
on `plugins.envs.mujoco.vector.MujocoVectorEnv`, which reproduces Gymnasium's -v5 dynamics,
observations and rewards; parameters are applied to each simulator's model from pristine copies
(`plugins.envs.mujoco.physics`), so switching tasks never accumulates. MuJoCo is imported only
when an env is built.

Gymnasium's own MuJoCo ids (``Hopper-v5``, ``Ant-v4``…) resolve here too, as the generic one-task
Gymnasium family with MuJoCo's offscreen frames (`plugins.envs.mujoco.render`), so they can render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchbase import (
    EnvFamily,
    EnvFamilyParams,
    Register,
    Task,
    TaskVectorEnv,
    UserError,
    hookimpl,
    param,
    unknown_name,
)
from plugins.envs.classic.family import SPLITS, ParameterRange
from plugins.envs.gymnasium.family import GymnasiumIdFamily, registered_entry_point
from plugins.envs.mujoco.render import MujocoFrames

if TYPE_CHECKING:  # importing them loads MuJoCo: only when an env is built
    from plugins.envs.mujoco.physics import PhysicsSettings

# Distinct SeedSequence keys keep evaluation draws disjoint from the training draws, which use
# SeedSequence([seed, learner]) (two words; these use four).
_EVALUATION_KEY = 0x3D0C
SUCCESS_DISTANCE = 20.0  # metres the torso travels (Packer et al.)
DEFAULT_DENSITY = 1000.0
DEFAULT_FRICTION = 0.8
WIND_SPAN, WIND_BETA = 30.0, 0.4  # wind = 30·(Beta(0.4, 0.4) − 0.5), in (−15, 15) m/s
MASS_SPAN, MASS_BETA = 1.9, 0.1  # mass scale = 1 + 1.9·(Beta(0.1, 0.1) − 0.5), in (0.05, 1.95)
GYMNASIUM_MUJOCO = "gymnasium.envs.mujoco."  # the entry points of Gymnasium's MuJoCo ids


@dataclass(frozen=True)
class MujocoParams(EnvFamilyParams):
    max_episode_steps: int = param(
        1000, "time limit per episode (Packer et al.; Gymnasium's limit for Hopper-v5 and HalfCheetah-v5)", min=1
    )


@dataclass(frozen=True)
class Robot:
    """What the families of one Gymnasium runner share."""

    key: str  # "hopper"
    title: str  # "Hopper"
    gym_id: str
    power: ParameterRange  # Packer's actuator power; the other two ranges are shared
    #: Mean return of uniformly random actions per Diff-DAC variant (measured; see below).
    random_returns: Mapping[str, float]
    reference_return: float


DENSITY = ParameterRange("density", DEFAULT_DENSITY, (750.0, 1250.0), ((500.0, 750.0), (1250.0, 1500.0)))
FRICTION = ParameterRange("friction", DEFAULT_FRICTION, (0.5, 1.1), ((0.2, 0.5), (1.1, 1.4)))

# Random returns: mean return of uniformly random actions, one episode per task the family draws
# (training tasks of seeds 0 and 1; 1000-step limit), measured here with this module: Hopper 2,000
# episodes per variant (standard error 0.4–0.8); HalfCheetah 1,000 (standard error 2.5 still air,
# 3.4 mass, 12 wind) and 5,000 for wind with mass, whose light bodies blown by strong winds give
# heavy tails (standard error 54).
# References: PPO after 1M steps in RL Baselines3 Zoo's benchmark.md (HalfCheetah-v3 5819,
# Hopper-v3 2410; tuned hyperparameters, one run; the same rewards as -v5, in still air).
HALFCHEETAH = Robot(
    key="halfcheetah",
    title="HalfCheetah",
    gym_id="HalfCheetah-v5",
    power=ParameterRange("power", 0.9, (0.7, 1.1), ((0.5, 0.7), (1.1, 1.3))),
    random_returns={"air": -284.0, "wind": -345.0, "mass": -282.0, "mujoco": -248.0},
    reference_return=5819.0,
)
HOPPER = Robot(
    key="hopper",
    title="Hopper",
    gym_id="Hopper-v5",
    power=ParameterRange("power", 0.75, (0.6, 0.9), ((0.4, 0.6), (0.9, 1.1))),
    random_returns={"air": 17.2, "wind": 17.5, "mass": 17.6, "mujoco": 23.1},
    reference_return=2410.0,
)
ROBOTS: tuple[Robot, ...] = (HALFCHEETAH, HOPPER)


def _seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in keys])


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(_seed_sequence(*keys))


_SPLIT_WORDS = {"D": "default", "R": "random", "E": "extreme"}
_SPLIT_TEXT = {
    "D": "default physics",
    "R": "physics drawn uniformly from the middle range",
    "E": "physics drawn uniformly from the extreme ranges",
}
# variant word -> (family prefix, alias prefix, draws wind, draws mass, description)
_VARIANTS = {
    "air": ("air", "Air", False, False, "in still air"),
    "wind": ("random-wind", "RandomWind", True, False, "in air with a random wind per task"),
    "mass": ("random-mass", "RandomMass", False, True, "in air with a random mass scale per task"),
    "mujoco": ("random-mujoco", "RandomMuJoCo", True, True, "in air with a random wind and mass scale per task"),
}


# --------------------------------------------------------------------------------------------
# Families


class MujocoFamily(EnvFamily):
    """A family of one runner; subclasses say how tasks are drawn and what they do to the model."""

    Params = MujocoParams
    #: Success: metres the torso travels along x in an episode; None: no success criterion.
    success_distance: float | None = None

    def __init__(self, robot: Robot) -> None:
        self.robot = robot

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """One task's parameters drawn from the family's own distribution."""
        raise NotImplementedError

    def physics(self, parameters: Mapping[str, float]) -> PhysicsSettings:
        """What a task's parameters do to the model."""
        raise NotImplementedError

    def _evaluation_split(self, split: str) -> int:
        if split not in self.splits:
            raise unknown_name(f"evaluation split of {self.name}", split, self.splits)
        return self.splits.index(split)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        try:
            from plugins.envs.mujoco.vector import RUNNERS, MujocoVectorEnv
        except ImportError as error:  # mujoco missing or broken
            raise UserError(f"env family {self.name} needs MuJoCo: {error}") from error
        return MujocoVectorEnv(
            RUNNERS[self.robot.gym_id],
            tasks,
            settings_of=self.physics,
            max_episode_steps=params.max_episode_steps,
            seed=seed,
            success_distance=self.success_distance,
            sampler=self.sample if params.resample else None,
            resampled_task_prefix=f"{self.name}-resampled",
        )


class PackerMujocoFamily(MujocoFamily):
    """One of Packer's D/R/E families of a runner: ``<default|random|extreme>-<env>``."""

    splits = SPLITS
    success_distance = SUCCESS_DISTANCE
    success_criterion = (
        f"the torso ends the episode at least {SUCCESS_DISTANCE:g} m further along x than it started (Packer et al.)"
    )

    def __init__(self, robot: Robot, split: str) -> None:
        super().__init__(robot)
        self.split = split  # the family's own range: "D", "R" or "E"
        self.name = f"{_SPLIT_WORDS[split]}-{robot.key}"
        self.description = f"{robot.gym_id}, {_SPLIT_TEXT[split]} (power, torso density, friction; Packer et al. 2018)"

    def _ranges(self) -> tuple[ParameterRange, ...]:
        return (self.robot.power, DENSITY, FRICTION)

    def _draw(self, split: str, rng: np.random.Generator) -> dict[str, float]:
        return {r.name: r.sample(split, rng) for r in self._ranges()}

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        return self._draw(self.split, rng)

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        # One generator per learner: reproducible, distinct, independent of `count`.
        return [Task(f"{self.split}-{k}", self._draw(self.split, _rng(seed, k))) for k in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        index = self._evaluation_split(split)
        return [
            Task(f"{split}-eval-{k}", self._draw(split, _rng(seed, _EVALUATION_KEY, index, k))) for k in range(count)
        ]

    def physics(self, parameters: Mapping[str, float]) -> PhysicsSettings:
        from plugins.envs.mujoco.physics import PhysicsSettings

        power = self.robot.power.default
        return PhysicsSettings(
            gear_scale=parameters.get("power", power) / power,
            torso_mass_scale=parameters.get("density", DEFAULT_DENSITY) / DEFAULT_DENSITY,
            friction_scale=parameters.get("friction", DEFAULT_FRICTION) / DEFAULT_FRICTION,
        )


class DiffDacFamily(MujocoFamily):
    """A Diff-DAC variant of a runner in air: wind, mass scale, both or neither
    (``air-<env>``, ``random-<wind|mass|mujoco>-<env>``)."""

    def __init__(self, robot: Robot, word: str) -> None:
        super().__init__(robot)
        prefix, alias, wind, mass, text = _VARIANTS[word]
        self.word = word  # "wind", "mass", "mujoco" or "air": names the tasks
        self.draws_wind = wind
        self.draws_mass = mass
        self.name = f"{prefix}-{robot.key}"
        self.description = f"{robot.gym_id} {text} (Diff-DAC)"
        self.aliases = (f"{alias}{robot.title}-v2",)
        self.splits = ("D", "R") if wind or mass else ()
        self.score_range = (robot.random_returns[word], robot.reference_return)

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.draws_wind:
            values["wind_x"] = WIND_SPAN * (float(rng.beta(WIND_BETA, WIND_BETA)) - 0.5)
            values["wind_y"] = WIND_SPAN * (float(rng.beta(WIND_BETA, WIND_BETA)) - 0.5)
        if self.draws_mass:
            values["mass_scale"] = 1.0 + MASS_SPAN * (float(rng.beta(MASS_BETA, MASS_BETA)) - 0.5)
        return values

    def nominal(self) -> dict[str, float]:
        """The unperturbed task: still air, unit mass."""
        values = {"wind_x": 0.0, "wind_y": 0.0} if self.draws_wind else {}
        return {**values, **({"mass_scale": 1.0} if self.draws_mass else {})}

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        if not self.splits:  # air only: one task
            return [Task(self.word, {}) for _ in range(count)]
        return [Task(f"{self.word}-{k}", self.sample(_rng(seed, k))) for k in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        index = self._evaluation_split(split)
        if split == "D":
            return [Task(f"D-eval-{k}", self.nominal()) for k in range(count)]
        return [Task(f"R-eval-{k}", self.sample(_rng(seed, _EVALUATION_KEY, index, k))) for k in range(count)]

    def physics(self, parameters: Mapping[str, float]) -> PhysicsSettings:
        from plugins.envs.mujoco.physics import PhysicsSettings

        return PhysicsSettings(
            air=True,
            wind_x=parameters.get("wind_x", 0.0),
            wind_y=parameters.get("wind_y", 0.0),
            mass_scale=parameters.get("mass_scale", 1.0),
        )


@hookimpl
def register_env_families(register: Register) -> None:
    for robot in ROBOTS:
        for word in _VARIANTS:
            register(DiffDacFamily(robot, word))
        for split in SPLITS:
            register(PackerMujocoFamily(robot, split))


@hookimpl
def resolve_env_family(name: str) -> EnvFamily | None:
    entry_point = registered_entry_point(name)
    if entry_point is not None and entry_point.startswith(GYMNASIUM_MUJOCO):
        return GymnasiumIdFamily(name, frames=MujocoFrames)
    return None
