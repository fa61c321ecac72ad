"""The base of the built-in learners: what every one of them shares.

`RolloutLearner` holds the model on flat parameters (what the core mixes), the observation
normaliser and reward scaler, acting through `distributions`, T-step collection from the
learner's simulators (`roll_out`), the optimiser step and checkpoints. It leaves one method to
write, `update(batch)`: its siblings `on_policy.OnPolicyLearner` (A2C, PPO, GALA: the batch is
the rollout just collected) and `off_policy.OffPolicyLearner` (V-trace: segments sampled from
replay) decide what a batch is, and an algorithm writes only its `update` (Stable-Baselines3's
shape: the bases collect, the algorithm learns). Facts follow `reference/algorithms.md`.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np
from gymnasium import spaces

from benchbase import FinishedEpisode, Learner, LearnerSpec, TaskVectorEnv, lazy_import
from plugins.algorithms.common import distributions
from plugins.algorithms.common.normalisation import (
    MixedStatistics,
    NormaliserMode,
    ObservationNormaliser,
    RewardScaler,
)
from plugins.algorithms.common.observations import is_image

if TYPE_CHECKING:
    import torch

    from plugins.algorithms.common import optimisers
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it
    optimisers = lazy_import("plugins.algorithms.common.optimisers")  # imports torch

Batch = TypeVar("Batch")


class RolloutParams(Protocol):
    """The fields of an algorithm's Params that the base reads."""

    gamma: float
    hidden: int
    normaliser: NormaliserMode
    normalise_rewards: bool


def check_finite_gradient(learner: RolloutLearner, grad_norm: float) -> None:
    """Fail the learner whose gradient is not finite before its optimiser step writes NaN into its
    parameters (from where mixing would spread them to its neighbours)."""
    if not math.isfinite(grad_norm):
        raise FloatingPointError(
            f"learner {learner.rank}: its gradient's norm is {grad_norm} (training diverged; a smaller lr may help)"
        )


class RolloutLearner(Learner, ABC, Generic[Batch]):
    """A model acting in the learner's simulators T steps at a time; subclasses write `update`
    and build `self.optimizer` over `self.flat.parameter`."""

    checkpointable = True
    has_sampled_policy = True
    #: Plain attributes (counters, schedules) a checkpoint carries besides the base's state.
    checkpoint_attributes: ClassVar[tuple[str, ...]] = ()
    optimizer: torch.optim.Optimizer

    def __init__(self, params: RolloutParams, spec: LearnerSpec, *, n_steps: int) -> None:
        # Imported here, not with the plugin: both import torch (networks defines nn.Module subclasses).
        from benchbase import FlatParameters
        from plugins.algorithms.common.networks import build_model

        self.params = params
        self.env: TaskVectorEnv = spec.env
        self.rank = spec.rank
        self.device = torch.device(spec.device)
        self.n_steps = n_steps
        self.gamma = params.gamma
        # Same torch seed on every learner: every learner starts from the same parameters.
        torch.manual_seed(spec.seed)
        self.model = build_model(self.env.observation_space, self.env.action_space, params.hidden).to(self.device)
        obs_shape = self.env.observation_space.shape
        # Images are scaled to [0, 1] by the network; running statistics per pixel would not help.
        normaliser: NormaliserMode = "off" if is_image(self.env.observation_space) else params.normaliser
        # "mixed" statistics travel after the parameters in the buffer the core mixes.
        extra = MixedStatistics.size(obs_shape) if normaliser == "mixed" else 0
        self.flat = FlatParameters(self.model, extra=extra)
        # From here on each learner samples its own actions.
        torch.manual_seed(spec.seed * 100_003 + spec.rank + 1)

        num_envs = self.env.num_envs
        action_space = self.env.action_space
        self.continuous = isinstance(action_space, spaces.Box)
        if self.continuous:
            self._action_low = action_space.low.astype(np.float32)
            self._action_high = action_space.high.astype(np.float32)
        self.obs_normaliser = ObservationNormaliser(obs_shape, normaliser, mixed_values=self.flat.extra)
        self._mix_since_refresh = False  # whether the core may have mixed the statistics since they were read
        self.reward_scaler = RewardScaler(num_envs, params.gamma, params.normalise_rewards)

        self._reset_seed = spec.seed * 1_000_003 + spec.rank
        self._raw_obs = self.env.reset(seed=self._reset_seed)
        self._observations = np.zeros((n_steps, num_envs, *obs_shape), dtype=np.float32)
        self._raw_observations = np.zeros((n_steps + 1, num_envs, *obs_shape), dtype=np.float32)
        action_shape = (n_steps, num_envs, *action_space.shape) if self.continuous else (n_steps, num_envs)
        self._actions = np.zeros(action_shape, dtype=np.float32 if self.continuous else np.int64)
        self._rewards = np.zeros((n_steps, num_envs), dtype=np.float32)
        self._ended = np.zeros((n_steps, num_envs), dtype=bool)
        self._truncation_bonus = np.zeros((n_steps, num_envs), dtype=np.float32)

    # -- what the algorithm writes ------------------------------------------------------------

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """Learn from one batch (the sibling base says what a batch is); returns the metrics."""

    # -- optimiser hooks --------------------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next optimiser steps (schedules: `schedules`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_step(self, loss: torch.Tensor, max_grad_norm: float) -> float:
        """One gradient step on `loss`, the gradient norm clipped to `max_grad_norm` (0 = none);
        returns the norm before clipping."""
        self.flat.zero_grad()
        loss.backward()
        grad_norm = self.flat.clip_grad_norm(max_grad_norm)
        check_finite_gradient(self, grad_norm)
        optimisers.step(self.optimizer)
        return grad_norm

    def reseat(self, mixed: torch.Tensor, grad: torch.Tensor) -> None:
        """Move the learner's buffers into a learner block's rows (`FlatParameters.reseat`);
        mixed observation statistics live in that buffer, so they move with it."""
        moved = self.flat.parameter
        self.flat.reseat(mixed, grad)
        # The optimiser follows the parameter, so the buffers it leaves behind are freed (a
        # block's learner would otherwise keep two copies of its parameters it never uses).
        for group in self.optimizer.param_groups:
            group["params"] = [self.flat.parameter if param is moved else param for param in group["params"]]
        if isinstance(self.obs_normaliser.stats, MixedStatistics):
            self.obs_normaliser.stats.values = self.flat.extra

    # -- what the core calls ----------------------------------------------------------------

    def parameters_buffer(self) -> torch.Tensor:
        return self.flat.mixed

    def model_parameters(self) -> torch.Tensor:
        return self.flat.data

    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        self._refresh_mixed_statistics()
        with torch.inference_mode():
            obs = torch.from_numpy(self.obs_normaliser(observations)).to(self.device)
            actions = distributions.greedy(self.model.actor(obs), self.model.action_log_std()).cpu().numpy()
        return self._to_env(actions)

    def act_sampled(self, observations: np.ndarray) -> np.ndarray:
        self._refresh_mixed_statistics()
        with torch.inference_mode():
            obs = torch.from_numpy(self.obs_normaliser(observations)).to(self.device)
            actions = distributions.sample(self.model.actor(obs), self.model.action_log_std()).cpu().numpy()
        return self._to_env(actions)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self, replay: bool = False) -> dict[str, Any]:
        """Everything needed to carry on exactly: parameters, optimiser, normalisers, RNG, the
        simulators (where the env can save them) and the subclass's `checkpoint_attributes`.
        Copies, so a background writer can serialise it while training goes on."""
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        state = {
            "parameters": self.flat.data.detach().to("cpu", copy=True),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "observation_statistics": self.obs_normaliser.stats.state_dict(),
            "reward_statistics": self.reward_scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "env": env_state,
            "last_observations": self._raw_obs.copy() if env_state is not None else None,
            "attributes": {name: copy.deepcopy(getattr(self, name)) for name in self.checkpoint_attributes},
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any], *, mode: Literal["resume", "init", "model"] = "resume") -> None:
        parameters = state["parameters"]
        if parameters.numel() != self.flat.data.numel():
            raise ValueError(
                f"the checkpoint's model has {parameters.numel():,} parameters, "
                f"this learner's {self.flat.data.numel():,} (a different architecture: hidden size, env or algorithm)"
            )
        self.flat.data.copy_(parameters.to(self.flat.data.device))
        self.obs_normaliser.load_state_dict(state["observation_statistics"])
        self.reward_scaler.stats.load_state_dict(state["reward_statistics"])
        if mode == "model":
            return
        if mode == "init":
            self._load_optimizer_moments(state["optimizer"])
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.reward_scaler.load_state_dict(state["reward_statistics"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        for name, value in state["attributes"].items():
            setattr(self, name, value)
        if state["env"] is not None and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(state["env"])
            self._raw_obs = state["last_observations"]
        else:
            # The simulators cannot be saved: start fresh episodes (the ones in flight are lost).
            self._raw_obs = self.env.reset(seed=int(torch.randint(2**31 - 1, (1,))))

    def _load_optimizer_moments(self, saved: dict[str, Any]) -> None:
        """The saved optimiser's per-parameter state under this learner's hyperparameters, when
        the two optimisers have the same shape (the same kind, the same groups)."""
        current = self.optimizer.state_dict()
        if len(saved["param_groups"]) == len(current["param_groups"]) and set(
            key for group in saved["param_groups"] for key in group
        ) == set(key for group in current["param_groups"] for key in group):
            self.optimizer.load_state_dict({"state": saved["state"], "param_groups": current["param_groups"]})

    # -- collection -----------------------------------------------------------------------------

    def _refresh_mixed_statistics(self) -> None:
        """Mixed observation statistics change under the normaliser when the core mixes, which it
        does after each iteration: re-read them once before acting after one, not at every step
        (evaluation acts thousands of times between two mixes)."""
        if self._mix_since_refresh:
            self.obs_normaliser.refresh()
            self._mix_since_refresh = False

    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, self._action_low, self._action_high) if self.continuous else actions

    def roll_out(self) -> tuple[list[FinishedEpisode], np.ndarray, np.ndarray]:
        """T steps from every simulator, acting with `act`. Returns the finished episodes, the
        normalised last observations (for the bootstrap V(s_T)) and the training rewards (scaled,
        with the time-limit bootstrap γ·V(cut-off state) from `critic_values` folded in)."""
        finished: list[FinishedEpisode] = []
        self.begin_rollout()
        with torch.inference_mode():
            for t in range(self.n_steps):
                obs = self.observe(t)
                finished.extend(self.take(t, self.act(t, torch.from_numpy(obs).to(self.device))))
        last, rewards = self.end_rollout()
        return finished, last, rewards

    def begin_rollout(self) -> None:
        self._refresh_mixed_statistics()
        self._truncation_bonus.fill(0.0)

    def observe(self, t: int) -> np.ndarray:
        """The normalised observations the policy acts on at step t (recorded for the update)."""
        self._raw_observations[t] = self._raw_obs
        obs = self.obs_normaliser(self._raw_obs)
        self._observations[t] = obs
        return obs

    def take(self, t: int, actions: np.ndarray) -> list[FinishedEpisode]:
        """Step every simulator with step t's actions (inside `torch.inference_mode`); the episodes
        that ended."""
        self._actions[t] = actions
        result = self.env.step(self._to_env(actions))
        self._rewards[t] = result.rewards
        ended = result.terminated | result.truncated
        self._ended[t] = ended
        if result.truncated.any():
            # A time limit is not a terminal state: bootstrap from the state it cut off.
            cut = result.truncated & ~result.terminated
            if cut.any():
                final = torch.from_numpy(self.obs_normaliser(result.final_observations[cut])).to(self.device)
                self._truncation_bonus[t, cut] = self.gamma * self.critic_values(final)
        self._raw_obs = result.observations
        return result.finished or []

    def end_rollout(self) -> tuple[np.ndarray, np.ndarray]:
        """The normalised last observations and the training rewards; the statistics updated."""
        self._raw_observations[self.n_steps] = self._raw_obs
        last = self.obs_normaliser(self._raw_obs)
        self.obs_normaliser.update(self._raw_observations[1:])
        self._mix_since_refresh = self.obs_normaliser.mode == "mixed"  # the core mixes after this iteration
        rewards = self.reward_scaler.scale(self._rewards, self._ended) + self._truncation_bonus
        return last, rewards

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """Actions for step t of the rollout (normalised observations); π samples them here."""
        return distributions.sample(self.model.actor(observations), self.model.action_log_std()).cpu().numpy()

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        """V of normalised observations, for the time-limit bootstrap (the acting network's critic)."""
        return self.model.value(observations).cpu().numpy()
