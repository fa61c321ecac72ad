"""Env blocks: a learner block's simulators stepped together give what each learner's own env
gives, draw for draw, and each member resets and checkpoints like an env of its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchbase import ConcatenatedEnvs
from benchbase.api.registry import load_registry

LEARNERS, SIMULATORS = 3, 2


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def envs_alone_and_block(registry, name: str, block_of, **params):
    family = registry.get("env", name)
    env_params = dataclasses.replace(family.Params(), **params)
    tasks = family.training_tasks(env_params, LEARNERS, 7)
    own = [[tasks[k]] * SIMULATORS for k in range(LEARNERS)]
    seeds = [11 + 5 * k for k in range(LEARNERS)]
    alone = [family.make_env(env_params, own[k], seeds[k]) for k in range(LEARNERS)]
    return alone, block_of(family, env_params, own, seeds)


def family_block(family, env_params, own, seeds):
    return family.make_env_block(env_params, own, seeds)


def concatenated(family, env_params, own, seeds):
    return ConcatenatedEnvs([family.make_env(env_params, tasks, seed) for tasks, seed in zip(own, seeds)])


def random_actions(space, rng: np.random.Generator) -> np.ndarray:
    shape = (LEARNERS, SIMULATORS)
    if hasattr(space, "n"):
        return rng.integers(0, space.n, size=shape)
    return rng.uniform(space.low, space.high, size=(*shape, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("block_of", [family_block, concatenated], ids=["classic", "concatenated"])
@pytest.mark.parametrize(
    "name,params",
    [("random-cartpole", {}), ("random-cartpole", {"resample": True}), ("random-pendulum", {}), ("CartPole-v1", {})],
    ids=["cartpole", "cartpole-resampled", "pendulum", "gym-cartpole"],
)
def test_a_block_of_envs_steps_as_its_members_would_alone(registry, name, params, block_of):
    alone, block = envs_alone_and_block(registry, name, block_of, max_episode_steps=40, **params)
    assert block.num_envs == LEARNERS * SIMULATORS and len(block.members) == LEARNERS
    for k in range(LEARNERS):
        assert np.array_equal(alone[k].reset(100 + k), block.members[k].reset(100 + k))
    rng = np.random.default_rng(0)
    episodes = truncated = 0
    for step in range(300):
        actions = random_actions(block.action_space, rng)
        results = [env.step(actions[k]) for k, env in enumerate(alone)]
        got = block.step(actions.reshape(LEARNERS * SIMULATORS, *actions.shape[2:]))
        for field in ("observations", "rewards", "terminated", "truncated"):
            assert np.array_equal(np.concatenate([getattr(r, field) for r in results]), getattr(got, field)), field
        ended = got.terminated | got.truncated
        if ended.any():
            finals = np.concatenate(
                [r.observations if r.final_observations is None else r.final_observations for r in results]
            )
            assert np.array_equal(finals[ended], got.final_observations[ended])
        expected = [
            dataclasses.replace(episode, simulator=episode.simulator + k * SIMULATORS)
            for k, result in enumerate(results)
            for episode in result.finished
        ]
        assert got.finished == expected  # returns, lengths, success and the task ran (names included)
        episodes += len(expected)
        truncated += int(got.truncated.sum())
        if step == 150:  # each member saves what its env alone saves, and loads it back
            for k in range(LEARNERS):
                saved = alone[k].state_dict()
                assert repr(block.members[k].state_dict()) == repr(saved)
                block.members[k].load_state_dict(saved)
    assert episodes > 10 and truncated > 0


def test_a_classic_block_is_saved_member_by_member(registry):
    _, block = envs_alone_and_block(registry, "random-cartpole", family_block)
    with pytest.raises(TypeError, match="group by group"):
        block.state_dict()
    with pytest.raises(RuntimeError, match="step with the whole block"):
        block.members[0].step(np.zeros(SIMULATORS, dtype=np.int64))


def test_a_member_reset_restarts_only_its_own_simulators(registry):
    alone, block = envs_alone_and_block(registry, "random-cartpole", family_block)
    push = np.ones(SIMULATORS, dtype=np.int64)
    for _ in range(3):
        block.step(np.ones(LEARNERS * SIMULATORS, dtype=np.int64))
        for env in alone:
            env.step(push)
    assert np.array_equal(block.members[1].reset(5), alone[1].reset(5))
    got = block.step(np.ones(LEARNERS * SIMULATORS, dtype=np.int64)).observations
    assert np.array_equal(got, np.concatenate([env.step(push).observations for env in alone]))
