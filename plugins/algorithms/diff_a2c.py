"""Diff-A2C: A2C learners combined by diffusion (Diff-DAC, Valcarcel Macua et al. 2021).

Adapt-then-combine: each learner takes one A2C gradient step on its own rollout (adapt), then
the core replaces its parameters by the weighted average of its closed neighbourhood (combine),
θ_i ← Σ_j c_ij θ_j. Every parameter is mixed, the Gaussian log-std included (the original
forgot it), and so are the observation-normalisation statistics by default (`normaliser`);
optimiser state and reward statistics stay local to the learner.

The A2C loss (Mnih et al. 2016) on a rollout of T steps from P simulators, with n-step returns
R (or GAE(λ) targets) and advantages A = R − V(s):
    L = c_v·E[A²] − E[A·log π(a|s)] − c_e·E[H[π(·|s)]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from benchbase import Algorithm, ConsensusParams, EnvBlock, LearnerSpec, hookimpl, lazy_import, param
from plugins.algorithms.common import distributions
from plugins.algorithms.common.block import OnPolicyBlock, block_of
from plugins.algorithms.common.model_size import actor_critic_bytes
from plugins.algorithms.common.normalisation import NormaliserMode
from plugins.algorithms.common.on_policy import BlockRollout, OnPolicyLearner, Rollout
from plugins.algorithms.common.returns import discounted_returns, gae_advantages

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass(frozen=True)
class A2CParams(ConsensusParams):
    lr: float = param(7e-4, "RMSprop learning rate", min=0.0)
    rmsprop_eps: float = param(1e-5, "RMSprop epsilon", min=0.0)
    rmsprop_alpha: float = param(0.99, "RMSprop smoothing constant", min=0.0, max=1.0)
    gamma: float = param(0.99, "discount factor", min=0.0, max=1.0)
    n_steps: int = param(5, "rollout length T per simulator between updates", min=1)
    entropy_coef: float = param(0.01, "entropy bonus weight c_e", min=0.0)
    value_coef: float = param(0.5, "value loss weight c_v", min=0.0)
    max_grad_norm: float = param(0.0, "gradient-norm clipping; 0 = none (Diff-DAC), GALA uses 0.5", min=0.0)
    gae_lambda: float | None = param(None, "GAE(λ) advantages when set (e.g. 0.95); n-step returns otherwise")
    hidden: int = param(64, "units in each of the two hidden layers", min=1)
    normaliser: NormaliserMode = param(
        "mixed",
        "observation normalisation (clip ±10): mixed = statistics combined with the neighbours' like the "
        "parameters, count-weighted; local = each learner's own; off = raw observations",
    )
    normalise_rewards: bool = param(True, "scale rewards by the running std of the discounted return")


class A2CLosses(NamedTuple):
    """The A2C loss and its parts, each a mean over the last dimension (one learner's samples)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor

    def metrics(self, grad_norm: float) -> dict[str, float]:
        return {
            "loss": self.loss.item(),
            "policy_loss": self.policy_loss.item(),
            "value_loss": self.value_loss.item(),
            "entropy": self.entropy.item(),
            "grad_norm": grad_norm,
        }


def a2c_targets(p: A2CParams, rollout: Rollout, values: np.ndarray, bootstrap: np.ndarray) -> np.ndarray:
    """The critic's targets [T·P] for a rollout: n-step returns, or GAE(λ) advantages + V(s)
    (`values` [T·P] and `bootstrap` [P]: the critic's current estimates)."""
    steps, envs = rollout.rewards.shape
    if p.gae_lambda is None:
        returns = discounted_returns(rollout.rewards, rollout.not_done, bootstrap, p.gamma)
    else:
        old_values = values.reshape(steps, envs)
        advantages = gae_advantages(rollout.rewards, old_values, rollout.not_done, bootstrap, p.gamma, p.gae_lambda)
        returns = advantages + old_values
    return returns.reshape(-1)


def a2c_losses(
    p: A2CParams,
    actor_out: torch.Tensor,
    log_std: torch.Tensor | None,
    actions: torch.Tensor,
    values: torch.Tensor,
    targets: torch.Tensor,
) -> A2CLosses:
    """L = c_v·E[A²] − E[A·log π(a|s)] − c_e·E[H], the means over the last dimension: one
    learner's [N] samples, or a block's [K, N]."""
    advantages = targets - values
    log_prob, entropy = distributions.log_prob_entropy(actor_out, log_std, actions)
    value_loss = advantages.pow(2).mean(-1)
    policy_loss = -(advantages.detach() * log_prob).mean(-1)
    entropy_mean = entropy.mean(-1)
    loss = p.value_coef * value_loss + policy_loss - p.entropy_coef * entropy_mean
    return A2CLosses(loss, policy_loss, value_loss, entropy_mean)


class A2CLearner(OnPolicyLearner):
    def __init__(self, params: A2CParams, spec: LearnerSpec) -> None:
        super().__init__(params, spec, n_steps=params.n_steps)
        from plugins.algorithms.common.optimisers import RMSprop  # torch's, with a lean step

        self.optimizer = RMSprop(
            [self.flat.parameter], lr=params.lr, eps=params.rmsprop_eps, alpha=params.rmsprop_alpha
        )

    def update(self, rollout: Rollout) -> dict[str, float]:
        p = self.params
        observations, actions, last = rollout.tensors(self.device)
        # One pass over the rollout's states and the bootstrap states s_T.
        actor_out, values_all = self.model.rollout_outputs(observations, last)
        size = rollout.rewards.size
        values = values_all[:size]
        estimates = values_all.detach().cpu().numpy()
        targets = a2c_targets(p, rollout, estimates[:size], estimates[size:])
        losses = a2c_losses(
            p, actor_out, self.model.action_log_std(), actions, values, torch.from_numpy(targets).to(self.device)
        )
        return losses.metrics(self.optimizer_step(losses.loss, p.max_grad_norm))


class A2CBlock(OnPolicyBlock):
    """K Diff-A2C learners in one process: the same update with a leading learner dimension."""

    def __init__(self, params: A2CParams, learners: list[A2CLearner], envs: EnvBlock | None = None) -> None:
        super().__init__(learners, envs)
        self.params = params
        from plugins.algorithms.common.optimisers import RMSprop  # torch's, with a lean step

        self.optimizer = RMSprop([self.parameter], lr=params.lr, eps=params.rmsprop_eps, alpha=params.rmsprop_alpha)

    def update(self, rollout: BlockRollout) -> list[dict[str, float]]:
        p = self.params
        observations, actions, last = rollout.tensors(self.device)
        actor_out, values_all = self.network.rollout_outputs(observations, last)
        size = observations.shape[1]
        estimates = values_all.detach().cpu().numpy()
        # Targets per simulator: every learner's in one call on the K·P simulators.
        values = rollout.by_step(estimates[:, :size]).reshape(-1)
        targets = rollout.by_learner(a2c_targets(p, rollout.merged(), values, estimates[:, size:].reshape(-1)))
        log_std = self.network.action_log_std()
        losses = a2c_losses(
            p, actor_out, log_std, actions, values_all[:, :size], torch.from_numpy(targets).to(self.device)
        )
        norms = self.optimizer_step(losses.loss.sum(), p.max_grad_norm)
        per_learner = torch.stack(list(losses), dim=1).detach().cpu().tolist()  # [K, losses]
        return [dict(zip(A2CLosses._fields, row), grad_norm=norm) for row, norm in zip(per_learner, norms)]


class DiffA2C(Algorithm):
    name = "diff-a2c"
    description = "A2C learners combined with their neighbours after every update (Diff-DAC diffusion)"
    Params = A2CParams
    consensus = "diffusion"
    observation_kinds = frozenset({"vector", "image"})  # the Nature CNN for frames
    vector_only_params = frozenset({"hidden"})  # frames go through the fixed Nature CNN
    block_observation_kinds = frozenset({"vector", "image"})  # both networks have a stacked form (common/stacked.py)

    def steps_per_simulator(self, params: A2CParams) -> int:
        return params.n_steps

    def model_bytes(self, params: A2CParams, observation_space, action_space) -> int:
        return actor_critic_bytes(observation_space, action_space, params.hidden)

    def make_learner(self, params: A2CParams, spec: LearnerSpec) -> A2CLearner:
        return A2CLearner(params, spec)

    def make_learner_block(
        self, params: A2CParams, specs: list[LearnerSpec], envs: EnvBlock | None = None
    ) -> A2CBlock | None:
        return block_of(A2CBlock, A2CLearner, params, specs, envs)


@hookimpl
def register_algorithms(register) -> None:
    register(DiffA2C())
