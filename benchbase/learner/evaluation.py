"""Greedy evaluation inside a learner: the learner's own tasks and the family's held-out splits, and
when in a cell's budget its evaluations happen.

Evaluation k of a cell with E evaluations and a budget of B env steps runs at the first iteration
at or past cell env step k·B/E (the last at the last iteration), and its rows record that nominal
step, so cells with different iteration sizes share their evaluation points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchbase.api.contracts import EnvFamily, FinishedEpisode, Task, TaskVectorEnv, without_resampling
from benchbase.grid.cell import Cell
from benchbase.learner.episodes import Act, run_episodes


def episodes_per_process(cell: Cell) -> int:
    """Episodes per split that each learner process runs at an evaluation: `eval_episodes` per
    learner asked for, so a centralised learner (one process for all tasks) runs all of them."""
    return -(-cell.eval_episodes * cell.learners // cell.learner_processes)


def evaluation_due(cell_steps_before: int, cell_steps_after: int, budget: int, evaluations: int, last: bool) -> int:
    """The evaluation (1…`evaluations`) an iteration that took the cell from `cell_steps_before` to
    `cell_steps_after` env steps runs, or 0 for none. An iteration that passes several points runs
    only the latest; the last evaluation belongs to the last iteration."""
    if evaluations <= 0:
        return 0
    if last:
        return evaluations
    passed = min(evaluations, cell_steps_before * evaluations // budget)
    reached = min(evaluations, cell_steps_after * evaluations // budget)
    return reached if passed < reached < evaluations else 0


def nominal_env_step(evaluation: int, budget: int, evaluations: int) -> int:
    """Cell env step that evaluation number `evaluation` stands for: k·budget/evaluations, rounded down."""
    return evaluation * budget // evaluations


class Evaluator:
    """Greedy episodes on the learner's own tasks ("train") and on the family's held-out splits, one
    simulator per episode, the same tasks and seed at every evaluation.

    The final evaluation runs each split in an env of its own, as `bench eval` does, so that it
    reproduces it. Earlier ones run every split's simulators in one env: one policy call per step
    rather than one per split, which makes them several times cheaper (their initial states differ
    from the final one's, their tasks do not).
    """

    def __init__(self, family: EnvFamily, env_params: Any, own_tasks: Sequence[Task], cell: Cell, rank: int) -> None:
        self.params = without_resampling(env_params)
        self.family = family
        self.seed = cell.seed * 1_000_003 + 7_777
        self.rank = rank
        episodes = episodes_per_process(cell)
        self.tasks: dict[str, list[Task]] = {"train": [own_tasks[k % len(own_tasks)] for k in range(episodes)]}
        for split in family.splits:
            # The same held-out tasks for every learner and every evaluation: fair comparisons.
            self.tasks[split] = family.evaluation_tasks(self.params, split, episodes, cell.seed)
        self._split_envs: dict[str, TaskVectorEnv] = {}  # made when first needed
        self._combined_env: TaskVectorEnv | None = None

    def run(self, act: Act, final: bool = True) -> dict[str, list[FinishedEpisode]]:
        """The first episode of every simulator of every split; `final`: each split in its own env."""
        if final:
            if self._combined_env is not None:  # not needed any more
                self._combined_env.close()
                self._combined_env = None
            return {split: run_episodes(env, act, env.num_envs, self.seed) for split, env in self.split_envs().items()}
        env = self.combined_env()
        finished = run_episodes(env, act, env.num_envs, self.seed)  # ordered by simulator: split by split
        results, start = {}, 0
        for split, tasks in self.tasks.items():
            results[split] = finished[start : start + len(tasks)]
            start += len(tasks)
        return results

    def split_envs(self) -> dict[str, TaskVectorEnv]:
        if not self._split_envs:
            self._split_envs = {
                split: self.family.make_env(self.params, tasks, self.seed) for split, tasks in self.tasks.items()
            }
        return self._split_envs

    def combined_env(self) -> TaskVectorEnv:
        if self._combined_env is None:
            every_task = [task for tasks in self.tasks.values() for task in tasks]
            self._combined_env = self.family.make_env(self.params, every_task, self.seed)
        return self._combined_env

    def close(self) -> None:
        envs = list(self._split_envs.values())
        if self._combined_env is not None:
            envs.append(self._combined_env)
        for env in envs:
            env.close()


def task_parameters(task: Task) -> list[tuple[str, float]]:
    return [(key, float(value)) for key, value in task.parameters.items()]
