"""GALA: gossip-based actor-learners (Assran et al. 2019), with A2C learners.

Each learner is A2C (gradient clipping 0.5). After every update it gossips: it sends its
parameters to `num_peers` out-peers and mixes what it has received, without waiting for anyone
unless a message is more than `staleness` iterations old. The core does the gossip
(`benchbase.comm`), from the same topology plugins as every other algorithm:

- peers: each learner cycles through its topology out-neighbours, `num_peers` per iteration, in
  order of ring offset r+1, r+2, … (`benchbase.comm.mixing_plan.gossip_schedule`). On `directed-ring`
  that is the original's static ring (learner r sends to r+1); on `exponential` with one peer it
  is the paper's time-varying graph r+1, r+2, r+4, …;
- mixing is push-sum: a scalar weight travels with the parameters and the learner acts with
  parameters divided by it, so the average is kept on directed and time-varying graphs, where
  the original's uniform 1/(k+1) averaging drifts;
- asynchrony: the default bound is effectively unbounded, so learners never wait for each
  other (the original's Pong example does the same); `staleness=0` makes every mix synchronous
  and the run deterministic.

Its defaults differ from Diff-A2C's in gradient clipping (why: docs/algorithms.md); the lr can
decay linearly over the learner's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbase import Algorithm, GossipParams, IterationOutput, LearnerSpec, hookimpl, param
from plugins.algorithms.common.model_size import actor_critic_bytes
from plugins.algorithms.common.schedules import anneal, remaining_fraction
from plugins.algorithms.diff_a2c import A2CLearner, A2CParams


@dataclass(frozen=True)
class GalaParams(A2CParams, GossipParams):
    staleness: int = param(
        1_000_000,
        "staleness bound K: a learner waits for an in-peer only when its newest message is more "
        "than K iterations old (default: never wait; 0 = synchronous, deterministic)",
        min=0,
    )
    lr: float = param(7e-4, "RMSprop learning rate (GALA used 1.4e-3 on Pong; see docs/algorithms.md)", min=0.0)
    max_grad_norm: float = param(0.5, "gradient-norm clipping (GALA's 0.5); 0 = none", min=0.0)
    lr_decay: bool = param(False, "decay the learning rate linearly to 0 over the learner's budget")


class GalaLearner(A2CLearner):
    """A2C whose learning rate can decay with the env steps done."""

    checkpoint_attributes = ("steps_done",)

    def __init__(self, params: GalaParams, spec: LearnerSpec) -> None:
        super().__init__(params, spec)
        self.budget = spec.env_steps_budget
        self.steps_done = 0

    def iterate(self) -> IterationOutput:
        if self.params.lr_decay and self.budget > 0:
            self.set_lr(anneal(self.params.lr, remaining_fraction(self.steps_done, self.budget)))
        output = super().iterate()
        self.steps_done += output.env_steps
        return output


class Gala(Algorithm):
    name = "gala-a2c"
    aliases = ("gala",)
    description = "A2C learners that gossip with a few peers per update, asynchronously, by push-sum (GALA)"
    Params = GalaParams
    consensus = "gossip"
    observation_kinds = frozenset({"vector", "image"})  # the Nature CNN for frames
    vector_only_params = frozenset({"hidden"})  # frames go through the fixed Nature CNN

    def steps_per_simulator(self, params: GalaParams) -> int:
        return params.n_steps

    def model_bytes(self, params: GalaParams, observation_space, action_space) -> int:
        return actor_critic_bytes(observation_space, action_space, params.hidden)

    def make_learner(self, params: GalaParams, spec: LearnerSpec) -> GalaLearner:
        return GalaLearner(params, spec)


@hookimpl
def register_algorithms(register) -> None:
    register(Gala())
