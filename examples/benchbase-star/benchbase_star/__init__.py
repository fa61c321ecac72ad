"""benchbase-star: a star topology, and the template for writing a benchbase plugin.

A plugin is a module with `@benchbase.hookimpl` functions named after the hooks in
`benchbase.api.hookspecs`. Each registration hook receives a `register` callback; call it with
instances of the contract classes (here a `benchbase.Topology`). `import benchbase` is the whole
API a plugin needs. The package's pyproject.toml points an
entry point of the group ``benchbase`` at this module, and that is all benchbase needs to find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import benchbase

__all__ = ["Star", "register_topologies"]


class Star(benchbase.Topology):
    """One hub learner connected to every other learner; the others talk only to the hub.

    Topologies are pure data: `build` says who receives from whom (an N×N 0/1 matrix with
    `in_adjacency[i, j] == 1` when learner i receives learner j's parameters). benchbase checks
    it (shape, symmetry, connectivity) and derives the mixing weights from the inherited
    `weights` parameter, so a topology never computes weights or touches torch.distributed.
    """

    name = "star"
    description = "star graph: one hub learner mixes with every other; the others mix only with the hub"
    directed = False  # undirected: the matrix must be symmetric

    # Tunables: a frozen dataclass; every field has a default and a help line (`param`).
    # Deriving from TopologyParams keeps the `weights` choice (metropolis or uniform).
    @dataclass(frozen=True)
    class Params(benchbase.TopologyParams):
        hub: int = benchbase.param(0, "index of the hub learner, in 0..N-1", min=0)

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray:
        hub = params.hub
        if hub >= n_learners:
            # A UserError is shown as one line (exit code 2) before anything runs.
            raise benchbase.UserError(
                f"topology star: hub={hub} but the cell has {n_learners} learner"
                f"{'s' if n_learners != 1 else ''}; choose a hub in 0..{n_learners - 1}"
            )
        adjacency = np.zeros((n_learners, n_learners), dtype=np.int8)
        adjacency[hub, :] = 1  # the hub receives from everyone…
        adjacency[:, hub] = 1  # …and everyone receives from the hub
        adjacency[hub, hub] = 0  # no self-loop: a learner always keeps its own parameters
        return adjacency


@benchbase.hookimpl
def register_topologies(register: Any) -> None:
    register(Star())
