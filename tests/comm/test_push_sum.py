"""Push-sum, gossip peer rotation and unreliable links.

Push-sum must reach the exact average of the learners' initial vectors on a directed graph whose
learners have different in- and out-degrees, where plain uniform (row-stochastic) mixing reaches
agreement on the wrong value. Checked on the weights alone, then across real gloo processes
through both transports, synchronously and asynchronously with a straggler.
"""

from __future__ import annotations

import uuid
from typing import Any

import dist_helpers as dh
import numpy as np
import pytest

from benchbase.api.contracts import Topology, TopologyParams, params_of
from benchbase.api.registry import load_registry
from benchbase.comm.links import publishes
from benchbase.comm.mixing_plan import MixingPlan, build_mixing_plan, gossip_schedule
from benchbase.errors import UserError

N = 4
NUMEL = 300

# i receives from j where [i, j] = 1: the directed ring 0→1→2→3→0 plus 0→2 and 0→3.
# Out-degrees 3, 1, 1, 1; in-degrees 1, 1, 2, 2: neither regular nor balanced.
DIRECTED_IRREGULAR = np.array(
    [
        [0, 0, 0, 1],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
    ]
)


class Fixed(Topology):
    name = "fixed-directed"
    directed = True

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        return self.matrix


def directed_plan(weights: str) -> MixingPlan:
    return build_mixing_plan(Fixed(DIRECTED_IRREGULAR), TopologyParams(weights=weights), N, seed=0)


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def plan_for(registry, name: str, n: int, num_peers: int | None = None, **overrides: Any) -> MixingPlan:
    topology = registry.get("topology", name)
    return build_mixing_plan(topology, params_of(topology, overrides), n, 0, num_peers)


def initial_matrix(n: int = N) -> np.ndarray:
    return dh.as_matrix([dh.initial_vector(rank, NUMEL).numpy() for rank in range(n)])


def simulate(plan: MixingPlan, x: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Iterate the plan's weights on (w·θ, w) in float64; returns (θ = x/w, w)."""
    mass, weight = x.copy(), np.ones(len(x))
    for t in range(steps):
        a = plan.weights[plan.phase(t)]
        mass, weight = a @ mass, a @ weight
    return mass / weight[:, None], weight


# -- the weights ---------------------------------------------------------------------------------


def test_directed_topologies_default_to_push_sum_with_column_stochastic_weights():
    plan = directed_plan("auto")
    assert plan.push_sum and plan.directed
    for a in plan.weights:
        np.testing.assert_allclose(a.sum(axis=0), 1.0)  # each sender splits all it has
    # Learner 0 has 3 out-neighbours: it keeps 1/4 and gives each 1/4.
    np.testing.assert_allclose(plan.weights[0][:, 0], [0.25, 0.25, 0.25, 0.25])
    assert not directed_plan("uniform").push_sum


def test_push_sum_reaches_the_exact_average_where_uniform_mixing_drifts():
    x = initial_matrix()
    target = x.mean(axis=0)
    pushed, weight = simulate(directed_plan("push-sum"), x, 300)
    np.testing.assert_allclose(pushed, np.broadcast_to(target, pushed.shape), rtol=0, atol=1e-10)
    assert weight.sum() == pytest.approx(N)
    assert not np.allclose(weight, 1.0)  # the weights really did the correcting

    uniform = directed_plan("uniform")
    mixed = x.copy()
    for _ in range(300):
        mixed = uniform.weights[0] @ mixed
    assert np.ptp(mixed, axis=0).max() < 1e-8  # agreement…
    assert np.abs(mixed[0] - target).max() > 0.05  # …on the wrong value


def test_push_sum_on_the_time_varying_exponential_graph_keeps_the_average(registry):
    plan = plan_for(registry, "exponential", 8)
    assert plan.push_sum and plan.period == 3
    x = dh.as_matrix([dh.initial_vector(rank, 50).numpy() for rank in range(8)])
    final, weight = simulate(plan, x, 60)
    np.testing.assert_allclose(final, np.broadcast_to(x.mean(axis=0), final.shape), atol=1e-10)
    np.testing.assert_allclose(weight, 1.0)  # each phase is a permutation: weights stay 1


# -- gossip peer rotation ------------------------------------------------------------------------


def test_one_peer_on_the_exponential_graph_is_the_exponential_schedule(registry):
    base = plan_for(registry, "exponential", 8)
    gossip = plan_for(registry, "exponential", 8, num_peers=1)
    assert gossip.period == base.period
    for a, b in zip(gossip.in_adjacency, base.in_adjacency):
        np.testing.assert_array_equal(a, b)


def test_one_peer_on_a_ring_alternates_between_the_two_neighbours(registry):
    plan = plan_for(registry, "ring", 5, num_peers=1)
    assert plan.period == 2 and plan.push_sum
    assert plan.out_neighbours(0, 0) == [1] and plan.out_neighbours(0, 1) == [4]
    both = plan_for(registry, "ring", 5, num_peers=2)
    assert both.period == 1
    np.testing.assert_array_equal(both.in_adjacency[0], plan_for(registry, "ring", 5).in_adjacency[0])


def test_every_learner_receives_from_exactly_k_peers_on_a_circulant_graph(registry):
    for k in (1, 2, 3):
        plan = plan_for(registry, "fully-connected", 6, num_peers=k)
        for a in plan.in_adjacency:
            assert (a.sum(axis=0) == k).all() and (a.sum(axis=1) == k).all()


def test_gossip_rotation_keeps_the_average_on_an_irregular_undirected_graph():
    irregular = np.array([[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 1], [0, 0, 1, 0, 1], [0, 0, 1, 1, 0]])

    class Undirected(Topology):
        name = "irregular"

        def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
            return irregular

    plan = build_mixing_plan(Undirected(), TopologyParams(), 5, 0, num_peers=1)
    assert plan.push_sum and plan.period == 6  # degrees 1, 2, 3, 2, 2: lcm 6
    x = dh.as_matrix([dh.initial_vector(rank, 20).numpy() for rank in range(5)])
    final, _ = simulate(plan, x, 600)
    np.testing.assert_allclose(final, np.broadcast_to(x.mean(axis=0), final.shape), atol=1e-9)


def test_more_peers_than_the_topology_allows_is_a_one_line_error(registry):
    with pytest.raises(UserError, match=r"num_peers=2 but learner 0 has only 1 out-neighbour.*between 1 and 1"):
        plan_for(registry, "directed-ring", 4, num_peers=2)
    with pytest.raises(UserError, match="metropolis weights do not apply"):
        plan_for(registry, "ring", 4, num_peers=1, weights="metropolis")


def test_a_schedule_that_would_repeat_too_late_is_refused():
    union = np.zeros((40, 40), dtype=bool)
    # Learner r has out-degree d_r = (r % 9) + 1: lcm(1..9) = 2520 phases.
    for r in range(40):
        for d in range((r % 9) + 1):
            union[(r + 1 + d) % 40, r] = True
    with pytest.raises(UserError, match="repeats only after 2520 iterations"):
        gossip_schedule(union, 1, "topology t")


# -- link drops ---------------------------------------------------------------------------------


def test_link_drops_are_a_reproducible_hash_with_the_asked_rate():
    draws = [publishes(11, learner, t, 0.3) for learner in range(4) for t in range(5000)]
    assert abs(1 - sum(draws) / len(draws) - 0.3) < 0.02
    assert draws == [publishes(11, learner, t, 0.3) for learner in range(4) for t in range(5000)]
    assert draws != [publishes(12, learner, t, 0.3) for learner in range(4) for t in range(5000)]
    assert all(publishes(11, 0, t, 0.0) for t in range(100))


# -- real processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synchronous_runs(registry) -> dict[str, Any]:
    plans = {
        "push-sum": directed_plan("push-sum"),
        "uniform": directed_plan("uniform"),
        "ring": plan_for(registry, "ring", N),
    }
    prefix = f"bbt-ps-{uuid.uuid4().hex[:8]}"
    clean = dh.run_group(dh.push_sum_suite, N, plans, NUMEL, 200, prefix, timeout_s=90)
    dropped = dh.run_group(dh.push_sum_suite, N, plans, NUMEL, 200, prefix + "d", 0.3, timeout_s=90)
    return {"clean": clean, "dropped": dropped}


@pytest.mark.parametrize("transport", ["p2p", "shm"])
def test_push_sum_across_gloo_processes_reaches_the_exact_average(synchronous_runs, transport):
    target = initial_matrix().mean(axis=0)
    results = synchronous_runs["clean"]
    for result in results:
        np.testing.assert_allclose(result[("push-sum", transport)]["final"], target, rtol=0, atol=2e-5)
    assert sum(r[("push-sum", transport)]["weight"] for r in results) == pytest.approx(N, abs=1e-5)
    drifted = results[0][("uniform", transport)]["final"]
    assert np.abs(drifted - target).max() > 0.05
    # The processes did what the weights say, to float32 rounding.
    expected, _ = simulate(directed_plan("push-sum"), initial_matrix(), 200)
    np.testing.assert_allclose(results[2][("push-sum", transport)]["final"], expected[2], atol=2e-5)


def test_push_sum_keeps_the_exact_average_with_dropped_links(synchronous_runs):
    target = initial_matrix().mean(axis=0)
    results = synchronous_runs["dropped"]
    for transport in ("p2p", "shm"):
        skipped = [r[("push-sum", transport)]["stats"]["publishes_skipped"] for r in results]
        assert all(30 <= s <= 90 for s in skipped), skipped  # about 30% of 200
        for result in results:
            np.testing.assert_allclose(result[("push-sum", transport)]["final"], target, rtol=0, atol=2e-5)
        # Synchronous drops are a function of (seed, learner, iteration): both transports agree.
    for rank in range(N):
        np.testing.assert_array_equal(results[rank][("ring", "p2p")]["final"], results[rank][("ring", "shm")]["final"])
        np.testing.assert_allclose(
            results[rank][("push-sum", "p2p")]["final"], results[rank][("push-sum", "shm")]["final"], atol=1e-6
        )
    # Plain diffusion on the ring still agrees, and sent fewer messages than without drops.
    ring_final = dh.as_matrix([r[("ring", "p2p")]["final"] for r in results])
    assert np.ptp(ring_final, axis=0).max() < 1e-4
    assert (
        results[0][("ring", "p2p")]["stats"]["messages_sent"]
        < synchronous_runs["clean"][0][("ring", "p2p")]["stats"]["messages_sent"]
    )


@pytest.mark.parametrize("transport", ["p2p", "shm"])
def test_asynchronous_push_sum_with_a_straggler_conserves_mass_and_respects_the_bound(registry, transport):
    """Learner 0 is ~10x slower than the others. Nobody deadlocks, no mix uses a message staler
    than K, and after close every bit of mass sent has been received: Σ w = N exactly and
    Σ w·θ = Σ θ(0) up to the float32 rounding of θ at each mix."""
    bound, iterations, sleep_s = 3, 40, 0.01
    plan = directed_plan("push-sum")
    prefix = f"bbt-aps-{uuid.uuid4().hex[:8]}"
    results = dh.run_group(
        dh.async_push_sum_suite, N, plan, NUMEL, iterations, bound, sleep_s, transport, prefix, timeout_s=90
    )
    assert sum(r["weight"] for r in results) == pytest.approx(N, abs=1e-9)
    total_mass = sum(r["mass"] for r in results)
    np.testing.assert_allclose(total_mass, initial_matrix().sum(axis=0), rtol=2e-6, atol=1e-6)
    for result in results:
        assert result["staleness_seen"] and max(result["staleness_seen"]) <= bound
        assert np.isfinite(result["final"]).all()
    # The straggler's out-neighbours (1, 2, 3 all hear from 0) ran ahead of it as far as K allows.
    assert max(results[r]["before_close"]["staleness_max"] for r in (1, 2, 3)) >= bound - 1
    # Learner 0 measured the spread from snapshots: exactly the hand computation at the start.
    x = initial_matrix()
    expected = np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean()) / np.linalg.norm(x.mean(axis=0))
    consensus = results[0]["consensus"]
    assert set(consensus) == {0, iterations} and all(not r["consensus"] for r in results[1:])
    assert consensus[0] == pytest.approx(expected, rel=1e-5)
    assert consensus[iterations] < consensus[0] / 4
    # Every in-neighbour's mass arrived: the spread shrank from the initial one.
    spread_before = np.ptp(initial_matrix(), axis=0).max()
    spread_after = np.ptp(dh.as_matrix([r["final"] for r in results]), axis=0).max()
    assert spread_after < spread_before / 4


def test_asynchronous_push_sum_with_drops_loses_no_mass(registry):
    plan = plan_for(registry, "exponential", N, num_peers=1)
    prefix = f"bbt-apsd-{uuid.uuid4().hex[:8]}"
    results = dh.run_group(dh.async_push_sum_suite, N, plan, NUMEL, 40, 1000, 0.0, "p2p", prefix, 0.4, timeout_s=90)
    assert sum(r["weight"] for r in results) == pytest.approx(N, abs=1e-9)
    np.testing.assert_allclose(sum(r["mass"] for r in results), initial_matrix().sum(axis=0), rtol=2e-6, atol=1e-6)
    assert sum(r["before_close"]["publishes_skipped"] for r in results) > 20
