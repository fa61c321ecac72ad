"""Running a policy for a given number of whole episodes (evaluations in a run and `bench eval`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchbase.api.contracts import FinishedEpisode, TaskVectorEnv

MAX_EVAL_STEPS = 1_000_000  # guards against an env that never ends an episode
Act = Callable[[np.ndarray], np.ndarray]


def run_episodes(
    env: TaskVectorEnv, act: Act, episodes: int, seed: int, *, record: Callable[[np.ndarray], None] | None = None
) -> list[FinishedEpisode]:
    """Exactly `episodes` finished episodes from `env` reset with `seed`, ordered by simulator.

    Simulator i contributes its first q_i episodes, the quotas fixed in advance (`episodes`
    spread evenly, lower simulators first); fixing them, rather than keeping whichever episodes
    end first, keeps short episodes from being over-represented. With one simulator per episode
    (what `evaluate` builds) this is the run's `Evaluator`. `record` receives simulator 0's frames
    (`env.render(0)`) until its quota is done."""
    simulators = env.num_envs
    quota = [episodes // simulators + (1 if i < episodes % simulators else 0) for i in range(simulators)]
    found: list[list[FinishedEpisode]] = [[] for _ in range(simulators)]
    remaining = episodes
    observations = env.reset(seed=seed)
    for _ in range(MAX_EVAL_STEPS):
        if record is not None and len(found[0]) < quota[0]:
            record(env.render(0))
        step = env.step(act(observations))
        for episode in step.finished:
            if len(found[episode.simulator]) < quota[episode.simulator]:
                found[episode.simulator].append(episode)
                remaining -= 1
        if remaining == 0:
            return [episode for episodes_of_one in found for episode in episodes_of_one]
        observations = step.observations
    raise RuntimeError(f"{episodes} evaluation episodes did not finish within {MAX_EVAL_STEPS:,} steps")
