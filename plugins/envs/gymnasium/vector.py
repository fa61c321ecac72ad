"""`GymnasiumTaskVectorEnv`: any list of Gymnasium envs as a `TaskVectorEnv`.

It runs them in a `gymnasium.vector.SyncVectorEnv` with same-step autoreset, so the contract's
semantics hold: an env whose episode ends is reset inside `step`, its last observation is
returned in `final_observations`, and the episode is reported as a `FinishedEpisode` with its raw
return (whatever reward wrappers the env fns add, the return is the sum of what `step` yields).
Families that have no faster simulator (arbitrary Gymnasium ids, MuJoCo, ALE) build on it; a
family that knows how to draw its envs hands it `frames` (`GymnasiumFrames`) for `render`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from benchbase import FinishedEpisode, StepResult, Task, UserError

#: (episode return, episode length, terminated) -> success, or None where undefined.
SuccessFn = Callable[[float, int, bool], "bool | None"]


class GymnasiumFrames(Protocol):
    """Draws Gymnasium envs of one kind (the family that builds them knows which)."""

    def frame(self, simulator: int, env: gym.Env) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `env` (unwrapped), the env of `simulator`."""
        ...

    def close(self) -> None:
        """Release what drawing holds (renderers); called when the vector env closes."""
        ...


def _no_success(episode_return: float, episode_length: int, terminated: bool) -> bool | None:
    return None


class GymnasiumTaskVectorEnv:
    """One Gymnasium env per task, stepped together; `env_fns[i]` builds the env of `tasks[i]`."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        tasks: Sequence[Task],
        success_fn: SuccessFn | None = None,
        frames: GymnasiumFrames | None = None,
    ) -> None:
        if len(env_fns) != len(tasks):
            raise ValueError(f"{len(env_fns)} env fns for {len(tasks)} tasks")
        self._vector = SyncVectorEnv(list(env_fns), autoreset_mode=AutoresetMode.SAME_STEP)
        self.num_envs = self._vector.num_envs
        self.observation_space = self._vector.single_observation_space
        self.action_space = self._vector.single_action_space
        self._tasks = list(tasks)
        self._success_fn = success_fn or _no_success
        self._frames = frames
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, seed: int) -> np.ndarray:
        # Simulator i is seeded with seed + i (SyncVectorEnv's rule).
        observations, _ = self._vector.reset(seed=int(seed))
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return observations

    def step(self, actions: np.ndarray) -> StepResult:
        observations, rewards, terminated, truncated, infos = self._vector.step(self._prepare(actions))
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        self._returns += rewards
        self._lengths += 1
        done = terminated | truncated
        if not done.any():
            return StepResult(observations, rewards.astype(np.float32), terminated, truncated, None, [])
        final_observations = np.array(observations, copy=True)
        final_mask = infos.get("_final_obs", done)
        for i in np.flatnonzero(final_mask):
            final_observations[i] = infos["final_obs"][i]
        finished = []
        for i in np.flatnonzero(done).tolist():
            length = int(self._lengths[i])
            episode_return = float(self._returns[i])
            finished.append(
                FinishedEpisode(
                    simulator=i,
                    episode_return=episode_return,
                    episode_length=length,
                    success=self._success_fn(episode_return, length, bool(terminated[i])),
                    task=self._tasks[i],
                )
            )
            self._returns[i] = 0.0
            self._lengths[i] = 0
        return StepResult(observations, rewards.astype(np.float32), terminated, truncated, final_observations, finished)

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self._vector.close()

    def render(self, simulator: int) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `simulator`'s current state, drawn by the `frames` of the
        family that built this env (the envs need no `render_mode`)."""
        env = self._vector.envs[simulator].unwrapped
        if self._frames is None:
            raise UserError(
                f"{env.spec.id if env.spec else type(env).__name__} cannot render here "
                "(benchbase draws ALE and MuJoCo Gymnasium envs only)"
            )
        return self._frames.frame(simulator, env)

    def _prepare(self, actions: np.ndarray) -> np.ndarray:
        """Batch-shaped actions; continuous ones clipped to the action space (learners sample
        unbounded Gaussians, and some Gymnasium envs assert or misbehave out of bounds)."""
        actions = np.asarray(actions)
        space = self.action_space
        if isinstance(space, spaces.Box):
            actions = actions.reshape((self.num_envs, *space.shape)).astype(space.dtype, copy=False)
            return np.clip(actions, space.low, space.high)
        if isinstance(space, spaces.Discrete):
            return actions.reshape(self.num_envs).astype(np.int64, copy=False)
        return actions
