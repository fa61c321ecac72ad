"""V-trace: IMPALA learners (Espeholt et al. 2018) that train from replay, with CLEAR's behavioural
cloning (Rolnick et al. 2019) and LASER's relevance mask (Schmitt et al. 2020).

Each iteration a learner
1. collects T steps from each of its P simulators with the *behaviour* network μ (stochastic
   actions), a copy of the learner network π refreshed every `behaviour_refresh` updates, and
   keeps what μ computed while acting: logits (or Gaussian means and log-std), values V^μ and the
   actor's last hidden layer φ;
2. turns the rollout into P segments and offers each to every strategy of the replay mix
   (`spec.replay`, e.g. `queue` for the on-policy stream plus `uniform` for old data);
3. once the mix can answer, takes a batch of `batch_size` segments and makes ONE update on it:
   π's logits and values are recomputed on the batch, log π/μ of the taken actions gives the
   V-trace targets (`vtrace_targets`), and
       L = −Σ ρ^pg_t A_t log π(a_t|x_t) + c_v Σ (v_t − V(x_t))² − c_e Σ H[π(·|x_t)]
           + w_π Σ KL(μ ‖ π)(x_t) + w_V Σ (V(x_t) − V^μ(x_t))²        (CLEAR, both switchable)
   with RMSprop and gradient-norm clipping. The core then mixes the flat parameters with the
   topology's neighbours (with the isolated topology this is plain IMPALA).

Choices, and why:
- Reduction: `mean` (default) divides every sum by the B·T steps of the batch, so the step size
  does not depend on the batch size or unroll length; `sum` is the original's. LASER-masked steps
  contribute zero to the policy and value terms under both (the denominator stays B·T, so `mean`
  is exactly `sum` / (B·T)). Under RMSprop the two differ mainly through ε and the clip: with
  `mean` the gradients are B·T times smaller, so the defaults use ε = 1e-5 rather than the
  platform's 0.01 (which, against mean-sized gradients, would shrink every step) and the
  platform's clip of 40 is then practically inactive.
- LASER (off by default): a step whose KL(π ‖ μ) exceeds `laser_threshold` gets ρ = c = 0 (its
  δ is 0 and the trace is cut there) and leaves the policy-gradient and value terms; entropy and
  the CLEAR terms still apply to it (cloning is what pulls π back towards such data).
- CLEAR cloning is applied to the whole batch (on the fresh part μ ≈ π, so it is near zero there).
- Time limits: the cut-off state is bootstrapped with the behaviour critic (what the actor has),
  γ·V^μ(x_final) folded into the reward, and the step's discount is 0 as for a termination, so
  segments never look across an episode boundary.
- Background preparation (default on): `BatchPreparer` draws the next batch while the current
  update runs. To stay deterministic the batch drawn right after the segments of iteration i are
  added is the one trained at iteration i+1 (the learner waits for it before adding the next
  segments), with a snapshot of the network as it was before iteration i's update as the scorer.
  The on-policy stream therefore lags by one update (V-trace corrects for it). Off: the batch is
  drawn and trained on at once with the live network as scorer.
- Behaviour refresh: the learner's parameters (after mixing) are copied into μ before a
  collection whenever `behaviour_refresh` updates have happened since the last copy; μ is π as it
  was at most `behaviour_refresh − 1` updates ago (1 = always the current network).
- Observations are stored normalised with the statistics of their collection time (statistics
  stay local), rewards scaled likewise: replayed segments keep their original scaling.

Defaults, tuned on CartPole-v1 with one learner × 8 simulators and `queue:capacity=8,ratio=0.5 +
uniform:capacity=1000,ratio=0.5` (greedy evaluation, 5 episodes):
- B = 16 segments, so the queue's share (8) is exactly the 8 segments each iteration brings: the
  fresh half of every batch is all new data, used once; T = 20 (IMPALA's) worked as well as 10.
- RMSprop lr 2e-3 (ε 1e-5, α 0.99) decayed with power 2 to 1e-5 over the budget, clip 40: solved
  (≥ 475) by 100k env steps on 10 of 10 seeds, by 50k on 8. The platform's 8e-4 solved only 1 of
  3 within 200k (greedy 465, 369, 500); anything in 1.5e-3…3e-3 solved 10 of 10. The platform's
  own combination (summed losses, ε 0.01, 8e-4) also solved 5 of 5; mean losses with ε 0.01 were
  slower (4 of 5): ε must be read against the gradient's scale.
- CLEAR cloning on, with the paper's weights (policy 0.01, value 0.005): this suite is about
  multitask learning, where cloning is what protects old tasks, and on CartPole it costs nothing
  (5 of 5 solved with and without). LASER off (plain V-trace) by default; on it also solved 5 of 5.
- Reward scaling on, observation normalisation off: replayed observations keep their old
  normalisation, and local statistics feed neighbours differently scaled inputs (see README);
  on CartPole both solved 5 of 5.
- Pendulum-v1 is not learned with these defaults within 200k (−950…−1100; random about −1200);
  Acrobot-v1 reaches about −80 by 100k.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from benchbase.api.contracts import (
    Algorithm,
    ConsensusParams,
    FinishedEpisode,
    IterationOutput,
    LearnerSpec,
)
from benchbase.api.hookspecs import hookimpl
from benchbase.api.params import param
from benchbase.api.replay import BatchPreparer, ReplayMix, Segment
from benchbase.comm.flat import FlatParameters
from plugins.algorithms.common.actor_critic import OnPolicyLearner
from plugins.algorithms.common.networks import ActorCritic, is_image
from plugins.algorithms.common.returns import vtrace_targets

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VTraceParams(ConsensusParams):
    batch_size: int = param(16, "segments per update B (the replay mix splits it by ratio)", min=1)
    unroll_length: int = param(20, "steps T per segment (IMPALA's 20)", min=1)
    behaviour_refresh: int = param(1, "updates between copies of the learner's parameters into the behaviour network", min=1)
    rho_bar: float = param(1.0, "V-trace clipping ρ̄ of the importance weights in the value targets", min=0.0)
    c_bar: float = param(1.0, "V-trace clipping c̄ of the trace coefficients", min=0.0)
    pg_rho_bar: float = param(1.0, "clipping ρ̄_pg of the importance weights in the policy gradient", min=0.0)
    gamma: float = param(0.99, "discount factor", min=0.0, max=1.0)
    entropy_coef: float = param(0.01, "entropy bonus weight c_e", min=0.0)
    value_coef: float = param(0.5, "value loss weight c_v on (v_s − V)²", min=0.0)
    reduction: Literal["mean", "sum"] = param(
        "mean", "losses averaged over the batch's B·T steps (step size independent of B and T) or summed (the original)"
    )
    lr: float = param(2e-3, "RMSprop learning rate (start value when decayed; the platform used 8e-4 with summed losses)", min=0.0)
    lr_decay: bool = param(True, "decay the lr polynomially (power 2) to lr_end over the learner's env-step budget")
    lr_end: float = param(1e-5, "learning rate at the end of the budget when decayed", min=0.0)
    rmsprop_eps: float = param(1e-5, "RMSprop epsilon (the platform's 0.01 suits summed losses)", min=0.0)
    rmsprop_alpha: float = param(0.99, "RMSprop smoothing constant", min=0.0, max=1.0)
    max_grad_norm: float = param(40.0, "gradient-norm clipping; 0 = none", min=0.0)
    clear_policy_cloning: bool = param(True, "CLEAR policy cloning KL(μ ‖ π) on the batch")
    policy_cloning_weight: float = param(0.01, "weight of CLEAR's policy cloning (paper 0.01, seed platform 0.05)", min=0.0)
    clear_value_cloning: bool = param(True, "CLEAR value cloning (V − V^μ)² on the batch")
    value_cloning_weight: float = param(0.005, "weight of CLEAR's value cloning (paper 0.005)", min=0.0)
    laser: bool = param(False, "LASER: mask steps whose KL(π ‖ μ) exceeds laser_threshold and cut the trace there")
    laser_threshold: float = param(0.3, "LASER's KL threshold", min=0.0)
    background_preparation: bool = param(True, "draw the next batch in a background thread while the update runs")
    hidden: int = param(64, "units in each of the two hidden layers", min=1)
    normalise_observations: bool = param(False, "running mean/std observation normalisation (clip ±10)")
    normalise_rewards: bool = param(True, "scale rewards by the running std of the discounted return")


# -- the loss ---------------------------------------------------------------------------------


def log_prob_entropy(
    actor_out: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(a|x) and H[π(·|x)] for outputs [T, B, A]: logits (log_std None) or Gaussian means
    with a log-std broadcastable to them."""
    if log_std is None:
        log_probs = torch.log_softmax(actor_out, dim=-1)
        log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return log_prob, -(log_probs.exp() * log_probs).sum(-1)
    log_std = log_std.expand_as(actor_out)
    log_prob = (-0.5 * ((actions - actor_out) / log_std.exp()).pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)
    return log_prob, (0.5 + 0.5 * _LOG_2PI + log_std).sum(-1)


def kl_divergence(
    p_out: torch.Tensor, p_log_std: torch.Tensor | None, q_out: torch.Tensor, q_log_std: torch.Tensor | None
) -> torch.Tensor:
    """KL(p ‖ q) per step for two outputs [T, B, A] (categorical logits or diagonal Gaussians)."""
    if p_log_std is None:
        p_log = torch.log_softmax(p_out, dim=-1)
        q_log = torch.log_softmax(q_out, dim=-1)
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    p_log_std, q_log_std = p_log_std.expand_as(p_out), q_log_std.expand_as(q_out)
    ratio = ((p_log_std - q_log_std) * 2).exp()  # σ_p² / σ_q²
    mean_term = ((p_out - q_out) / q_log_std.exp()).pow(2)
    return (q_log_std - p_log_std + 0.5 * (ratio + mean_term - 1)).sum(-1)


class VTraceLosses(NamedTuple):
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    policy_cloning: torch.Tensor
    value_cloning: torch.Tensor
    importance_ratio: float
    clipped_rho_fraction: float
    clipped_c_fraction: float
    laser_mask_rate: float


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
    or [A]); `rewards`, `discounts` [T, B]."""
    steps, batch = rewards.shape
    reduce = (lambda x: x.sum()) if params.reduction == "sum" else (lambda x: x.sum() / (steps * batch))
    if behaviour_log_std is not None and behaviour_log_std.dim() == 2:
        behaviour_log_std = behaviour_log_std.unsqueeze(0)  # [1, B, A]: one per segment

    log_prob, entropy = log_prob_entropy(actor_out, log_std, actions)
    with torch.no_grad():
        behaviour_log_prob, _ = log_prob_entropy(behaviour_out, behaviour_log_std, actions)
        log_ratios = log_prob.detach() - behaviour_log_prob
        relevant = None
        if params.laser:
            relevant = kl_divergence(actor_out.detach(), log_std, behaviour_out, behaviour_log_std) <= params.laser_threshold
        targets = vtrace_targets(
            log_ratios, discounts, rewards, values[:-1].detach(), values[-1].detach(),
            rho_bar=params.rho_bar, c_bar=params.c_bar, pg_rho_bar=params.pg_rho_bar, relevant=relevant,
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
        importance_ratio=float(log_ratios.exp().mean()),
        clipped_rho_fraction=targets.clipped_rho_fraction,
        clipped_c_fraction=targets.clipped_c_fraction,
        laser_mask_rate=0.0 if relevant is None else float(1.0 - keep.mean()),
    )


# -- the scorer that similarity-based replay strategies rank with -------------------------------


class TrunkScorer:
    """φ′ = the actor's last hidden layer (`features`) of a network, and the most recent state."""

    def __init__(self, model: ActorCritic, recent_observation: torch.Tensor | None = None) -> None:
        self.model = model
        self.recent_observation = recent_observation

    @torch.no_grad()
    def features(self, observations: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.features(observations.to(device)).to(observations.device)

    @torch.no_grad()
    def recent_feature(self) -> torch.Tensor:
        if self.recent_observation is None:
            raise RuntimeError("no state seen yet")
        return self.features(self.recent_observation)


# -- the learner ------------------------------------------------------------------------------


class VTraceLearner(OnPolicyLearner):
    """Collects with the behaviour network, stores segments in the replay mix, trains on batches."""

    checkpoint_attributes = ("steps_done", "updates", "refreshed_at", "_recent_observation")

    def __init__(self, params: VTraceParams, spec: LearnerSpec) -> None:
        if spec.replay is None:
            raise ValueError("vtrace trains from replay: the learner needs a replay mix (spec.replay)")
        # OnPolicyLearner seeds torch identically on every learner before building π.
        super().__init__(
            spec,
            n_steps=params.unroll_length,
            gamma=params.gamma,
            hidden=params.hidden,
            normalise_observations=params.normalise_observations,
            normalise_rewards=params.normalise_rewards,
        )
        self.params = params
        self.replay: ReplayMix = spec.replay
        self.optimizer = torch.optim.RMSprop(
            [self.flat.parameter], lr=params.lr, eps=params.rmsprop_eps, alpha=params.rmsprop_alpha
        )
        self.budget = spec.env_steps_budget
        self.steps_done = 0
        self.updates = 0

        # μ: a copy of π outside the mixed buffer, refreshed every `behaviour_refresh` updates.
        self.behaviour = copy.deepcopy(self.model)
        self.behaviour_flat = FlatParameters(self.behaviour)
        self.behaviour_flat.parameter.requires_grad_(False)
        self.refreshed_at = 0  # the update count at the last copy

        num_envs, steps = self.env.num_envs, params.unroll_length
        out = self.model.action_outputs
        self._behaviour_out = np.zeros((steps, num_envs, out), dtype=np.float32)
        self._behaviour_values = np.zeros((steps + 1, num_envs), dtype=np.float32)
        self._features = np.zeros((steps, num_envs, self.model.feature_dim), dtype=np.float32)
        self._frames = is_image(self.env.observation_space)
        self._recent_observation: torch.Tensor | None = None

        self.lock = threading.Lock()
        self.preparer: BatchPreparer | None = None
        self._pending = False  # a batch requested from the preparer and not yet taken
        if params.background_preparation:
            self.preparer = BatchPreparer(self.replay, self.lock)
            # The preparer's scorer: a snapshot of π's trunk, copied in before each request.
            self._snapshot_model = copy.deepcopy(self.model).requires_grad_(False)

    # -- what the core calls ----------------------------------------------------------------

    def iterate(self) -> IterationOutput:
        self._refresh_behaviour()
        lr = self.current_lr()  # from the steps done before this iteration: the first update uses lr
        segments, finished = self.collect_segments()
        self.steps_done += self.params.unroll_length * self.env.num_envs

        batch = None
        if self.preparer is None:
            for segment in segments:
                self.replay.add(segment)
            if self.replay.can_sample():
                batch = self.replay.sample(self.scorer())
            statistics = self.replay.statistics()
        else:
            if self._pending:  # drawn after the previous iteration's segments were added
                batch = self.preparer.take()
                self._pending = False
            with self.lock:  # nothing is being sampled now: the statistics cover the batch just taken
                statistics = self.replay.statistics()
                for segment in segments:
                    self.replay.add(segment)
                ready = self.replay.can_sample()
            if ready:
                self.preparer.request(self._snapshot_scorer())
                self._pending = True

        metrics: dict[str, float] = {"lr": lr}
        if batch is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            metrics.update(self.update(*batch))
        metrics["updated"] = float(batch is not None)
        metrics["updates"] = float(self.updates)
        metrics.update(statistics)
        return IterationOutput(env_steps=self.params.unroll_length * self.env.num_envs, finished=finished, metrics=metrics)

    def state_dict(self, replay: bool = False) -> dict:
        """The base's state and μ; the replay buffers' contents only when asked (they can be large:
        without them a resumed learner refills its buffers)."""
        state = {**super().state_dict(), "behaviour": self.behaviour_flat.data.detach().to("cpu", copy=True)}
        if replay:
            with self.lock:  # not while the preparer draws a batch
                state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict, *, mode: str = "resume") -> None:
        super().load_state_dict(state, mode=mode)
        self.behaviour_flat.data.copy_(state["behaviour"] if mode == "resume" else self.flat.data)
        if mode == "resume" and "replay" in state:
            self.replay.load_state_dict(state["replay"])

    def close(self) -> None:
        if self.preparer is not None:
            self.preparer.close()
            self.preparer = None

    # -- schedules and the behaviour network ------------------------------------------------------

    def current_lr(self) -> float:
        """Polynomial decay (power 2) from lr to lr_end over the budget; constant without one."""
        p = self.params
        if not p.lr_decay or self.budget <= 0:
            return p.lr
        remaining = max(0.0, 1.0 - self.steps_done / self.budget)
        return (p.lr - p.lr_end) * remaining**2 + p.lr_end

    def _refresh_behaviour(self) -> None:
        if self.updates - self.refreshed_at >= self.params.behaviour_refresh:
            self.behaviour_flat.data.copy_(self.flat.data)
            self.refreshed_at = self.updates

    # -- scorers ------------------------------------------------------------------------------------

    def scorer(self) -> TrunkScorer:
        """The live network's trunk."""
        return TrunkScorer(self.model, self._recent_observation)

    def _snapshot_scorer(self) -> TrunkScorer:
        """The network as it is now, for the preparer (it is read while π changes)."""
        with torch.no_grad():
            for target, source in zip(self._snapshot_model.parameters(), self.model.parameters()):
                target.copy_(source)
        return TrunkScorer(self._snapshot_model, self._recent_observation)

    # -- collection -------------------------------------------------------------------------------

    def collect_segments(self) -> tuple[list[Segment], list[FinishedEpisode]]:
        """T steps from each simulator with μ; one segment per simulator."""
        finished, last, rewards = self.roll_out()
        steps = self.params.unroll_length
        with torch.inference_mode():
            self._behaviour_values[steps] = self.critic_values(torch.from_numpy(last).to(self.device))
        discounts = (self.gamma * (~self._ended)).astype(np.float32)
        observations = np.concatenate([self._observations, last[None]])  # [T+1, P, *obs]
        if self._frames:  # frames stay uint8 in replay: a quarter of the memory (the CNN scales them)
            observations = observations.astype(np.uint8)
        log_std = self.behaviour.log_std.detach().clone() if self.continuous else None

        segments = []
        for p in range(self.env.num_envs):
            segments.append(Segment(
                observations=torch.from_numpy(observations[:, p].copy()),
                actions=torch.from_numpy(self._actions[:, p].copy()),
                rewards=torch.from_numpy(np.ascontiguousarray(rewards[:, p], dtype=np.float32)),
                discounts=torch.from_numpy(discounts[:, p].copy()),
                behaviour_logits=torch.from_numpy(self._behaviour_out[:, p].copy()),
                behaviour_values=torch.from_numpy(self._behaviour_values[:, p].copy()),
                features=torch.from_numpy(self._features[:, p].copy()),
                behaviour_log_std=None if log_std is None else log_std.cpu(),
            ))
        # The most recent state seen: the last one of the last segment offered to the buffers.
        self._recent_observation = segments[-1].observations[-1].clone()
        return segments, finished

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """μ acts, and what it computed is kept for the segments: features, outputs, values."""
        behaviour = self.behaviour
        features = behaviour.features(observations)
        actor_out = behaviour.policy_head(features)
        self._features[t] = features.cpu().numpy()
        self._behaviour_out[t] = actor_out.cpu().numpy()
        self._behaviour_values[t] = self.critic_values(observations)
        if self.continuous:
            return (actor_out + behaviour.log_std.exp() * torch.randn_like(actor_out)).cpu().numpy()
        return torch.multinomial(torch.softmax(actor_out, dim=-1), 1).squeeze(-1).cpu().numpy()

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        return self.behaviour.value(observations).cpu().numpy()  # bootstraps use μ's critic, as acting does

    # -- the update -----------------------------------------------------------------------------

    def update(self, segments: list[Segment], taken: dict[str, int]) -> dict[str, float]:
        p = self.params
        device = self.device
        stack = lambda name: torch.stack([getattr(s, name) for s in segments], dim=1).to(device)  # noqa: E731
        observations = stack("observations")  # [T+1, B, *obs]
        behaviour_log_std = (
            torch.stack([s.behaviour_log_std for s in segments]).to(device) if self.continuous else None
        )  # [B, A]: each segment's own μ

        actor_out, values = self.model.sequence_outputs(observations)
        losses = vtrace_losses(
            actor_out, self.model.log_std if self.continuous else None, values,
            stack("actions"), stack("rewards"), stack("discounts"),
            stack("behaviour_logits"), behaviour_log_std, stack("behaviour_values"), p,
        )
        self.flat.zero_grad()
        losses.loss.backward()
        grad_norm = self.flat.clip_grad_norm(p.max_grad_norm)
        self.optimizer.step()
        self.updates += 1

        metrics = {
            "loss": losses.loss.item(),
            "policy_loss": losses.policy_loss.item(),
            "value_loss": losses.value_loss.item(),
            "entropy": losses.entropy.item(),
            "policy_cloning_loss": losses.policy_cloning.item(),
            "value_cloning_loss": losses.value_cloning.item(),
            "importance_ratio": losses.importance_ratio,
            "clipped_rho_fraction": losses.clipped_rho_fraction,
            "clipped_c_fraction": losses.clipped_c_fraction,
            "laser_mask_rate": losses.laser_mask_rate,
            "grad_norm": grad_norm,
        }
        for name, count in taken.items():
            metrics[f"replay_share_{name}"] = count / len(segments)
        return metrics


class VTrace(Algorithm):
    name = "vtrace"
    description = "IMPALA learners trained by V-trace from a replay mix (CLEAR cloning, optional LASER), mixed by diffusion"
    Params = VTraceParams
    consensus = "diffusion"
    uses_replay = True
    observation_kinds = frozenset({"vector", "image"})

    def make_learner(self, params: VTraceParams, spec: LearnerSpec) -> VTraceLearner:
        return VTraceLearner(params, spec)

    def segment_bytes(self, params: VTraceParams, observation_space, action_space) -> int:
        """One stored segment: float32 everywhere except frames (uint8) and discrete actions (int64)."""
        steps, obs = params.unroll_length, int(np.prod(observation_space.shape))
        continuous = isinstance(action_space, spaces.Box)
        outputs = int(np.prod(action_space.shape)) if continuous else int(action_space.n)
        # observations, rewards and discounts, behaviour logits (or means), values, features
        frames = is_image(observation_space)
        features = 512 if frames else params.hidden  # the Nature CNN's width is fixed
        floats = 2 * steps + steps * outputs + (steps + 1) + steps * features
        observation_bytes = (steps + 1) * obs * (1 if frames else 4)  # frames are stored as uint8
        if continuous:
            floats += steps * outputs + outputs  # actions and the behaviour log-std
        return observation_bytes + 4 * floats + (0 if continuous else 8 * steps)


@hookimpl
def register_algorithms(register) -> None:
    register(VTrace())
