"""Actor-critic networks, chosen by the observation space: an MLP for vectors, the Nature CNN
(Mnih et al. 2015) for stacked frames.

Both expose what the learners use:

- `actor(obs)`: logits (discrete) or the Gaussian mean (continuous; `log_std` is a parameter,
  `action_log_std()` gives it or None);
- `value(obs)`: V(s), shape [B];
- `actor_and_value(obs)`, `rollout_outputs(observations, last)`: both at once (the CNN runs its
  shared trunk once);
- `features(obs)` / `policy_head(features)`: the actor split at its last hidden layer φ (replay
  strategies compare segments by φ), with `feature_dim` and `action_outputs`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional

from plugins.algorithms.common.model_size import NATURE_CNN_CONVOLUTIONS, NATURE_CNN_FEATURES, action_outputs
from plugins.algorithms.common.observations import is_image


def _linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride)
    nn.init.orthogonal_(layer.weight, math.sqrt(2))
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """What the two networks share: the Gaussian log-std and the combined forward pass."""

    continuous: bool
    action_outputs: int
    feature_dim: int

    def _init_log_std(self) -> None:
        if self.continuous:
            # State-independent, init 0; a parameter like any other, so it is mixed too.
            self.log_std = nn.Parameter(torch.zeros(self.action_outputs))

    def action_log_std(self) -> torch.Tensor | None:
        """The Gaussian policy's log-std; None for a categorical policy (`distributions`' convention)."""
        return self.log_std if self.continuous else None

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_head(self.features(obs))

    def actor_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.value(obs)

    def rollout_outputs(self, observations: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's outputs on a rollout's states and V of those states followed by the
        bootstrap states s_T ([N], [N + P]): what an on-policy update needs."""
        return self.actor(observations), self.value(torch.cat([observations, last]))

    def sequence_outputs(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For [T+1, B, *obs] unrolls: the actor's outputs on the first T steps and V of all T+1."""
        return self.actor(observations[:-1]), self.value(observations)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MLPActorCritic(ActorCritic):
    """Separate actor and critic towers (2×hidden, tanh), orthogonal init, zero biases."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, hidden: int = 64) -> None:
        super().__init__()
        obs_dim = int(np.prod(observation_space.shape))
        self.continuous, self.action_outputs = action_outputs(action_space)
        self.feature_dim = hidden
        self.actor_trunk = nn.Sequential(
            _linear(obs_dim, hidden, math.sqrt(2)), nn.Tanh(), _linear(hidden, hidden, math.sqrt(2)), nn.Tanh()
        )
        self.actor_head = _linear(hidden, self.action_outputs, 0.01)
        self.critic = nn.Sequential(
            _linear(obs_dim, hidden, math.sqrt(2)),
            nn.Tanh(),
            _linear(hidden, hidden, math.sqrt(2)),
            nn.Tanh(),
            _linear(hidden, 1, 1.0),
        )
        self._init_log_std()

    # The towers are run with functional calls on the layers' parameters, not through the modules:
    # the same arithmetic, without a module call per layer, which was 40% of an actor pass on 8
    # observations (52 µs against 32 µs, one CPU thread) and every acting step makes one.

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        first, second = self.actor_trunk[0], self.actor_trunk[2]
        hidden = torch.tanh(functional.linear(obs, first.weight, first.bias))
        return torch.tanh(functional.linear(hidden, second.weight, second.bias))

    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        return functional.linear(features, self.actor_head.weight, self.actor_head.bias)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        first, second, head = self.critic[0], self.critic[2], self.critic[4]
        hidden = torch.tanh(functional.linear(obs, first.weight, first.bias))
        hidden = torch.tanh(functional.linear(hidden, second.weight, second.bias))
        return functional.linear(hidden, head.weight, head.bias).squeeze(-1)


class NatureCNNActorCritic(ActorCritic):
    """The Nature-DQN trunk (32 8×8/4, 64 4×4/2, 64 3×3/1, 512 units, ReLU) shared by a policy
    head and a value head, as in A2C/IMPALA on Atari. Inputs are uint8 frames scaled to [0, 1]
    here, so the rollout keeps them as they came."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, hidden: int = 512) -> None:
        super().__init__()
        channels, height, width = observation_space.shape
        self.continuous, self.action_outputs = action_outputs(action_space)
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in NATURE_CNN_CONVOLUTIONS:
            layers += [_conv(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
        convolutions = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = convolutions(torch.zeros(1, observation_space.shape[0], height, width)).shape[1]
        self.feature_dim = NATURE_CNN_FEATURES
        self.trunk = nn.Sequential(convolutions, _linear(flat, self.feature_dim, math.sqrt(2)), nn.ReLU())
        self.actor_head = _linear(self.feature_dim, self.action_outputs, 0.01)
        self.value_head = _linear(self.feature_dim, 1, 1.0)
        self._init_log_std()

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """φ for frames of any leading shape ([B, C, H, W], replay's [S, T, C, H, W], …)."""
        leading = obs.shape[:-3]
        features = self.trunk(obs.reshape(-1, *obs.shape[-3:]).float() / 255.0)
        return features.reshape(*leading, self.feature_dim)

    def policy_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor_head(features)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.features(obs)).squeeze(-1)

    def actor_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(obs)
        return self.actor_head(features), self.value_head(features).squeeze(-1)

    def sequence_outputs(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps, batch = observations.shape[:2]
        actor_out, values = self.actor_and_value(observations.reshape(steps * batch, *observations.shape[2:]))
        return actor_out.reshape(steps, batch, -1)[:-1], values.reshape(steps, batch)

    def rollout_outputs(self, observations: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(torch.cat([observations, last]))  # one trunk pass for both heads
        return self.actor_head(features[: observations.shape[0]]), self.value_head(features).squeeze(-1)


def build_model(observation_space: spaces.Space, action_space: spaces.Space, hidden: int) -> ActorCritic:
    """The Nature CNN for image observations (its width is fixed), else the MLP with `hidden` units."""
    if is_image(observation_space):
        return NatureCNNActorCritic(observation_space, action_space)
    return MLPActorCritic(observation_space, action_space, hidden)
