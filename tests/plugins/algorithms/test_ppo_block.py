"""Diff-PPO's learner block: K learners updated at once give what K separate PPOLearners give on
the same rollouts and shuffles, a block learner's checkpoint is a PPOLearner's, and a block trains.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_diff_ppo import PPO_METRICS
from test_networks import FakeFrameEnv

from benchbase.api.contracts import LearnerSpec, params_of
from benchbase.api.registry import load_registry
from plugins.algorithms import diff_ppo
from plugins.algorithms.common.on_policy import BlockRollout
from plugins.algorithms.diff_ppo import DiffPPO, PPOBlock, PPOLearner, PPOParams

SEED = 5
ENVS_PER_LEARNER = 4
N_STEPS = 8
# 32 samples per rollout in minibatches of 12, 12 and 8: an uneven last minibatch too.
SMALL = {"n_steps": N_STEPS, "n_epochs": 3, "minibatch_size": 12, "hidden": 16}
BUDGET = 10 * N_STEPS * ENVS_PER_LEARNER  # ten updates: the lr and ε anneal visibly between two


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.algorithms.diff_ppo", "plugins.envs.classic.family"})


def make_specs(registry, env_name: str, learners: int) -> list[LearnerSpec]:
    """Learner specs as a cell builds them: the cell's tasks, one simulator seed per learner."""
    family = registry.get("env", env_name)
    env_params = params_of(family)
    tasks = family.training_tasks(env_params, learners * ENVS_PER_LEARNER, SEED)
    specs = []
    for rank in range(learners):
        own = tasks[rank * ENVS_PER_LEARNER : (rank + 1) * ENVS_PER_LEARNER]
        env = family.make_env(env_params, own, SEED * 1_000_003 + 1_009 * rank)
        specs.append(LearnerSpec(env, rank, learners, SEED, torch.device("cpu"), env_steps_budget=BUDGET))
    return specs


def make_block(registry, env_name: str, learners: int, params: PPOParams) -> PPOBlock:
    block = DiffPPO().make_learner_block(params, make_specs(registry, env_name, learners))
    assert isinstance(block, PPOBlock)
    return block


class Permutations:
    """Stands in for `torch.randperm`: records what the real one draws, or replays a sequence."""

    def __init__(self, replay: list[torch.Tensor] | None = None) -> None:
        self.drawn: list[torch.Tensor] = []
        self.replay = None if replay is None else iter(replay)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.replay is not None:
            return next(self.replay)
        self.drawn.append(REAL_RANDPERM(*args, **kwargs))
        return self.drawn[-1]


REAL_RANDPERM = torch.randperm


@pytest.mark.parametrize("env_name", ["random-cartpole", "random-pendulum"])
def test_a_block_update_is_k_learner_updates_on_the_same_rollouts_and_shuffles(registry, monkeypatch, env_name):
    torch.set_num_threads(1)
    params = PPOParams(**SMALL, clip_value_loss=env_name == "random-pendulum")
    separate = [PPOLearner(params, spec) for spec in make_specs(registry, env_name, 3)]
    block = make_block(registry, env_name, 3, params)
    for member, learner in zip(block.learners, separate):
        member.load_state_dict(learner.state_dict())  # the same parameters, normalisers and counters
    rollouts = [learner.collect()[0] for learner in separate]

    for update in range(2):  # the second update: Adam's moments and the annealed lr and ε at work
        # Each PPOLearner draws its own permutations, epoch after epoch; the block draws, per
        # epoch, one per learner in learner order. Record the first, replay them in the second order.
        # (diff_ppo's lazy torch handle is where the updates look randperm up.)
        recorders = [Permutations() for _ in separate]
        expected = []
        for learner, rollout, recorder in zip(separate, rollouts, recorders):
            monkeypatch.setattr(diff_ppo.torch, "randperm", recorder)
            expected.append(learner.update(rollout))
        order = [recorder.drawn[epoch] for epoch in range(params.n_epochs) for recorder in recorders]
        replayer = Permutations(order)
        monkeypatch.setattr(diff_ppo.torch, "randperm", replayer)
        metrics = block.update(BlockRollout.stack(rollouts))
        monkeypatch.setattr(diff_ppo.torch, "randperm", REAL_RANDPERM)
        assert next(replayer.replay, None) is None, "the block drew as many permutations as the learners"

        for member, learner, own, theirs in zip(block.learners, separate, metrics, expected):
            torch.testing.assert_close(member.model_parameters(), learner.model_parameters(), atol=1e-5, rtol=0)
            assert own.keys() == theirs.keys()
            for name, value in theirs.items():
                assert own[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
            assert member.learner.updates_done == learner.updates_done == update + 1
        # lr and ε anneal linearly over the ten updates of the budget.
        assert metrics[0]["lr"] == pytest.approx(params.lr * (1 - update / 10))
        assert metrics[0]["clip_range"] == pytest.approx(params.clip_range * (1 - update / 10))
    # Different data: the learners did not move alike.
    rows = block.parameters()
    assert not torch.allclose(rows[0], rows[1])


def test_a_block_learners_checkpoint_loads_into_a_learner_of_its_own_process(registry):
    torch.set_num_threads(1)
    params = PPOParams(**SMALL)
    block = make_block(registry, "random-cartpole", 3, params)
    for _ in range(2):
        block.iterate()
    member = block.learners[1]
    restored = PPOLearner(params, make_specs(registry, "random-cartpole", 3)[1])
    restored.load_state_dict(member.state_dict())

    assert torch.equal(restored.model_parameters(), member.model_parameters())
    assert restored.updates_done == 2
    saved = restored.optimizer.state_dict()["state"][0]
    own = block.optimizer.state[block.parameter]
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(saved[name], own[name][1])
    assert saved["exp_avg"].abs().sum() > 0
    # CartPole states around the upright pole: x, ẋ, θ, θ̇.
    observations = (np.random.default_rng(0).normal(size=(64, 4)) * [2.0, 2.0, 0.2, 2.0]).astype(np.float32)
    greedy = restored.act_greedy(observations)
    assert np.array_equal(greedy, member.act_greedy(observations))
    assert set(greedy.tolist()) == {0, 1}  # not a constant policy: the comparison means something


def test_a_block_of_four_trains_on_random_cartpole(registry):
    torch.set_num_threads(1)
    params = PPOParams(**SMALL)
    block = make_block(registry, "random-cartpole", 4, params)
    before = block.parameters().clone()
    names = None
    for _ in range(5):
        outputs = block.iterate()
        assert len(outputs) == 4
        for output in outputs:
            assert output.env_steps == N_STEPS * ENVS_PER_LEARNER
            assert all(math.isfinite(value) for value in output.metrics.values()), output.metrics
            names = names or set(output.metrics)
            assert set(output.metrics) == names
    assert names == PPO_METRICS
    assert all(member.learner.updates_done == 5 for member in block.learners)
    after = block.parameters()
    assert torch.isfinite(after).all()
    assert not torch.equal(before, after)
    # Every row is its learner's buffer: the block moved them in place.
    for k, member in enumerate(block.learners):
        assert member.parameters_buffer().data_ptr() == after[k].data_ptr()


def test_a_block_of_frames_updates_each_learner_as_its_own_update():
    """The Nature CNN's stacked form in a PPO block: one epoch in one minibatch of the whole
    rollout (the shuffle then only reorders sums) moves each learner as its own update does."""
    torch.set_num_threads(1)
    params = PPOParams(n_steps=2, n_epochs=1, minibatch_size=4)

    def specs() -> list[LearnerSpec]:
        return [LearnerSpec(FakeFrameEnv(), rank, 2, 0, torch.device("cpu")) for rank in range(2)]

    separate = [PPOLearner(params, spec) for spec in specs()]
    block = DiffPPO().make_learner_block(params, specs())
    assert isinstance(block, PPOBlock) and "image" in DiffPPO.block_observation_kinds
    for member, learner in zip(block.learners, separate):
        member.load_state_dict(learner.state_dict())
    rollouts = [copy.deepcopy(learner.collect()[0]) for learner in separate]
    expected = [learner.update(rollout) for learner, rollout in zip(separate, rollouts)]
    got = block.update(BlockRollout.stack(rollouts))
    for k, learner in enumerate(separate):
        torch.testing.assert_close(block.parameters()[k], learner.parameters_buffer(), rtol=1e-5, atol=1e-6)
        assert got[k]["loss"] == pytest.approx(expected[k]["loss"], rel=1e-4, abs=1e-6)
