"""The MLP actor-critic of K learners at once, on their stacked flat parameters.

A learner block keeps its learners' parameters as rows of one [K, numel] tensor (each learner's
flat buffer, `benchbase.FlatParameters`, is a row). `StackedMLP` reads every layer of every
learner as a strided view of those rows and runs the towers with batched matrix products
(`torch.baddbmm`): inputs [K, B, obs] give outputs [K, B, …], learner k's rows computed with
learner k's weights. For this network a batched product costs what one learner's costs, while
`torch.func.vmap` over `functional_call` cost as much as K separate calls (measured on 2 CPU
cores, K = 16, batch 1: 954 µs against 39 µs per actor pass).

Each layer's view is an autograd leaf whose `.grad` is the matching view of the block's
gradient rows, so backward adds every layer's gradient straight into those rows (no
concatenation of per-layer gradients, no copy into the optimiser's gradient). Writing the rows
in place (optimiser steps, mixing) moves the views with them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from benchbase import lazy_import

if TYPE_CHECKING:
    import torch

    from plugins.algorithms.common.networks import ActorCritic
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it

# Autograd warns (once) when a leaf's gradient is not dense; the strided views of the rows are
# meant, and it still adds into them in place.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class StackedMLP:
    """Batched `actor`, `features`, `policy_head`, `value`, `actor_and_value`, `rollout_outputs`
    and `action_log_std` of K `MLPActorCritic`s whose parameters are the rows of `stacked` (in `template.parameters()`
    order). With `grad` (rows of the same layout), backward writes each learner's gradient there."""

    def __init__(self, template: ActorCritic, stacked: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        from plugins.algorithms.common.networks import MLPActorCritic

        if not isinstance(template, MLPActorCritic):
            raise TypeError(f"StackedMLP runs MLPActorCritic, not {type(template).__name__}")
        self.continuous = template.continuous
        self._actor = ["actor_trunk.0", "actor_trunk.2", "actor_head"]
        self._critic = ["critic.0", "critic.2", "critic.4"]
        self.views: dict[str, torch.Tensor] = {}
        offset, learners = 0, stacked.shape[0]
        for name, parameter in template.named_parameters():
            size = parameter.numel()
            view = stacked[:, offset : offset + size].view(learners, *parameter.shape).detach()
            if grad is not None:
                view.requires_grad_(True)
                view.grad = grad[:, offset : offset + size].view(learners, *parameter.shape)
            self.views[name] = view
            offset += size

    def _tower(self, layers: list[str], x: torch.Tensor) -> torch.Tensor:
        views = self.views
        for index, layer in enumerate(layers):
            weight, bias = views[f"{layer}.weight"], views[f"{layer}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if index < len(layers) - 1:
                x = torch.tanh(x)
        return x

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits or Gaussian means [K, B, A] of observations [K, B, obs]."""
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

    def actor_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers on the same observations [K, B, obs]: outputs [K, B, A] and V [K, B]."""
        return self.actor(obs), self.value(obs)

    def rollout_outputs(self, observations: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's outputs on each learner's rollout states [K, N, A] and V of those states
        followed by its bootstrap states [K, N + P]."""
        return self.actor(observations), self.value(torch.cat([observations, last], dim=1))

    def action_log_std(self) -> torch.Tensor | None:
        """Each learner's Gaussian log-std [K, 1, A] (broadcasts over a batch); None for categorical."""
        return self.views["log_std"].unsqueeze(1) if self.continuous else None
