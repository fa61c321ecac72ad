"""On-policy learners (A2C, PPO, GALA): every iteration collects one rollout with π and learns
from it; an algorithm writes `update(rollout)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from benchbase import FinishedEpisode, IterationOutput, lazy_import
from plugins.algorithms.common.rollout import RolloutLearner

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass
class Rollout:
    """T steps from P simulators. Observations are as the policy saw them (normalised)."""

    observations: np.ndarray  # [T, P, *obs_shape] float32
    actions: np.ndarray  # [T, P] int64 or [T, P, act_dim] float32
    rewards: np.ndarray  # [T, P] float32, scaled, truncation bootstrap included
    not_done: np.ndarray  # [T, P] float32: 0 where the episode ended at step t
    last_observations: np.ndarray  # [P, *obs_shape] float32, for the bootstrap V(s_T)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations [T·P, *obs] and actions [T·P, ...] flattened time-major, and the last
        observations [P, *obs], on `device`."""
        size = self.rewards.size
        observations = torch.from_numpy(self.observations.reshape(size, *self.observations.shape[2:])).to(device)
        actions = torch.from_numpy(self.actions.reshape(size, *self.actions.shape[2:])).to(device)
        return observations, actions, torch.from_numpy(self.last_observations).to(device)


@dataclass
class BlockRollout:
    """T steps from each of K learners' P simulators (a learner block's collection): `Rollout`'s
    arrays with a learner axis after the time axis."""

    observations: np.ndarray  # [T, K, P, *obs_shape] float32, normalised
    actions: np.ndarray  # [T, K, P] int64 or [T, K, P, act_dim] float32
    rewards: np.ndarray  # [T, K, P] float32, scaled, truncation bootstrap included
    not_done: np.ndarray  # [T, K, P] float32
    last_observations: np.ndarray  # [K, P, *obs_shape] float32

    _per_step: ClassVar[tuple[str, ...]] = ("observations", "actions", "rewards", "not_done")

    @classmethod
    def stack(cls, rollouts: list[Rollout]) -> BlockRollout:
        """The rollouts of learners 0…K-1 as one block rollout."""
        return cls(
            *(np.stack([getattr(rollout, name) for rollout in rollouts], axis=1) for name in cls._per_step),
            np.stack([rollout.last_observations for rollout in rollouts]),
        )

    @property
    def learners(self) -> int:
        return self.rewards.shape[1]

    def learner(self, k: int) -> Rollout:
        """Learner k's rollout."""
        return Rollout(*(getattr(self, name)[:, k] for name in self._per_step), self.last_observations[k])

    def merged(self) -> Rollout:
        """The K·P simulators as one rollout (simulator k·P + j is learner k's j): return targets
        act per simulator, so one call computes every learner's."""
        steps = self.rewards.shape[0]
        return Rollout(
            *(getattr(self, name).reshape(steps, -1, *getattr(self, name).shape[3:]) for name in self._per_step),
            self.last_observations.reshape(-1, *self.last_observations.shape[2:]),
        )

    def by_learner(self, per_step: np.ndarray) -> np.ndarray:
        """[T, K·P] values of `merged()` as each learner's [K, T·P], time-major as `Rollout.tensors` flattens."""
        steps, learners = self.rewards.shape[:2]
        return per_step.reshape(steps, learners, -1).swapaxes(0, 1).reshape(learners, -1)

    def by_step(self, per_learner: np.ndarray) -> np.ndarray:
        """Each learner's [K, T·P] values as [T, K·P] (the inverse of `by_learner`)."""
        steps, learners = self.rewards.shape[:2]
        return per_learner.reshape(learners, steps, -1).swapaxes(0, 1).reshape(steps, -1)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each learner's observations [K, T·P, *obs] and actions [K, T·P, ...] (time-major, as
        `Rollout.tensors`) and last observations [K, P, *obs], on `device`."""
        learners = self.learners

        def by_learner(array: np.ndarray) -> torch.Tensor:
            flat = np.ascontiguousarray(array.swapaxes(0, 1)).reshape(learners, -1, *array.shape[3:])
            return torch.from_numpy(flat).to(device)

        return (
            by_learner(self.observations),
            by_learner(self.actions),
            torch.from_numpy(self.last_observations).to(device),
        )


class OnPolicyLearner(RolloutLearner[Rollout]):
    """Collects a T-step rollout from the learner's simulators, then `update`s on it."""

    def iterate(self) -> IterationOutput:
        rollout, finished = self.collect()
        metrics = self.update(rollout)
        return IterationOutput(env_steps=self.n_steps * self.env.num_envs, finished=finished, metrics=metrics)

    def collect(self) -> tuple[Rollout, list[FinishedEpisode]]:
        finished, last, rewards = self.roll_out()
        return self.rollout(last, rewards), finished

    def rollout(self, last: np.ndarray, rewards: np.ndarray) -> Rollout:
        """The rollout `roll_out` just collected."""
        return Rollout(
            observations=self._observations,
            actions=self._actions,
            rewards=rewards,
            not_done=(~self._ended).astype(np.float32),
            last_observations=last,
        )
