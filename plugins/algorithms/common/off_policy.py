"""Off-policy learners (V-trace): they act with a behaviour network μ, store what they collect in
the replay mix and learn from batches sampled from it; an algorithm writes `update(batch)`.

Each iteration:
1. μ, a copy of the learner network π refreshed every `behaviour_refresh` updates, collects T
   steps from each of the P simulators (stochastic actions) and keeps what it computed while
   acting: outputs (logits, or Gaussian means and its log-std), values V^μ and the actor's last
   hidden layer φ (similarity-based replay strategies rank segments by φ);
2. the rollout becomes P segments, offered to every strategy of the replay mix (`spec.replay`);
3. once the mix can answer, a batch is sampled and `update` learns from it.

- Time limits: the cut-off state is bootstrapped with μ's critic (what the actor has), γ·V^μ(x)
  folded into the reward, and the step's discount is 0 as for a termination, so segments never
  look across an episode boundary.
- Behaviour refresh: the learner's parameters (after mixing) are copied into μ before a
  collection whenever `behaviour_refresh` updates have happened since the last copy; μ is π as it
  was at most `behaviour_refresh − 1` updates ago (1 = always the current network).
- Observations are stored normalised with the statistics of their collection time (statistics
  stay local), rewards scaled likewise: replayed segments keep their original scaling.
- Background preparation: `BatchPreparer` draws the next batch while the current update runs. To
  stay deterministic the batch drawn right after the segments of iteration i are added is the
  one trained at iteration i+1 (the learner waits for it before adding the next segments), with a
  snapshot of the network as it was before iteration i's update as the scorer. The on-policy
  stream therefore lags by one update. Without it the batch is drawn and trained on at once with
  the live network as scorer.
- Checkpoints with the replay buffers resume exactly: the state is taken as of the last consumed
  batch plus the one drawn for the next iteration (the checkpoint waits for it), so neither the
  buffers' contents and RNGs nor that batch depend on how far the preparer had got.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from benchbase import BatchPreparer, FinishedEpisode, IterationOutput, LearnerSpec, ReplayMix, Segment, lazy_import
from plugins.algorithms.common import distributions
from plugins.algorithms.common.model_size import NATURE_CNN_FEATURES, action_outputs
from plugins.algorithms.common.observations import is_image
from plugins.algorithms.common.rollout import RolloutLearner, RolloutParams

if TYPE_CHECKING:
    import torch

    from plugins.algorithms.common.networks import ActorCritic
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


class SampledBatch(NamedTuple):
    """What the replay mix answered: the segments, in mix order, and how many each strategy gave."""

    segments: list[Segment]
    taken: dict[str, int]


class BehaviourRollout(NamedTuple):
    """What μ collected in T steps of P simulators, as `segments` cuts it into segments."""

    observations: np.ndarray  # [T, P, *obs] normalised
    last: np.ndarray  # [P, *obs] the normalised states after the last step
    actions: np.ndarray  # [T, P] or [T, P, A]
    rewards: np.ndarray  # [T, P] scaled, time-limit bootstrap folded in
    ended: np.ndarray  # [T, P] bool
    behaviour_out: np.ndarray  # [T, P, A] μ's logits or Gaussian means
    behaviour_values: np.ndarray  # [T + 1, P] V^μ
    features: np.ndarray  # [T, P, hidden] μ's actor features φ


class TrunkScorer:
    """φ′ = the actor's last hidden layer (`features`) of a network, and the most recent state."""

    def __init__(self, model: ActorCritic, recent_observation: torch.Tensor | None = None) -> None:
        self.model = model
        self.recent_observation = recent_observation

    def features(self, observations: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model.features(observations.to(device)).to(observations.device)

    def recent_feature(self) -> torch.Tensor:
        if self.recent_observation is None:
            raise RuntimeError("no state seen yet")
        return self.features(self.recent_observation)


class OffPolicyLearner(RolloutLearner[SampledBatch]):
    """Collects with μ, stores segments in the replay mix, `update`s on sampled batches."""

    checkpoint_attributes = ("steps_done", "updates", "refreshed_at", "_recent_observation")

    def __init__(
        self,
        params: RolloutParams,
        spec: LearnerSpec,
        *,
        n_steps: int,
        behaviour_refresh: int,
        background_preparation: bool,
    ) -> None:
        if spec.replay is None:
            raise ValueError(f"{type(self).__name__} trains from replay: the learner needs a replay mix (spec.replay)")
        super().__init__(params, spec, n_steps=n_steps)
        self.replay: ReplayMix = spec.replay
        self.behaviour_refresh = behaviour_refresh
        self.budget = spec.env_steps_budget
        self.steps_done = 0
        self.updates = 0

        # μ: a copy of π outside the mixed buffer, refreshed every `behaviour_refresh` updates.
        from benchbase import FlatParameters  # imports torch: here, not with the plugin

        self.behaviour = copy.deepcopy(self.model)
        self.behaviour_flat = FlatParameters(self.behaviour, learns=False)
        self.refreshed_at = 0  # the update count at the last copy

        num_envs = self.env.num_envs
        self._behaviour_out = np.zeros((n_steps, num_envs, self.model.action_outputs), dtype=np.float32)
        self._behaviour_values = np.zeros((n_steps + 1, num_envs), dtype=np.float32)
        self._features = np.zeros((n_steps, num_envs, self.model.feature_dim), dtype=np.float32)
        self._frames = is_image(self.env.observation_space)
        self._recent_observation: torch.Tensor | None = None

        self.lock = threading.Lock()
        self.preparer: BatchPreparer | None = None
        self._pending = False  # a batch requested from the preparer and not yet taken
        self._prepared: SampledBatch | None = None  # a batch taken from the preparer, trained on next
        if background_preparation:
            self.preparer = BatchPreparer(self.replay, self.lock)
            # The preparer's scorer: a snapshot of π's trunk, copied in before each request.
            self._snapshot_model = copy.deepcopy(self.model).requires_grad_(False)

    def current_lr(self) -> float:
        """The learning rate of this iteration's update, from the env steps done before it
        (`steps_done`, `budget`); constant unless a subclass schedules it."""
        return self.optimizer.defaults["lr"]

    # -- what the core calls ----------------------------------------------------------------

    def iterate(self) -> IterationOutput:
        lr = self.begin_iteration()
        segments, finished = self.collect_segments()
        batch, statistics = self.offer(segments)
        learned = None
        if batch is not None:
            self.set_lr(lr)
            learned = self.update(batch)
        return self.iteration_output(lr, learned, statistics, finished)

    # -- the steps of an iteration (a learner block runs them for each of its learners) ---------------

    def begin_iteration(self) -> float:
        """Refresh μ; this iteration's learning rate, from the steps done before it (the first
        update uses lr)."""
        self._refresh_behaviour()
        return self.current_lr()

    def offer(self, segments: list[Segment]) -> tuple[SampledBatch | None, dict[str, float]]:
        """Count the collected steps and add the segments to the mix; the batch to train on now
        (None while the mix cannot answer yet) and the mix's statistics."""
        self.steps_done += self.n_steps * self.env.num_envs
        return self._next_batch(segments)

    def iteration_output(
        self, lr: float, learned: dict[str, float] | None, statistics: dict[str, float], finished: list
    ) -> IterationOutput:
        """The iteration's output, with the update's metrics `learned` (None: no update)."""
        metrics: dict[str, float] = {"lr": lr}
        if learned is not None:
            metrics.update(learned)
            self.updates += 1
        metrics["updated"] = float(learned is not None)
        metrics["updates"] = float(self.updates)
        metrics.update(statistics)
        return IterationOutput(env_steps=self.n_steps * self.env.num_envs, finished=finished, metrics=metrics)

    def _next_batch(self, segments: list[Segment]) -> tuple[SampledBatch | None, dict[str, float]]:
        """Adds the new segments to the mix; the batch to train on now (None while the mix cannot
        answer yet) and the mix's statistics."""
        batch = None
        if self.preparer is None:
            for segment in segments:
                self.replay.add(segment)
            if self.replay.can_sample():
                batch = SampledBatch(*self.replay.sample(self.scorer()))
            return batch, self.replay.statistics()
        self._take_prepared()  # drawn after the previous iteration's segments were added
        batch, self._prepared = self._prepared, None
        with self.lock:  # nothing is being sampled now: the statistics cover the batch just taken
            statistics = self.replay.statistics()
            for segment in segments:
                self.replay.add(segment)
            ready = self.replay.can_sample()
        if ready:
            self.preparer.request(self._snapshot_scorer())
            self._pending = True
        return batch, statistics

    def _take_prepared(self) -> None:
        """Wait for the batch being drawn in the background, if any, and keep it in `_prepared`."""
        if self._pending:
            self._prepared = SampledBatch(*self.preparer.take())
            self._pending = False

    def state_dict(self, replay: bool = False) -> dict[str, Any]:
        """The base's state and μ; the replay buffers' contents only when asked (they can be large:
        without them a resumed learner refills its buffers), with the batch drawn for the next
        iteration: waiting for it first makes the state the same however far the preparer had got
        (buffers, their RNGs and counters as after that draw)."""
        state = {**super().state_dict(), "behaviour": self.behaviour_flat.data.detach().to("cpu", copy=True)}
        if replay:
            self._take_prepared()
            with self.lock:
                state["replay"] = self.replay.state_dict()
            prepared = self._prepared
            state["prepared_batch"] = (
                None
                if prepared is None
                else {"segments": [segment.to_dict() for segment in prepared.segments], "taken": dict(prepared.taken)}
            )
        return state

    def load_state_dict(self, state: dict[str, Any], *, mode: Literal["resume", "init", "model"] = "resume") -> None:
        super().load_state_dict(state, mode=mode)
        self.behaviour_flat.data.copy_(state["behaviour"] if mode == "resume" else self.flat.data)
        if mode == "resume" and "replay" in state:
            self.replay.load_state_dict(state["replay"])
            prepared = state.get("prepared_batch")
            if prepared is not None and self.preparer is not None:
                segments = [Segment.from_dict(values) for values in prepared["segments"]]
                self._prepared = SampledBatch(segments, dict(prepared["taken"]))

    def close(self) -> None:
        if self.preparer is not None:
            self.preparer.close()
            self.preparer = None

    # -- the behaviour network and the scorers ----------------------------------------------------

    def _refresh_behaviour(self) -> None:
        if self.updates - self.refreshed_at >= self.behaviour_refresh:
            self.behaviour_flat.data.copy_(self.flat.data)
            self.refreshed_at = self.updates

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
        with torch.inference_mode():
            self._behaviour_values[self.n_steps] = self.critic_values(torch.from_numpy(last).to(self.device))
        collected = BehaviourRollout(
            self._observations,
            last,
            self._actions,
            rewards,
            self._ended,
            self._behaviour_out,
            self._behaviour_values,
            self._features,
        )
        return self.segments(collected), finished

    def segments(self, collected: BehaviourRollout) -> list[Segment]:
        """One segment per simulator of what μ collected (a learner block collects for its
        learners and hands each its part); the last state becomes the most recent one seen."""
        discounts = (self.gamma * (~collected.ended)).astype(np.float32)
        observations = np.concatenate([collected.observations, collected.last[None]])  # [T+1, P, *obs]
        if self._frames:  # frames stay uint8 in replay: a quarter of the memory (the CNN scales them)
            observations = observations.astype(np.uint8)
        log_std = self.behaviour.log_std.detach().clone() if self.continuous else None

        segments = []
        for p in range(self.env.num_envs):
            segments.append(
                Segment(
                    observations=torch.from_numpy(observations[:, p].copy()),
                    actions=torch.from_numpy(collected.actions[:, p].copy()),
                    rewards=torch.from_numpy(np.ascontiguousarray(collected.rewards[:, p], dtype=np.float32)),
                    discounts=torch.from_numpy(discounts[:, p].copy()),
                    behaviour_logits=torch.from_numpy(collected.behaviour_out[:, p].copy()),
                    behaviour_values=torch.from_numpy(collected.behaviour_values[:, p].copy()),
                    features=torch.from_numpy(collected.features[:, p].copy()),
                    behaviour_log_std=None if log_std is None else log_std.cpu(),
                )
            )
        # The most recent state seen: the last one of the last segment offered to the buffers.
        self._recent_observation = segments[-1].observations[-1].clone()
        return segments

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """μ acts, and what it computed is kept for the segments: features, outputs, values."""
        actor_out = behaviour_step(self.behaviour, observations, t, self._features, self._behaviour_out)
        self._behaviour_values[t] = self.critic_values(observations)
        return distributions.sample(actor_out, self.behaviour.action_log_std()).cpu().numpy()

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        return self.behaviour.value(observations).cpu().numpy()  # bootstraps use μ's critic, as acting does


def behaviour_step(
    behaviour: Any, observations: torch.Tensor, t: int, features: np.ndarray, outputs: np.ndarray
) -> torch.Tensor:
    """μ's outputs on step t's observations (one network, or a block's stacked ones), with its
    features φ and outputs written into row t of `features` and `outputs` for the segments."""
    phi = behaviour.features(observations)
    actor_out = behaviour.policy_head(phi)
    features[t] = phi.cpu().numpy()
    outputs[t] = actor_out.cpu().numpy()
    return actor_out


def segment_bytes(unroll_length: int, hidden: int, observation_space: Any, action_space: Any) -> int:
    """Bytes of one segment as `collect_segments` stores it: float32 everywhere except frames
    (uint8) and discrete actions (int64)."""
    steps, obs = unroll_length, int(np.prod(observation_space.shape))
    continuous, outputs = action_outputs(action_space)
    # observations, rewards and discounts, behaviour logits (or means), values, features
    frames = is_image(observation_space)
    features = NATURE_CNN_FEATURES if frames else hidden  # the Nature CNN's width is fixed
    floats = 2 * steps + steps * outputs + (steps + 1) + steps * features
    observation_bytes = (steps + 1) * obs * (1 if frames else 4)  # frames are stored as uint8
    if continuous:
        floats += steps * outputs + outputs  # actions and the behaviour log-std
    return observation_bytes + 4 * floats + (0 if continuous else 8 * steps)
