"""`MujocoVectorEnv`: P Gymnasium MuJoCo runners stepped in one loop, each with its own task.

Why not `gymnasium.vector.SyncVectorEnv` (`plugins.envs.gymnasium.vector`)? On these models the physics
costs 30–80 µs a step, and Gymnasium's Python around it (wrappers, the env's own reward and
health checks on numpy scalars, info dicts, the vector env's bookkeeping) added 25–45 % more;
on two cores `AsyncVectorEnv` was slower still (see benchmarks/mujoco_speed.py). So this env
keeps Gymnasium's envs for what they do once per episode (model loading, seeded initial states
in `reset`) and does the per-step work itself: one `mj_step` per simulator, then Gymnasium's -v5
observation, reward and termination computed for all P simulators at once in numpy
(`Runner`; tests check them against Gymnasium's `step` to the bit).

Around that it keeps the `TaskVectorEnv` contract like `plugins.envs.gymnasium.vector`: raw returns and
lengths, truncation when the step count reaches the limit (also when the same step terminated,
as Gymnasium's TimeLimit does), same-step autoreset with the last observations of ended episodes
in `final_observations` (None on steps where none ended), `FinishedEpisode`s with a success
verdict, and, for domain randomisation, a fresh task per simulator at every reset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from benchbase import FinishedEpisode, StepResult, Task
from plugins.envs.mujoco.physics import (
    PhysicsSettings,
    PristinePhysics,
    quiet_known_asset_warnings,
)
from plugins.envs.mujoco.render import MujocoFrames

#: Task parameters -> what they do to the model.
SettingsOf = Callable[[Mapping[str, float]], PhysicsSettings]
#: Draws one task's parameters from a generator (domain randomisation).
TaskSampler = Callable[[np.random.Generator], Mapping[str, float]]

_STATES_STREAM = 0
_RESAMPLE_STREAM = 1


@dataclass(frozen=True)
class Health:
    """Hopper-v5's healthy set (Gymnasium defaults): it earns a bonus per step inside and the
    episode terminates outside."""

    reward: float = 1.0
    z_range: tuple[float, float] = (0.7, float("inf"))
    angle_range: tuple[float, float] = (-0.2, 0.2)
    state_range: tuple[float, float] = (-100.0, 100.0)

    def check(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Rows of qpos/qvel that are healthy (Gymnasium's `is_healthy`, row by row)."""
        low, high = self.state_range
        # state_vector()[2:] = qpos[2:] followed by qvel
        state_ok = ((qpos[:, 2:] > low) & (qpos[:, 2:] < high)).all(axis=1)
        state_ok &= ((qvel > low) & (qvel < high)).all(axis=1)
        z, angle = qpos[:, 1], qpos[:, 2]
        z_ok = (z > self.z_range[0]) & (z < self.z_range[1])
        angle_ok = (angle > self.angle_range[0]) & (angle < self.angle_range[1])
        return state_ok & z_ok & angle_ok


@dataclass(frozen=True)
class Runner:
    """A Gymnasium -v5 planar runner: reward = forward velocity (+ healthy bonus) − control cost;
    observation = qpos without x, then qvel (clipped for Hopper)."""

    gym_id: str
    ctrl_cost_weight: float
    health: Health | None = None  # None: no bonus and no termination (HalfCheetah)
    velocity_clip: float | None = None

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        nq = qpos.shape[1]
        out = np.empty((len(qpos), nq - 1 + qvel.shape[1]), dtype=np.float32)
        out[:, : nq - 1] = qpos[:, 1:]
        clip = self.velocity_clip
        out[:, nq - 1 :] = qvel if clip is None else np.clip(qvel, -clip, clip)
        return out


HALF_CHEETAH = Runner("HalfCheetah-v5", ctrl_cost_weight=0.1)
HOPPER = Runner("Hopper-v5", ctrl_cost_weight=1e-3, health=Health(), velocity_clip=10.0)
RUNNERS: dict[str, Runner] = {runner.gym_id: runner for runner in (HALF_CHEETAH, HOPPER)}


def _entropy(value: int) -> int:
    """SeedSequence wants non-negative integers; map any int onto one."""
    return int(value) & 0xFFFF_FFFF_FFFF_FFFF


class MujocoVectorEnv:
    """P simulators of one runner, each running its own task.

    Initial states come from each Gymnasium env's generator, seeded at `reset(seed)` from
    (`seed` given at construction, `seed` given to reset, simulator); autoresets continue it.
    With a `sampler`, every reset (the first one included) draws the simulator's task from its
    own generator, and its `FinishedEpisode` reports the task it ran; without one, tasks stay.
    Success (when `success_distance` is set): the torso's x moved at least that far between the
    episode's reset and its last step, however the episode ended.
    """

    def __init__(
        self,
        runner: Runner,
        tasks: Sequence[Task],
        *,
        settings_of: SettingsOf,
        max_episode_steps: int,
        seed: int,
        success_distance: float | None = None,
        sampler: TaskSampler | None = None,
        resampled_task_prefix: str = "resampled",
    ) -> None:
        self.runner = runner
        self.num_envs = len(tasks)
        with quiet_known_asset_warnings():
            self.envs = [gym.make(runner.gym_id, disable_env_checker=True).unwrapped for _ in tasks]
        first = self.envs[0]
        self.action_space = first.action_space
        obs_size = first.model.nq - 1 + first.model.nv
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float32)
        self.max_episode_steps = int(max_episode_steps)
        self._settings_of = settings_of
        self._success_distance = success_distance
        self._seed = _entropy(seed)
        self._sampler = sampler
        self._prefix = resampled_task_prefix
        self._frame_skip = first.frame_skip
        self._dt = first.dt  # Gymnasium's x velocity divides by this very float
        self._pristine = [PristinePhysics(env.model) for env in self.envs]
        # Views into each MjData stay valid for the env's life: cache them off the hot loop.
        self._sims = [(env.model, env.data, env.data.ctrl, env.data.qpos, env.data.qvel) for env in self.envs]
        self._qpos = np.zeros((self.num_envs, first.model.nq))
        self._qvel = np.zeros((self.num_envs, first.model.nv))
        self._actions = np.zeros((self.num_envs, *self.action_space.shape), dtype=np.float32)
        self._low, self._high = self.action_space.low, self.action_space.high
        self._x_start = np.zeros(self.num_envs)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._episodes = np.zeros(self.num_envs, dtype=np.int64)  # per simulator, names resampled tasks
        self._tasks: list[Task] = [Task("")] * self.num_envs
        self._frames = MujocoFrames()  # renderers are made on the first `render` of a simulator
        for i, task in enumerate(tasks):
            self.set_task(i, task)
        self.reset(seed)

    @property
    def tasks(self) -> list[Task]:
        """The task each simulator is running now."""
        return list(self._tasks)

    def set_task(self, simulator: int, task: Task) -> None:
        """Give `simulator` the physics of `task` (from the pristine model; takes effect at once,
        so call it between episodes)."""
        self._pristine[simulator].apply(self._settings_of(task.parameters))
        self._tasks[simulator] = task

    def reset(self, seed: int) -> np.ndarray:
        key = _entropy(seed)
        if self._sampler is not None:
            self._task_rngs = [
                np.random.default_rng(np.random.SeedSequence([self._seed, key, _RESAMPLE_STREAM, i]))
                for i in range(self.num_envs)
            ]
        self._episodes[:] = 0
        for i in range(self.num_envs):
            state_seed = np.random.SeedSequence([self._seed, key, _STATES_STREAM, i]).generate_state(1)[0]
            self._start_episode(i, int(state_seed))
        return self.runner.observe(self._qpos, self._qvel)

    def step(self, actions: np.ndarray) -> StepResult:
        # Clipped to the action space (learners sample unbounded Gaussians); two ufuncs with `out`
        # cost less than np.clip's dispatch at this size.
        np.maximum(np.asarray(actions).reshape(self._actions.shape), self._low, out=self._actions)
        np.minimum(self._actions, self._high, out=self._actions)
        qpos, qvel, frame_skip = self._qpos, self._qvel, self._frame_skip
        x_before = qpos[:, 0].copy()
        for i, (model, data, ctrl, data_qpos, data_qvel) in enumerate(self._sims):
            ctrl[:] = self._actions[i]
            mujoco.mj_step(model, data, frame_skip)
            # Gymnasium also calls mj_rnePostConstraint here; it fills contact-force fields that
            # neither these observations nor rewards read and leaves the state alone.
            qpos[i] = data_qpos
            qvel[i] = data_qvel
        rewards, terminated = self._rewards(x_before)
        self._returns += rewards
        self._lengths += 1
        truncated = self._lengths >= self.max_episode_steps
        done = terminated | truncated
        observations = self.runner.observe(qpos, qvel)
        rewards32 = rewards.astype(np.float32)
        if not done.any():
            return StepResult(observations, rewards32, terminated, truncated, None, [])
        ended = np.flatnonzero(done).tolist()
        finished = [self._finish(i) for i in ended]
        for i in ended:
            self._start_episode(i)
        final_observations = observations
        observations = observations.copy()
        observations[ended] = self.runner.observe(qpos[ended], qvel[ended])
        return StepResult(observations, rewards32, terminated, truncated, final_observations, finished)

    def close(self) -> None:
        self._frames.close()
        for env in self.envs:
            env.close()

    def render(self, simulator: int) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `simulator`'s current state (`bench eval --video`)."""
        return self._frames.frame(simulator, self.envs[simulator])

    # -- Gymnasium's -v5 reward and termination, for every simulator at once --------------------

    def _rewards(self, x_before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        runner = self.runner
        x_velocity = (self._qpos[:, 0] - x_before) / self._dt
        # float32 like Gymnasium's cost of a float32 action; the reward itself is float64.
        control_cost = runner.ctrl_cost_weight * np.square(self._actions).sum(axis=1)
        health = runner.health
        if health is None:
            return x_velocity - control_cost, np.zeros(self.num_envs, dtype=bool)
        healthy = health.check(self._qpos, self._qvel)
        return (x_velocity + healthy * health.reward) - control_cost, ~healthy

    # -- episodes -------------------------------------------------------------------------------

    def _finish(self, i: int) -> FinishedEpisode:
        success = None
        if self._success_distance is not None:
            success = bool(self._qpos[i, 0] - self._x_start[i] >= self._success_distance)
        return FinishedEpisode(
            simulator=i,
            episode_return=float(self._returns[i]),
            episode_length=int(self._lengths[i]),
            success=success,
            task=self._tasks[i],
        )

    def _start_episode(self, i: int, seed: int | None = None) -> None:
        if self._sampler is not None:
            values = dict(self._sampler(self._task_rngs[i]))
            self.set_task(i, Task(f"{self._prefix}-{i}-{self._episodes[i]}", values))
        self._episodes[i] += 1
        self.envs[i].reset(seed=seed)
        _, _, _, data_qpos, data_qvel = self._sims[i]
        self._qpos[i] = data_qpos
        self._qvel[i] = data_qvel
        self._x_start[i] = data_qpos[0]
        self._returns[i] = 0.0
        self._lengths[i] = 0
