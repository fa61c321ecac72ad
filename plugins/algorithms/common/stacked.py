"""The MLP actor-critic of K learners at once, on their stacked flat parameters.

A learner block keeps its learners' parameters as rows of one [K, numel] tensor (each learner's
flat buffer, `benchbase.FlatParameters`, is a row). `StackedMLP` reads every layer of every
learner as a strided view of those rows and runs the towers with batched matrix products
(`torch.baddbmm`): inputs [K, B, obs] give outputs [K, B, …], learner k's rows computed with
learner k's weights. For this network a batched product costs what one learner's costs, while
`torch.func.vmap` over `functional_call` cost as much as K separate calls (measured on 2 CPU
cores, K = 16, batch 1: 954 µs against 39 µs per actor pass). The views are taken afresh at each
call, so autograd sees them as functions of the stacked leaf and gradients land in its rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchbase import lazy_import

if TYPE_CHECKING:
    import torch

    from plugins.algorithms.common.networks import ActorCritic
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


class StackedMLP:
    """Batched `actor`, `value`, `actor_and_value`, `rollout_outputs` and `action_log_std` of K
    `MLPActorCritic`s whose parameters are the rows of `stacked` (in `template.parameters()` order)."""

    def __init__(self, template: ActorCritic) -> None:
        from plugins.algorithms.common.networks import MLPActorCritic

        if not isinstance(template, MLPActorCritic):
            raise TypeError(f"StackedMLP runs MLPActorCritic, not {type(template).__name__}")
        self._names = [name for name, _ in template.named_parameters()]
        self._shapes = [tuple(parameter.shape) for _, parameter in template.named_parameters()]
        self._sizes = [parameter.numel() for _, parameter in template.named_parameters()]
        self.continuous = template.continuous
        self._actor = ["actor_trunk.0", "actor_trunk.2", "actor_head"]
        self._critic = ["critic.0", "critic.2", "critic.4"]
        self._cached: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None

    def _views(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every parameter of every learner, [K, *shape], as views of `stacked` (one split: its
        backward is one concatenation of the gradients). Views of a buffer that takes no gradient
        stay valid while it is written in place (mixing), so they are kept for the next call."""
        key = (stacked.data_ptr(), stacked.shape[1])
        if not stacked.requires_grad and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        total = sum(self._sizes)
        sizes = self._sizes + ([stacked.shape[1] - total] if stacked.shape[1] > total else [])
        parts = stacked.split(sizes, dim=1)
        views = {
            name: part.view(stacked.shape[0], *shape) for name, part, shape in zip(self._names, parts, self._shapes)
        }
        if not stacked.requires_grad:
            self._cached = (key, views)
        return views

    def _tower(self, stacked: torch.Tensor, layers: list[str], x: torch.Tensor) -> torch.Tensor:
        views = self._views(stacked)
        for index, layer in enumerate(layers):
            weight, bias = views[f"{layer}.weight"], views[f"{layer}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if index < len(layers) - 1:
                x = torch.tanh(x)
        return x

    def actor(self, stacked: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Logits or Gaussian means [K, B, A] of observations [K, B, obs]."""
        return self._tower(stacked, self._actor, obs)

    def value(self, stacked: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """V [K, B] of observations [K, B, obs]."""
        return self._tower(stacked, self._critic, obs).squeeze(-1)

    def actor_and_value(self, stacked: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers on the same observations [K, B, obs]: outputs [K, B, A] and V [K, B]."""
        return self.actor(stacked, obs), self.value(stacked, obs)

    def rollout_outputs(
        self, stacked: torch.Tensor, observations: torch.Tensor, last: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's outputs on each learner's rollout states [K, N, A] and V of those states
        followed by its bootstrap states [K, N + P]."""
        return self.actor(stacked, observations), self.value(stacked, torch.cat([observations, last], dim=1))

    def action_log_std(self, stacked: torch.Tensor) -> torch.Tensor | None:
        """Each learner's Gaussian log-std [K, 1, A] (broadcasts over a batch); None for categorical."""
        return self._views(stacked)["log_std"].unsqueeze(1) if self.continuous else None
