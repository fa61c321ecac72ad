"""Learner blocks of off-policy learners (V-trace): K learners that collect together with their
behaviour networks and learn together, each from batches of its own replay mix.

The block collects as every `RolloutBlock` does, acting with the learners' behaviour networks μ:
their parameters are re-seated as the rows of one [K, parameters] tensor beside the learners'
own, so one batched pass of the stacked network gives every μ's features, outputs and values. Each
learner then takes its part of the collection as its own segments (`OffPolicyLearner.segments`)
and everything that follows stays the learner's own: its replay mix and its strategies' random
streams, its background batch preparer, its behaviour refresh, its counters and its learning
rate schedule. An algorithm's block writes `update(batches)`: one batch per learner, learned
from with a leading learner dimension.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from benchbase import EnvBlock, IterationOutput, Segment, lazy_import
from plugins.algorithms.common.block import RolloutBlock, sample
from plugins.algorithms.common.off_policy import BehaviourRollout, OffPolicyLearner, SampledBatch, behaviour_step
from plugins.algorithms.common.stacked import stacked_network

if TYPE_CHECKING:
    import torch

    from benchbase import FinishedEpisode
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


class OffPolicyBlock(RolloutBlock):
    """K off-policy learners: collection with the stacked behaviour networks, replay per learner;
    subclasses write `update` and build `self.optimizer` over `self.parameter`."""

    members: list[OffPolicyLearner]

    def __init__(self, learners: list[OffPolicyLearner], envs: EnvBlock | None = None) -> None:
        super().__init__(learners, envs)
        first = learners[0]
        rows = len(learners)
        total = first.behaviour_flat.data.numel()
        # μ's rows: each learner's behaviour refresh and checkpoints read and write its row.
        self._behaviour_rows = torch.zeros(rows, total, dtype=self._stacked.dtype, device=self.device)
        for k, learner in enumerate(learners):
            learner.behaviour_flat.reseat(self._behaviour_rows[k])  # μ does not learn: no gradient rows
        self.behaviour = stacked_network(first.behaviour, self._behaviour_rows)
        steps, simulators = self.n_steps, first.env.num_envs
        self._behaviour_out = np.zeros((steps, rows, simulators, first.model.action_outputs), dtype=np.float32)
        self._behaviour_values = np.zeros((steps + 1, rows, simulators), dtype=np.float32)
        self._features = np.zeros((steps, rows, simulators, first.model.feature_dim), dtype=np.float32)

    @abstractmethod
    def update(self, batches: list[SampledBatch]) -> list[dict[str, float]]:
        """Learn from every learner's batch at once (learner k's is `batches[k]`); each learner's metrics."""

    def iterate(self) -> list[IterationOutput]:
        """`OffPolicyLearner.iterate` for every learner, with one collection and one update."""
        lrs = [learner.begin_iteration() for learner in self.members]
        segments, finished = self.collect_segments()
        batches, statistics = zip(*(learner.offer(own) for learner, own in zip(self.members, segments)))
        updated = [batch is not None for batch in batches]
        if any(updated) and not all(updated):
            raise RuntimeError("the learners of a block must all have a batch or none: their replay mixes differ")
        if len(set(lrs)) > 1:
            raise RuntimeError(f"the learners of a block share one learning rate, not {sorted(set(lrs))}")
        learned: list[dict[str, float] | None] = [None] * len(self.members)
        if all(updated):
            self.set_lr(lrs[0])
            learned = list(self.update(list(batches)))
        return [
            learner.iteration_output(lr, values, own, episodes)
            for learner, lr, values, own, episodes in zip(self.members, lrs, learned, statistics, finished)
        ]

    def collect_segments(self) -> tuple[list[list[Segment]], list[list[FinishedEpisode]]]:
        """T steps of every learner's simulators with μ; each learner's segments and finished episodes."""
        finished, last, rewards = self.roll_out()
        with torch.inference_mode():
            self._behaviour_values[self.n_steps] = self.critic_values(torch.from_numpy(last).to(self.device))
        segments = [
            learner.segments(
                BehaviourRollout(
                    self._observations[:, k],
                    last[k],
                    self._actions[:, k],
                    rewards[:, k],
                    self._ended[:, k],
                    self._behaviour_out[:, k],
                    self._behaviour_values[:, k],
                    self._features[:, k],
                )
            )
            for k, learner in enumerate(self.members)
        ]
        return segments, finished

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """Every μ acts; what it computed is kept for the segments: features, outputs, values."""
        actor_out = behaviour_step(self.behaviour, observations, t, self._features, self._behaviour_out)
        self._behaviour_values[t] = self.critic_values(observations)
        return sample(actor_out, self.behaviour.action_log_std())

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        return self.behaviour.value(observations).cpu().numpy()  # bootstraps use μ's critic, as acting does
