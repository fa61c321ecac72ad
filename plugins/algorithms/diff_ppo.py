"""Diff-PPO: PPO learners (Schulman et al. 2017) combined by diffusion (the Diff-DAC framework,
Valcarcel Macua et al. 2021, with a PPO learner).

Adapt-then-combine, once per rollout: each learner collects T steps from each of its P
simulators, runs PPO on them (adapt), and only after its last epoch does the core replace its
parameters by the weighted average of its closed neighbourhood, θ_i ← Σ_j c_ij θ_j (combine).
Every parameter is mixed, the Gaussian log-std included, and so are the observation-normalisation
statistics by default (`normaliser`); Adam's state and the reward statistics stay local.

The local PPO update, read top to bottom in `PPOLearner.update`:
1. once per rollout, before anything moves: the old log-probabilities log π_old(a|s), the old
   values V_old(s), GAE(λ) advantages A and value targets R = A + V_old;
2. `n_epochs` passes over the rollout in shuffled minibatches of `minibatch_size`, each taking
   one Adam step on L = −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)] + c_v·E[(V − R)²] − c_e·E[H[π]],
   ρ = π(a|s)/π_old(a|s), with A normalised per minibatch and the gradient norm clipped.
The lr and ε are annealed linearly to 0 over the learner's env-step budget (nothing is annealed
without one). How the defaults were chosen: docs/algorithms.md.

`PPOBlock` runs the same update for the K learners of a learner block at once (MLP models on
vector observations): every tensor gains a leading learner dimension, each learner keeps its own
shuffles, advantage normalisation and rows of Adam's state (common/block.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from benchbase import Algorithm, ConsensusParams, EnvBlock, LearnerSpec, hookimpl, lazy_import, param
from plugins.algorithms.common import distributions
from plugins.algorithms.common.block import OnPolicyBlock, block_of
from plugins.algorithms.common.model_size import actor_critic_bytes
from plugins.algorithms.common.normalisation import NormaliserMode
from plugins.algorithms.common.on_policy import BlockRollout, OnPolicyLearner, Rollout
from plugins.algorithms.common.returns import gae_advantages
from plugins.algorithms.common.schedules import anneal, remaining_fraction

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass(frozen=True)
class PPOParams(ConsensusParams):
    lr: float = param(1e-3, "Adam learning rate (start value when annealed)", min=0.0)
    anneal_lr: bool = param(True, "anneal the lr linearly to 0 over the learner's env-step budget")
    adam_eps: float = param(1e-5, "Adam epsilon", min=0.0)
    gamma: float = param(0.99, "discount factor", min=0.0, max=1.0)
    gae_lambda: float = param(0.9, "GAE(λ) for the advantages", min=0.0, max=1.0)
    n_steps: int = param(32, "rollout length T per simulator between combines", min=1)
    n_epochs: int = param(20, "passes over each rollout", min=1)
    minibatch_size: int = param(256, "samples per gradient step (capped at the rollout's T·P)", min=1)
    clip_range: float = param(0.2, "PPO clipping ε of the probability ratio (start value when annealed)", min=0.0)
    anneal_clip_range: bool = param(True, "anneal ε linearly to 0 over the learner's env-step budget")
    clip_value_loss: bool = param(False, "clip the value update to ±ε around the old values (PPO2's option)")
    normalise_advantages: bool = param(True, "normalise advantages to zero mean, unit std per minibatch")
    entropy_coef: float = param(0.0, "entropy bonus weight c_e", min=0.0)
    value_coef: float = param(0.5, "value loss weight c_v", min=0.0)
    max_grad_norm: float = param(0.5, "gradient-norm clipping; 0 = none", min=0.0)
    hidden: int = param(64, "units in each of the two hidden layers", min=1)
    normaliser: NormaliserMode = param(
        "mixed",
        "observation normalisation (clip ±10): mixed = statistics combined with the neighbours' like the "
        "parameters, count-weighted; local = each learner's own; off = raw observations",
    )
    normalise_rewards: bool = param(True, "scale rewards by the running std of the discounted return")


class PPOLosses(NamedTuple):
    """PPO's loss and its parts, each a mean over the last dimension (one learner's minibatch)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_losses(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    *,
    clip_range: float,
    clip_value_loss: bool,
    value_coef: float,
    entropy_coef: float,
) -> PPOLosses:
    """PPO's loss on one minibatch (advantages already normalised if wanted), the means over the
    last dimension: one learner's inputs [B] give scalars, a block's [K, B] give [K]."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    # Pessimistic bound: the clipped term removes the incentive to move ρ beyond [1−ε, 1+ε].
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages)
    policy_loss = -surrogate.mean(-1)

    value_error = (values - returns).pow(2)
    if clip_value_loss:
        clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
        value_error = torch.max(value_error, (clipped_values - returns).pow(2))
    value_loss = value_error.mean(-1)

    entropy_mean = entropy.mean(-1)
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy_mean
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(-1)  # KL(π_old‖π) estimator, ≥ 0, low variance
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean(-1)
    return PPOLosses(loss, policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction)


def annealed(p: PPOParams, updates_done: int, total_updates: int) -> tuple[float, float]:
    """The lr and clip range ε of the next update: linear to 0 over the budget's updates when annealed."""
    remaining = remaining_fraction(updates_done, total_updates)  # 1 at the first update
    lr = anneal(p.lr, remaining) if p.anneal_lr else p.lr
    clip_range = anneal(p.clip_range, remaining) if p.anneal_clip_range else p.clip_range
    return lr, clip_range


def explained_variance(returns: np.ndarray, old_values: np.ndarray) -> float:
    """1 − Var[R − V_old] / Var[R]: how much of the targets the old values explained (0 if Var[R] = 0)."""
    returns_var = float(np.var(returns))
    unexplained = float(np.var(returns - old_values))
    return 1.0 - unexplained / returns_var if returns_var > 0 else 0.0


class PPOLearner(OnPolicyLearner):
    checkpoint_attributes = ("updates_done",)

    def __init__(self, params: PPOParams, spec: LearnerSpec) -> None:
        super().__init__(params, spec, n_steps=params.n_steps)
        from plugins.algorithms.common.optimisers import Adam  # torch's, with a lean step

        self.optimizer = Adam([self.flat.parameter], lr=params.lr, eps=params.adam_eps)
        # Updates this learner will make within its budget: the schedules reach 0 there.
        rollout_steps = params.n_steps * self.env.num_envs
        self.total_updates = math.ceil(spec.env_steps_budget / rollout_steps) if spec.env_steps_budget > 0 else 0
        self.updates_done = 0

    def update(self, rollout: Rollout) -> dict[str, float]:
        p = self.params
        lr, clip_range = annealed(p, self.updates_done, self.total_updates)
        self.set_lr(lr)

        steps, envs = rollout.rewards.shape
        size = steps * envs
        observations, actions, last = rollout.tensors(self.device)
        log_std = self.model.action_log_std()

        # The rollout's policy and values, fixed before the first epoch moves the parameters.
        with torch.no_grad():
            old_actor_out, all_values = self.model.rollout_outputs(observations, last)
            old_log_prob, _ = distributions.log_prob_entropy(old_actor_out, log_std, actions)
        old_values = all_values[:size]
        old_values_np = old_values.cpu().numpy().reshape(steps, envs)
        bootstrap = all_values[size:].cpu().numpy()
        advantages_np = gae_advantages(
            rollout.rewards, old_values_np, rollout.not_done, bootstrap, p.gamma, p.gae_lambda
        )
        returns_np = advantages_np + old_values_np
        advantages = torch.from_numpy(advantages_np.reshape(-1)).to(self.device)
        returns = torch.from_numpy(returns_np.reshape(-1)).to(self.device)

        sums: dict[str, float] = {}
        minibatch_size = min(p.minibatch_size, size)
        for _ in range(p.n_epochs):
            for batch in torch.randperm(size, device=self.device).split(minibatch_size):
                actor_out, values = self.model.actor_and_value(observations[batch])
                log_prob, entropy = distributions.log_prob_entropy(actor_out, log_std, actions[batch])
                batch_advantages = advantages[batch]
                if p.normalise_advantages and len(batch) > 1:
                    batch_advantages = (batch_advantages - batch_advantages.mean()) / (batch_advantages.std() + 1e-8)
                losses = ppo_losses(
                    log_prob,
                    old_log_prob[batch],
                    batch_advantages,
                    values,
                    old_values[batch],
                    returns[batch],
                    entropy,
                    clip_range=clip_range,
                    clip_value_loss=p.clip_value_loss,
                    value_coef=p.value_coef,
                    entropy_coef=p.entropy_coef,
                )
                grad_norm = self.optimizer_step(losses.loss, p.max_grad_norm)
                for name, value in losses._asdict().items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
        self.updates_done += 1

        # Means over every minibatch step of every epoch; explained variance of the old values.
        count = p.n_epochs * math.ceil(size / minibatch_size)
        metrics = {name: total / count for name, total in sums.items()}
        metrics["explained_variance"] = explained_variance(returns_np, old_values_np)
        metrics["lr"] = lr
        metrics["clip_range"] = clip_range
        return metrics


class PPOBlock(OnPolicyBlock):
    """K Diff-PPO learners in one process: `PPOLearner.update` with a leading learner dimension.

    Each learner draws its own permutation per epoch (in learner order), normalises its own
    minibatch's advantages and keeps its rows of Adam's state; one Adam step on the sum of the
    K losses moves every row as that learner's own step would (learners share no parameter).
    The learners of a cell share a budget, so one lr and ε schedule (learner 0's) serves all."""

    def __init__(self, params: PPOParams, learners: list[PPOLearner], envs: EnvBlock | None = None) -> None:
        super().__init__(learners, envs)
        self.params = params
        from plugins.algorithms.common.optimisers import Adam  # torch's, with a lean step

        self.optimizer = Adam([self.parameter], lr=params.lr, eps=params.adam_eps)

    def update(self, rollout: BlockRollout) -> list[dict[str, float]]:
        p = self.params
        first = self.members[0]
        lr, clip_range = annealed(p, first.updates_done, first.total_updates)
        self.set_lr(lr)

        learners = rollout.learners
        observations, actions, last = rollout.tensors(self.device)  # [K, T·P, …], [K, P, obs]
        size = observations.shape[1]

        # Every learner's rollout policy and values, fixed before the first epoch moves the parameters.
        with torch.no_grad():
            old_actor_out, all_values = self.network.rollout_outputs(observations, last)
            old_log_std = self.network.action_log_std()
            old_log_prob, _ = distributions.log_prob_entropy(old_actor_out, old_log_std, actions)
        old_values = all_values[:, :size]
        estimates = all_values.cpu().numpy()
        old_values_np = estimates[:, :size]
        # GAE per simulator: every learner's in one call on the K·P simulators.
        merged = rollout.merged()
        bootstrap = estimates[:, size:].reshape(-1)
        per_step = gae_advantages(
            merged.rewards, rollout.by_step(old_values_np), merged.not_done, bootstrap, p.gamma, p.gae_lambda
        )
        advantages_np = rollout.by_learner(per_step)
        returns_np = advantages_np + old_values_np
        advantages = torch.from_numpy(advantages_np).to(self.device)
        returns = torch.from_numpy(returns_np).to(self.device)

        # Row k of a minibatch index picks learner k's samples: tensor[rows, batch] is [K, B, …].
        rows = torch.arange(learners, device=self.device).unsqueeze(1)
        loss_sums = torch.zeros(len(PPOLosses._fields), learners, dtype=torch.float64)
        norm_sums = [0.0] * learners
        minibatch_size = min(p.minibatch_size, size)
        for _ in range(p.n_epochs):
            permutations = torch.stack([torch.randperm(size, device=self.device) for _ in range(learners)])
            for batch in permutations.split(minibatch_size, dim=1):
                actor_out, values = self.network.actor_and_value(observations[rows, batch])
                log_std = self.network.action_log_std()
                log_prob, entropy = distributions.log_prob_entropy(actor_out, log_std, actions[rows, batch])
                batch_advantages = advantages[rows, batch]
                if p.normalise_advantages and batch.shape[1] > 1:
                    mean = batch_advantages.mean(-1, keepdim=True)
                    batch_advantages = (batch_advantages - mean) / (batch_advantages.std(-1, keepdim=True) + 1e-8)
                losses = ppo_losses(
                    log_prob,
                    old_log_prob[rows, batch],
                    batch_advantages,
                    values,
                    old_values[rows, batch],
                    returns[rows, batch],
                    entropy,
                    clip_range=clip_range,
                    clip_value_loss=p.clip_value_loss,
                    value_coef=p.value_coef,
                    entropy_coef=p.entropy_coef,
                )
                norms = self.optimizer_step(losses.loss.sum(), p.max_grad_norm)
                # Summed in double like the learner's Python floats.
                loss_sums += torch.stack([part.detach() for part in losses]).cpu().double()
                norm_sums = [total + norm for total, norm in zip(norm_sums, norms)]
        for learner in self.members:
            learner.updates_done += 1  # a checkpoint attribute: each member's checkpoint carries it

        # Each learner's means over every minibatch step of every epoch, as PPOLearner reports them.
        count = p.n_epochs * math.ceil(size / minibatch_size)
        sums = loss_sums.tolist()
        metrics = []
        for k in range(learners):
            own = {name: sums[i][k] / count for i, name in enumerate(PPOLosses._fields)}
            own["grad_norm"] = norm_sums[k] / count
            own["explained_variance"] = explained_variance(returns_np[k], old_values_np[k])
            own["lr"] = lr
            own["clip_range"] = clip_range
            metrics.append(own)
        return metrics


class DiffPPO(Algorithm):
    name = "diff-ppo"
    description = "PPO learners combined with their neighbours once per rollout (diffusion)"
    Params = PPOParams
    consensus = "diffusion"
    observation_kinds = frozenset({"vector", "image"})  # the Nature CNN for frames
    vector_only_params = frozenset({"hidden"})  # frames go through the fixed Nature CNN
    block_observation_kinds = frozenset({"vector", "image"})  # both networks have a stacked form (common/stacked.py)

    def steps_per_simulator(self, params: PPOParams) -> int:
        return params.n_steps

    def model_bytes(self, params: PPOParams, observation_space, action_space) -> int:
        return actor_critic_bytes(observation_space, action_space, params.hidden)

    def make_learner(self, params: PPOParams, spec: LearnerSpec) -> PPOLearner:
        return PPOLearner(params, spec)

    def make_learner_block(
        self, params: PPOParams, specs: list[LearnerSpec], envs: EnvBlock | None = None
    ) -> PPOBlock | None:
        return block_of(PPOBlock, PPOLearner, params, specs, envs)


@hookimpl
def register_algorithms(register) -> None:
    register(DiffPPO())
