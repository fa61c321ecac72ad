"""Topology validation and mixing weights.

A `Topology` plugin only says who receives from whom (`benchbase.api.contracts.Topology.build`).
This module checks what it returned (size, 0/1 entries, zero diagonal, symmetry, connectivity)
and derives the combination weights the learners use, so every topology — built-in or
third-party — gets the same checks and the same weight rules:

- `uniform_weights`: 1/(in_deg_i + 1) for self and each in-neighbour (the Diff-DAC original);
  row-stochastic on any graph, doubly stochastic only on regular ones.
- `metropolis_weights`: c_ij = 1/(1 + max(deg_i, deg_j)) for neighbours, self gets the rest;
  doubly stochastic on any undirected graph, so synchronous diffusion (K = 0) keeps the network
  average. With staleness K > 0 a newest-message mix does not (it reuses stale messages and
  mixes at different times on either end of an edge), so the communicator then mixes
  column-stochastic weights over push-sum's running-sum channels (`benchbase.comm.rules`).
- `push_sum_weights`: a_ij = 1/(out_deg_j + 1): each sender splits its parameters evenly over
  itself and its out-neighbours. Column-stochastic on any graph; the learners also mix a scalar
  weight w with the same weights and act with θ/w, which undoes the bias of a directed, irregular
  or time-varying graph (push-sum, Kempe et al. 2003; GALA, Assran et al. 2019).

Gossip algorithms (`GossipParams.num_peers` = k) do not use every edge at every iteration: each
learner cycles through its out-neighbours (over all phases of the topology, in order of ring
offset r+1, r+2, …), k per iteration (`gossip_schedule`). On the `exponential` graph with k = 1
that is exactly the graph's own schedule; on an undirected ring with k = 1 a learner alternates
between its two neighbours.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.api.contracts import Topology
from benchbase.errors import UserError

# Mixed into the cell seed so the topology's random stream is independent of every other
# stream derived from the same seed (env seeds, network initialisation…).
_TOPOLOGY_STREAM = 0x7E57_70B0


@dataclass(frozen=True, eq=False)
class MixingPlan:
    """Who mixes with whom, and with which weights, at every iteration of a cell.

    `in_adjacency[k][i, j]` is True when learner i receives learner j's parameters in phase k;
    `weights[k][i]` holds what learner i gives to itself (diagonal) and to each in-neighbour.
    Iteration t uses phase t % period. Arrays are read-only. With `push_sum` the weights are
    column-stochastic and the learners mix a scalar weight alongside their parameters.
    """

    n_learners: int
    directed: bool
    in_adjacency: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    push_sum: bool = False

    def __post_init__(self) -> None:
        if not self.in_adjacency or len(self.in_adjacency) != len(self.weights):
            raise ValueError("a mixing plan needs one adjacency and one weight matrix per phase")
        shape = (self.n_learners, self.n_learners)
        for array in (*self.in_adjacency, *self.weights):
            if array.shape != shape:
                raise ValueError(f"mixing plan array of shape {array.shape}, expected {shape}")
            array.setflags(write=False)

    @property
    def period(self) -> int:
        """Number of phases (1 for a static topology)."""
        return len(self.in_adjacency)

    def phase(self, iteration: int) -> int:
        return iteration % self.period

    def in_neighbours(self, learner: int, iteration: int) -> list[int]:
        """Learners whose parameters `learner` receives at `iteration`."""
        return np.flatnonzero(self.in_adjacency[self.phase(iteration)][learner]).tolist()

    def out_neighbours(self, learner: int, iteration: int) -> list[int]:
        """Learners that receive `learner`'s parameters at `iteration`."""
        return np.flatnonzero(self.in_adjacency[self.phase(iteration)][:, learner]).tolist()

    def in_peers(self, learner: int) -> list[int]:
        """Every learner `learner` ever receives from (union over phases), sorted."""
        return np.flatnonzero(self._union()[learner]).tolist()

    def out_peers(self, learner: int) -> list[int]:
        """Every learner that ever receives from `learner` (union over phases), sorted."""
        return np.flatnonzero(self._union()[:, learner]).tolist()

    @functools.cached_property  # the arrays are read-only: read at every mix, computed once
    def has_edges(self) -> bool:
        return bool(self._union().any())

    @property
    def is_complete(self) -> bool:
        """Static, every pair connected both ways and all weights 1/N: mixing is one average.

        False for a single learner (nothing to mix), so the comm layer can test `has_edges`
        first and `is_complete` second without a special case.
        """
        n = self.n_learners
        if self.period != 1 or n < 2:
            return False
        off_diagonal = ~np.eye(n, dtype=bool)
        return bool(np.array_equal(self.in_adjacency[0], off_diagonal) and np.allclose(self.weights[0], 1.0 / n))

    @property
    def is_symmetric(self) -> bool:
        """Every phase is an undirected graph."""
        return all(np.array_equal(a, a.T) for a in self.in_adjacency)

    @property
    def doubly_stochastic(self) -> bool:
        """Every phase's weights are column-stochastic too (diffusion keeps the average)."""
        return self.column_stochastic

    @property
    def column_stochastic(self) -> bool:
        """Every phase's columns sum to 1: what a learner sends and keeps is all it had, so mixing
        these weights as mass (push-sum) conserves the network's sum."""
        return all(np.allclose(w.sum(axis=0), 1.0) for w in self.weights)

    def _union(self) -> np.ndarray:
        return np.logical_or.reduce(self.in_adjacency)


def uniform_weights(in_adjacency: np.ndarray) -> np.ndarray:
    """1/(in_deg_i + 1) for learner i itself and each of its in-neighbours."""
    adjacency = np.asarray(in_adjacency, dtype=bool)
    closed = adjacency | np.eye(len(adjacency), dtype=bool)
    return closed / closed.sum(axis=1, keepdims=True)


def metropolis_weights(in_adjacency: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights of an undirected graph: doubly stochastic on any graph."""
    adjacency = np.asarray(in_adjacency, dtype=bool)
    if not np.array_equal(adjacency, adjacency.T):
        raise ValueError("metropolis weights need a symmetric (undirected) adjacency matrix")
    degree = adjacency.sum(axis=1)
    weights = np.where(adjacency, 1.0 / (1.0 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    return weights


def push_sum_weights(in_adjacency: np.ndarray) -> np.ndarray:
    """a_ij = 1/(out_deg_j + 1) for j = i and each in-neighbour j: column-stochastic."""
    adjacency = np.asarray(in_adjacency, dtype=bool)
    closed = adjacency | np.eye(len(adjacency), dtype=bool)
    return closed / closed.sum(axis=0, keepdims=True)


WEIGHT_SCHEMES = ("auto", "metropolis", "uniform", "push-sum")
MAX_GOSSIP_PHASES = 1024  # a gossip schedule that would need more phases is refused


def gossip_schedule(union: np.ndarray, num_peers: int, where: str) -> list[np.ndarray]:
    """Phases in which each learner sends to `num_peers` of its out-neighbours in `union`,
    cycling through them in order of ring offset (GALA's peer rotation)."""
    n = len(union)
    out_lists = []
    for r in range(n):
        outs = np.flatnonzero(union[:, r]).tolist()
        out_lists.append(sorted(outs, key=lambda j: (j - r) % n))
    degrees = [len(outs) for outs in out_lists]
    if min(degrees) < num_peers:
        r = degrees.index(min(degrees))
        raise UserError(
            f"{where}: num_peers={num_peers} but learner {r} has only {degrees[r]} out-neighbour"
            f"{'s' if degrees[r] != 1 else ''} in this topology; use num_peers between 1 and {min(degrees)}"
        )
    period = 1
    for degree in degrees:
        period = math.lcm(period, degree // math.gcd(num_peers, degree))
    if period > MAX_GOSSIP_PHASES:
        raise UserError(
            f"{where}: rotating through out-neighbours of unequal degrees {sorted(set(degrees))} "
            f"{num_peers} at a time repeats only after {period} iterations (at most "
            f"{MAX_GOSSIP_PHASES}); use a regular topology or num_peers equal to the degree"
        )
    phases = []
    for c in range(period):
        adjacency = np.zeros((n, n), dtype=bool)
        for r, outs in enumerate(out_lists):
            for m in range(num_peers):
                adjacency[outs[(c * num_peers + m) % len(outs)], r] = True
        phases.append(adjacency)
    return phases


def build_mixing_plan(
    topology: Topology, params: Any, n_learners: int, seed: int, num_peers: int | None = None
) -> MixingPlan:
    """Build `topology` for `n_learners` (already `topology.learner_count(...)`), validate it and
    derive its weights; with `num_peers`, rotate through out-neighbours as gossip does. Mistakes
    in the topology or its parameters raise a one-line UserError."""
    name = topology.name
    if n_learners < 1:
        raise UserError(f"topology {name}: a cell needs at least 1 learner, got {n_learners}")
    directed = bool(topology.directed)
    # A params class that does not derive from TopologyParams gets the automatic choice.
    scheme = getattr(params, "weights", "auto")
    if scheme not in WEIGHT_SCHEMES:
        raise UserError(f"topology {name}: unknown weights {scheme!r} (choose from {', '.join(WEIGHT_SCHEMES)})")
    if scheme == "metropolis" and directed:
        raise UserError(
            f"topology {name} is directed but metropolis weights need an undirected graph; "
            f"use weights=push-sum (or auto)"
        )

    rng = np.random.default_rng(np.random.SeedSequence([_TOPOLOGY_STREAM, int(seed) % 2**64]))
    phases = _as_phases(topology.build(n_learners, params, rng), name)
    where = [f"topology {name}" + (f", phase {k}" if len(phases) > 1 else "") for k in range(len(phases))]
    adjacency = tuple(_validated(matrix, n_learners, directed, at) for matrix, at in zip(phases, where))
    if topology.requires_connected:
        _check_connected(np.logical_or.reduce(adjacency), directed, name, len(adjacency))
    union = np.logical_or.reduce(adjacency)
    if num_peers is not None and union.any():
        adjacency = tuple(gossip_schedule(union, num_peers, f"topology {name}"))
        if scheme == "metropolis":
            raise UserError(
                f"topology {name}: gossip with {num_peers} peer(s) per iteration is directed, so "
                f"metropolis weights do not apply; use weights=push-sum (or auto)"
            )
        directed = True

    symmetric = all(np.array_equal(a, a.T) for a in adjacency)
    if scheme == "auto":
        # Gossip is push-sum even where its rotation happens to be symmetric (k = degree).
        scheme = "metropolis" if symmetric and num_peers is None else "push-sum"
    derive = {"metropolis": metropolis_weights, "uniform": uniform_weights, "push-sum": push_sum_weights}[scheme]
    weights = tuple(derive(a) for a in adjacency)
    stochastic_axis = 0 if scheme == "push-sum" else 1
    for a, w in zip(adjacency, weights):
        # Internal invariants: convex combinations over the closed neighbourhood (rows, or
        # columns for push-sum, where each sender splits what it has).
        assert np.allclose(w.sum(axis=stochastic_axis), 1.0), "mixing weights must be stochastic"
        assert (w >= 0).all() and not (w[~(a | np.eye(n_learners, dtype=bool))]).any()
    return MixingPlan(
        n_learners=n_learners,
        directed=directed,
        in_adjacency=adjacency,
        weights=weights,
        push_sum=scheme == "push-sum",
    )


# ---------------------------------------------------------------------------------------------


def _as_phases(built: Any, name: str) -> list[np.ndarray]:
    """One matrix per phase from what `build` returned (an array, a 3-D stack or a sequence)."""
    if isinstance(built, np.ndarray):
        phases = list(built) if built.ndim == 3 else [built]
    elif isinstance(built, Sequence) and not isinstance(built, (str, bytes)):
        phases = [np.asarray(matrix) for matrix in built]
    else:
        raise UserError(f"topology {name}: build() returned {type(built).__name__}, not an adjacency matrix")
    if not phases:
        raise UserError(f"topology {name}: build() returned no adjacency matrix (an empty sequence)")
    return phases


def _validated(matrix: np.ndarray, n: int, directed: bool, where: str) -> np.ndarray:
    """The matrix as a bool array, or a UserError naming the first problem."""
    if matrix.ndim != 2:
        raise UserError(f"{where}: the adjacency matrix must be 2-D, got shape {matrix.shape}")
    rows, cols = matrix.shape
    if rows != cols:
        raise UserError(f"{where}: the adjacency matrix is {rows}×{cols}, not square")
    if rows != n:
        raise UserError(f"{where}: the adjacency matrix is {rows}×{cols} but the cell has {n} learners")
    try:
        numeric = matrix.astype(float)
    except (TypeError, ValueError):
        raise UserError(f"{where}: the adjacency matrix must hold numbers 0 and 1") from None
    bad = np.argwhere(~np.isin(numeric, (0.0, 1.0)))
    if len(bad):
        i, j = bad[0]
        raise UserError(f"{where}: entry [{i}, {j}] is {numeric[i, j]:g}; only 0 and 1 are allowed")
    adjacency = numeric.astype(bool)
    loops = np.flatnonzero(np.diag(adjacency))
    if len(loops):
        k = loops[0]
        raise UserError(
            f"{where}: diagonal entry [{k}, {k}] is 1; the diagonal must be 0 "
            f"(a learner always keeps its own parameters)"
        )
    if not directed:
        asymmetric = np.argwhere(adjacency & ~adjacency.T)
        if len(asymmetric):
            i, j = asymmetric[0]
            raise UserError(
                f"{where}: the adjacency matrix is not symmetric: learner {i} receives from learner {j} "
                f"([{i}, {j}] = 1) but {j} does not receive from {i} ([{j}, {i}] = 0)"
            )
    return adjacency


def _check_connected(union: np.ndarray, directed: bool, name: str, period: int) -> None:
    """UserError unless every learner's parameters reach every other learner (strongly connected)."""
    # Undirected: one search from learner 0 decides it. Directed: every learner must reach all.
    for source in range(len(union)) if directed else [0]:
        reached = _reached_from(union, source)
        if not reached.all():
            # Nobody in `reached` can reach outside it, or `source` would reach further too.
            inside, outside = np.flatnonzero(reached).tolist(), np.flatnonzero(~reached).tolist()
            over = f" (over all {period} phases)" if period > 1 else ""
            raise UserError(
                f"topology {name} is disconnected{over}: {_learners(inside)} cannot reach "
                f"{_learners(outside)}; use a connected graph, or the isolated topology for no communication"
            )


def _reached_from(union: np.ndarray, source: int) -> np.ndarray:
    """Learners that eventually receive `source`'s parameters (including `source`)."""
    reached = np.zeros(len(union), dtype=bool)
    reached[source] = True
    frontier = reached.copy()
    while frontier.any():
        # Learner i receives from j when union[i, j]: follow edges j -> i.
        new = union[:, frontier].any(axis=1) & ~reached
        reached |= new
        frontier = new
    return reached


def _learners(indices: list[int]) -> str:
    if len(indices) == 1:
        return f"learner {indices[0]}"
    return "learners " + ", ".join(map(str, indices))
