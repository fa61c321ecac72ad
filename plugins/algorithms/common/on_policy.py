"""On-policy learners (A2C, PPO, GALA): every iteration collects one rollout with π and learns
from it; an algorithm writes `update(rollout)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
        """The rollout just collected (`roll_out`, or a learner block's collection)."""
        return Rollout(
            observations=self._observations,
            actions=self._actions,
            rewards=rewards,
            not_done=(~self._ended).astype(np.float32),
            last_observations=last,
        )
