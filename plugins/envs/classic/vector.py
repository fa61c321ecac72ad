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
    """

    def __init__(
        self,
        dynamics: Dynamics,
        tasks: Sequence[Task],
        *,
        max_episode_steps: int,
        success: SuccessRule | None,
        seed: int,
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
        self._seed = _entropy(seed)
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
        self.reset(seed)

    @property
    def tasks(self) -> list[Task]:
        """The task each simulator is running now."""
        return list(self._tasks)

    def reset(self, seed: int) -> np.ndarray:
        key = _entropy(seed)
        self._rng = np.random.default_rng(np.random.SeedSequence([self._seed, key, _STATES_STREAM]))
        if self._sampler is not None:
            self._task_rngs = [
                np.random.default_rng(np.random.SeedSequence([self._seed, key, _RESAMPLE_STREAM, i]))
                for i in range(self.num_envs)
            ]
        self._episodes[:] = 0
        everyone = np.arange(self.num_envs)
        self._start_episodes(everyone)
        return self.dynamics.observe()

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
        dynamics = self.dynamics
        return {
            "physics": dynamics.state.copy(),
            "upright_streak": None if dynamics.upright_streak is None else dynamics.upright_streak.copy(),
            "parameters": self._parameters.copy(),
            "tasks": [(task.task_id, dict(task.parameters)) for task in self._tasks],
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "episodes": self._episodes.copy(),
            "rng": self._rng.bit_generator.state,
            "task_rngs": [rng.bit_generator.state for rng in self._task_rngs] if self._sampler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        dynamics = self.dynamics
        dynamics.state[...] = state["physics"]  # in place: the dynamics keep views of its rows
        if dynamics.upright_streak is not None:
            dynamics.upright_streak[...] = state["upright_streak"]
        self._parameters[...] = state["parameters"]
        dynamics.set_parameters(self._parameters)
        self._tasks = [Task(task_id, dict(parameters)) for task_id, parameters in state["tasks"]]
        self._returns[...] = state["returns"]
        self._lengths[...] = state["lengths"]
        self._episodes[...] = state["episodes"]
        self._rng.bit_generator.state = state["rng"]
        if self._sampler is not None:
            for rng, saved in zip(self._task_rngs, state["task_rngs"]):
                rng.bit_generator.state = saved

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
        if self._sampler is not None:
            for i in index.tolist():
                values = self._sampler(self._task_rngs[i])
                self._tasks[i] = Task(f"{self._prefix}-{i}-{self._episodes[i]}", dict(values))
                for row, name in enumerate(self.dynamics.parameter_names):
                    self._parameters[row, i] = values[name]
            self.dynamics.set_parameters(self._parameters)
        self._episodes[index] += 1
        self.dynamics.reset_states(index, self._rng)
        self._returns[index] = 0.0
        self._lengths[index] = 0
