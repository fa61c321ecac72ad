"""Greedy evaluation inside a learner: the learner's own tasks and the family's held-out splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchbase.api.contracts import EnvFamily, FinishedEpisode, Task, without_resampling
from benchbase.grid.cell import Cell
from benchbase.learner.episodes import run_episodes


class Evaluator:
    """Greedy episodes on the learner's own tasks ("train") and on the family's held-out splits."""

    def __init__(self, family: EnvFamily, env_params: Any, own_tasks: Sequence[Task], cell: Cell, rank: int) -> None:
        self.params = without_resampling(env_params)
        self.family = family
        self.seed = cell.seed * 1_000_003 + 7_777
        self.rank = rank
        episodes = cell.eval_episodes
        splits: dict[str, list[Task]] = {"train": [own_tasks[k % len(own_tasks)] for k in range(episodes)]}
        for split in family.splits:
            # The same held-out tasks for every learner and every evaluation: fair comparisons.
            splits[split] = family.evaluation_tasks(self.params, split, episodes, cell.seed)
        self.envs = {split: family.make_env(self.params, tasks, self.seed) for split, tasks in splits.items()}

    def run(self, act: Callable[[np.ndarray], np.ndarray]) -> dict[str, list[FinishedEpisode]]:
        """The first episode of every simulator (one simulator per episode) of every split."""
        return {split: run_episodes(env, act, env.num_envs, self.seed) for split, env in self.envs.items()}

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def task_parameters(task: Task) -> list[tuple[str, float]]:
    return [(key, float(value)) for key, value in task.parameters.items()]
