"""`ClassicVectorEnv`: a `TaskVectorEnv` over vectorised classic-control `Dynamics`.

It adds what Gymnasium's wrappers add around one env, for P simulators at once: raw episode
returns and lengths, truncation at a time limit, same-step autoreset (the last observation of an
ended episode goes to `final_observations`), `FinishedEpisode`s with a success verdict, and,
for domain randomisation, a fresh task per simulator at every reset.

Flags follow Gymnasium's TimeLimit: `truncated` is set when the step count reaches the limit,
even if that same step also terminated (learners bootstrap on `truncated & ~terminated`).
`final_observations` is None on steps where no episode ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from benchbase import FinishedEpisode, StepResult, Task
from plugins.envs.classic.dynamics import Dynamics


class EpisodeEnds(NamedTuple):
    """What a success rule sees about the episodes that ended in one step (one row each)."""

    returns: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    upright_streak: np.ndarray | None  # Pendulum only: consecutive upright steps at the end


#: Vectorised success verdict: a bool array over the ended episodes, or None when undefined.
SuccessRule = Callable[[EpisodeEnds], np.ndarray | None]
#: Draws one task's parameters from a generator (domain randomisation).
TaskSampler = Callable[[np.random.Generator], Mapping[str, float]]

_STATES_STREAM = 0
_RESAMPLE_STREAM = 1


def _entropy(value: int) -> int:
    """SeedSequence wants non-negative integers; map any int onto one."""
    return int(value) & 0xFFFF_FFFF_FFFF_FFFF


class ClassicVectorEnv:
    """P simulators of one classic-control environment, each running its own task.

    Every random draw derives from (`seed` given at construction, seed given to `reset`): the
    initial states from one generator, the resampled tasks from one generator per simulator.
    With a `sampler`, every reset (the first one included) draws the simulator's task, and its
    `FinishedEpisode` reports the task it ran; without one, `tasks` stay fixed.

    Given a list of G seeds, the simulators form G equal groups, each drawing from its own
    generators exactly as an env of its own with that seed would (`members`, `reset_group`): a
    learner block's K learners then step in one call (an `EnvBlock`), the same episodes as K
    envs, and each learner resets and checkpoints its own group.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        tasks: Sequence[Task],
        *,
        max_episode_steps: int,
        success: SuccessRule | None,
        seed: int | Sequence[int],
        sampler: TaskSampler | None = None,
        resampled_task_prefix: str = "resampled",
    ) -> None:
        if len(tasks) != dynamics.num_envs:
            raise ValueError(f"{len(tasks)} tasks for {dynamics.num_envs} simulators")
        self.dynamics = dynamics
        self.num_envs = dynamics.num_envs
        self.observation_space = dynamics.observation_space
        self.action_space = dynamics.action_space
        self.max_episode_steps = int(max_episode_steps)
        self._tasks = list(tasks)
        self._success = success
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if self.num_envs % len(seeds):
            raise ValueError(f"{self.num_envs} simulators do not split into {len(seeds)} equal groups")
        self._seeds = [_entropy(value) for value in seeds]
        self._group_size = self.num_envs // len(seeds)
        self._rngs: list[np.random.Generator] = [np.random.default_rng(0)] * len(seeds)  # set by reset
        self._task_rngs: list[np.random.Generator | None] = [None] * self.num_envs  # with a sampler
        self._sampler = sampler
        self._prefix = resampled_task_prefix
        self._parameters = np.array(
            [
                [float(task.parameters.get(name, default)) for task in self._tasks]
                for name, default in zip(dynamics.parameter_names, dynamics.defaults)
            ]
        ).reshape(len(dynamics.parameter_names), self.num_envs)
        dynamics.set_parameters(self._parameters)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        # Array operands: a Python scalar costs a conversion per ufunc call at small P.
        self._one = np.ones(self.num_envs, dtype=np.int64)
        self._limit = np.full(self.num_envs, self.max_episode_steps, dtype=np.int64)
        self._episodes = np.zeros(self.num_envs, dtype=np.int64)  # per simulator, names resampled tasks
        #: Each group's simulators as an env of their own (`EnvBlock.members`).
        self.members = [ClassicEnvMember(self, group) for group in range(len(seeds))]
        for group in range(len(seeds)):
            self.reset_group(group, seeds[group])

    @property
    def tasks(self) -> list[Task]:
        """The task each simulator is running now."""
        return list(self._tasks)

    def reset(self, seed: int) -> np.ndarray:
        for group in range(len(self._seeds)):
            self.reset_group(group, seed)
        return self.dynamics.observe()

    def reset_group(self, group: int, seed: int) -> np.ndarray:
        """Start every simulator of `group` afresh, its draws derived from (its construction seed,
        `seed`) as those of an env of its own; the group's observations."""
        key = _entropy(seed)
        start, size = group * self._group_size, self._group_size
        self._rngs[group] = np.random.default_rng(np.random.SeedSequence([self._seeds[group], key, _STATES_STREAM]))
        if self._sampler is not None:
            rngs = [
                np.random.default_rng(np.random.SeedSequence([self._seeds[group], key, _RESAMPLE_STREAM, i]))
                for i in range(size)
            ]
            self._task_rngs[start : start + size] = rngs
        self._episodes[start : start + size] = 0
        self._start_episodes(np.arange(start, start + size))
        return self.dynamics.observe()[start : start + size]

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if actions.ndim != 1:  # [P, 1] from a learner: one action per simulator
            actions = actions.reshape(self.num_envs)
        rewards, terminated = self.dynamics.step(actions)
        self._returns += rewards
        self._lengths += self._one
        truncated = self._lengths >= self._limit
        done = terminated | truncated
        observations = self.dynamics.observe()
        if not np.count_nonzero(done):
            return StepResult(observations, rewards, terminated, truncated, None, [])
        ended = np.flatnonzero(done)
        finished = self._finish(ended, terminated)
        self._start_episodes(ended)
        return StepResult(self.dynamics.observe(), rewards, terminated, truncated, observations, finished)

    def close(self) -> None:
        pass

    def render(self, simulator: int) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `simulator`'s current state (for `bench eval --video`)."""
        from plugins.envs.classic.render import draw  # Pillow only when someone records

        names = self.dynamics.parameter_names
        return draw(self.dynamics, simulator, dict(zip(names, self._parameters[:, simulator].tolist())))

    # -- checkpoints: every simulator mid-episode, so a resumed run continues exactly ---------------

    def state_dict(self) -> dict:
        if len(self._seeds) != 1:
            raise TypeError("an env of several groups is saved group by group (members[k].state_dict())")
        return self.group_state_dict(0)

    def load_state_dict(self, state: dict) -> None:
        if len(self._seeds) != 1:
            raise TypeError("an env of several groups is loaded group by group (members[k].load_state_dict())")
        self.load_group_state_dict(0, state)

    def group_state_dict(self, group: int) -> dict:
        """`group`'s simulators as an env of their own saves them (either loads the other's)."""
        own = slice(group * self._group_size, (group + 1) * self._group_size)
        dynamics = self.dynamics
        return {
            "physics": dynamics.state[:, own].copy(),
            "upright_streak": None if dynamics.upright_streak is None else dynamics.upright_streak[own].copy(),
            "parameters": self._parameters[:, own].copy(),
            "tasks": [(task.task_id, dict(task.parameters)) for task in self._tasks[own]],
            "returns": self._returns[own].copy(),
            "lengths": self._lengths[own].copy(),
            "episodes": self._episodes[own].copy(),
            "rng": self._rngs[group].bit_generator.state,
            "task_rngs": [rng.bit_generator.state for rng in self._task_rngs[own]]  # type: ignore[union-attr]
            if self._sampler is not None
            else None,
        }

    def load_group_state_dict(self, group: int, state: dict) -> None:
        own = slice(group * self._group_size, (group + 1) * self._group_size)
        dynamics = self.dynamics
        dynamics.state[:, own] = state["physics"]  # in place: the dynamics keep views of its rows
        if dynamics.upright_streak is not None:
            dynamics.upright_streak[own] = state["upright_streak"]
        self._parameters[:, own] = state["parameters"]
        dynamics.set_parameters(self._parameters)
        self._tasks[own] = [Task(task_id, dict(parameters)) for task_id, parameters in state["tasks"]]
        self._returns[own] = state["returns"]
        self._lengths[own] = state["lengths"]
        self._episodes[own] = state["episodes"]
        self._rngs[group].bit_generator.state = state["rng"]
        if self._sampler is not None:
            for rng, saved in zip(self._task_rngs[own], state["task_rngs"]):
                rng.bit_generator.state = saved  # type: ignore[union-attr]

    # -- episodes -----------------------------------------------------------------------------

    def _finish(self, ended: np.ndarray, terminated: np.ndarray) -> list[FinishedEpisode]:
        returns, lengths = self._returns[ended], self._lengths[ended]
        verdicts = None
        if self._success is not None:
            streak = self.dynamics.upright_streak
            ends = EpisodeEnds(returns, lengths, terminated[ended], None if streak is None else streak[ended])
            verdicts = self._success(ends)
        return [
            FinishedEpisode(
                simulator=int(i),
                episode_return=float(returns[k]),
                episode_length=int(lengths[k]),
                success=None if verdicts is None else bool(verdicts[k]),
                task=self._tasks[i],
            )
            for k, i in enumerate(ended.tolist())
        ]

    def _start_episodes(self, index: np.ndarray) -> None:
        size = self._group_size
        if self._sampler is not None:
            for i in index.tolist():
                values = self._sampler(self._task_rngs[i])  # type: ignore[arg-type]
                # Named by the simulator's index in its group: as an env of its own names it.
                self._tasks[i] = Task(f"{self._prefix}-{i % size}-{self._episodes[i]}", dict(values))
                for row, name in enumerate(self.dynamics.parameter_names):
                    self._parameters[row, i] = values[name]
            self.dynamics.set_parameters(self._parameters)
        self._episodes[index] += 1
        if len(self._rngs) == 1:
            self.dynamics.reset_states(index, self._rngs[0])
        else:  # each group's initial states from its own generator, in its simulators' order
            groups = index // size
            for group in np.unique(groups).tolist():
                self.dynamics.reset_states(index[groups == group], self._rngs[group])
        self._returns[index] = 0.0
        self._lengths[index] = 0


class ClassicEnvMember:
    """Group k of a `ClassicVectorEnv` as an env of its own: learner k's simulators in a learner
    block. It resets, saves and loads them (in the format of an env of its own, so a learner's
    checkpoint moves between layouts) and draws them; they step with the whole env (`step`)."""

    def __init__(self, env: ClassicVectorEnv, group: int) -> None:
        self.env, self.group = env, group
        self.num_envs = env._group_size
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self.max_episode_steps = env.max_episode_steps
        self._start = group * self.num_envs

    @property
    def tasks(self) -> list[Task]:
        return self.env.tasks[self._start : self._start + self.num_envs]

    def reset(self, seed: int) -> np.ndarray:
        return self.env.reset_group(self.group, seed)

    def step(self, actions: np.ndarray) -> StepResult:
        raise RuntimeError("a block member's simulators step with the whole block (ClassicVectorEnv.step)")

    def render(self, simulator: int) -> np.ndarray:
        return self.env.render(self._start + simulator)

    def state_dict(self) -> dict:
        return self.env.group_state_dict(self.group)

    def load_state_dict(self, state: dict) -> None:
        self.env.load_group_state_dict(self.group, state)

    def close(self) -> None:
        pass
