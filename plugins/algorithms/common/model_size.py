"""The shape of the actor-critics `networks.build_model` builds, known from the spaces without
torch: the Nature CNN's layers and width (`networks` builds from them), a policy's outputs, and
the parameter count, which the memory checks of `bench run` ask for before any network exists
(`Algorithm.model_bytes`; `tests/plugins/algorithms/test_model_size.py` holds it to the built
networks')."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from plugins.algorithms.common.observations import is_image

#: The Nature CNN's convolutions (out channels, kernel, stride), each followed by a ReLU, and its width.
NATURE_CNN_CONVOLUTIONS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
NATURE_CNN_FEATURES = 512


def action_outputs(action_space: Any) -> tuple[bool, int]:
    """Whether the policy is Gaussian (a Box of actions) and how many outputs it has: the action
    vector's size, or the number of discrete actions."""
    continuous = isinstance(action_space, spaces.Box)
    return continuous, int(np.prod(action_space.shape)) if continuous else int(action_space.n)


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def actor_critic_parameters(observation_space: Any, action_space: Any, hidden: int) -> int:
    """Parameters of `build_model(observation_space, action_space, hidden)`."""
    continuous, actions = action_outputs(action_space)
    log_std = actions if continuous else 0
    if is_image(observation_space):
        channels, height, width = observation_space.shape
        count = 0
        for out_channels, kernel, stride in NATURE_CNN_CONVOLUTIONS:
            count += channels * out_channels * kernel * kernel + out_channels
            channels, height, width = out_channels, (height - kernel) // stride + 1, (width - kernel) // stride + 1
        trunk = count + _linear(channels * height * width, NATURE_CNN_FEATURES)
        return trunk + _linear(NATURE_CNN_FEATURES, actions) + _linear(NATURE_CNN_FEATURES, 1) + log_std
    observations = int(np.prod(observation_space.shape))
    tower = _linear(observations, hidden) + _linear(hidden, hidden)
    return 2 * tower + _linear(hidden, actions) + _linear(hidden, 1) + log_std


def actor_critic_bytes(observation_space: Any, action_space: Any, hidden: int) -> int:
    """Bytes of those parameters (float32)."""
    return 4 * actor_critic_parameters(observation_space, action_space, hidden)
