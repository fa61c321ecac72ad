"""Networks chosen by observation space: the Nature CNN for frames, the MLP for vectors; every
actor-critic learner trains on frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from test_algorithms import FakeVectorEnv

from benchbase.api.contracts import LearnerSpec, params_of
from benchbase.api.registry import load_registry
from benchbase.api.replay import ReplayMix, ReplayParams, batch_shares
from plugins.algorithms.common.networks import (
    MLPActorCritic,
    NatureCNNActorCritic,
    build_model,
)

FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)


class FakeFrameEnv(FakeVectorEnv):
    """The fake env's episodes, seen as stacked 84×84 frames whose brightness encodes the step."""

    def __init__(self, num_envs: int = 2) -> None:
        super().__init__(num_envs=num_envs)
        self.observation_space = FRAMES
        self.action_space = spaces.Discrete(6)

    def _observations(self) -> np.ndarray:
        vector = super()._observations()
        frames = np.zeros((self.num_envs, *FRAMES.shape), dtype=np.uint8)
        frames[:] = (vector[:, :1, None, None] * 80).astype(np.uint8)
        return frames


def test_frames_get_the_nature_cnn_and_vectors_the_mlp():
    cnn = build_model(FRAMES, spaces.Discrete(6), hidden=64)
    assert isinstance(cnn, NatureCNNActorCritic)
    # Nature CNN: 32·4·8·8+32, 64·32·4·4+64, 64·64·3·3+64, 3136·512+512, heads 512·6+6 and 512+1.
    expected = (32 * 4 * 64 + 32) + (64 * 32 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512) + (512 * 6 + 6) + 513
    assert sum(p.numel() for p in cnn.parameters()) == expected
    assert isinstance(build_model(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), hidden=8), MLPActorCritic)


def test_the_cnn_scales_frames_and_runs_its_trunk_once_for_both_heads():
    torch.manual_seed(0)
    model = build_model(FRAMES, spaces.Discrete(6), hidden=64)
    frames = torch.randint(0, 256, (5, *FRAMES.shape), dtype=torch.uint8)
    actor_out, values = model.actor_and_value(frames)
    assert actor_out.shape == (5, 6) and values.shape == (5,)
    torch.testing.assert_close(actor_out, model.actor(frames.float()))
    torch.testing.assert_close(values, model.value(frames))
    actor_rollout, values_rollout = model.rollout_outputs(frames[:3], frames[3:])
    torch.testing.assert_close(actor_rollout, actor_out[:3])
    torch.testing.assert_close(values_rollout, values)
    unroll = frames.reshape(5, 1, *FRAMES.shape)
    actor_sequence, values_sequence = model.sequence_outputs(unroll)
    torch.testing.assert_close(actor_sequence[:, 0], actor_out[:4])
    torch.testing.assert_close(values_sequence[:, 0], values)


@pytest.mark.parametrize("name", ["diff-a2c", "diff-ppo", "gala-a2c", "vtrace"])
def test_every_actor_critic_learns_from_frames(name):
    torch.set_num_threads(1)
    registry = load_registry()
    algorithm = registry.get("algorithm", name)
    overrides = (
        {"n_steps": 4} if name != "vtrace" else {"unroll_length": 4, "batch_size": 2, "background_preparation": False}
    )
    if name == "diff-ppo":
        overrides.update(n_epochs=1, minibatch_size=8)
    params = params_of(algorithm, overrides)
    replay = None
    if algorithm.uses_replay:
        queue = registry.get("replay", "queue")
        parts = batch_shares([("queue", ReplayParams())], params.batch_size)
        replay = ReplayMix(parts, [queue.make_buffer(params_of(queue, {"capacity": 4}), 0)])
    assert "image" in algorithm.observation_kinds
    learner = algorithm.make_learner(params, LearnerSpec(FakeFrameEnv(), 0, 1, 0, torch.device("cpu"), replay=replay))
    assert isinstance(learner.model, NatureCNNActorCritic)
    before = learner.parameters_buffer().clone()
    for _ in range(3):
        output = learner.iterate()
    assert output.env_steps == 8 and not torch.equal(before, learner.parameters_buffer())
    assert all(np.isfinite(value) for value in output.metrics.values())
    actions = learner.act_greedy(FakeFrameEnv().reset(0))
    assert actions.shape == (2,) and set(actions.tolist()) <= set(range(6))
