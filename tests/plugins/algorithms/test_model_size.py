"""The memory checks count a learner's model from its spaces without torch: the count is the
built network's, for vectors and frames, discrete and continuous actions."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from benchbase.api.registry import load_registry
from plugins.algorithms.common.model_size import actor_critic_bytes, actor_critic_parameters
from plugins.algorithms.common.networks import build_model

VECTOR = spaces.Box(-1.0, 1.0, (4,), np.float32)
FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)


@pytest.mark.parametrize(
    ("observation_space", "action_space", "hidden"),
    [
        (VECTOR, spaces.Discrete(2), 64),
        (VECTOR, spaces.Discrete(2), 16),
        (spaces.Box(-1.0, 1.0, (17,), np.float32), spaces.Box(-1.0, 1.0, (6,), np.float32), 32),
        (FRAMES, spaces.Discrete(6), 64),
        (spaces.Box(0, 255, (3, 64, 72), np.uint8), spaces.Box(-1.0, 1.0, (2,), np.float32), 64),
    ],
)
def test_the_count_is_the_built_networks(observation_space, action_space, hidden):
    model = build_model(observation_space, action_space, hidden)
    built = sum(parameter.numel() for parameter in model.parameters())
    assert actor_critic_parameters(observation_space, action_space, hidden) == built
    assert actor_critic_bytes(observation_space, action_space, hidden) == 4 * built


def test_every_built_in_algorithm_declares_its_models_bytes():
    registry = load_registry()
    for name in ("diff-a2c", "diff-ppo", "gala-a2c", "vtrace"):
        algorithm = registry.get("algorithm", name)
        params = algorithm.Params()
        assert algorithm.model_bytes(params, VECTOR, spaces.Discrete(2)) == 4 * 9155  # 64 units: CartPole's MLP
        assert algorithm.model_bytes(params, FRAMES, spaces.Discrete(6)) == actor_critic_bytes(
            FRAMES, spaces.Discrete(6), 0
        )
