"""The actor-critics of K learners at once, on their stacked flat parameters: `StackedMLP` for
vector observations, `StackedCNN` for frames (`stacked_network` picks the one for a template).

A learner block keeps its learners' parameters as rows of one [K, numel] tensor (each learner's
flat buffer, `benchbase.FlatParameters`, is a row). `StackedMLP` reads every layer of every
learner as a strided view of those rows and runs the towers with batched matrix products
(`torch.baddbmm`): inputs [K, B, obs] give outputs [K, B, …], learner k's rows computed with
learner k's weights. For this network a batched product costs what one learner's costs, while
`torch.func.vmap` over `functional_call` cost as much as K separate calls (measured on 2 CPU
cores, K = 16, batch 1: 954 µs against 39 µs per actor pass). The Nature CNN's convolutions run
learner by learner on a CPU and as one grouped convolution (group k: learner k's frames and
filters) on a GPU, its dense layers as batched products.

Each layer's view is an autograd leaf whose `.grad` is the matching view of the block's
gradient rows, so backward adds every layer's gradient straight into those rows (no
concatenation of per-layer gradients, no copy into the optimiser's gradient). Writing the rows
in place (optimiser steps, mixing) moves the views with them.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from benchbase import lazy_import

if TYPE_CHECKING:
    import torch
    from torch.nn import functional

    from plugins.algorithms.common.networks import ActorCritic
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it
    functional = lazy_import("torch.nn.functional")

# Autograd warns (once) when a leaf's gradient is not dense; the strided views of the rows are
# meant, and it still adds into them in place.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class StackedNetwork(ABC):
    """Each parameter of K copies of `template` as a strided view [K, *shape] of the rows of
    `stacked` (`views`, in `template.parameters()` order; `shaped`: the linear layers' weights
    and the vectors as the batched products take them); with `grad`, each is an autograd leaf
    whose gradient is the matching view of those rows."""

    def __init__(self, template: ActorCritic, stacked: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        self.continuous = template.continuous
        self.views: dict[str, torch.Tensor] = {}
        # The same rows in the shapes the batched products take: weights [K, in, out] (transposed
        # by strides), biases and log-std [K, 1, n]. Leaves of their own, so a pass puts no view
        # operations in the autograd graph (each node has a fixed cost; docs/scaling.md).
        self.shaped: dict[str, torch.Tensor] = {}
        offset = 0
        for name, parameter in template.named_parameters():
            rows = slice(offset, offset + parameter.numel())
            self.views[name] = _leaf(stacked, grad, rows, parameter.shape, None)
            if parameter.dim() in (1, 2):
                self.shaped[name] = _leaf(stacked, grad, rows, parameter.shape, parameter.dim())
            offset += parameter.numel()

    def _linear(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """Layer `layer` of every learner on its inputs [K, B, in]: [K, B, out]."""
        return torch.baddbmm(self.shaped[f"{layer}.bias"], x, self.shaped[f"{layer}.weight"])

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits or Gaussian means [K, B, A] of observations [K, B, *obs]."""
        return self.policy_head(self.features(obs))

    @abstractmethod
    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's last hidden layer φ [K, B, F] of observations [K, B, *obs]."""

    @abstractmethod
    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        """The actor's outputs [K, B, A] from its features [K, B, F]."""

    @abstractmethod
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V [K, B] of observations [K, B, *obs]."""

    def actor_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers on the same observations [K, B, *obs]: outputs [K, B, A] and V [K, B]."""
        return self.actor(obs), self.value(obs)

    def rollout_outputs(self, observations: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's outputs on each learner's rollout states [K, N, A] and V of those states
        followed by its bootstrap states [K, N + P]."""
        return self.actor(observations), self.value(torch.cat([observations, last], dim=1))

    def action_log_std(self) -> torch.Tensor | None:
        """Each learner's Gaussian log-std [K, 1, A] (broadcasts over a batch); None for categorical."""
        return self.shaped["log_std"] if self.continuous else None


def _leaf(
    stacked: torch.Tensor, grad: torch.Tensor | None, columns: slice, shape: torch.Size, shaped: int | None
) -> torch.Tensor:
    """Columns `columns` of every row as a leaf [K, *shape] (`shaped` 2: a weight as [K, in, out];
    1: a vector as [K, 1, n]); with `grad`, its gradient is the same view of those rows."""

    def view(rows: torch.Tensor) -> torch.Tensor:
        v = rows[:, columns].view(rows.shape[0], *shape)
        return v.transpose(1, 2) if shaped == 2 else v.unsqueeze(1) if shaped == 1 else v

    leaf = view(stacked).detach()
    if grad is not None:
        leaf.requires_grad_(True)
        leaf.grad = view(grad)
    return leaf


def stacked_network(template: ActorCritic, stacked: torch.Tensor, grad: torch.Tensor | None = None) -> StackedNetwork:
    """The stacked form of `template`'s network (`StackedMLP` or `StackedCNN`)."""
    from plugins.algorithms.common.networks import MLPActorCritic, NatureCNNActorCritic

    if isinstance(template, MLPActorCritic):
        return StackedMLP(template, stacked, grad)
    if isinstance(template, NatureCNNActorCritic):
        return StackedCNN(template, stacked, grad)
    raise TypeError(f"no stacked form of {type(template).__name__}")


class StackedMLP(StackedNetwork):
    """Batched `actor`, `features`, `policy_head`, `value`, `actor_and_value`, `rollout_outputs`
    and `action_log_std` of K `MLPActorCritic`s whose parameters are the rows of `stacked` (in
    `template.parameters()` order). With `grad` (rows of the same layout), backward writes each
    learner's gradient there."""

    def __init__(self, template: ActorCritic, stacked: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        from plugins.algorithms.common.networks import MLPActorCritic

        if not isinstance(template, MLPActorCritic):
            raise TypeError(f"StackedMLP runs MLPActorCritic, not {type(template).__name__}")
        super().__init__(template, stacked, grad)
        self._actor = ["actor_trunk.0", "actor_trunk.2", "actor_head"]
        self._critic = ["critic.0", "critic.2", "critic.4"]

    def _tower(self, layers: list[str], x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(layers):
            x = self._linear(layer, x)
            if index < len(layers) - 1:
                x = torch.tanh(x)
        return x

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        return self._tower(self._actor, obs)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's last hidden layer φ [K, B, hidden] (`MLPActorCritic.features`)."""
        return torch.tanh(self._tower(self._actor[:2], obs))

    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        """The actor's outputs [K, B, A] from its features [K, B, hidden]."""
        return self._tower(self._actor[2:], features)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V [K, B] of observations [K, B, obs]."""
        return self._tower(self._critic, obs).squeeze(-1)


class StackedCNN(StackedNetwork):
    """K `NatureCNNActorCritic`s whose parameters are the rows of `stacked`: the trunk's
    convolutions as one grouped convolution over every learner's frames, its dense layer and the
    heads as batched products. Frames [K, B, C, H, W] (uint8 or float, scaled to [0, 1] here as
    the network does)."""

    def __init__(self, template: ActorCritic, stacked: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        from plugins.algorithms.common.networks import NatureCNNActorCritic

        if not isinstance(template, NatureCNNActorCritic):
            raise TypeError(f"StackedCNN runs NatureCNNActorCritic, not {type(template).__name__}")
        super().__init__(template, stacked, grad)
        convolutions = template.trunk[0]
        self._convolutions = [
            (f"trunk.0.{index}", module.stride)
            for index, module in enumerate(convolutions)
            if isinstance(module, torch.nn.Conv2d)
        ]
        self.feature_dim = template.feature_dim

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """φ [K, B, 512] of frames [K, B, C, H, W]."""
        frames = obs.float().div(255.0)
        flat = self.grouped_convolutions(frames) if frames.is_cuda else self.convolutions_in_turn(frames)
        return torch.relu(self._linear("trunk.1", flat))

    def grouped_convolutions(self, frames: torch.Tensor) -> torch.Tensor:
        """The trunk's convolutions of every learner as one grouped convolution (group k: learner
        k's frames and filters): [K, B, 64·h·w], flattened as `nn.Flatten` does."""
        learners, batch = frames.shape[:2]
        x = frames.transpose(0, 1).reshape(batch, learners * frames.shape[2], *frames.shape[3:])
        for layer, stride in self._convolutions:
            weight, bias = self.views[f"{layer}.weight"], self.views[f"{layer}.bias"]
            x = torch.relu(functional.conv2d(x, weight.flatten(0, 1), bias.flatten(), stride, groups=learners))
        return x.reshape(batch, learners, -1).transpose(0, 1)

    def convolutions_in_turn(self, frames: torch.Tensor) -> torch.Tensor:
        """The same, one learner after another: on a CPU, faster than one grouped convolution
        (docs/scaling.md)."""
        flat = []
        for k in range(frames.shape[0]):
            x = frames[k]
            for layer, stride in self._convolutions:
                x = torch.relu(
                    functional.conv2d(x, self.views[f"{layer}.weight"][k], self.views[f"{layer}.bias"][k], stride)
                )
            flat.append(x.flatten(1))
        return torch.stack(flat)

    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._linear("actor_head", features)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self._linear("value_head", self.features(obs)).squeeze(-1)

    def actor_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(obs)  # one trunk pass for both heads
        return self.policy_head(features), self._linear("value_head", features).squeeze(-1)

    def rollout_outputs(self, observations: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(torch.cat([observations, last], dim=1))
        head = self.policy_head(features[:, : observations.shape[1]])
        return head, self._linear("value_head", features).squeeze(-1)
