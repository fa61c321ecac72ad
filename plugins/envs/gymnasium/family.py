"""Any registered Gymnasium id as a single-task env family (resolved on demand, not registered).

`resolve_env_family` answers names no plugin registered: when the name is in Gymnasium's
registry the family has one task (`task_id` = the id, no parameters), no evaluation splits,
and success = the spec's `reward_threshold` where it has one. Envs run through
`plugins.envs.gymnasium.vector.GymnasiumTaskVectorEnv`. Registered names (e.g. the fast
`CartPole-v1` of the classic-control plugin) are looked up first, so they take precedence, and
this resolver runs last: a plugin that knows a kind of Gymnasium env better (ALE, MuJoCo) answers
its ids first, e.g. with a `GymnasiumIdFamily` that can draw them (`frames`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from benchbase import EnvFamily, Task, TaskVectorEnv, UserError, hookimpl, unknown_name
from plugins.envs.gymnasium.vector import GymnasiumFrames, GymnasiumTaskVectorEnv, SuccessFn


class GymnasiumIdFamily(EnvFamily):
    """One registered Gymnasium id as one task. `frames` makes what draws its envs (one per vector
    env); without it the envs cannot render."""

    def __init__(self, env_id: str, frames: Callable[[], GymnasiumFrames] | None = None) -> None:
        threshold = gym.envs.registry[env_id].reward_threshold
        self.name = env_id
        self.description = f"Gymnasium {env_id} as a single task"
        self.success_criterion = "" if threshold is None else f"episode return ≥ {threshold:g}"
        self.reward_threshold = None if threshold is None else float(threshold)
        self.frames = frames

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        return [Task(self.name, {}) for _ in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        raise unknown_name(f"evaluation split of {self.name}", split, self.splits)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        env_id = self.name
        env_fns = [lambda: gym.make(env_id) for _ in tasks]
        frames = self.frames() if self.frames is not None else None
        try:
            return GymnasiumTaskVectorEnv(env_fns, tasks, self._success_fn(), frames=frames)
        except gym.error.DependencyNotInstalled as error:  # e.g. Box2D or MuJoCo not installed
            raise UserError(f"env family {env_id}: {error}") from error

    def _success_fn(self) -> SuccessFn | None:
        threshold = self.reward_threshold
        if threshold is None:
            return None
        return lambda episode_return, episode_length, terminated: episode_return >= threshold


def registered_entry_point(name: str) -> str | None:
    """The entry point ("module:Class") of a registered Gymnasium id, or None for other names
    (and for ids registered with a callable): how a plugin recognises the ids of its kind."""
    spec = gym.envs.registry.get(name)
    return spec.entry_point if spec is not None and isinstance(spec.entry_point, str) else None


@hookimpl(trylast=True)
def resolve_env_family(name: str) -> EnvFamily | None:
    if name in gym.envs.registry:
        return GymnasiumIdFamily(name)
    return None
