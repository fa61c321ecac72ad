"""Learner blocks of the built-in on-policy learners: K learners of one cell in one process.

`OnPolicyBlock` builds its K learners as usual (each with its own simulators, normalisers and
seeds), then re-seats their flat parameter buffers as the rows of one [K, numel] tensor. From
there the learners act together: at each rollout step every learner normalises its own
observations, one batched pass of `StackedMLP` gives every learner's action distribution, one
draw samples all actions, and each learner steps its own simulators with its rows. An
algorithm's block writes `update(rollouts)` with a leading learner dimension and steps the
block's optimiser, built over the stacked parameter: Adam and RMSprop act element by element,
so each row evolves as its learner's own optimiser would, and gradients are clipped per row.

What differs from one learner per process: the learners share the process's random stream for
sampling actions (one draw for the block), and batched products round differently from
single ones, so a block's run is not bit for bit the one-process-per-learner run; it is the
same algorithm on the same data, and its checkpoints resume it exactly (docs/scaling.md).

Checkpoints of a block's learner have the format of a learner of its own process (its row of
the optimiser's state), so either kind loads the other's (`bench eval`, `--init-from`).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from benchbase import FinishedEpisode, IterationOutput, Learner, LearnerBlock, lazy_import
from plugins.algorithms.common import distributions
from plugins.algorithms.common.on_policy import OnPolicyLearner, Rollout
from plugins.algorithms.common.stacked import StackedMLP

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


def blockable(learner: OnPolicyLearner) -> bool:
    """Whether learners like this one can form a block (an MLP on vector observations)."""
    from plugins.algorithms.common.networks import MLPActorCritic

    return isinstance(learner.model, MLPActorCritic)


def block_of(block: type[OnPolicyBlock], learner: type[OnPolicyLearner], params: Any, specs: list) -> Any:
    """An algorithm's `make_learner_block`: its learners for `specs` as one `block`, or None when
    their network has no stacked form (the Nature CNN, for now)."""
    learners = [learner(params, spec) for spec in specs]
    if not blockable(learners[0]):
        for built in learners:
            built.close()
        return None
    return block(params, learners)


class BlockMember(Learner):
    """Learner k of a block as the core sees a learner: its model (views of its rows) for acting
    and evaluation, and checkpoints in the format of a learner of its own process."""

    checkpointable = True
    has_sampled_policy = True

    def __init__(self, block: OnPolicyBlock, index: int, learner: OnPolicyLearner) -> None:
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
        state = self.learner.state_dict(replay)
        state["optimizer"] = self.block.optimizer_row(self.index)
        return state

    def load_state_dict(self, state: dict[str, Any], *, mode: Literal["resume", "init", "model"] = "resume") -> None:
        self.learner.load_state_dict(state, mode=mode)
        if mode != "model":
            self.block.load_optimizer_row(self.index, state["optimizer"])

    def close(self) -> None:
        self.learner.close()


class OnPolicyBlock(LearnerBlock):
    """K on-policy learners with stacked parameters; subclasses write `update` and build
    `self.optimizer` over `self.parameter` ([K, parameters])."""

    optimizer: torch.optim.Optimizer

    def __init__(self, learners: list[OnPolicyLearner]) -> None:
        first = learners[0]
        self.members = learners  # the learners themselves; `learners` are their core-facing views
        self.device = first.device
        self.n_steps = first.n_steps
        numel, total = first.flat.mixed.numel(), first.flat.data.numel()
        dtype = first.flat.data.dtype
        self._stacked = torch.zeros(len(learners), numel, dtype=dtype, device=self.device)
        self._grad = torch.zeros(len(learners), total, dtype=dtype, device=self.device)
        for k, learner in enumerate(learners):
            learner.reseat(self._stacked[k], self._grad[k])
        self.parameter = torch.nn.Parameter(self._stacked[:, :total])
        self.parameter.grad = self._grad
        self.network = StackedMLP(first.model)
        self.learners = [BlockMember(self, k, learner) for k, learner in enumerate(learners)]

    # -- what an algorithm's block writes -----------------------------------------------------

    @abstractmethod
    def update(self, rollouts: list[Rollout]) -> list[dict[str, float]]:
        """Learn from every learner's rollout at once; each learner's metrics."""

    # -- what the core calls --------------------------------------------------------------------

    def parameters(self) -> torch.Tensor:
        return self._stacked

    def iterate(self) -> list[IterationOutput]:
        finished, ends = self.roll_out()
        rollouts = [learner.rollout(last, rewards) for learner, (last, rewards) in zip(self.members, ends)]
        metrics = self.update(rollouts)
        return [
            IterationOutput(env_steps=self.n_steps * learner.env.num_envs, finished=episodes, metrics=values)
            for learner, episodes, values in zip(self.members, finished, metrics)
        ]

    # -- collection -----------------------------------------------------------------------------

    def roll_out(self) -> tuple[list[list[FinishedEpisode]], list[tuple[np.ndarray, np.ndarray]]]:
        """T steps of every learner's simulators, each learner's actions drawn from its own
        policy in one batched pass; every learner's finished episodes and (last, rewards)."""
        learners = self.members
        finished: list[list[FinishedEpisode]] = [[] for _ in learners]
        for learner in learners:
            learner.begin_rollout()
        with torch.inference_mode():
            for t in range(self.n_steps):
                observations = np.stack([learner.observe(t) for learner in learners])
                actions = self.act(torch.from_numpy(observations).to(self.device))
                for k, learner in enumerate(learners):
                    finished[k].extend(learner.take(t, actions[k]))
        return finished, [learner.end_rollout() for learner in learners]

    def act(self, observations: torch.Tensor) -> np.ndarray:
        """Actions [K, P, …] drawn from each learner's policy for observations [K, P, obs]."""
        out = self.network.actor(self._stacked, observations)
        log_std = self.network.action_log_std(self._stacked)
        if log_std is None:  # multinomial takes one row per draw
            return distributions.sample(out.reshape(-1, out.shape[-1]), None).reshape(out.shape[:-1]).cpu().numpy()
        return distributions.sample(out, log_std).cpu().numpy()

    def stacked_rollouts(self, rollouts: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every learner's observations [K, T·P, obs], actions [K, T·P, …] and last observations
        [K, P, obs] (each learner's as `Rollout.tensors` gives them)."""
        parts = [rollout.tensors(self.device) for rollout in rollouts]
        return tuple(torch.stack([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]

    # -- the optimiser -------------------------------------------------------------------------

    def optimizer_step(self, loss: torch.Tensor, max_grad_norm: float) -> list[float]:
        """One step of every learner on the sum of their losses (learners share no parameter, so
        row k of the gradient is learner k's), each row clipped to `max_grad_norm` (0 = none) as
        its own learner would; each learner's gradient norm before clipping."""
        self._grad.zero_()
        loss.backward()
        norms = torch.linalg.vector_norm(self._grad, dim=1)
        if max_grad_norm > 0:
            scale = torch.where(norms > max_grad_norm, max_grad_norm / (norms + 1e-6), torch.ones_like(norms))
            self._grad.mul_(scale.unsqueeze(1))
        self.optimizer.step()
        return norms.tolist()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_row(self, index: int) -> dict[str, Any]:
        """Learner `index`'s optimiser state, as its own optimiser's `state_dict()` would be."""
        saved = self.optimizer.state_dict()
        rows = self.parameter.shape[0]
        state = {
            key: {
                name: value[index].clone()
                if torch.is_tensor(value) and value.dim() == 2 and len(value) == rows
                # a shared step count: the same for every learner
                else copy.deepcopy(value)
                for name, value in entry.items()
            }
            for key, entry in saved["state"].items()
        }
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
