"""Diff-A2C's learner block against the same learners each on its own: the stacked network's
outputs, the update given the same rollouts, the optimiser state in checkpoints, and acting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_algorithms import FakeVectorEnv

from benchbase import LearnerSpec
from plugins.algorithms.common.on_policy import BlockRollout
from plugins.algorithms.common.stacked import StackedMLP
from plugins.algorithms.diff_a2c import A2CLearner, A2CParams, DiffA2C

K = 3
SETTINGS = dict(n_steps=5, gamma=0.9, hidden=8, normaliser="local", entropy_coef=0.05)


def specs(continuous: bool, seed: int = 3) -> list[LearnerSpec]:
    return [LearnerSpec(FakeVectorEnv(continuous), rank, K, seed, torch.device("cpu")) for rank in range(K)]


def learners_and_block(continuous: bool, **overrides):
    params = A2CParams(**{**SETTINGS, **overrides})
    alone = [A2CLearner(params, spec) for spec in specs(continuous)]
    block = DiffA2C().make_learner_block(params, specs(continuous))
    assert block is not None
    return params, alone, block


def copied(rollout):
    return copy.deepcopy(rollout)  # a learner's rollout is a view of buffers it reuses


def test_learners_of_a_block_start_from_the_same_parameters_as_learners_alone():
    _, alone, block = learners_and_block(False)
    for k, learner in enumerate(alone):
        assert torch.equal(block.parameters()[k], learner.parameters_buffer())
        assert torch.equal(block.learners[k].parameters_buffer(), learner.parameters_buffer())
    # Row k is learner k's buffer: writing the stacked tensor writes the member's model.
    block.parameters()[1].fill_(0.5)
    member = block.learners[1].learner
    assert all(torch.all(p == 0.5) for p in member.model.parameters())


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_the_stacked_network_computes_each_learners_own_outputs(continuous):
    _, _, block = learners_and_block(continuous)
    stacked = block.parameters()
    stacked.add_(torch.randn_like(stacked) * 0.1)  # learners that differ
    observations = torch.randn(K, 7, 3)
    network = StackedMLP(block.learners[0].learner.model, stacked)
    actor, value = network.actor(observations), network.value(observations)
    for k, member in enumerate(block.learners):
        model = member.learner.model
        torch.testing.assert_close(actor[k], model.actor(observations[k]), rtol=0, atol=1e-6)
        torch.testing.assert_close(value[k], model.value(observations[k]), rtol=0, atol=1e-6)
        if continuous:
            torch.testing.assert_close(network.action_log_std()[k, 0], model.action_log_std())


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("overrides", [{}, {"gae_lambda": 0.5, "max_grad_norm": 0.05}], ids=["n-step", "gae-clipped"])
def test_a_block_update_is_each_learners_own_update(continuous, overrides):
    """Given the same rollouts, three updates of the block move every row as the learner's own
    three updates move it (RMSprop acts element by element; gradients clipped per learner)."""
    _, alone, block = learners_and_block(continuous, **overrides)
    for _ in range(3):
        rollouts = [copied(learner.collect()[0]) for learner in alone]
        expected = [learner.update(rollout) for learner, rollout in zip(alone, rollouts)]
        got = block.update(BlockRollout.stack(rollouts))
        for k, learner in enumerate(alone):
            torch.testing.assert_close(block.parameters()[k], learner.parameters_buffer(), rtol=1e-5, atol=1e-6)
            assert got[k].keys() == expected[k].keys()
            for name, value in expected[k].items():
                assert got[k][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    if overrides:  # the clipping bit: some gradient was larger than 0.05
        assert any(metrics["grad_norm"] > 0.05 for metrics in got)


def test_a_block_learners_checkpoint_is_a_learner_checkpoint_and_back():
    _, alone, block = learners_and_block(False)
    rollouts = [copied(learner.collect()[0]) for learner in alone]
    for learner, rollout in zip(alone, rollouts):
        learner.update(rollout)
    block.update(BlockRollout.stack(rollouts))
    state = block.learners[2].state_dict()
    saved, own = state["optimizer"]["state"][0], alone[2].optimizer.state_dict()["state"][0]
    assert saved.keys() == own.keys() and saved["square_avg"].shape == own["square_avg"].shape
    torch.testing.assert_close(saved["square_avg"], own["square_avg"], rtol=1e-5, atol=1e-9)

    fresh = A2CLearner(A2CParams(**SETTINGS), specs(False)[2])
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.parameters_buffer(), block.learners[2].parameters_buffer(), rtol=0, atol=0)
    torch.testing.assert_close(fresh.optimizer.state_dict()["state"][0]["square_avg"], saved["square_avg"])
    observations = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assert np.array_equal(fresh.act_greedy(observations), block.learners[2].act_greedy(observations))

    # And a learner's checkpoint into a block: its row of the optimiser state and of the parameters.
    _, _, other = learners_and_block(False)
    other.learners[0].load_state_dict(alone[1].state_dict())
    torch.testing.assert_close(other.parameters()[0], alone[1].parameters_buffer(), rtol=0, atol=0)
    row = other.optimizer.state[other.parameter]["square_avg"][0]
    torch.testing.assert_close(row, alone[1].optimizer.state_dict()["state"][0]["square_avg"])


def storages(*tensors: torch.Tensor) -> set[int]:
    return {tensor.untyped_storage().data_ptr() for tensor in tensors}


def test_a_blocks_learners_keep_no_parameters_or_moments_of_their_own():
    """A block's learners step through the block's optimiser: their own optimisers follow their
    parameters into the block's rows and hold no moments, even after loading a checkpoint, so a
    block holds its parameters, gradients and moments once (benchmarks/model_memory.py)."""
    _, alone, block = learners_and_block(False)
    rows = storages(block.parameters(), block.parameter.grad)
    for member in block.learners:
        own = member.learner.optimizer
        (parameter,) = own.param_groups[0]["params"]
        assert parameter is member.learner.flat.parameter and storages(parameter, parameter.grad) <= rows
    rollouts = [copied(learner.collect()[0]) for learner in alone]
    for learner, rollout in zip(alone, rollouts):
        learner.update(rollout)
    block.learners[0].load_state_dict(alone[0].state_dict())
    assert not any(member.learner.optimizer.state for member in block.learners)
    assert block.optimizer.state[block.parameter]["square_avg"].shape == block.parameter.shape


def test_a_block_iterates_every_learner_with_its_own_simulators():
    _, _, block = learners_and_block(True)
    before = block.parameters().clone()
    outputs = block.iterate()
    assert [output.env_steps for output in outputs] == [5 * 2] * K
    for member in block.learners:
        env = member.learner.env
        assert len(env.received_actions) == 5 and all(np.all(np.abs(a) <= 1.0) for a in env.received_actions)
    assert all(np.isfinite(output.metrics["loss"]) for output in outputs)
    assert not torch.equal(block.parameters(), before)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_the_stacked_nature_cnn_computes_each_learners_outputs_and_gradients(continuous):
    """Both ways of running the convolutions (one grouped convolution, as on a GPU; learner by
    learner, as on a CPU) give each learner's own outputs, and backward writes each learner's own
    gradient into its row."""
    from gymnasium import spaces

    from benchbase import FlatParameters
    from plugins.algorithms.common.networks import NatureCNNActorCritic
    from plugins.algorithms.common.stacked import StackedCNN

    torch.manual_seed(0)
    action_space = spaces.Box(-1, 1, (2,), np.float32) if continuous else spaces.Discrete(6)
    models = [NatureCNNActorCritic(spaces.Box(0, 255, (4, 84, 84), np.uint8), action_space) for _ in range(K)]
    flats = [FlatParameters(model) for model in models]
    stacked = torch.stack([flat.data for flat in flats]).clone()
    grad = torch.zeros_like(stacked)
    network = StackedCNN(models[0], stacked, grad)
    frames = torch.randint(0, 256, (K, 5, 4, 84, 84), dtype=torch.uint8)
    scaled = frames.float() / 255.0
    torch.testing.assert_close(
        network.grouped_convolutions(scaled), network.convolutions_in_turn(scaled), rtol=1e-5, atol=1e-5
    )
    actor, value = network.actor_and_value(frames)
    (actor.pow(2).sum() + value.pow(2).sum()).backward()
    for k, (model, flat) in enumerate(zip(models, flats)):
        expected_actor, expected_value = model.actor_and_value(frames[k])
        torch.testing.assert_close(actor[k], expected_actor, rtol=0, atol=1e-5)
        torch.testing.assert_close(value[k], expected_value, rtol=0, atol=1e-5)
        (expected_actor.pow(2).sum() + expected_value.pow(2).sum()).backward()
        torch.testing.assert_close(grad[k], flat.grad, rtol=1e-4, atol=1e-5)
        if continuous:
            torch.testing.assert_close(network.action_log_std()[k, 0], model.action_log_std())


@pytest.mark.parametrize("normaliser", ["mixed", "local", "off"])
def test_a_block_collects_what_each_learner_collects_alone(monkeypatch, normaliser):
    """Same actions (greedy, so neither side draws), same simulators: each learner's rollout from
    the block's vectorised collection (one env step, stacked normalisation and reward scaling,
    the time-limit bootstrap) is the rollout the learner collects on its own."""
    from benchbase.api.registry import load_registry
    from plugins.algorithms.common import distributions

    monkeypatch.setattr(distributions, "sample", distributions.greedy)
    family = load_registry().get("env", "random-cartpole")
    env_params = family.Params(max_episode_steps=12)  # time limits inside the rollouts
    tasks = family.training_tasks(env_params, K, 0)
    own, seeds = [[tasks[k]] * 2 for k in range(K)], [5 + k for k in range(K)]
    params = A2CParams(**{**SETTINGS, "normaliser": normaliser})
    alone = [
        A2CLearner(params, LearnerSpec(family.make_env(env_params, own[k], seeds[k]), k, K, 3, torch.device("cpu")))
        for k in range(K)
    ]
    envs = family.make_env_block(env_params, own, seeds)
    block_specs = [LearnerSpec(env, k, K, 3, torch.device("cpu")) for k, env in enumerate(envs.members)]
    block = DiffA2C().make_learner_block(params, block_specs, envs)
    episodes = 0
    for _ in range(8):
        rollout, finished = block.collect()
        for k, learner in enumerate(alone):
            expected, expected_finished = learner.collect()
            got = rollout.learner(k)
            for field in ("observations", "actions", "not_done", "last_observations"):
                assert np.array_equal(getattr(got, field), getattr(expected, field)), field
            # The bootstrap's critic runs on a batch of another size: equal to float rounding.
            np.testing.assert_allclose(got.rewards, expected.rewards, rtol=1e-6, atol=1e-6)
            assert finished[k] == expected_finished
            episodes += len(expected_finished)
    assert episodes >= K * 2 * 3
    member_state, own_state = block.learners[1].state_dict(), alone[1].state_dict()
    for name in ("observation_statistics", "reward_statistics", "env", "last_observations"):
        assert repr(member_state[name]) == repr(own_state[name]), name


def test_a_learner_whose_gradient_is_not_finite_fails_before_its_step_alone_and_in_a_block():
    """A diverged learner fails at its gradient step, named, with its parameters as they were
    (its optimiser would write NaN into them, and mixing spread them to its neighbours)."""
    _, alone, block = learners_and_block(False)
    learner = alone[1]
    rollout, _ = learner.collect()
    learner.flat.data[0] = float("nan")
    before = learner.flat.data.clone()
    with pytest.raises(FloatingPointError, match="learner 1: its gradient's norm is nan"):
        learner.update(rollout)
    assert torch.equal(learner.flat.data[1:], before[1:])

    rollouts, _ = block.collect()
    block.parameters()[2, 0] = float("nan")
    before = block.parameters().clone()
    with pytest.raises(FloatingPointError, match="learner 2: its gradient's norm is nan"):
        block.update(rollouts)
    assert torch.equal(block.parameters()[:2], before[:2]) and torch.equal(block.parameters()[2, 1:], before[2, 1:])
