"""Grid spec → cells: every name resolved, every parameter typed and checked, topology data built,
algorithm/env/replay compatibility checked, all before anything runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchbase.api.contracts import (
    KINDS,
    GossipParams,
    params_of,
    space_kind,
    without_resampling,
)
from benchbase.api.params import to_dict
from benchbase.api.registry import Registry
from benchbase.api.replay import batch_shares
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.errors import UserError, close_match
from benchbase.grid.cell import Cell, replay_parts
from benchbase.grid.spec import AxisEntry, GridSpec, MixEntry


@dataclass
class GridPlan:
    cells: list[Cell]
    invalid: list[tuple[str, str]]  # (combination, reason)


def _overrides_for(spec: GridSpec, registry: Registry, kind: str, component: Any, entry: AxisEntry) -> dict[str, Any]:
    """--set values for this component (under its name or an alias), then the entry's own."""
    merged: dict[str, Any] = {}
    for plugin, values in spec.overrides.items():
        try:
            target = registry.get(kind, plugin)
        except UserError:
            continue
        if target.name == component.name:  # resolved families are new objects each time
            merged.update(values)
    merged.update(entry.overrides)
    return merged


def _check_set_targets(spec: GridSpec, registry: Registry) -> None:
    """--set must name a registered plugin and parameters it has."""
    for plugin, values in spec.overrides.items():
        found = []
        for kind in KINDS:
            try:
                found.append(registry.get(kind, plugin))
            except UserError:
                continue
        if not found:
            every = [name for kind in KINDS for name in registry.names(kind)]
            hint = close_match(plugin, every)
            raise UserError(f'--set names unknown plugin "{plugin}"' + (f'; did you mean "{hint}"?' if hint else ""))
        errors = []
        for component in found:
            try:
                params_of(component, values)
                break
            except UserError as error:
                errors.append(error)
        else:
            raise errors[0]


def expand(spec: GridSpec, registry: Registry) -> GridPlan:
    """Resolve every cell of the grid, or raise a UserError for the first bad input."""
    _check_set_targets(spec, registry)
    resolved: dict[str, list[tuple[str, Any, Any]]] = {}
    for kind, entries in (("algorithm", spec.algorithms), ("topology", spec.topologies), ("env", spec.envs)):
        resolved[kind] = []
        for entry in entries:
            component = registry.get(kind, entry.name)
            params = params_of(component, _overrides_for(spec, registry, kind, component, entry))
            resolved[kind].append((component.name, component, params))
    resolved["replay"] = [_resolve_replay(spec, registry, entry) for entry in spec.replay]

    probes: dict[str, tuple[str, str]] = {}
    cells: list[Cell] = []
    invalid: list[tuple[str, str]] = []
    for (a_name, algorithm, a_params), (t_name, topology, t_params), (e_name, family, e_params), (
        r_name,
        replay,
        r_params,
    ) in itertools.product(resolved["algorithm"], resolved["topology"], resolved["env"], resolved["replay"]):
        combination = f"{a_name} · {t_name} · {e_name} · {r_name}"
        reason = _incompatibility(algorithm, family, e_params, replay, probes)
        if reason:
            invalid.append((combination, reason))
            continue
        if algorithm.uses_replay:  # whole batch shares, capacities ≥ shares: bad input, not a pairing
            batch_size = getattr(a_params, "batch_size", None)
            if not isinstance(batch_size, int):
                raise UserError(f"algorithm {a_name} uses replay but its parameters declare no integer batch_size")
            batch_shares(replay_parts(r_name, r_params), batch_size, owner=f"replay {r_name}")
        processes = topology.learner_count(spec.learners, t_params)
        for seed in spec.seeds:
            # Validates the topology data, and a gossip algorithm's peer count against it.
            num_peers = a_params.num_peers if isinstance(a_params, GossipParams) else None
            build_mixing_plan(topology, t_params, processes, seed, num_peers)
            cells.append(
                Cell(
                    algorithm=a_name,
                    algorithm_params=to_dict(a_params),
                    topology=t_name,
                    topology_params=to_dict(t_params),
                    env=e_name,
                    env_params=to_dict(e_params),
                    replay=r_name,
                    replay_params=r_params,
                    seed=seed,
                    learners=spec.learners,
                    learner_processes=processes,
                    envs_per_learner=spec.envs_per_learner * spec.learners // processes,
                    env_steps=spec.env_steps,
                    evaluations=spec.evaluations,
                    eval_episodes=spec.eval_episodes,
                )
            )
    ids = [cell.cell_id for cell in cells]
    if len(set(ids)) != len(ids):
        raise UserError("the grid names the same cell twice (an axis repeats an entry)")
    return GridPlan(cells, invalid)


class _Mix:
    """The replay side of a cell: one strategy, or several mixed by ratio."""

    def __init__(self, components: list[Any]) -> None:
        self.components = components
        self.stores_segments = all(c.stores_segments for c in components)


def _resolve_replay(
    spec: GridSpec, registry: Registry, entry: AxisEntry | MixEntry
) -> tuple[str, _Mix, dict[str, Any]]:
    """(label, strategies, the cell's replay_params): one strategy's parameters, or {name: params}
    for a mix."""
    parts = entry.parts if isinstance(entry, MixEntry) else (entry,)
    components, params = [], {}
    for part in parts:
        component = registry.get("replay", part.name)
        components.append(component)
        params[component.name] = to_dict(
            params_of(component, _overrides_for(spec, registry, "replay", component, part))
        )
    if len(components) > 1 and not all(c.stores_segments for c in components):
        raise UserError(f"replay {entry}: none stores nothing and cannot be part of a mix")
    label = "+".join(c.name for c in components)
    return label, _Mix(components), (params if len(components) > 1 else params[components[0].name])


def _incompatibility(algorithm: Any, family: Any, env_params: Any, replay: Any, probes: dict) -> str | None:
    if replay.stores_segments and not algorithm.uses_replay:
        return f"{algorithm.name} is on-policy and learns from fresh rollouts only: use replay none"
    if algorithm.uses_replay and not replay.stores_segments:
        return f"{algorithm.name} trains from replay: choose a replay strategy other than none"
    key = json.dumps([family.name, to_dict(env_params)], sort_keys=True, default=str)
    if key not in probes:
        probes[key] = _probe_spaces(family, env_params)
    action_kind, observation_kind = probes[key]
    if action_kind not in algorithm.action_spaces:
        return f"{algorithm.name} does not support {action_kind} actions, which {family.name} has"
    if observation_kind not in algorithm.observation_kinds:
        return f"{algorithm.name} does not support {observation_kind} observations, which {family.name} has"
    return None


def _probe_spaces(family: Any, env_params: Any) -> tuple[str, str]:
    """Build one simulator of the family to read its action and observation spaces."""
    fixed = without_resampling(env_params)
    env = family.make_env(fixed, family.training_tasks(fixed, 1, 0), 0)
    try:
        shape = env.observation_space.shape or ()
        return space_kind(env.action_space), "image" if len(shape) == 3 else "vector"
    finally:
        env.close()


def replay_memory(cells: Sequence[Cell], registry: Registry) -> list[tuple[str, int]]:
    """(label, bytes) per distinct off-policy setting: at most how much one learner's replay
    buffers hold when full, from the algorithm's `segment_bytes` and the strategies' capacities."""
    from benchbase.api.replay import memory_estimate

    found: dict[str, int] = {}
    spaces: dict[str, tuple[Any, Any]] = {}
    for cell in cells:
        algorithm = registry.get("algorithm", cell.algorithm)
        if not algorithm.uses_replay:
            continue
        label = f"{cell.algorithm} · {cell.replay} · {cell.env}"
        key = json.dumps([cell.env, cell.env_params], sort_keys=True, default=str)
        if key not in spaces:
            family = registry.get("env", cell.env)
            fixed = without_resampling(params_of(family, cell.env_params))
            env = family.make_env(fixed, family.training_tasks(fixed, 1, 0), 0)
            spaces[key] = (env.observation_space, env.action_space)
            env.close()
        params = params_of(algorithm, cell.algorithm_params)
        segment = algorithm.segment_bytes(params, *spaces[key])
        if segment is None:
            continue
        parts = batch_shares(replay_parts(cell.replay, cell.replay_params), params.batch_size)
        found[label] = max(found.get(label, 0), memory_estimate(segment, parts))
    return sorted(found.items())
