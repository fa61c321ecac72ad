"""`ConcatenatedEnvs`: the `EnvBlock` of any family, its members stepped one after another.

A learner block acts for all its learners at once and then steps every learner's simulators;
this steps each member env with its share of the actions and concatenates what they return, so
every family has a block env without writing one. It saves no time over stepping the members
separately; a family whose simulators vectorise across members overrides
`EnvFamily.make_env_block` (the classic-control families do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from benchbase.api.contracts import FinishedEpisode, StepResult, TaskVectorEnv


class ConcatenatedEnvs:
    """K member envs as one `EnvBlock` of Σ P_k simulators."""

    def __init__(self, members: Sequence[TaskVectorEnv]) -> None:
        if not members:
            raise ValueError("an env block needs at least one member")
        self.members = list(members)
        self.observation_space = members[0].observation_space
        self.action_space = members[0].action_space
        sizes = [member.num_envs for member in members]
        self.num_envs = sum(sizes)
        self._bounds = np.cumsum([0, *sizes]).tolist()

    def step(self, actions: np.ndarray) -> StepResult:
        results = [
            member.step(actions[start:end])
            for member, start, end in zip(self.members, self._bounds, self._bounds[1:], strict=False)
        ]
        finished: list[FinishedEpisode] = []
        for start, result in zip(self._bounds, results, strict=False):
            finished.extend(dataclasses.replace(one, simulator=start + one.simulator) for one in result.finished)
        ended = any(result.final_observations is not None for result in results)
        return StepResult(
            np.concatenate([result.observations for result in results]),
            np.concatenate([result.rewards for result in results]),
            np.concatenate([result.terminated for result in results]),
            np.concatenate([result.truncated for result in results]),
            # Rows of members where nothing ended are never read (valid only where an episode ended).
            np.concatenate([r.observations if r.final_observations is None else r.final_observations for r in results])
            if ended
            else None,
            finished,
        )

    def close(self) -> None:
        for member in self.members:
            member.close()
