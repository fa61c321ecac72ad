"""V-trace: IMPALA learners (Espeholt et al. 2018) that train from replay, with CLEAR's behavioural
cloning (Rolnick et al. 2019) and LASER's relevance mask (Schmitt et al. 2020).

The learner is an `OffPolicyLearner` (collection with a behaviour network μ, segments in the
replay mix, batches sampled from it: `common/off_policy.py`). Each update takes ONE batch of
`batch_size` segments: π's outputs and values are recomputed on it, log π/μ of the taken actions
gives the V-trace targets (`common/returns.py`), and
    L = −Σ ρ^pg_t A_t log π(a_t|x_t) + c_v Σ (v_t − V(x_t))² − c_e Σ H[π(·|x_t)]
        + w_π Σ KL(μ ‖ π)(x_t) + w_V Σ (V(x_t) − V^μ(x_t))²        (CLEAR, both switchable)
is minimised with RMSprop and gradient-norm clipping; the lr decays polynomially (power 2) over
the learner's budget. The core then mixes the flat parameters with the topology's neighbours
(with the isolated topology this is plain IMPALA).

- `reduction`: `mean` divides every sum by the batch's B·T steps, `sum` is the original's.
- LASER (off by default): a step whose KL(π ‖ μ) exceeds `laser_threshold` gets ρ = c = 0 (its δ
  is 0 and the trace is cut there) and leaves the policy-gradient and value terms under both
  reductions (the denominator stays B·T); entropy and the CLEAR terms still apply to it.
- CLEAR cloning applies to the whole batch (on the fresh part μ ≈ π, so it is near zero there).
Why these choices and defaults: docs/algorithms.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from benchbase import Algorithm, ConsensusParams, EnvBlock, LearnerSpec, hookimpl, lazy_import, param
from plugins.algorithms.common import distributions
from plugins.algorithms.common.block import block_of
from plugins.algorithms.common.distributions import kl_divergence
from plugins.algorithms.common.model_size import actor_critic_bytes
from plugins.algorithms.common.normalisation import NormaliserMode
from plugins.algorithms.common.off_policy import OffPolicyLearner, SampledBatch, segment_bytes
from plugins.algorithms.common.off_policy_block import OffPolicyBlock
from plugins.algorithms.common.returns import vtrace_targets
from plugins.algorithms.common.schedules import anneal, remaining_fraction

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass(frozen=True)
class VTraceParams(ConsensusParams):
    batch_size: int = param(16, "segments per update B (the replay mix splits it by ratio)", min=1)
    unroll_length: int = param(20, "steps T per segment (IMPALA's 20)", min=1)
    behaviour_refresh: int = param(
        1, "updates between copies of the learner's parameters into the behaviour network", min=1
    )
    rho_bar: float = param(1.0, "V-trace clipping ρ̄ of the importance weights in the value targets", min=0.0)
    c_bar: float = param(1.0, "V-trace clipping c̄ of the trace coefficients", min=0.0)
    pg_rho_bar: float = param(1.0, "clipping ρ̄_pg of the importance weights in the policy gradient", min=0.0)
    gamma: float = param(0.99, "discount factor", min=0.0, max=1.0)
    entropy_coef: float = param(0.01, "entropy bonus weight c_e", min=0.0)
    value_coef: float = param(0.5, "value loss weight c_v on (v_s − V)²", min=0.0)
    reduction: Literal["mean", "sum"] = param(
        "mean", "losses averaged over the batch's B·T steps (step size independent of B and T) or summed (the original)"
    )
    lr: float = param(
        2e-3, "RMSprop learning rate (start value when decayed; the platform used 8e-4 with summed losses)", min=0.0
    )
    lr_decay: bool = param(True, "decay the lr polynomially (power 2) to lr_end over the learner's env-step budget")
    lr_end: float = param(1e-5, "learning rate at the end of the budget when decayed", min=0.0)
    rmsprop_eps: float = param(1e-5, "RMSprop epsilon (the platform's 0.01 suits summed losses)", min=0.0)
    rmsprop_alpha: float = param(0.99, "RMSprop smoothing constant", min=0.0, max=1.0)
    max_grad_norm: float = param(40.0, "gradient-norm clipping; 0 = none", min=0.0)
    clear_policy_cloning: bool = param(True, "CLEAR policy cloning KL(μ ‖ π) on the batch")
    policy_cloning_weight: float = param(
        0.01, "weight of CLEAR's policy cloning (paper 0.01, seed platform 0.05)", min=0.0
    )
    clear_value_cloning: bool = param(True, "CLEAR value cloning (V − V^μ)² on the batch")
    value_cloning_weight: float = param(0.005, "weight of CLEAR's value cloning (paper 0.005)", min=0.0)
    laser: bool = param(False, "LASER: mask steps whose KL(π ‖ μ) exceeds laser_threshold and cut the trace there")
    laser_threshold: float = param(0.3, "LASER's KL threshold", min=0.0)
    background_preparation: bool = param(True, "draw the next batch in a background thread while the update runs")
    hidden: int = param(64, "units in each of the two hidden layers", min=1)
    normaliser: NormaliserMode = param(
        "mixed",
        "observation normalisation (clip ±10): mixed = statistics combined with the neighbours' like the "
        "parameters, count-weighted; local = each learner's own; off = raw observations",
    )
    normalise_rewards: bool = param(True, "scale rewards by the running std of the discounted return")


class VTraceLosses(NamedTuple):
    """The loss terms and diagnostics of a batch: scalars, or one value per learner [K] for a block's batch."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    policy_cloning: torch.Tensor
    value_cloning: torch.Tensor
    importance_ratio: torch.Tensor
    clipped_rho_fraction: torch.Tensor  # share of steps where the ratio exceeds ρ̄
    clipped_c_fraction: torch.Tensor  # share of steps where the ratio exceeds c̄
    laser_mask_rate: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """The learner's metrics under their names."""
        return {
            "loss": self.loss,
            "policy_loss": self.policy_loss,
            "value_loss": self.value_loss,
            "entropy": self.entropy,
            "policy_cloning_loss": self.policy_cloning,
            "value_cloning_loss": self.value_cloning,
            "importance_ratio": self.importance_ratio,
            "clipped_rho_fraction": self.clipped_rho_fraction,
            "clipped_c_fraction": self.clipped_c_fraction,
            "laser_mask_rate": self.laser_mask_rate,
        }


def vtrace_losses(
    actor_out: torch.Tensor,
    log_std: torch.Tensor | None,
    values: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    behaviour_out: torch.Tensor,
    behaviour_log_std: torch.Tensor | None,
    behaviour_values: torch.Tensor,
    params: VTraceParams,
) -> VTraceLosses:
    """The learner's loss on a batch, time-major: `actor_out` [T, B, A] and `values` [T+1, B] from
    π (with gradients; `values[T]` only bootstraps); `behaviour_*` what μ stored (log-std [B, A]
    or [A]); `rewards`, `discounts` [T, B]. A learner block's batch has a learner axis after the
    time axis ([T, K, B, A], [T+1, K, B], log-std [K, B, A], [T, K, B]): every term is then
    summed per learner, one value each [K]."""
    steps, batch = rewards.shape[0], rewards.shape[-1]
    per_learner = rewards.dim() == 3
    total = (lambda x: x.sum((0, 2))) if per_learner else (lambda x: x.sum())
    mean = (lambda x: x.float().mean((0, 2))) if per_learner else (lambda x: x.float().mean())
    reduce = total if params.reduction == "sum" else (lambda x: total(x) / (steps * batch))
    if behaviour_log_std is not None and behaviour_log_std.dim() == actor_out.dim() - 1:
        behaviour_log_std = behaviour_log_std.unsqueeze(0)  # [1, B, A]: one per segment
    # One log-std per step [T, B, A]: μ's differ per segment, and π's is laid out the same way.
    per_step = lambda log_std, out: None if log_std is None else log_std.expand_as(out)  # noqa: E731

    log_prob, entropy = distributions.log_prob_entropy(actor_out, per_step(log_std, actor_out), actions)
    with torch.no_grad():
        behaviour_log_prob, _ = distributions.log_prob_entropy(
            behaviour_out, per_step(behaviour_log_std, behaviour_out), actions
        )
        log_ratios = log_prob.detach() - behaviour_log_prob
        ratios = log_ratios.exp()
        relevant = None
        if params.laser:
            kl = kl_divergence(actor_out.detach(), log_std, behaviour_out, behaviour_log_std)
            relevant = kl <= params.laser_threshold
        targets = vtrace_targets(
            log_ratios,
            discounts,
            rewards,
            values[:-1].detach(),
            values[-1].detach(),
            rho_bar=params.rho_bar,
            c_bar=params.c_bar,
            pg_rho_bar=params.pg_rho_bar,
            relevant=relevant,
        )
    keep = torch.ones_like(rewards) if relevant is None else relevant.to(rewards.dtype)

    policy_loss = -reduce(targets.pg_advantages * log_prob)  # masked steps have ρ^pg = 0
    value_loss = reduce(keep * (targets.values - values[:-1]).pow(2))
    entropy_total = reduce(entropy)
    policy_cloning = reduce(kl_divergence(behaviour_out, behaviour_log_std, actor_out, log_std))
    value_cloning = reduce((values[:-1] - behaviour_values[:-1]).pow(2))

    loss = policy_loss + params.value_coef * value_loss - params.entropy_coef * entropy_total
    if params.clear_policy_cloning:
        loss = loss + params.policy_cloning_weight * policy_cloning
    if params.clear_value_cloning:
        loss = loss + params.value_cloning_weight * value_cloning
    return VTraceLosses(
        loss=loss,
        policy_loss=policy_loss,
        value_loss=value_loss,
        entropy=entropy_total,
        policy_cloning=policy_cloning,
        value_cloning=value_cloning,
        importance_ratio=mean(ratios),
        clipped_rho_fraction=mean(ratios > params.rho_bar),
        clipped_c_fraction=mean(ratios > params.c_bar),
        laser_mask_rate=mean(1.0 - keep),
    )


def batch_losses(
    stack: Callable[[str], torch.Tensor],
    actor_out: torch.Tensor,
    log_std: torch.Tensor | None,
    values: torch.Tensor,
    behaviour_log_std: torch.Tensor | None,
    params: VTraceParams,
) -> VTraceLosses:
    """`vtrace_losses` of π's outputs on a batch whose stored fields `stack(name)` gives time-major."""
    return vtrace_losses(
        actor_out,
        log_std,
        values,
        stack("actions"),
        stack("rewards"),
        stack("discounts"),
        stack("behaviour_logits"),
        behaviour_log_std,
        stack("behaviour_values"),
        params,
    )


class VTraceLearner(OffPolicyLearner):
    def __init__(self, params: VTraceParams, spec: LearnerSpec) -> None:
        super().__init__(
            params,
            spec,
            n_steps=params.unroll_length,
            behaviour_refresh=params.behaviour_refresh,
            background_preparation=params.background_preparation,
        )
        from plugins.algorithms.common.optimisers import RMSprop  # torch's, with a lean step

        self.optimizer = RMSprop(
            [self.flat.parameter], lr=params.lr, eps=params.rmsprop_eps, alpha=params.rmsprop_alpha
        )

    def current_lr(self) -> float:
        """Polynomial decay (power 2) from lr to lr_end over the budget; constant without one."""
        p = self.params
        if not p.lr_decay or self.budget <= 0:
            return p.lr
        return anneal(p.lr, remaining_fraction(self.steps_done, self.budget), end=p.lr_end, power=2)

    def update(self, batch: SampledBatch) -> dict[str, float]:
        p = self.params
        stack = lambda name: torch.stack([getattr(s, name) for s in batch.segments], dim=1).to(self.device)  # noqa: E731
        observations = stack("observations")  # [T+1, B, *obs]
        behaviour_log_std = (
            torch.stack([s.behaviour_log_std for s in batch.segments]).to(self.device) if self.continuous else None
        )  # [B, A]: each segment's own μ

        actor_out, values = self.model.sequence_outputs(observations)
        losses = batch_losses(stack, actor_out, self.model.action_log_std(), values, behaviour_log_std, p)
        grad_norm = self.optimizer_step(losses.loss, p.max_grad_norm)
        metrics = {name: value.item() for name, value in losses.metrics().items()}
        metrics["grad_norm"] = grad_norm
        metrics.update(replay_shares(batch))
        return metrics


class VTraceBlock(OffPolicyBlock):
    """K V-trace learners: one batched update on every learner's own batch, the loss terms summed
    per learner; the collection, replay and behaviour networks are `OffPolicyBlock`'s."""

    def __init__(self, params: VTraceParams, learners: list[VTraceLearner], envs: EnvBlock | None = None) -> None:
        super().__init__(learners, envs)
        self.params = params
        from plugins.algorithms.common.optimisers import RMSprop  # torch's, with a lean step

        self.optimizer = RMSprop([self.parameter], lr=params.lr, eps=params.rmsprop_eps, alpha=params.rmsprop_alpha)

    def update(self, batches: list[SampledBatch]) -> list[dict[str, float]]:
        p = self.params

        def stack(name: str) -> torch.Tensor:  # [T(+1), K, B, ...]: each learner's batch, time-major
            per_learner = [torch.stack([getattr(s, name) for s in batch.segments], dim=1) for batch in batches]
            return torch.stack(per_learner, dim=1).to(self.device)

        observations = stack("observations")  # [T+1, K, B, *obs]
        steps, learners, batch = observations.shape[0] - 1, observations.shape[1], observations.shape[2]
        # Each learner's steps as rows, time-major: [K, (T+1)·B, *obs].
        by_learner = observations.transpose(0, 1).reshape(learners, (steps + 1) * batch, *observations.shape[3:])
        actor_out = self.network.actor(by_learner[:, : steps * batch]).reshape(learners, steps, batch, -1)
        values = self.network.value(by_learner).reshape(learners, steps + 1, batch)
        behaviour_log_std = (
            torch.stack([torch.stack([s.behaviour_log_std for s in b.segments]) for b in batches]).to(self.device)
            if self.members[0].continuous
            else None
        )  # [K, B, A]: each segment's own μ
        log_std = self.network.action_log_std()
        losses = batch_losses(stack, actor_out.transpose(0, 1), log_std, values.transpose(0, 1), behaviour_log_std, p)
        grad_norms = self.optimizer_step(losses.loss.sum(), p.max_grad_norm)
        columns = {name: value.tolist() for name, value in losses.metrics().items()}
        return [
            {**{name: column[k] for name, column in columns.items()}, "grad_norm": grad_norms[k], **replay_shares(b)}
            for k, b in enumerate(batches)
        ]


def replay_shares(batch: SampledBatch) -> dict[str, float]:
    """The share of the batch each strategy of the replay mix gave."""
    return {f"replay_share_{name}": count / len(batch.segments) for name, count in batch.taken.items()}


class VTrace(Algorithm):
    name = "vtrace"
    description = (
        "IMPALA learners trained by V-trace from a replay mix (CLEAR cloning, optional LASER), mixed by diffusion"
    )
    Params = VTraceParams
    consensus = "diffusion"
    uses_replay = True
    observation_kinds = frozenset({"vector", "image"})
    vector_only_params = frozenset({"hidden"})  # frames go through the fixed Nature CNN
    block_observation_kinds = frozenset({"vector", "image"})  # both networks have a stacked form (common/stacked.py)

    def steps_per_simulator(self, params: VTraceParams) -> int:
        return params.unroll_length

    def model_bytes(self, params: VTraceParams, observation_space, action_space) -> int:
        return actor_critic_bytes(observation_space, action_space, params.hidden)

    def make_learner(self, params: VTraceParams, spec: LearnerSpec) -> VTraceLearner:
        return VTraceLearner(params, spec)

    def make_learner_block(
        self, params: VTraceParams, specs: list[LearnerSpec], envs: EnvBlock | None = None
    ) -> VTraceBlock | None:
        return block_of(VTraceBlock, VTraceLearner, params, specs, envs)

    def segment_bytes(self, params: VTraceParams, observation_space, action_space) -> int:
        return segment_bytes(params.unroll_length, params.hidden, observation_space, action_space)


@hookimpl
def register_algorithms(register) -> None:
    register(VTrace())
