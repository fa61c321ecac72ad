"""The built-in topologies, registered exactly like a third-party plugin's.

Each topology only says who receives from whom (an N×N 0/1 `in_adjacency`, or one per phase
when time-varying). The core (`benchbase.comm.mixing_plan`) validates it and derives mixing weights.
Pure numpy: nothing here touches torch.distributed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchbase import Register, Topology, TopologyParams, UserError, hookimpl, param


@hookimpl
def register_topologies(register: Register) -> None:
    for topology in (Ring, DirectedRing, FullyConnected, Random, Adjacency, Exponential, Isolated, Centralised):
        register(topology())


def _no_edges(n: int) -> np.ndarray:
    return np.zeros((n, n), dtype=np.int8)


class Ring(Topology):
    name = "ring"
    description = "undirected cycle: each learner mixes with its two neighbours (Diff-DAC's experiments)"

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        adjacency = _no_edges(n_learners)
        if n_learners > 1:  # N=2: both "neighbours" are the same learner, so one edge
            learners = np.arange(n_learners)
            adjacency[learners, (learners + 1) % n_learners] = 1
            adjacency[(learners + 1) % n_learners, learners] = 1
        return adjacency


class DirectedRing(Topology):
    name = "directed-ring"
    aliases = ("ring-directed",)
    description = "directed cycle: learner r sends to r+1 only (GALA's default graph with one peer)"
    directed = True

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        adjacency = _no_edges(n_learners)
        if n_learners > 1:
            learners = np.arange(n_learners)
            adjacency[(learners + 1) % n_learners, learners] = 1  # r+1 receives from r
        return adjacency


class FullyConnected(Topology):
    name = "fully-connected"
    aliases = ("complete", "fully_connected")
    description = "complete graph: every learner mixes with every other (synchronous averaging)"

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        return (1 - np.eye(n_learners, dtype=np.int8)).astype(np.int8)


class Random(Topology):
    name = "random"
    description = "Erdős–Rényi graph with edge probability p, redrawn until connected; seeded by the cell"

    @dataclass(frozen=True)
    class Params(TopologyParams):
        p: float = param(0.5, "probability of each edge, in (0, 1]", max=1.0)
        graph_seed: int | None = param(
            None, "fix the graph with this seed whatever the cell seed (none: the cell seed decides)", min=0
        )

        def __post_init__(self) -> None:
            if not self.p > 0:
                raise UserError(f"random.p: {self.p} is not allowed; the edge probability must be in (0, 1]")

    #: Draws before giving up on finding a connected graph.
    max_draws = 1000

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        if params.graph_seed is not None:
            rng = np.random.default_rng(params.graph_seed)
        upper = np.triu(np.ones((n_learners, n_learners), dtype=bool), k=1)
        for _ in range(self.max_draws):
            edges = (rng.random((n_learners, n_learners)) < params.p) & upper
            adjacency = (edges | edges.T).astype(np.int8)
            if _connected(adjacency):
                return adjacency
        threshold = math.log(n_learners) / n_learners
        raise UserError(
            f"topology random: no connected graph in {self.max_draws} draws with p={params.p} and "
            f"{n_learners} learners; use p above about ln(N)/N = {threshold:.2f}"
        )


def _connected(adjacency: np.ndarray) -> bool:
    """Whether an undirected graph is connected (breadth-first search from learner 0)."""
    reached = np.zeros(len(adjacency), dtype=bool)
    reached[0] = True
    frontier = reached.copy()
    while frontier.any():
        frontier = adjacency[frontier].any(axis=0) & ~reached
        reached |= frontier
    return bool(reached.all())


class Adjacency(Topology):
    name = "adjacency"
    aliases = ("custom",)
    description = "custom undirected graph from a symmetric 0/1 matrix, given inline or as a file"

    @dataclass(frozen=True)
    class Params(TopologyParams):
        matrix: str = param(
            "",
            "the matrix inline as JSON ([[0,1],[1,0]]) or rows separated by ';', or a path to a "
            "file (.json, .npy, or text with one row per line, entries separated by spaces or commas)",
        )

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        return _read_matrix(params.matrix)


_INLINE_ROWS = re.compile(r"^[\d\s,;.]+$")


def _read_matrix(spec: str) -> np.ndarray:
    """The matrix named by `spec`: inline JSON, inline rows ("0 1; 1 0") or a file path."""
    text = spec.strip()
    where = "adjacency.matrix"
    if not text:
        raise UserError(f"{where} is required: give it inline, e.g. matrix=[[0,1],[1,0]], or a file path")
    if text.startswith("["):
        return _from_json(text, where)
    path = Path(text).expanduser()
    if _is_file(path):
        where = f"adjacency matrix file {path}"
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False)
            content = path.read_text()
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read {where}: {error}") from None
        if path.suffix == ".json":
            return _from_json(content, where)
        return _from_rows(content.splitlines(), where)
    if _INLINE_ROWS.match(text):
        return _from_rows(text.split(";"), where)
    raise UserError(f"{where}: no such file {text!r} (give a .json, .npy or text file, or the matrix inline)")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long to be a path: treat as "not a file"
        return False


def _from_json(text: str, where: str) -> np.ndarray:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise UserError(f"{where}: expected a list of rows like [[0,1],[1,0]]")
    for r, row in enumerate(rows):
        for entry in row:
            if isinstance(entry, bool) or not isinstance(entry, (int, float)):
                raise UserError(f"{where}: row {r} holds {entry!r}; entries must be 0 or 1")
    return _square_up(rows, where)


def _from_rows(lines: list[str], where: str) -> np.ndarray:
    rows = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        row = []
        for token in re.split(r"[\s,]+", line.strip(",")):
            try:
                row.append(float(token))
            except ValueError:
                raise UserError(f"{where}, line {number}: {token!r} is not a number") from None
        rows.append(row)
    return _square_up(rows, where)


def _square_up(rows: list[list[float]], where: str) -> np.ndarray:
    """Rows as one array; ragged rows are an error (squareness and 0/1 are the core's checks)."""
    if not rows:
        raise UserError(f"{where}: the matrix is empty")
    for r, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise UserError(f"{where}: row {r} has {len(row)} entries but row 0 has {len(rows[0])}")
    return np.array(rows, dtype=float)


class Exponential(Topology):
    name = "exponential"
    description = "GALA's time-varying directed exponential graph: at phase k learner r sends to r + 2^k"
    directed = True

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> list[np.ndarray]:
        learners = np.arange(n_learners)
        phases = []
        hop = 1
        while hop < n_learners:  # k = 0..K-1 with 2^k < N
            adjacency = _no_edges(n_learners)
            adjacency[(learners + hop) % n_learners, learners] = 1  # receiver r + 2^k hears from r
            phases.append(adjacency)
            hop *= 2
        return phases or [_no_edges(n_learners)]


class Isolated(Topology):
    name = "isolated"
    description = "no communication: N independent learners (the specialised-agents baseline)"
    requires_connected = False

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        return _no_edges(n_learners)


class Centralised(Topology):
    name = "centralised"
    aliases = ("centralized",)
    description = "centralised baseline: one learner that runs all N·P simulators"
    requires_connected = False

    def learner_count(self, requested: int, params: Any) -> int:
        return 1

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        # Always 1×1: a caller that forgot learner_count() gets the core's size error, not N learners.
        return _no_edges(1)
