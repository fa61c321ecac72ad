"""The communication layer with real gloo processes: mixing, bytes, staleness, consensus, failures.

Each scenario runs N spawned learner processes in one gloo process group (see `dist_helpers`);
the expected values are recomputed here from the plans' weights and the learners' known
starting vectors (`dist_helpers.initial_vector`).
"""

from __future__ import annotations

import math
from typing import Any

import dist_helpers as dh
import numpy as np
import pytest
import torch

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.consensus import neighbour_distance
from benchbase.comm.mixing_plan import MixingPlan, build_mixing_plan

N = 4
NUMEL = 1000
STEPS = 100
FLOAT_BYTES = 4


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def plan_for(registry, name: str, n: int, seed: int = 0, **overrides: Any) -> MixingPlan:
    topology = registry.get("topology", name)
    params = params_of(topology, overrides)
    return build_mixing_plan(topology, params, topology.learner_count(n, params), seed)


def irregular_random_plan(registry, n: int) -> MixingPlan:
    """A random graph whose learners do not all have the same degree (metropolis ≠ uniform)."""
    for seed in range(200):
        plan = plan_for(registry, "random", n, seed=seed)
        if len(set(plan.in_adjacency[0].sum(axis=1).tolist())) > 1:
            return plan
    raise AssertionError("no irregular random graph in 200 seeds")


@pytest.fixture(scope="module")
def plans(registry) -> dict[str, MixingPlan]:
    return {
        "ring": plan_for(registry, "ring", N),
        "random": irregular_random_plan(registry, N),
        "fully-connected": plan_for(registry, "fully-connected", N),
        "exponential": plan_for(registry, "exponential", N),
        "isolated": plan_for(registry, "isolated", N),
    }


@pytest.fixture(scope="module")
def synchronous(plans) -> list[dict[str, Any]]:
    """One process group of N learners runs every synchronous scenario (start-up costs once)."""
    return dh.run_group(dh.synchronous_suite, N, plans, NUMEL, STEPS, timeout_s=60)


def initial_matrix(n: int = N) -> np.ndarray:
    return dh.as_matrix([dh.initial_vector(rank, NUMEL).numpy() for rank in range(n)])


# -- synchronous mixing -------------------------------------------------------------------------


def test_plans_are_what_the_scenarios_need(plans):
    random = plans["random"]
    degrees = random.in_adjacency[0].sum(axis=1)
    assert len(set(degrees.tolist())) > 1, "the random graph must be irregular"
    assert not np.allclose(random.weights[0], (random.in_adjacency[0] | np.eye(N, dtype=bool)) / (degrees + 1)[:, None])
    for name in ("ring", "random", "fully-connected", "exponential"):
        assert plans[name].doubly_stochastic, name
    assert plans["fully-connected"].is_complete and not plans["ring"].is_complete
    assert plans["exponential"].period == 2 and plans["exponential"].directed


@pytest.mark.parametrize("name", ["ring", "random", "fully-connected", "exponential"])
def test_synchronous_mixing_reaches_the_exact_average(synchronous, name):
    average = initial_matrix().mean(axis=0)
    for rank, result in enumerate(synchronous):
        np.testing.assert_allclose(result[name]["final"], average, rtol=0, atol=1e-5, err_msg=f"learner {rank}")


@pytest.mark.parametrize("name", ["ring", "random", "fully-connected"])
def test_one_mix_step_is_the_weighted_sum_of_the_neighbourhood(synchronous, plans, name):
    expected = plans[name].weights[0] @ initial_matrix()
    for rank, result in enumerate(synchronous):
        np.testing.assert_allclose(
            result[name]["trace"][0], expected[rank], rtol=0, atol=1e-5, err_msg=f"learner {rank}"
        )
    # Different starting vectors, so one step is not already the average.
    assert not np.allclose(expected, expected.mean(axis=0)) or name == "fully-connected"


def test_fully_connected_uses_one_all_reduce_and_the_others_do_not(synchronous):
    for result in synchronous:
        assert result["fully-connected"]["use_all_reduce"]
        assert not result["ring"]["use_all_reduce"] and not result["random"]["use_all_reduce"]


def test_exponential_mixing_follows_the_phase_schedule(synchronous, plans):
    """The suite mixes the exponential plan at iterations 1, 2, …: phase 1 (hop 2) comes first."""
    plan = plans["exponential"]
    x = initial_matrix()
    after_phase_1 = plan.weights[1] @ x
    after_both = plan.weights[0] @ after_phase_1
    assert not np.allclose(after_phase_1, plan.weights[0] @ x)  # the phases really differ
    for rank, result in enumerate(synchronous):
        first, second = result["exponential"]["trace"]
        # Phase 1 of N = 4: learner r hears r − 2 only, with weight 1/2 (checked by hand too).
        np.testing.assert_allclose(first, 0.5 * (x[rank] + x[(rank - 2) % N]), rtol=0, atol=1e-5)
        np.testing.assert_allclose(first, after_phase_1[rank], rtol=0, atol=1e-5)
        np.testing.assert_allclose(second, after_both[rank], rtol=0, atol=1e-5)
        # One send per iteration on the directed graph; push-sum adds its scalar weight.
        assert plan.push_sum
        assert result["exponential"]["bytes_sent"] == STEPS * 1 * (NUMEL + 1) * FLOAT_BYTES


# -- bytes accounting -----------------------------------------------------------------------------


def test_bytes_on_a_ring_grow_with_degree_not_with_n(synchronous, plans, registry):
    per_learner = STEPS * 2 * NUMEL * FLOAT_BYTES  # k mixes × out-degree × numel × 4
    for rank, result in enumerate(synchronous):
        assert len(plans["ring"].out_neighbours(rank, 0)) == 2
        assert result["ring"]["bytes_sent"] == per_learner
        assert result["ring"]["messages_sent"] == STEPS * 2
        assert result["ring"]["messages_received"] == STEPS * 2
    ring8 = plan_for(registry, "ring", 8)
    stats8 = dh.run_group(dh.bytes_suite, 8, ring8, NUMEL, STEPS, timeout_s=60)
    assert [s["bytes_sent"] for s in stats8] == [per_learner] * 8


def test_isolated_learners_send_nothing_and_keep_their_parameters(synchronous):
    for rank, result in enumerate(synchronous):
        assert result["isolated"]["bytes_sent"] == 0 and result["isolated"]["messages_sent"] == 0
        np.testing.assert_array_equal(result["isolated"]["final"], dh.initial_vector(rank, NUMEL).numpy())


def test_all_reduce_bytes_are_those_of_a_ring_all_reduce(synchronous):
    for result in synchronous:
        assert result["fully-connected"]["bytes_sent"] == STEPS * int(2 * (N - 1) / N * NUMEL * FLOAT_BYTES)


# -- consensus distance ---------------------------------------------------------------------------


def test_consensus_distance_matches_the_hand_computation(synchronous):
    x = initial_matrix()
    mean = x.mean(axis=0)
    expected = math.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1))) / np.linalg.norm(mean)
    assert expected > 0.1
    for result in synchronous:  # a collective: every learner gets the same number
        assert result["consensus_distance_initial"] == pytest.approx(expected, rel=1e-5)
        # Measured a slice at a time (bounded buffers for large models): the same distance.
        assert result["consensus_distance_in_slices"] == pytest.approx(result["consensus_distance_initial"], rel=1e-6)


@pytest.mark.parametrize("name", ["ring", "random", "fully-connected", "exponential"])
def test_consensus_distance_shrinks_to_zero_after_mixing(synchronous, name):
    for result in synchronous:
        assert result[name]["consensus_distance_after"] < 1e-5
        assert result[name]["consensus_distance_after"] < result["consensus_distance_initial"]


# -- bounded staleness ---------------------------------------------------------------------------


def test_bounded_staleness_with_a_straggler(registry):
    bound, iterations, numel, sleep_s = 8, 16, 256, 0.02
    ring = plan_for(registry, "ring", N)
    results = dh.run_group(dh.staleness_suite, N, ring, numel, iterations, bound, sleep_s, timeout_s=60)
    degree = 2

    # K = 0: lock-step, every send received within its iteration.
    for result in results:
        stats = result[0]["after_close"]
        assert stats["messages_sent"] == stats["messages_received"] == iterations * degree

    # K > 0: everyone got through close(); every message sent (final markers included) received.
    # statistics() counts, per learner, the data messages and the final marker sent to each
    # out-peer, and every message its receiver threads took in, markers included.
    sent = [r[bound]["after_close"]["messages_sent"] for r in results]
    received = [r[bound]["after_close"]["messages_received"] for r in results]
    assert sum(sent) == sum(received) == N * degree * (iterations + 1)
    assert sent == received == [degree * (iterations + 1)] * N
    for result in results:
        before = result[bound]["before_close"]
        # Running sums of the mass (w·θ, w) in float64, and the iteration slot.
        assert before["bytes_sent"] == iterations * degree * (numel + 2) * 8
        assert before["staleness_max"] <= bound
        # (iteration − sent_at is negative where the in-neighbour is ahead: the straggler's case.)
        assert max(result[bound]["staleness_seen"]) <= bound
        # A mix before a neighbour's first message arrived (allowed while t < K: the learners'
        # common start counts as iteration −1) uses no message and records no staleness.
        assert iterations * degree / 4 <= len(result[bound]["staleness_seen"]) <= iterations * degree
        assert np.isfinite(result[bound]["final"]).all()
    # The gossip path was really exercised: the straggler's neighbours ran ahead of it.
    assert max(results[r][bound]["before_close"]["staleness_max"] for r in (1, 3)) >= 1

    # The fast learners waited less than in lock-step with the straggler.
    for rank in (1, 2, 3):
        wait_sync = results[rank][0]["before_close"]["mix_wait_s"]
        wait_gossip = results[rank][bound]["before_close"]["mix_wait_s"]
        assert wait_gossip < wait_sync, (
            f"learner {rank}: {wait_gossip:.3f} s with K={bound}, {wait_sync:.3f} s with K=0"
        )
    assert results[1][0]["before_close"]["mix_wait_s"] > 0.5 * iterations * sleep_s


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("staleness", [0, 2])
def test_a_learner_that_raises_makes_its_neighbours_fail_not_hang(registry, staleness):
    timeout_s, fail_at = 3.0, 3
    ring = plan_for(registry, "ring", N)
    assert not ring.is_complete  # point-to-point path, bounded by the communicator's timeout
    results = dh.run_group(dh.failure_suite, N, ring, 64, staleness, fail_at, timeout_s, timeout_s=60)
    assert results[0] == {"raised": "learner 0 broke", "iteration": fail_at}
    for rank in (1, 2, 3):
        result = results[rank]
        assert result["failed_at"] is not None, f"learner {rank} never noticed"
        assert result["elapsed_s"] < timeout_s + 3, result
    for rank in (1, 3):  # learner 0's neighbours: the first mix that needs its message fails
        assert results[rank]["failed_at"] == fail_at + staleness, results[rank]
    if staleness > 0:
        assert results[1]["error"].startswith("TimeoutError"), results[1]


def test_a_device_group_carries_the_same_exchange(plans):
    """The communicator's NCCL path (batched send/receive pairs, a group all-reduce) run over a
    gloo group on CPU: bit-for-bit the results of the default path."""
    results = dh.run_group(dh.device_group_suite, N, plans, NUMEL, 3, timeout_s=60)
    for rank, result in enumerate(results):
        for name in ("ring", "random", "fully-connected", "exponential"):
            default, grouped = result[name]
            np.testing.assert_array_equal(default, grouped, err_msg=f"{name}, learner {rank}")
        assert result["transports"]["ring"] == ["p2p", "nccl"]
        assert result["transports"]["fully-connected"] == ["all-reduce", "nccl-all-reduce"]


def test_neighbour_distance_compares_parameters_only_when_messages_carry_more() -> None:
    # Messages carry the parameters, then mixed values that are not parameters (statistics).
    own = torch.tensor([1.0, 2.0])
    views = {1: torch.tensor([1.0, 4.0, 1e6, 1e6]), 2: torch.tensor([3.0, 2.0, -1e6, 0.0])}
    expected = ((0.0 + 4.0) + (4.0 + 0.0)) / 2
    assert neighbour_distance(own, views, push_sum=False) == pytest.approx(expected**0.5 / 5**0.5)
    # Push-sum views are mass (w·θ, extra, w): the weight is the last value.
    mass = {1: torch.tensor([2.0, 8.0, 1e6, 2.0])}
    assert neighbour_distance(own, mass, push_sum=True) == pytest.approx(2.0 / 5**0.5)
