"""V-trace's learner block against the same learners each on its own: the segments its
collection hands each learner (with the behaviour networks' outputs, values and features), the
update given the same batches, and the bookkeeping of an iteration (behaviour refresh, replay
per learner, counters and metrics)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_algorithms import FakeVectorEnv
from test_vtrace import UniformBuffer, mix_of

from benchbase import LearnerSpec
from plugins.algorithms.common.off_policy import SampledBatch
from plugins.algorithms.vtrace import VTrace, VTraceLearner, VTraceParams

K = 3
SETTINGS = dict(unroll_length=4, batch_size=2, gamma=0.9, hidden=8, normaliser="local", background_preparation=False)
SEGMENT_FIELDS = ("observations", "actions", "discounts", "behaviour_logits", "behaviour_values", "features")


def uniform_mix(batch: int, k: int):
    return mix_of(batch, ("uniform", UniformBuffer(capacity=16, threshold=batch, seed=11 + k)))


def specs(continuous: bool, params: VTraceParams, envs=None, seed: int = 3) -> list[LearnerSpec]:
    return [
        LearnerSpec(
            FakeVectorEnv(continuous) if envs is None else envs[k],
            k,
            K,
            seed,
            torch.device("cpu"),
            replay=uniform_mix(params.batch_size, k),
            env_steps_budget=4000,
        )
        for k in range(K)
    ]


def learners_and_block(continuous: bool, **overrides):
    params = VTraceParams(**{**SETTINGS, **overrides})
    alone = [VTraceLearner(params, spec) for spec in specs(continuous, params)]
    block = VTrace().make_learner_block(params, specs(continuous, params))
    assert block is not None
    return params, alone, block


def test_the_behaviour_policy_keeps_no_gradients_alone_or_in_a_block():
    """μ is copied from π and never learns: no gradient buffer (a copy of the parameters) for it."""
    _, alone, block = learners_and_block(False)
    for learner in [*alone, *(member.learner for member in block.learners)]:
        assert learner.behaviour_flat.parameter.grad is None
        assert not learner.behaviour_flat.parameter.requires_grad
        assert all(parameter.grad is None for parameter in learner.behaviour.parameters())


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"laser": True, "laser_threshold": 0.01, "reduction": "sum", "max_grad_norm": 0.05}],
    ids=["default", "laser-sum-clipped"],
)
def test_a_block_update_is_each_learners_own_update(continuous, overrides):
    """Given the same batches (segments each learner collected alone, with μ a few updates
    behind π), three updates of the block move every row as the learner's own updates move it,
    with the same metrics."""
    _, alone, block = learners_and_block(continuous, **overrides)
    segments = [learner.collect_segments()[0] + learner.collect_segments()[0] for learner in alone]
    for step in range(3):
        batches = [SampledBatch(own[step : step + 2], {"uniform": 2}) for own in segments]
        expected = [learner.update(batch) for learner, batch in zip(alone, batches)]
        got = block.update(batches)
        for k, learner in enumerate(alone):
            torch.testing.assert_close(block.parameters()[k], learner.parameters_buffer(), rtol=1e-5, atol=1e-6)
            assert list(got[k]) == list(expected[k])
            for name, value in expected[k].items():
                assert got[k][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    if overrides:  # the options bit: LASER masked something, and some gradient was clipped
        assert any(metrics["laser_mask_rate"] > 0 for metrics in expected)
        assert any(metrics["grad_norm"] > 0.05 for metrics in expected)
    state = block.learners[1].state_dict()
    own = alone[1].state_dict()
    for name, value in own["optimizer"]["state"][0].items():
        torch.testing.assert_close(state["optimizer"]["state"][0][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "normaliser, background", [("mixed", False), ("local", True), ("off", False)], ids=["mixed", "local-bg", "off"]
)
def test_a_block_collects_the_segments_each_learner_collects_alone(monkeypatch, normaliser, background):
    """Same actions (greedy), same simulators: every learner's segments from the block's
    collection, with what its behaviour network computed, are the ones it collects alone, and
    an iteration leaves each learner's replay, counters and behaviour network as its own
    iteration does, with batches drawn in the background or not."""
    from benchbase.api.registry import load_registry
    from plugins.algorithms.common import distributions

    monkeypatch.setattr(distributions, "sample", distributions.greedy)
    family = load_registry().get("env", "random-cartpole")
    env_params = family.Params(max_episode_steps=12)  # time limits inside the segments
    tasks = family.training_tasks(env_params, K, 0)
    own, seeds = [[tasks[k]] * 2 for k in range(K)], [5 + k for k in range(K)]
    params = VTraceParams(
        **{**SETTINGS, "normaliser": normaliser, "behaviour_refresh": 2, "background_preparation": background}
    )
    alone = [
        VTraceLearner(params, spec)
        for spec in specs(False, params, [family.make_env(env_params, own[k], seeds[k]) for k in range(K)])
    ]
    envs = family.make_env_block(env_params, own, seeds)
    block = VTrace().make_learner_block(params, specs(False, params, envs.members), envs)
    episodes = 0
    for _ in range(12):
        outputs = block.iterate()
        for k, learner in enumerate(alone):
            expected = learner.iterate()
            assert outputs[k].finished == expected.finished
            assert outputs[k].env_steps == expected.env_steps
            episodes += len(expected.finished)
            got, wanted = outputs[k].metrics, expected.metrics
            assert list(got) == list(wanted)
            assert got["updates"] == wanted["updates"] and got["lr"] == wanted["lr"]
            for name, value in wanted.items():
                assert got[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name
            mine, theirs = block.learners[k].learner, learner
            assert mine.steps_done == theirs.steps_done and mine.refreshed_at == theirs.refreshed_at
            torch.testing.assert_close(mine.behaviour_flat.data, theirs.behaviour_flat.data, rtol=1e-5, atol=1e-6)
            assert len(mine.replay.buffers[0].items) == len(theirs.replay.buffers[0].items)
            for a, b in zip(mine.replay.buffers[0].items, theirs.replay.buffers[0].items):
                for field in SEGMENT_FIELDS:
                    torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-5)
                # The time-limit bootstrap's critic runs on a batch of another size: equal to rounding.
                torch.testing.assert_close(a.rewards, b.rewards, rtol=1e-5, atol=1e-5)
    assert episodes >= K * 2 * 3
    assert all(len(learner.replay.buffers[0].items) == 16 for learner in alone)  # 24 offered, the ring keeps 16
    member_state, own_state = block.learners[1].state_dict(), alone[1].state_dict()
    for name in ("observation_statistics", "env", "last_observations"):
        assert repr(member_state[name]) == repr(own_state[name]), name
    torch.testing.assert_close(member_state["behaviour"], own_state["behaviour"], rtol=1e-5, atol=1e-6)
    assert member_state["attributes"]["updates"] == own_state["attributes"]["updates"] > 0
    block.close()
    for learner in alone:
        learner.close()


def test_learners_of_a_block_whose_replay_mixes_disagree_are_refused():
    """A block updates all its learners or none; mixes that answer at different times cannot share it."""
    params = VTraceParams(**SETTINGS)
    block_specs = specs(False, params)
    later = mix_of(params.batch_size, ("uniform", UniformBuffer(capacity=16, threshold=4, seed=1)))
    block_specs[1] = dataclasses.replace(block_specs[1], replay=later)
    block = VTrace().make_learner_block(params, block_specs)
    with pytest.raises(RuntimeError, match="all have a batch or none"):
        block.iterate()  # learners 0 and 2 can sample after one iteration, learner 1 after two
