"""Any registered Gymnasium id as a single-task env family (resolved on demand, not registered).

`resolve_env_family` answers names no plugin registered: when the name is in Gymnasium's
registry the family has one task (`task_id` = the id, no parameters), no evaluation splits,
and success = the spec's `reward_threshold` where it has one. Envs run through
`benchbase.gym_vector.GymnasiumTaskVectorEnv`. Registered names (e.g. the fast `CartPole-v1` of
`classic_control`) are looked up first, so they take precedence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym

from benchbase.api.contracts import EnvFamily, Task, TaskVectorEnv
from benchbase.api.hookspecs import hookimpl
from benchbase.errors import UserError, unknown_name
from plugins.envs.gymnasium.vector import GymnasiumTaskVectorEnv, SuccessFn


class GymnasiumIdFamily(EnvFamily):
    """One Gymnasium id as one task (subclassed per id: `name` is a class attribute)."""

    splits: ClassVar[tuple[str, ...]] = ()
    reward_threshold: ClassVar[float | None] = None

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        return [Task(self.name, {}) for _ in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        raise unknown_name(f"evaluation split of {self.name}", split, self.splits)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        env_id = self.name
        env_fns = [lambda: gym.make(env_id) for _ in tasks]
        try:
            return GymnasiumTaskVectorEnv(env_fns, tasks, self._success_fn())
        except gym.error.DependencyNotInstalled as error:  # e.g. Box2D or MuJoCo not installed
            raise UserError(f"env family {env_id}: {error}") from error

    def _success_fn(self) -> SuccessFn | None:
        threshold = self.reward_threshold
        if threshold is None:
            return None
        return lambda episode_return, episode_length, terminated: episode_return >= threshold


def gymnasium_id_family(env_id: str) -> GymnasiumIdFamily:
    """The family of a registered Gymnasium id."""
    threshold = gym.envs.registry[env_id].reward_threshold
    cls = type(
        "GymnasiumIdFamily",
        (GymnasiumIdFamily,),
        {
            "name": env_id,
            "description": f"Gymnasium {env_id} as a single task",
            "success_criterion": "" if threshold is None else f"episode return ≥ {threshold:g}",
            "reward_threshold": None if threshold is None else float(threshold),
            "__module__": __name__,
        },
    )
    return cls()


@hookimpl
def resolve_env_family(name: str) -> EnvFamily | None:
    if name in gym.envs.registry:
        return gymnasium_id_family(name)
    return None
