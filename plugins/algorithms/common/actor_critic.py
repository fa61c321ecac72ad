"""Shared pieces of the on-policy actor-critic learners: normalisation, rollouts, returns (the
networks are in `networks`).

Algorithms subclass `OnPolicyLearner` and write only their `update` (Stable-Baselines3's shape:
the base collects, the algorithm learns). Facts follow `reference/algorithms.md`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from benchbase.api.contracts import (
    FinishedEpisode,
    IterationOutput,
    LearnerSpec,
    TaskVectorEnv,
)
from benchbase.comm.flat import FlatParameters
from plugins.algorithms.common.networks import ActorCritic, build_model, is_image


class ActionDistribution:
    """Sampling, log-probabilities and entropy for the actor's output, without the overhead of
    `torch.distributions` (acting is the hot loop)."""

    def __init__(self, model: ActorCritic) -> None:
        self.model = model

    def sample(self, actor_out: torch.Tensor) -> torch.Tensor:
        if self.model.continuous:
            return actor_out + self.model.log_std.exp() * torch.randn_like(actor_out)
        return torch.multinomial(torch.softmax(actor_out, dim=-1), 1).squeeze(-1)

    def greedy(self, actor_out: torch.Tensor) -> torch.Tensor:
        return actor_out if self.model.continuous else actor_out.argmax(dim=-1)

    def log_prob_entropy(self, actor_out: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model.continuous:
            log_std = self.model.log_std
            log_prob = (-0.5 * ((actions - actor_out) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum().expand(actor_out.shape[0])
            return log_prob, entropy
        log_probs = torch.log_softmax(actor_out, dim=-1)
        log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy


# -- normalisation (statistics stay local to a learner) ---------------------------------------


class RunningMeanStd:
    """Running mean and variance over batches (parallel-variance update)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


class ObservationNormaliser:
    """(obs − mean) / std, clipped to ±clip. Statistics are refreshed once per rollout."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.clip = clip
        self.stats = RunningMeanStd(shape)
        self._refresh()

    def _refresh(self) -> None:
        self._mean = self.stats.mean.astype(np.float32)
        self._inv_std = (1.0 / np.sqrt(self.stats.var + 1e-8)).astype(np.float32)

    def update(self, raw_batch: np.ndarray) -> None:
        if self.enabled:
            self.stats.update(raw_batch.reshape(-1, *self.stats.mean.shape))
            self._refresh()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self._refresh()

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return raw.astype(np.float32, copy=False)
        # float32 whatever the env gives (Gymnasium's MuJoCo envs give float64)
        return np.clip((raw - self._mean) * self._inv_std, -self.clip, self.clip).astype(np.float32, copy=False)


class RewardScaler:
    """Divides rewards by the running std of each simulator's discounted return (clip ±clip)."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.stats = RunningMeanStd(())
        self.discounted = np.zeros(num_envs, dtype=np.float64)

    def scale(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Scale a rollout's rewards [T, P]; `ended[t]` marks episodes that ended at step t."""
        if not self.enabled:
            return rewards
        returns = np.empty_like(rewards, dtype=np.float64)
        for t in range(rewards.shape[0]):
            self.discounted = self.discounted * self.gamma + rewards[t]
            returns[t] = self.discounted
            self.discounted[ended[t]] = 0.0
        self.stats.update(returns.reshape(-1))
        return np.clip(rewards / np.sqrt(self.stats.var + 1e-8), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "discounted": self.discounted.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.discounted = np.array(state["discounted"])


# -- returns ----------------------------------------------------------------------------------


def discounted_returns(rewards: np.ndarray, not_done: np.ndarray, bootstrap: np.ndarray, gamma: float) -> np.ndarray:
    """n-step bootstrapped returns: R_t = r_t + γ·m_t·R_{t+1}, R_T = V(s_T); m_t = 0 if the episode
    ended at step t. Arrays are [T, P]; `bootstrap` is [P]."""
    returns = np.empty_like(rewards, dtype=np.float32)
    running = bootstrap.astype(np.float32)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * not_done[t] * running
        returns[t] = running
    return returns


def gae_advantages(
    rewards: np.ndarray, values: np.ndarray, not_done: np.ndarray, bootstrap: np.ndarray, gamma: float, lam: float
) -> np.ndarray:
    """Generalised advantage estimates A_t = Σ_k (γλ)^k δ_{t+k}, δ_t = r_t + γ m_t V_{t+1} − V_t."""
    advantages = np.empty_like(rewards, dtype=np.float32)
    running = np.zeros_like(bootstrap, dtype=np.float32)
    next_value = bootstrap.astype(np.float32)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * not_done[t] * next_value - values[t]
        running = delta + gamma * lam * not_done[t] * running
        advantages[t] = running
        next_value = values[t]
    return advantages


# -- the on-policy learner --------------------------------------------------------------------


@dataclass
class Rollout:
    """T steps from P simulators. Observations are as the policy saw them (normalised)."""

    observations: np.ndarray  # [T, P, *obs_shape] float32
    actions: np.ndarray  # [T, P] int64 or [T, P, act_dim] float32
    rewards: np.ndarray  # [T, P] float32, scaled, truncation bootstrap included
    not_done: np.ndarray  # [T, P] float32: 0 where the episode ended at step t
    last_observations: np.ndarray  # [P, *obs_shape] float32, for the bootstrap V(s_T)


class OnPolicyLearner:
    """Collects T-step rollouts from the learner's simulators; subclasses write `update`."""

    #: Plain attributes (counters, schedules) a checkpoint carries besides the base's state.
    checkpoint_attributes: tuple[str, ...] = ()

    def __init__(
        self,
        spec: LearnerSpec,
        *,
        n_steps: int,
        gamma: float,
        hidden: int,
        normalise_observations: bool,
        normalise_rewards: bool,
    ) -> None:
        self.env: TaskVectorEnv = spec.env
        self.device = torch.device(spec.device)
        self.n_steps = n_steps
        self.gamma = gamma
        # Same torch seed on every learner: every learner starts from the same parameters.
        torch.manual_seed(spec.seed)
        self.model = build_model(self.env.observation_space, self.env.action_space, hidden).to(self.device)
        self.flat = FlatParameters(self.model)
        self.distribution = ActionDistribution(self.model)
        # From here on each learner samples its own actions.
        torch.manual_seed(spec.seed * 100_003 + spec.rank + 1)

        num_envs = self.env.num_envs
        obs_shape = self.env.observation_space.shape
        action_space = self.env.action_space
        self.continuous = isinstance(action_space, spaces.Box)
        if self.continuous:
            self._action_low = action_space.low.astype(np.float32)
            self._action_high = action_space.high.astype(np.float32)
        # Images are scaled to [0, 1] by the network; running statistics per pixel would not help.
        self.obs_normaliser = ObservationNormaliser(obs_shape, normalise_observations and not is_image(self.env.observation_space))
        self.reward_scaler = RewardScaler(num_envs, gamma, normalise_rewards)

        self._reset_seed = spec.seed * 1_000_003 + spec.rank
        self._raw_obs = self.env.reset(seed=self._reset_seed)
        self._observations = np.zeros((n_steps, num_envs, *obs_shape), dtype=np.float32)
        self._raw_observations = np.zeros((n_steps + 1, num_envs, *obs_shape), dtype=np.float32)
        action_shape = (n_steps, num_envs, *action_space.shape) if self.continuous else (n_steps, num_envs)
        self._actions = np.zeros(action_shape, dtype=np.float32 if self.continuous else np.int64)
        self._rewards = np.zeros((n_steps, num_envs), dtype=np.float32)
        self._ended = np.zeros((n_steps, num_envs), dtype=bool)
        self._truncation_bonus = np.zeros((n_steps, num_envs), dtype=np.float32)

    # -- what the core calls ----------------------------------------------------------------

    def parameters_buffer(self) -> torch.Tensor:
        return self.flat.data

    def iterate(self) -> IterationOutput:
        rollout, finished = self.collect()
        metrics = self.update(rollout)
        return IterationOutput(env_steps=self.n_steps * self.env.num_envs, finished=finished, metrics=metrics)

    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            obs = torch.from_numpy(self.obs_normaliser(observations)).to(self.device)
            actions = self.distribution.greedy(self.model.actor(obs)).cpu().numpy()
        return self._to_env(actions)

    def act_sampled(self, observations: np.ndarray) -> np.ndarray:
        """Actions drawn from π (stochastic evaluation)."""
        with torch.inference_mode():
            obs = torch.from_numpy(self.obs_normaliser(observations)).to(self.device)
            actions = self.distribution.sample(self.model.actor(obs)).cpu().numpy()
        return self._to_env(actions)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
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

    def load_state_dict(self, state: dict, *, mode: str = "resume") -> None:
        """Carry on from `state_dict()`'s output. `mode`: "resume" restores everything; "init"
        (a new run starting from a checkpoint) the model, normalisation statistics and the
        optimiser's moments, keeping this learner's hyperparameters; "model" (evaluation) the
        model and normalisation statistics."""
        parameters = state["parameters"]
        if parameters.numel() != self.flat.data.numel():
            raise ValueError(
                f"the checkpoint's model has {parameters.numel():,} parameters, this learner's {self.flat.data.numel():,} "
                "(a different architecture: hidden size, env or algorithm)"
            )
        self.flat.data.copy_(parameters.to(self.flat.data.device))
        self.obs_normaliser.load_state_dict(state["observation_statistics"])
        self.reward_scaler.stats.load_state_dict(state["reward_statistics"])
        if mode == "model":
            return
        if mode == "init":
            saved = state["optimizer"]
            current = self.optimizer.state_dict()
            if len(saved["param_groups"]) == len(current["param_groups"]) and set(
                key for group in saved["param_groups"] for key in group
            ) == set(key for group in current["param_groups"] for key in group):
                self.optimizer.load_state_dict({"state": saved["state"], "param_groups": current["param_groups"]})
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

    # -- algorithm-specific ---------------------------------------------------------------------

    def update(self, rollout: Rollout) -> dict[str, float]:
        raise NotImplementedError

    # -- collection -----------------------------------------------------------------------------

    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, self._action_low, self._action_high) if self.continuous else actions

    def collect(self) -> tuple[Rollout, list[FinishedEpisode]]:
        finished, last, rewards = self.roll_out()
        rollout = Rollout(
            observations=self._observations,
            actions=self._actions,
            rewards=rewards,
            not_done=(~self._ended).astype(np.float32),
            last_observations=last,
        )
        return rollout, finished

    def roll_out(self) -> tuple[list[FinishedEpisode], np.ndarray, np.ndarray]:
        """T steps from every simulator, acting with `act`. Returns the finished episodes, the
        normalised last observations (for the bootstrap V(s_T)) and the training rewards (scaled,
        with the time-limit bootstrap γ·V(cut-off state) from `critic_values` folded in)."""
        finished: list[FinishedEpisode] = []
        self._truncation_bonus.fill(0.0)
        with torch.inference_mode():
            for t in range(self.n_steps):
                self._raw_observations[t] = self._raw_obs
                obs = self.obs_normaliser(self._raw_obs)
                self._observations[t] = obs
                actions = self.act(t, torch.from_numpy(obs).to(self.device))
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
                if result.finished:
                    finished.extend(result.finished)
                self._raw_obs = result.observations
        self._raw_observations[self.n_steps] = self._raw_obs
        last = self.obs_normaliser(self._raw_obs)
        self.obs_normaliser.update(self._raw_observations[1:])
        rewards = self.reward_scaler.scale(self._rewards, self._ended) + self._truncation_bonus
        return finished, last, rewards

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """Actions for step t of the rollout (normalised observations); π samples them here."""
        return self.distribution.sample(self.model.actor(observations)).cpu().numpy()

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        """V of normalised observations, for the time-limit bootstrap (the acting network's critic)."""
        return self.model.value(observations).cpu().numpy()
