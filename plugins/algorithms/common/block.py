"""Learner blocks of the built-in learners: K learners of one cell in one process.

`RolloutBlock` builds its K learners as usual (each with its own simulators, normalisers and
seeds), then re-seats their flat parameter buffers as the rows of one [K, numel] tensor. From
there the learners act together: at each rollout step one normalisation gives every learner's
observations under its own statistics, one batched pass of the stacked network
(`common/stacked.py`) gives every learner's action distribution, one draw samples all actions
and one call of the block's env
(`benchbase.EnvBlock`) steps every learner's simulators; each learner's rewards are scaled by
its own statistics. `OnPolicyBlock` then learns from that rollout: an algorithm's block writes
`update(rollout)` with a leading learner dimension (off-policy blocks learn from each learner's
replay: `common/off_policy_block.py`). Every block steps one optimiser, built over the stacked
parameter: Adam and RMSprop act element by element, so each row evolves as its learner's own
optimiser would, and gradients are clipped per row.

What differs from one learner per process: the learners share the process's random stream for
sampling actions (one draw for the block), and batched products round differently from
single ones, so a block's run is not bit for bit the one-process-per-learner run; it is the
same algorithm on the same data (given the same actions, each learner's rollout is the one it
collects alone), and its checkpoints resume it exactly (docs/scaling.md).

While the block trains it holds each learner's reward statistics and current observations;
`save_learner_state` writes them into the learner before a checkpoint, so checkpoints of a
block's learner have the format of a learner of its own process (with its row of the
optimiser's state), and either kind loads the other's (`bench eval`, `--init-from`).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from benchbase import ConcatenatedEnvs, EnvBlock, FinishedEpisode, IterationOutput, Learner, LearnerBlock, lazy_import
from plugins.algorithms.common import distributions
from plugins.algorithms.common.normalisation import StackedNormalisers, StackedRewardScalers
from plugins.algorithms.common.on_policy import BlockRollout
from plugins.algorithms.common.rollout import RolloutLearner, check_finite_gradient
from plugins.algorithms.common.stacked import stacked_network

if TYPE_CHECKING:
    import torch

    from plugins.algorithms.common import optimisers
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it
    optimisers = lazy_import("plugins.algorithms.common.optimisers")  # imports torch


def blockable(learner: RolloutLearner) -> bool:
    """Whether learners like this one can form a block (a network with a stacked form)."""
    from plugins.algorithms.common.networks import MLPActorCritic, NatureCNNActorCritic

    return isinstance(learner.model, (MLPActorCritic, NatureCNNActorCritic))


def block_of(
    block: type[RolloutBlock], learner: type[RolloutLearner], params: Any, specs: list, envs: EnvBlock | None
) -> Any:
    """An algorithm's `make_learner_block`: its learners for `specs` as one `block`, or None when
    their network has no stacked form."""
    learners = [learner(params, spec) for spec in specs]
    if not blockable(learners[0]):
        for built in learners:
            built.close()
        return None
    return block(params, learners, envs)


class BlockMember(Learner):
    """Learner k of a block as the core sees a learner: its model (views of its rows) for acting
    and evaluation, and checkpoints in the format of a learner of its own process."""

    checkpointable = True
    has_sampled_policy = True

    def __init__(self, block: RolloutBlock, index: int, learner: RolloutLearner) -> None:
        self.block, self.index, self.learner = block, index, learner

    def parameters_buffer(self) -> torch.Tensor:
        return self.learner.flat.mixed

    def model_parameters(self) -> torch.Tensor:
        return self.learner.flat.data

    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        return self.learner.act_greedy(observations)

    def act_sampled(self, observations: np.ndarray) -> np.ndarray:
        return self.learner.act_sampled(observations)

    def state_dict(self, replay: bool = False) -> dict[str, Any]:
        self.block.save_learner_state(self.index)
        state = self.learner.state_dict(replay)
        state["optimizer"] = self.block.optimizer_row(self.index)
        return state

    def load_state_dict(self, state: dict[str, Any], *, mode: Literal["resume", "init", "model"] = "resume") -> None:
        self.learner.load_state_dict(state, mode=mode)
        self.block.load_learner_state(self.index)
        if mode != "model":
            self.block.load_optimizer_row(self.index, state["optimizer"])
        self.learner.optimizer.state.clear()  # the block's optimiser steps this learner: its own keeps no moments

    def close(self) -> None:
        self.learner.close()


class RolloutBlock(LearnerBlock):
    """K learners with stacked parameters that collect together; subclasses write `iterate` and
    build `self.optimizer` over `self.parameter` ([K, parameters])."""

    optimizer: torch.optim.Optimizer

    def __init__(self, learners: list[RolloutLearner], envs: EnvBlock | None = None) -> None:
        first = learners[0]
        self.members = learners  # the learners themselves; `learners` are their core-facing views
        self.device = first.device
        self.n_steps = first.n_steps
        self.gamma = first.gamma
        numel, total = first.flat.mixed.numel(), first.flat.data.numel()
        dtype = first.flat.data.dtype
        self._stacked = torch.zeros(len(learners), numel, dtype=dtype, device=self.device)
        # Gradient rows as wide as the parameter rows (the mixed statistics' columns stay 0): a
        # gradient strided like its parameter is what autograd accumulates into without a copy.
        self._grad = torch.zeros(len(learners), numel, dtype=dtype, device=self.device)
        for k, learner in enumerate(learners):
            learner.reseat(self._stacked[k], self._grad[k, :total])
        self.parameter = torch.nn.Parameter(self._stacked[:, :total])
        self.parameter.grad = self._grad[:, :total]
        self.network = stacked_network(first.model, self._stacked, self._grad)
        self.learners = [BlockMember(self, k, learner) for k, learner in enumerate(learners)]

        # Collection for every learner at once: one env step, one normalisation, one scaling.
        self.envs = envs if envs is not None else ConcatenatedEnvs([learner.env for learner in learners])
        mixed_rows = self._stacked[:, total:] if first.obs_normaliser.mode == "mixed" else None
        self.normalisers = StackedNormalisers([learner.obs_normaliser for learner in learners], mixed_rows)
        self.reward_scalers = StackedRewardScalers([learner.reward_scaler for learner in learners])
        shape = (len(learners), first.env.num_envs)  # [K, P]
        obs_shape = first.env.observation_space.shape
        steps = self.n_steps
        self._raw_obs = np.stack([learner._raw_obs for learner in learners])
        self._raw_observations = np.zeros((steps + 1, *shape, *obs_shape), dtype=np.float32)
        self._observations = np.zeros((steps, *shape, *obs_shape), dtype=np.float32)
        self._actions = np.zeros((steps, *shape, *first._actions.shape[2:]), dtype=first._actions.dtype)
        self._rewards = np.zeros((steps, *shape), dtype=np.float32)
        self._ended = np.zeros((steps, *shape), dtype=bool)
        self._truncation_bonus = np.zeros((steps, *shape), dtype=np.float32)

    # -- what the core calls --------------------------------------------------------------------

    def parameters(self) -> torch.Tensor:
        return self._stacked

    # -- collection -----------------------------------------------------------------------------

    def roll_out(self) -> tuple[list[list[FinishedEpisode]], np.ndarray, np.ndarray]:
        """T steps of every learner's simulators, as `RolloutLearner.roll_out` takes them for one
        learner, with a learner axis: actions from one batched pass of the policies (`act`), one
        step of the block's env, each learner's normalisation and reward scaling. Every learner's
        finished episodes, the normalised last observations [K, P, *obs] and the training rewards
        [T, K, P] (scaled, with the time-limit bootstrap from `critic_values` folded in)."""
        learners, per_learner = self._raw_obs.shape[:2]
        finished: list[list[FinishedEpisode]] = [[] for _ in range(learners)]
        if self.normalisers.mode == "mixed":
            self.normalisers.refresh()  # the core mixed the statistics with the parameters
        self._truncation_bonus.fill(0.0)
        with torch.inference_mode():
            for t in range(self.n_steps):
                self._raw_observations[t] = self._raw_obs
                observations = self.normalisers(self._raw_obs)
                self._observations[t] = observations
                actions = self.act(t, torch.from_numpy(observations).to(self.device))
                self._actions[t] = actions
                result = self.envs.step(self._to_env(actions).reshape(learners * per_learner, *actions.shape[2:]))
                self._rewards[t] = result.rewards.reshape(learners, per_learner)
                self._ended[t] = (result.terminated | result.truncated).reshape(learners, per_learner)
                if result.truncated.any():
                    # A time limit is not a terminal state: bootstrap from the state it cut off.
                    cut = (result.truncated & ~result.terminated).reshape(learners, per_learner)
                    if cut.any():
                        final = self.normalisers(result.final_observations.reshape(self._raw_obs.shape))
                        values = self.critic_values(torch.from_numpy(final).to(self.device))
                        self._truncation_bonus[t][cut] = self.gamma * values[cut]
                for episode in result.finished:
                    k, simulator = divmod(episode.simulator, per_learner)
                    finished[k].append(dataclasses.replace(episode, simulator=simulator))
                self._raw_obs = result.observations.reshape(self._raw_obs.shape)
        self._raw_observations[self.n_steps] = self._raw_obs
        last = self.normalisers(self._raw_obs)
        self.normalisers.update(self._raw_observations[1:])
        if self.normalisers.mode == "mixed":
            for learner in self.members:
                learner._mix_since_refresh = True  # their acting (evaluation) re-reads the mixed statistics
        rewards = self.reward_scalers.scale(self._rewards, self._ended) + self._truncation_bonus
        return finished, last, rewards

    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        return self.members[0]._to_env(actions)

    def act(self, t: int, observations: torch.Tensor) -> np.ndarray:
        """Actions [K, P, …] for step t, drawn from each learner's policy for observations [K, P, obs]."""
        return sample(self.network.actor(observations), self.network.action_log_std())

    def critic_values(self, observations: torch.Tensor) -> np.ndarray:
        """Each learner's V [K, P] of normalised observations [K, P, obs], for the time-limit
        bootstrap (the acting network's critic)."""
        return self.network.value(observations).cpu().numpy()

    # -- each learner's own objects, for its checkpoints ----------------------------------------

    def save_learner_state(self, index: int) -> None:
        """Write what the block keeps for learner `index` while it trains (its reward statistics,
        its simulators' current observations) into the learner, which checkpoints it."""
        learner = self.members[index]
        self.reward_scalers.save_to(index, learner.reward_scaler)
        learner._raw_obs = self._raw_obs[index].copy()

    def load_learner_state(self, index: int) -> None:
        """Take learner `index`'s state back after it loaded a checkpoint."""
        learner = self.members[index]
        self.reward_scalers.load_from(index, learner.reward_scaler)
        self._raw_obs[index] = learner._raw_obs
        self.normalisers.refresh()

    # -- the optimiser -------------------------------------------------------------------------

    def optimizer_step(self, loss: torch.Tensor, max_grad_norm: float) -> list[float]:
        """One step of every learner on the sum of their losses (learners share no parameter, so
        row k of the gradient is learner k's), each row clipped to `max_grad_norm` (0 = none) as
        its own learner would; each learner's gradient norm before clipping."""
        self._grad.zero_()
        loss.backward()
        norms = torch.linalg.vector_norm(self._grad, dim=1)
        values = norms.tolist()
        for member, norm in zip(self.members, values):
            check_finite_gradient(member, norm)
        if max_grad_norm > 0 and max(values) > max_grad_norm:  # else no row is scaled: no pass over them
            # Each row's factor as its learner alone computes it (FlatParameters.clip_grad_norm).
            scale = [max_grad_norm / (norm + 1e-6) if norm > max_grad_norm else 1.0 for norm in values]
            self._grad.mul_(torch.tensor(scale, dtype=self._grad.dtype, device=self._grad.device).unsqueeze(1))
        optimisers.step(self.optimizer)
        return values

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_row(self, index: int) -> dict[str, Any]:
        """Learner `index`'s optimiser state, as its own optimiser's `state_dict()` would be."""
        saved = self.optimizer.state_dict()
        rows = self.parameter.shape[0]

        def own(value: Any) -> Any:
            if not torch.is_tensor(value):
                return copy.deepcopy(value)
            if value.dim() == 2 and len(value) == rows:
                return value[index].clone()
            return value.clone()  # a shared step count: the same for every learner

        state = {key: {name: own(value) for name, value in entry.items()} for key, entry in saved["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(saved["param_groups"])}

    def load_optimizer_row(self, index: int, saved: dict[str, Any]) -> None:
        """Learner `index`'s optimiser state from a checkpoint (of a block or of a single learner)
        when it is an optimiser of the same kind; this block's hyperparameters stay."""
        groups = self.optimizer.state_dict()["param_groups"]
        if len(saved["param_groups"]) != len(groups) or {k for g in saved["param_groups"] for k in g} != {
            k for g in groups for k in g
        }:
            return
        own = self.optimizer.state[self.parameter]
        for name, value in saved["state"].get(0, {}).items():
            if torch.is_tensor(value) and value.numel() == self.parameter.shape[1] and value.dim() >= 1:
                if name not in own:
                    own[name] = torch.zeros_like(self.parameter, memory_format=torch.preserve_format).detach()
                own[name][index].copy_(value.reshape(-1))
            else:
                own[name] = value.clone() if torch.is_tensor(value) else copy.deepcopy(value)


def sample(out: torch.Tensor, log_std: torch.Tensor | None) -> np.ndarray:
    """Actions [K, P, …] drawn from K learners' outputs [K, P, A] (log-std [K, 1, A] or None)."""
    return distributions.sample(out, log_std).cpu().numpy()


class OnPolicyBlock(RolloutBlock):
    """K on-policy learners: each iteration collects one rollout of every learner and learns from
    it; subclasses write `update` and build `self.optimizer` over `self.parameter`."""

    @abstractmethod
    def update(self, rollout: BlockRollout) -> list[dict[str, float]]:
        """Learn from every learner's rollout at once; each learner's metrics."""

    def iterate(self) -> list[IterationOutput]:
        rollout, finished = self.collect()
        metrics = self.update(rollout)
        return [
            IterationOutput(env_steps=self.n_steps * learner.env.num_envs, finished=episodes, metrics=values)
            for learner, episodes, values in zip(self.members, finished, metrics)
        ]

    def collect(self) -> tuple[BlockRollout, list[list[FinishedEpisode]]]:
        """Every learner's rollout, as `OnPolicyLearner.collect` gives one learner's."""
        finished, last, rewards = self.roll_out()
        not_done = (~self._ended).astype(np.float32)
        return BlockRollout(self._observations, self._actions, rewards, not_done, last), finished
