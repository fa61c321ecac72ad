"""Topologies: the built-in graphs, the core's validation and the mixing weights it derives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from benchbase.api.contracts import Topology, TopologyParams, params_of
from benchbase.api.registry import load_registry
from benchbase.comm.mixing_plan import (
    MixingPlan,
    build_mixing_plan,
    metropolis_weights,
    uniform_weights,
)
from benchbase.errors import UserError

BUILTINS = ["ring", "directed-ring", "fully-connected", "random", "adjacency", "exponential", "isolated", "centralised"]
SIZES = [1, 2, 3, 4, 5, 8]


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def plan_for(name: str, n: int, seed: int = 0, registry=None, **overrides: Any) -> MixingPlan:
    registry = registry or load_registry(only={"plugins.topologies.builtin"}, blocked=set())
    topology = registry.get("topology", name)
    params = params_of(topology, overrides)
    return build_mixing_plan(topology, params, topology.learner_count(n, params), seed)


def ring_matrix(n: int) -> str:
    """A ring as inline JSON, for the adjacency topology."""
    a = np.zeros((n, n), dtype=int)
    for i in range(n):
        a[i, (i + 1) % n] = a[(i + 1) % n, i] = 1
    np.fill_diagonal(a, 0)
    return json.dumps(a.tolist())


class Fixed(Topology):
    """A test topology that returns whatever matrix (or matrices) it was given."""

    name = "fixed"

    def __init__(self, built: Any, directed: bool = False, requires_connected: bool = True) -> None:
        self.built = built
        self.directed = directed
        self.requires_connected = requires_connected

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> Any:
        return self.built


def fixed_plan(built: Any, n: int, weights: str = "uniform", **kwargs: Any) -> MixingPlan:
    return build_mixing_plan(Fixed(built, **kwargs), TopologyParams(weights=weights), n, seed=0)


IRREGULAR = np.array(  # a path 0-1-2 plus a triangle 2-3-4: degrees 1, 2, 3, 2, 2
    [
        [0, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 1, 0, 1, 1],
        [0, 0, 1, 0, 1],
        [0, 0, 1, 1, 0],
    ]
)


# -- registration ------------------------------------------------------------------------------


def test_every_builtin_registers_without_errors(registry):
    assert registry.errors == [] and registry.clashes == []
    assert sorted(registry.names("topology")) == sorted(BUILTINS)
    for name in BUILTINS:
        topology = registry.get("topology", name)
        assert topology.description and "\n" not in topology.description
        assert issubclass(topology.Params, TopologyParams)


# -- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("n", SIZES)
def test_weights_are_row_stochastic_for_every_builtin(registry, name, n):
    overrides = {"matrix": ring_matrix(n)} if name == "adjacency" else {}
    plan = plan_for(name, n, registry=registry, **overrides)
    expected_n = 1 if name == "centralised" else n
    assert plan.n_learners == expected_n
    for adjacency, weights in zip(plan.in_adjacency, plan.weights):
        assert adjacency.dtype == bool and weights.dtype == np.float64
        assert adjacency.shape == weights.shape == (expected_n, expected_n)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        assert (weights >= 0).all()
        # Weight only on the learner itself and its in-neighbours.
        assert not weights[~(adjacency | np.eye(expected_n, dtype=bool))].any()


def test_metropolis_is_doubly_stochastic_on_irregular_random_graphs(registry):
    irregular_seen = 0
    for seed in range(10):
        plan = plan_for("random", 9, seed=seed, registry=registry, p=0.4)
        degrees = plan.in_adjacency[0].sum(axis=1)
        irregular_seen += degrees.min() != degrees.max()
        assert plan.doubly_stochastic
        np.testing.assert_allclose(plan.weights[0], plan.weights[0].T)
    assert irregular_seen > 0


def test_metropolis_equals_uniform_on_regular_graphs(registry):
    for name in ("ring", "fully-connected"):
        for n in (3, 5, 8):
            metropolis = plan_for(name, n, registry=registry, weights="metropolis")
            uniform = plan_for(name, n, registry=registry, weights="uniform")
            np.testing.assert_allclose(metropolis.weights[0], uniform.weights[0])


def test_uniform_is_not_column_stochastic_on_an_irregular_graph():
    weights = uniform_weights(IRREGULAR)
    np.testing.assert_allclose(weights[2], [0, 0.25, 0.25, 0.25, 0.25])  # 1/(deg+1) incl. self
    assert not np.allclose(weights.sum(axis=0), 1.0)
    assert not fixed_plan(IRREGULAR, 5, weights="uniform").doubly_stochastic
    metropolis = metropolis_weights(IRREGULAR)
    np.testing.assert_allclose(metropolis.sum(axis=0), 1.0)
    assert metropolis[0, 1] == pytest.approx(1 / 3)  # 1 / (1 + max(1, 2))
    assert metropolis[0, 0] == pytest.approx(2 / 3)  # self gets the rest


def test_repeated_mixing_converges_to_the_exact_average():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3))  # one 3-vector of "parameters" per learner
    x = x0.copy()
    weights = fixed_plan(IRREGULAR, 5, weights="metropolis").weights[0]
    for _ in range(500):
        x = weights @ x
    np.testing.assert_allclose(x, np.broadcast_to(x0.mean(axis=0), x.shape), atol=1e-10)
    # Uniform weights also reach consensus, but on a degree-weighted average: the bias metropolis fixes.
    y = x0.copy()
    for _ in range(500):
        y = uniform_weights(IRREGULAR) @ y
    assert np.allclose(y, y[0]) and not np.allclose(y[0], x0.mean(axis=0))


def test_metropolis_weights_reject_a_directed_matrix():
    with pytest.raises(ValueError):
        metropolis_weights(np.array([[0, 1], [0, 0]]))


# -- built-in graphs ---------------------------------------------------------------------------


def test_ring_neighbours(registry):
    plan = plan_for("ring", 5, registry=registry)
    assert plan.in_neighbours(0, 0) == [1, 4] and plan.out_neighbours(0, 0) == [1, 4]
    assert plan.period == 1 and not plan.directed
    assert not plan_for("ring", 1, registry=registry).has_edges
    two = plan_for("ring", 2, registry=registry)
    assert two.in_neighbours(0, 0) == [1] and two.in_adjacency[0].sum() == 2  # a single edge


def test_exponential_schedule_matches_powers_of_two_and_cycles(registry):
    plan = plan_for("exponential", 8, registry=registry)
    assert plan.directed and plan.period == 3  # hops 1, 2, 4 (< 8)
    for k in range(plan.period):
        for r in range(8):
            assert plan.out_neighbours(r, k) == [(r + 2**k) % 8]
            assert plan.in_neighbours(r, k) == [(r - 2**k) % 8]
            assert plan.out_neighbours(r, k + plan.period) == plan.out_neighbours(r, k)
    assert plan.out_peers(0) == [1, 2, 4] and plan.in_peers(0) == [4, 6, 7]
    assert [plan.phase(t) for t in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert plan_for("exponential", 4, registry=registry).period == 2
    assert plan_for("exponential", 5, registry=registry).period == 3  # hops 1, 2, 4
    single = plan_for("exponential", 1, registry=registry)
    assert single.period == 1 and not single.has_edges
    # Each phase is a permutation, so uniform mixing is doubly stochastic here.
    assert plan.doubly_stochastic
    np.testing.assert_allclose(plan.weights[0][1], [0.5, 0.5, 0, 0, 0, 0, 0, 0])


def test_exponential_defaults_to_push_sum_and_refuses_metropolis(registry):
    plan = plan_for("exponential", 4, registry=registry)
    assert plan.push_sum and plan.directed
    with pytest.raises(UserError, match="directed.*use weights=push-sum"):
        plan_for("exponential", 4, registry=registry, weights="metropolis")


def test_random_is_reproducible_seeded_and_connected(registry):
    def graph(seed: int, **overrides: Any) -> np.ndarray:
        return plan_for("random", 10, seed=seed, registry=registry, **overrides).in_adjacency[0]

    assert np.array_equal(graph(3), graph(3))
    assert len({graph(seed).tobytes() for seed in range(5)}) > 1
    for seed in range(5):
        # build_mixing_plan checks connectivity; check the graph is undirected and non-trivial too.
        a = graph(seed, p=0.3)
        assert np.array_equal(a, a.T) and 0 < a.sum() < 90
    fixed = [graph(seed, graph_seed=7).tobytes() for seed in range(4)]
    assert len(set(fixed)) == 1
    assert graph(0, graph_seed=7).tobytes() != graph(0, graph_seed=8).tobytes()


def test_random_with_p_one_is_complete(registry):
    assert plan_for("random", 6, registry=registry, p=1.0).is_complete


def test_random_with_a_low_p_gives_a_clear_error(registry):
    with pytest.raises(UserError, match=r"no connected graph in 1000 draws.*ln\(N\)/N = 0\.11"):
        plan_for("random", 30, registry=registry, p=0.001)


def test_random_p_must_be_in_range(registry):
    topology = registry.get("topology", "random")
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        params_of(topology, {"p": "0"})
    with pytest.raises(UserError, match="maximum"):
        params_of(topology, {"p": "1.5"})
    assert params_of(topology, {"p": "0.3", "graph_seed": "none"}).p == 0.3


def test_adjacency_inline_json_as_in_diff_dac(registry):
    plan = plan_for("adjacency", 4, registry=registry, matrix="[[0,1,0,1],[1,0,1,0],[0,1,0,1],[1,0,1,0]]")
    assert [plan.in_neighbours(i, 0) for i in range(4)] == [[1, 3], [0, 2], [1, 3], [0, 2]]


def test_adjacency_inline_rows(registry):
    plan = plan_for("adjacency", 3, registry=registry, matrix="0 1 1; 1 0 1; 1,1,0")
    assert plan.is_complete


def test_adjacency_from_files(registry, tmp_path):
    matrix = [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    (tmp_path / "graph.json").write_text(json.dumps(matrix))
    (tmp_path / "graph.txt").write_text("# a 4-ring\n0 1 0 1\n1,0,1,0\n\n0, 1, 0, 1\n1 0 1 0\n")
    np.save(tmp_path / "graph.npy", np.array(matrix))
    for name in ("graph.json", "graph.txt", "graph.npy"):
        plan = plan_for("adjacency", 4, registry=registry, matrix=str(tmp_path / name))
        assert np.array_equal(plan.in_adjacency[0], np.array(matrix, dtype=bool)), name


@pytest.mark.parametrize(
    "matrix, message",
    [
        ("", "adjacency.matrix is required"),
        ("[[0,1],[1,0]", "not valid JSON"),
        ("[[0,1],[1]]", "row 1 has 1 entries but row 0 has 2"),
        ('[[0,"a"],[1,0]]', "entries must be 0 or 1"),
        ("0 1; 1", "row 1 has 1 entries but row 0 has 2"),
        ("/no/such/graph.json", "no such file"),
    ],
)
def test_adjacency_bad_inline_input(registry, matrix, message):
    with pytest.raises(UserError, match=message):
        plan_for("adjacency", 2, registry=registry, matrix=matrix)


def test_adjacency_bad_files(registry, tmp_path):
    (tmp_path / "bad.txt").write_text("0 1\n1 x\n")
    with pytest.raises(UserError, match=r"line 2: 'x' is not a number"):
        plan_for("adjacency", 2, registry=registry, matrix=str(tmp_path / "bad.txt"))
    (tmp_path / "ragged.txt").write_text("0 1 1\n1 0\n1 1 0\n")
    with pytest.raises(UserError, match="row 1 has 2 entries but row 0 has 3"):
        plan_for("adjacency", 3, registry=registry, matrix=str(tmp_path / "ragged.txt"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(UserError, match="cannot read adjacency matrix file"):
        plan_for("adjacency", 2, registry=registry, matrix=str(tmp_path / "bad.npy"))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(UserError, match="cannot read adjacency matrix file"):
        plan_for("adjacency", 2, registry=registry, matrix=str(tmp_path / "binary.txt"))


def test_adjacency_must_be_symmetric(registry):
    with pytest.raises(UserError, match=r"not symmetric: learner 0 receives from learner 1"):
        plan_for("adjacency", 3, registry=registry, matrix="[[0,1,1],[0,0,1],[1,1,0]]")


def test_centralised_runs_one_learner(registry):
    topology = registry.get("topology", "centralised")
    assert topology.learner_count(25, params_of(topology)) == 1
    plan = plan_for("centralised", 25, registry=registry)
    assert plan.n_learners == 1 and not plan.has_edges
    np.testing.assert_array_equal(plan.weights[0], [[1.0]])
    assert registry.get("topology", "centralized") is topology


def test_isolated_has_no_edges_and_is_accepted_though_disconnected(registry):
    plan = plan_for("isolated", 6, registry=registry)
    assert not plan.has_edges
    np.testing.assert_array_equal(plan.weights[0], np.eye(6))
    assert all(plan.in_peers(i) == [] == plan.out_peers(i) for i in range(6))


def test_is_complete_only_for_fully_connected(registry):
    for n in (5, 8):
        for name in BUILTINS:
            overrides = {"matrix": ring_matrix(n)} if name == "adjacency" else {}
            plan = plan_for(name, n, registry=registry, **overrides)
            assert plan.is_complete == (name == "fully-connected"), name
        np.testing.assert_allclose(plan_for("fully-connected", n, registry=registry).weights[0], 1 / n)
    # A single learner has nothing to mix with, complete or not.
    assert not plan_for("fully-connected", 1, registry=registry).is_complete


def test_mixing_plan_is_read_only(registry):
    plan = plan_for("ring", 4, registry=registry)
    with pytest.raises(ValueError):
        plan.weights[0][0, 0] = 0.0


# -- validation of what a topology returns ------------------------------------------------------


def test_size_must_match_the_learner_count():
    with pytest.raises(UserError, match="the adjacency matrix is 3×3 but the cell has 4 learners"):
        fixed_plan(np.zeros((3, 3)), 4)


def test_matrix_must_be_square():
    with pytest.raises(UserError, match="3×4, not square"):
        fixed_plan(np.zeros((3, 4)), 3)


def test_entries_must_be_zero_or_one():
    with pytest.raises(UserError, match=r"entry \[0, 1\] is 2; only 0 and 1 are allowed"):
        fixed_plan(np.array([[0, 2], [2, 0]]), 2)
    with pytest.raises(UserError, match=r"entry \[1, 0\] is 0.5"):
        fixed_plan(np.array([[0, 1], [0.5, 0]]), 2)


def test_diagonal_must_be_zero():
    with pytest.raises(UserError, match=r"diagonal entry \[1, 1\] is 1; the diagonal must be 0"):
        fixed_plan(np.array([[0, 1], [1, 1]]), 2)


def test_undirected_topologies_must_be_symmetric():
    with pytest.raises(UserError, match=r"not symmetric: learner 1 receives from learner 0"):
        fixed_plan(np.array([[0, 0], [1, 0]]), 2)
    # The same matrix is fine for a directed topology that does not need connectivity.
    fixed_plan(np.array([[0, 0], [1, 0]]), 2, directed=True, requires_connected=False)


def test_disconnected_graph_names_who_cannot_reach_whom():
    two_pairs = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    with pytest.raises(UserError, match="disconnected: learners 0, 1 cannot reach learners 2, 3"):
        fixed_plan(two_pairs, 4)
    fixed_plan(two_pairs, 4, requires_connected=False)  # allowed when the topology says so


def test_directed_graph_must_be_strongly_connected():
    chain = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])  # 0 -> 1 -> 2, nothing flows back
    with pytest.raises(UserError, match="learners 1, 2 cannot reach learner 0"):
        fixed_plan(chain, 3, directed=True)


def test_time_varying_graphs_are_connected_over_the_union_of_phases():
    forward = np.array([[0, 0], [1, 0]])  # 0 -> 1
    backward = forward.T  # 1 -> 0
    plan = fixed_plan([forward, backward], 2, directed=True)
    assert plan.period == 2 and plan.in_neighbours(1, 0) == [0] and plan.in_neighbours(1, 1) == []
    with pytest.raises(UserError, match="disconnected \\(over all 2 phases\\)"):
        fixed_plan([forward, forward], 2, directed=True)
    with pytest.raises(UserError, match="phase 1: the adjacency matrix is 3×3 but the cell has 2"):
        fixed_plan([forward, np.zeros((3, 3))], 2, directed=True)


def test_empty_schedule_is_refused():
    with pytest.raises(UserError, match="no adjacency matrix"):
        fixed_plan([], 2)


def test_metropolis_on_a_directed_topology_says_to_use_push_sum():
    with pytest.raises(UserError, match="metropolis weights need an undirected graph; use weights=push-sum"):
        fixed_plan(np.array([[0, 1], [1, 0]]), 2, weights="metropolis", directed=True)


def test_rng_passed_to_build_comes_from_the_seed():
    seen = []

    class Recorder(Topology):
        name = "recorder"

        def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
            seen.append(rng.random())
            return np.zeros((1, 1))

    for seed in (0, 0, 1):
        build_mixing_plan(Recorder(), TopologyParams(), 1, seed)
    assert seen[0] == seen[1] != seen[2]
