"""Numerical faults in mixing (issue 14) and their fixes (docs/mixing.md):

- push-sum weights stay at or above the weight floor whatever an in-peer does (silent for 10,000
  mixes, a late start, a pause), and mass is still conserved exactly after close;
- the push-sum gradient step goes to the numerator (GALA's Algorithm 1, SGP), so gossip on an
  irregular graph minimises Σ f_i, not a weight-biased sum;
- bounded-staleness diffusion keeps the network average (running-sum channels);
- the numerator carries over a checkpoint bit for bit.

In one process (the communicator's own rules over an in-memory transport, `gossip_sim`) and in
real gloo processes (`mixing_helpers`).
"""

from __future__ import annotations

from typing import Any

import dist_helpers as dh
import mixing_helpers as mh
import numpy as np
import pytest
import torch
from gossip_sim import lockstep, simulate

from benchbase.api.contracts import Topology, TopologyParams, params_of
from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.comm.mixing_plan import MixingPlan, build_mixing_plan
from benchbase.comm.rules import WEIGHT_FLOOR

GALA_STALENESS = 1_000_000  # gala-a2c's default: never wait
FLOOR = WEIGHT_FLOOR * (1 - 1e-12)  # the weight kept at the floor is w·(floor/w), to rounding


class Star(Topology):
    name = "star"

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        adjacency = np.zeros((n_learners, n_learners), dtype=int)
        adjacency[0, 1:] = adjacency[1:, 0] = 1
        return adjacency


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def directed_ring(registry, n: int) -> MixingPlan:
    topology = registry.get("topology", "directed-ring")
    return build_mixing_plan(topology, params_of(topology, {}), n, 0, num_peers=1)


def star(n: int, **kwargs: Any) -> MixingPlan:
    return build_mixing_plan(Star(), TopologyParams(**kwargs), n, 0)


def gossip_star(n: int) -> MixingPlan:
    return build_mixing_plan(Star(), TopologyParams(), n, 0, num_peers=1)


# -- 1. push-sum weights stay bounded away from zero ----------------------------------------------


def test_push_sum_weights_stay_above_the_floor_while_an_in_peer_is_silent_for_10000_mixes(registry):
    """A directed ring of 3: learner 2 (learner 0's only in-peer) is away for the first 10,000
    ticks, then mixes. Before the floor, learner 0 gave away half its weight at every mix and
    reached 0 (then NaN everywhere) after 1,075 mixes."""
    plan = directed_ring(registry, 3)
    initial = [dh.initial_vector(r, 16) for r in range(3)]
    steps = [mh.step_of(r, 16) for r in range(3)]
    run = simulate(
        plan,
        initial,
        10_500,
        GALA_STALENESS,
        [1, 1, 1],
        active=lambda rank, tick: rank != 2 or tick >= 10_000,
        step=lambda rank, params: steps[rank],
    )
    assert run.finite
    assert min(run.min_weight) >= FLOOR > 1e-6, run.min_weight
    # After close every bit of mass is home: Σ w = N, Σ x = Σ x(0) + Σ steps.
    assert sum(rule.push_sum_weight for rule in run.rules) == pytest.approx(3, abs=1e-12)
    numerators = sum(rule.numerator.mass[:-1] for rule in run.rules)
    expected = sum(x.double() for x in initial) + sum(run.steps)
    np.testing.assert_allclose(numerators.numpy(), expected.numpy(), rtol=1e-12, atol=1e-9)
    mass = sum(p.double() * rule.push_sum_weight for p, rule in zip(run.params, run.rules))
    np.testing.assert_allclose(mass.numpy(), expected.numpy(), rtol=1e-6)  # z itself is float32


def test_a_silent_in_peer_across_gloo_processes_leaves_weights_bounded_and_mass_conserved(registry):
    """The same with real processes and the gloo transport: learner 2 starts late, mixes, and
    pauses again, each time while learner 0 mixes 1,500 times."""
    plan = directed_ring(registry, 3)
    numel, silent_mixes, tail_mixes = 16, 1_500, 100
    results = dh.run_group(
        mh.silent_in_peer_suite, 3, plan, numel, GALA_STALENESS, silent_mixes, tail_mixes, timeout_s=120
    )
    for rank, result in enumerate(results):
        assert result["finite"], rank
        assert result["lowest_weight"] >= FLOOR, (rank, result["lowest_weight"])
    assert results[0]["stats"]["publishes_limited"] > 0  # the floor did the holding
    assert sum(r["weight"] for r in results) == pytest.approx(3, abs=1e-9)
    expected = sum(dh.initial_vector(r, numel).double().numpy() for r in range(3)) + sum(r["steps"] for r in results)
    np.testing.assert_allclose(sum(r["mass"] for r in results), expected, rtol=2e-6, atol=1e-6)


# -- 2. the gradient step goes to the numerator ----------------------------------------------------

# f_i(θ) = ½(θ − c_i)² on a star of 5 (hub 0), one peer per step: Σ f_i is least at mean(c).
TARGETS = torch.tensor([-9.0, 1.0, -3.0, -2.0, -1.63], dtype=torch.float64)
MINIMISER = -2.926
ALPHA = 0.01  # plain SGD


def sgd(rank: int, params: torch.Tensor) -> torch.Tensor:
    return -ALPHA * (params - TARGETS[rank])


def test_synchronous_push_sum_gossip_minimises_the_sum_of_the_losses():
    """Before, stepping z and rescaling (x ← w·(z − α∇f)) weighted each learner's loss by its
    push-sum weight and converged near −5.18 here; the hub's weight is the largest."""
    plan = gossip_star(5)
    assert plan.push_sum and plan.period == 4
    params = [torch.zeros(1, dtype=torch.float64) for _ in range(5)]
    _, trace = lockstep(plan, params, range(4000), step=sgd)
    last_period = torch.stack([torch.cat(mine[-plan.period :]) for mine in trace])
    # With a constant step the learners stay O(α) apart, around the right point.
    assert float(last_period.mean()) == pytest.approx(MINIMISER, abs=1e-6)
    assert float((last_period - MINIMISER).abs().max()) < 0.5


def test_asynchronous_push_sum_gossip_minimises_the_sum_of_the_losses():
    plan = gossip_star(5)
    run = simulate(
        plan, [torch.zeros(1, dtype=torch.float64) for _ in range(5)], 4000, GALA_STALENESS, [1] * 5, step=sgd
    )
    # After close no mass is in flight: Σ w·z / N is the network's average.
    average = sum(rule.push_sum_weight * float(p) for p, rule in zip(run.params, run.rules)) / 5
    assert average == pytest.approx(MINIMISER, abs=0.05)
    assert all(abs(float(p) - MINIMISER) < 0.5 for p in run.params)


def test_without_steps_push_sum_still_reaches_the_exact_average():
    plan = gossip_star(5)
    initial = [dh.initial_vector(r, 8).double() for r in range(5)]
    params = [x.clone() for x in initial]
    lockstep(plan, params, range(300))
    target = sum(initial) / 5
    for p in params:
        np.testing.assert_allclose(p.numpy(), target.numpy(), rtol=0, atol=1e-12)


# -- 3. bounded-staleness diffusion keeps the network average ---------------------------------------


def test_stale_diffusion_on_a_star_with_a_slow_hub_keeps_the_average_in_one_process():
    """4 learners, hub 4× slower, K = 3, Metropolis weights, no gradients, 60 iterations."""
    plan = star(4, weights="metropolis")
    assert not plan.push_sum and plan.column_stochastic
    initial = [dh.initial_vector(r, 8) for r in range(4)]
    run = simulate(plan, initial, 60, 3, [4, 1, 1, 1])
    mean = torch.stack(run.params).double().mean(dim=0)
    np.testing.assert_allclose(mean.numpy(), torch.stack(initial).double().mean(dim=0).numpy(), atol=1e-6)


def test_stale_diffusion_on_a_star_with_a_slow_hub_keeps_the_average_across_gloo_processes():
    plan = star(4, weights="metropolis")
    results = dh.run_group(mh.slow_hub_suite, 4, plan, 64, 3, 60, 0.002, timeout_s=90)
    assert max(r["staleness_max"] for r in results) <= 3
    final = dh.as_matrix([r["final"] for r in results])
    average = dh.as_matrix([dh.initial_vector(r, 64).numpy() for r in range(4)]).mean(axis=0)
    weighted = sum(r["weight"] * r["final"].astype(np.float64) for r in results) / 4
    np.testing.assert_allclose(weighted, average, rtol=0, atol=1e-5)  # the mass is all there
    np.testing.assert_allclose(final.mean(axis=0), average, rtol=0, atol=1e-4)  # and it has nearly agreed


# -- 4. checkpoints -------------------------------------------------------------------------------


def test_the_push_sum_numerator_carries_over_a_checkpoint_bit_for_bit(tmp_path):
    plan = gossip_star(5)
    straight = [torch.zeros(3) for _ in range(5)]
    lockstep(plan, straight, range(100), step=lambda r, p: -0.01 * (p - float(TARGETS[r])))
    resumed = [torch.zeros(3) for _ in range(5)]
    rules, _ = lockstep(plan, resumed, range(50), step=lambda r, p: -0.01 * (p - float(TARGETS[r])))
    states = []
    for r, rule in enumerate(rules):
        path = checkpoint.save(tmp_path / str(r), {"comm": rule.state_dict()}, env_steps=50, cell_config={})
        states.append(checkpoint.load(path, {}).state["comm"])
    resumed = [p.clone() for p in resumed]  # the learner's own checkpointed parameters
    lockstep(plan, resumed, range(50, 100), step=lambda r, p: -0.01 * (p - float(TARGETS[r])), states=states)
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)
