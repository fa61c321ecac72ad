"""A cell's plugins and their parameters, resolved once by name: what a learner process builds
from, and what `bench run` checks a cell's process layout with before anything runs (no torch
here: `benchbase.run.blocks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchbase.api.contracts import ConsensusParams, GossipParams, params_of
from benchbase.api.registry import Registry
from benchbase.grid.cell import Cell


@dataclass(frozen=True)
class CellPlugins:
    """A cell's plugins and their parameters, resolved in this process."""

    algorithm: Any
    topology: Any
    family: Any
    algorithm_params: Any
    topology_params: Any
    env_params: Any
    staleness: int  # 0: synchronous diffusion
    link_drop: float
    num_peers: int | None

    @classmethod
    def resolve(cls, registry: Registry, cell: Cell) -> CellPlugins:
        algorithm = registry.get("algorithm", cell.algorithm)
        topology = registry.get("topology", cell.topology)
        family = registry.get("env", cell.env)
        algorithm_params = params_of(algorithm, cell.algorithm_params)
        communicates = isinstance(algorithm_params, ConsensusParams)
        return cls(
            algorithm,
            topology,
            family,
            algorithm_params,
            params_of(topology, cell.topology_params),
            params_of(family, cell.env_params),
            staleness=algorithm_params.staleness if communicates else 0,
            link_drop=algorithm_params.link_drop if communicates else 0.0,
            num_peers=algorithm_params.num_peers if isinstance(algorithm_params, GossipParams) else None,
        )
