"""Straggler algorithms for `benchmarks/straggler.py`: one learner of a cell runs slower.

A local plugin, loaded by import path (no packaging, no change to the core)::

    BENCHBASE_EXTRA_PLUGINS=benchmarks.straggler_plugin PYTHONPATH=. bench run \\
        -a slowed-gala-a2c:slowdown=3 -t directed-ring -e CartPole-v1 ...

(`PYTHONPATH=.` from the repository root: the `bench` script does not put the working
directory on the import path; `python -m benchbase` does.)

It registers `slowed-gala-a2c` and `slowed-diff-a2c`. Their parameters are the wrapped
algorithm's plus `slow_learner`, `slowdown`, `max_steps_per_s` and `spin`; their learner is the
wrapped algorithm's, and only the learner of rank `slow_learner` is slowed, in one of two ways:

- relative (`slowdown`): each `iterate()` ends with a pause of (slowdown − 1) × the time the
  learner worked since the previous `iterate()` returned — this rollout and update, and the
  core's mixing and bookkeeping after the previous one (as much again as the update for these
  small networks: timing `iterate()` alone slowed the learner by 1.3×, not 3×). The learner runs
  at 1/slowdown of its own speed *at the time*; on a machine with fewer cores than learners that
  speed rises while it pauses (it competes less for its core), so with slowdown 3 it ended up at
  0.6–0.7 of the others' speed, not a third (4 learners, 2 cores);
- absolute (`max_steps_per_s` > 0, which overrides `slowdown`): the learner pauses until its
  env steps since its first iteration are no more than max_steps_per_s per second. The benchmark
  sets it to the unslowed learners' baseline speed / slowdown: a third of the others' speed,
  whatever the contention.

A pause sleeps by default; `spin=true` busy-waits instead, so the straggler keeps its share of
the CPU (on a machine with fewer cores than learners a sleeping straggler hands its core to the
others, which then run faster than without it). Mixing is the core's and is not slowed: a
synchronous neighbour waits for the straggler there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.api.contracts import Algorithm, IterationOutput, LearnerSpec
from benchbase.api.hookspecs import hookimpl
from benchbase.api.params import param
from plugins.algorithms.diff_a2c import A2CParams, DiffA2C
from plugins.algorithms.gala import Gala, GalaParams


@dataclass(frozen=True)
class _Straggler:
    """The fields a slowed algorithm adds to the wrapped algorithm's parameters."""

    slow_learner: int = param(0, "rank of the learner that is slowed down", min=0)
    slowdown: float = param(1.0, "that learner runs at 1/slowdown of its own speed (1 = not slowed)", min=1.0)
    max_steps_per_s: float = param(
        0.0, "when > 0, instead pace that learner to at most this many env steps per second", min=0.0
    )
    spin: bool = param(False, "busy-wait instead of sleeping, so the straggler keeps its share of the CPU")


@dataclass(frozen=True)
class SlowedGalaParams(_Straggler, GalaParams):
    pass


@dataclass(frozen=True)
class SlowedA2CParams(_Straggler, A2CParams):
    pass


class SlowedLearner:
    """The wrapped learner; on the slowed rank every iteration ends with a pause."""

    def __init__(self, inner: Any, params: Any, spec: LearnerSpec) -> None:
        self.inner = inner
        slowed = spec.rank == params.slow_learner
        self.extra = params.slowdown - 1.0 if slowed else 0.0
        self.rate = params.max_steps_per_s if slowed else 0.0
        self.spin = params.spin
        self.started_at: float | None = None  # when the first iterate() started
        self.returned_at: float | None = None  # when the previous iterate() returned
        self.steps = 0

    def iterate(self) -> IterationOutput:
        if self.extra <= 0.0 and self.rate <= 0.0:
            return self.inner.iterate()
        start = time.perf_counter()
        if self.started_at is None:
            self.started_at = start
        output = self.inner.iterate()
        now = time.perf_counter()
        self.steps += output.env_steps
        if self.rate > 0.0:
            delay = max(0.0, self.started_at + self.steps / self.rate - now)
        else:
            # Work since the previous iteration returned: the core's mix and bookkeeping, then ours.
            delay = self.extra * (now - (self.returned_at if self.returned_at is not None else start))
        if self.spin:
            while time.perf_counter() < now + delay:
                pass
        else:
            time.sleep(delay)
        self.returned_at = time.perf_counter()
        output.metrics["straggler_delay_s"] = delay
        return output

    def parameters_buffer(self) -> Any:
        return self.inner.parameters_buffer()

    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        return self.inner.act_greedy(observations)

    def __getattr__(self, name: str) -> Any:  # anything else the core may ask of a learner
        return getattr(self.inner, name)


def slowed(wrapped: Algorithm, params_class: type) -> Algorithm:
    """An algorithm called `slowed-<name>` that builds `wrapped`'s learner inside a SlowedLearner."""

    class Slowed(Algorithm):
        name = f"slowed-{wrapped.name}"
        description = f"{wrapped.name} with one learner slowed down (straggler benchmark)"
        Params = params_class
        consensus = wrapped.consensus
        action_spaces = wrapped.action_spaces
        observation_kinds = wrapped.observation_kinds
        uses_replay = wrapped.uses_replay

        def make_learner(self, params: Any, spec: LearnerSpec) -> SlowedLearner:
            return SlowedLearner(wrapped.make_learner(params, spec), params, spec)

    Slowed.__name__ = Slowed.__qualname__ = f"Slowed{type(wrapped).__name__}"
    return Slowed()


@hookimpl
def register_algorithms(register) -> None:
    register(slowed(Gala(), SlowedGalaParams))
    register(slowed(DiffA2C(), SlowedA2CParams))
