"""Grid spec → cells: every name resolved, every parameter typed and checked, topology data built,
algorithm/env/replay compatibility checked (observation and action spaces against what the
algorithm declares, parameters that apply only to vector observations), a topology's fewest
learners, a budget of at least one iteration, and the memory the largest cells would take, all
before anything runs.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
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
from benchbase.grid.cell import Cell, parse_straggler, replay_parts
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
    given: dict[int, frozenset[str]] = {}  # the parameters set explicitly, by id() of the resolved params
    for kind, entries in (("algorithm", spec.algorithms), ("topology", spec.topologies), ("env", spec.envs)):
        resolved[kind] = []
        for entry in entries:
            component = registry.get(kind, entry.name)
            overrides = _overrides_for(spec, registry, kind, component, entry)
            params = params_of(component, overrides)
            given[id(params)] = frozenset(overrides)
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
        reason = _incompatibility(algorithm, family, e_params, replay, probes, given[id(a_params)])
        if reason:
            invalid.append((combination, reason))
            continue
        if algorithm.uses_replay:  # whole batch shares, capacities ≥ shares: bad input, not a pairing
            batch_size = getattr(a_params, "batch_size", None)
            if not isinstance(batch_size, int):
                raise UserError(f"algorithm {a_name} uses replay but its parameters declare no integer batch_size")
            batch_shares(replay_parts(r_name, r_params), batch_size, owner=f"replay {r_name}")
        processes = topology.learner_count(spec.learners, t_params)
        _check_learners(topology, t_params, processes)
        _check_budget(algorithm, a_params, spec, processes)
        _check_straggler(spec, combination, processes)
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
                    straggler=spec.straggler,
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


def _check_learners(topology: Any, params: Any, processes: int) -> None:
    """A topology that connects learners run with too few of them would be mislabelled."""
    fewest = topology.min_learners(params)
    if processes < fewest:
        raise UserError(
            f"topology {topology.name} needs at least {fewest} learners and the cell has {processes}: "
            f"give --learners {fewest} or more, or use isolated (or centralised) for a single learner"
        )


def _check_straggler(spec: GridSpec, combination: str, processes: int) -> None:
    if spec.straggler is not None and parse_straggler(spec.straggler)[0] >= processes:
        raise UserError(
            f"straggler {spec.straggler}: {combination} runs {processes} learner(s), ranks 0 to {processes - 1}"
        )


def _check_budget(algorithm: Any, params: Any, spec: GridSpec, processes: int) -> None:
    """A budget smaller than one iteration of the cell would still run one iteration (and record
    no episode): refused, with the smallest budget that makes sense."""
    steps = algorithm.steps_per_simulator(params)
    if not steps:
        return
    simulators = spec.envs_per_learner * spec.learners // processes
    iteration = processes * simulators * steps
    if spec.env_steps < iteration:
        raise UserError(
            f"env-steps: {spec.env_steps:,} is less than one iteration of {algorithm.name} "
            f"({processes} learners × {simulators} simulators × {steps} steps = {iteration:,}); "
            f"give at least {iteration:,}"
        )


def observation_kind(space: Any) -> str:
    """'vector' (a 1-D Box), 'image' (a 3-D Box) or what else the space is ('discrete', 'tuple', …),
    so that algorithms are matched against what they declare in `observation_kinds`."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return {1: "vector", 3: "image"}.get(len(space.shape), f"{len(space.shape)}-D box")
    return type(space).__name__.lower()


def _incompatibility(
    algorithm: Any, family: Any, env_params: Any, replay: Any, probes: dict, given: frozenset[str] = frozenset()
) -> str | None:
    if replay.stores_segments and not algorithm.uses_replay:
        return f"{algorithm.name} is on-policy and learns from fresh rollouts only: use replay none"
    if algorithm.uses_replay and not replay.stores_segments:
        return f"{algorithm.name} trains from replay: choose a replay strategy other than none"
    key = json.dumps([family.name, to_dict(env_params)], sort_keys=True, default=str)
    if key not in probes:
        probes[key] = probe_spaces(family, env_params)
    action_kind, observation_kind = probes[key]
    if action_kind not in algorithm.action_spaces:
        return f"{algorithm.name} does not support {action_kind} actions, which {family.name} has"
    if observation_kind not in algorithm.observation_kinds:
        return f"{algorithm.name} does not support {observation_kind} observations, which {family.name} has"
    ignored = sorted(given & algorithm.vector_only_params) if observation_kind != "vector" else []
    if ignored:
        names = ", ".join(f"{algorithm.name}.{key}" for key in ignored)
        return (
            f"{names} shapes only the network for vector observations and {family.name} has {observation_kind} "
            "observations: set it only for vector envs"
        )
    return None


def probe_spaces(family: Any, env_params: Any) -> tuple[str, str]:
    """Build one simulator of the family to read its action and observation spaces."""
    fixed = without_resampling(env_params)
    env = family.make_env(fixed, family.training_tasks(fixed, 1, 0), 0)
    try:
        action_kind = space_kind(env.action_space)
        if action_kind == "continuous" and len(env.action_space.shape) != 1:
            action_kind = f"{len(env.action_space.shape)}-D box"
        return action_kind, observation_kind(env.observation_space)
    finally:
        env.close()


# (family, (observation space, action space)) by env and parameters: the replay and memory
# estimates and the GPU check each ask for every cell's spaces, and building a simulator is slow.
_spaces_of_env: dict[str, tuple[Any, tuple[Any, Any]]] = {}


def _spaces(cell: Cell, registry: Registry) -> tuple[Any, Any]:
    """(observation space, action space) of a cell's env, one simulator built per distinct env
    (and family: another registry may name another family alike)."""
    family = registry.get("env", cell.env)
    key = json.dumps([cell.env, cell.env_params], sort_keys=True, default=str)
    cached = _spaces_of_env.get(key)
    if cached is None or cached[0] is not family:
        fixed = without_resampling(params_of(family, cell.env_params))
        env = family.make_env(fixed, family.training_tasks(fixed, 1, 0), 0)
        cached = _spaces_of_env[key] = (family, (env.observation_space, env.action_space))
        env.close()
    return cached[1]


def _replay_bytes(cell: Cell, registry: Registry, spaces: tuple[Any, Any]) -> int | None:
    """At most how much one learner's replay buffers of `cell` hold when full; None: on-policy or unknown."""
    from benchbase.api.replay import memory_estimate

    algorithm = registry.get("algorithm", cell.algorithm)
    if not algorithm.uses_replay:
        return None
    params = params_of(algorithm, cell.algorithm_params)
    segment = algorithm.segment_bytes(params, *spaces)
    if segment is None:
        return None
    parts = batch_shares(replay_parts(cell.replay, cell.replay_params), params.batch_size)
    return memory_estimate(segment, parts)


def replay_memory(cells: Sequence[Cell], registry: Registry) -> list[tuple[str, int]]:
    """(label, bytes) per distinct off-policy setting: at most how much one learner's replay
    buffers hold when full, from the algorithm's `segment_bytes` and the strategies' capacities."""
    found: dict[str, int] = {}
    for cell in cells:
        if not registry.get("algorithm", cell.algorithm).uses_replay:
            continue
        size = _replay_bytes(cell, registry, _spaces(cell, registry))
        if size is not None:
            label = f"{cell.algorithm} · {cell.replay} · {cell.env}"
            found[label] = max(found.get(label, 0), size)
    return sorted(found.items())


#: A learner's model in a learner block is counted as this many copies of its parameters: the
#: parameters, their gradients, an optimiser's moments (Adam two, RMSprop one), a mixing buffer,
#: V-trace's behaviour policy and the optimiser's temporaries. Measured in learner blocks on the CPU
#: at their peak: 5.1-5.2 (Diff-A2C), 6.2-6.3 (Diff-PPO) and 6.5-6.6 (V-trace) copies
#: (`benchmarks/model_memory.py`, three runs).
MODEL_COPIES = 7
#: A learner in a process of its own holds more of the host's memory: its periodic checkpoint copies
#: its whole model and optimiser state at once (a block's learners copy theirs one after another),
#: and its messages to its neighbours wait in shared memory (two slots). Measured at their peak, two
#: ring learners of hidden 4096 on the CPU: 9.2-9.4 (Diff-A2C), 11.3 (Diff-PPO) and 9.5-9.9
#: (V-trace) copies, their shared-memory slots included (`benchmarks/model_memory.py --processes`).
PROCESS_MODEL_COPIES = 12


def in_a_block(cell: Cell) -> bool:
    """`memory_needs`' `in_blocks` that counts every cell's learners as a block's (MODEL_COPIES):
    what a GPU holds of a learner whatever its layout, and what the benchmarks compare."""
    return True


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    cells: Sequence[Cell],
    registry: Registry,
    cells_at_once: int,
    available: int | None = None,
    in_blocks: Callable[[Cell], bool] | None = None,
) -> None:
    """Refuse a grid whose largest cells, `cells_at_once` side by side, would need more memory than
    the machine has: every learner's replay buffers when full plus its model (`memory_needs`).
    Checked before anything runs."""
    available = machine_memory() if available is None else available
    if not available:
        return
    largest = memory_needs(cells, registry, in_blocks)
    total = sum(need[0] for need in largest[: max(cells_at_once, 1)])
    if total <= available:
        return
    size, cell, replay, model = largest[0]
    side_by_side = f", {min(cells_at_once, len(largest))} cells at once" if cells_at_once > 1 else ""
    parts = [f"{_gib(part)} {what}" for part, what in ((replay, "replay when full"), (model, "model")) if part]
    raise UserError(
        f"memory: {cell.algorithm} · {cell.replay} · {cell.env} needs about {_gib(total)}{side_by_side} "
        f"({cell.learner_processes} learners × {' + '.join(parts)}), more than this machine's {_gib(available)}: "
        "lower the replay capacity, the network, the learners or --jobs"
    )


def cells_that_fit(
    cells: Sequence[Cell],
    registry: Registry,
    at_most: int,
    available: int | None = None,
    in_blocks: Callable[[Cell], bool] | None = None,
) -> int:
    """The most of the grid's largest cells, up to `at_most`, that fit in memory side by side (at
    least 1: `check_memory` says whether one does)."""
    available = machine_memory() if available is None else available
    if not available:
        return max(at_most, 1)
    fitting, total = 0, 0
    for size, *_ in memory_needs(cells, registry, in_blocks)[:at_most]:
        total += size
        if total > available:
            break
        fitting += 1
    return max(fitting, 1)


def memory_needs(
    cells: Sequence[Cell], registry: Registry, in_blocks: Callable[[Cell], bool] | None = None
) -> list[tuple[int, Cell, int, int]]:
    """(bytes, cell, replay bytes per learner, model bytes per learner) of each setting of the
    grid (the seeds of one setting need the same), largest first. The model's bytes are
    MODEL_COPIES copies of its parameters where `in_blocks(cell)` says the cell's learners run in
    blocks, else PROCESS_MODEL_COPIES (`in_blocks` None: every learner in a process of its own)."""
    needs: dict[str, tuple[int, Cell, int, int]] = {}
    for cell in cells:
        key = json.dumps({**cell.config(), "seed": None}, sort_keys=True, default=str)
        if key in needs:
            continue
        algorithm = registry.get("algorithm", cell.algorithm)
        spaces = _spaces(cell, registry)
        replay = _replay_bytes(cell, registry, spaces) or 0
        copies = MODEL_COPIES if in_blocks is not None and in_blocks(cell) else PROCESS_MODEL_COPIES
        model = (algorithm.model_bytes(params_of(algorithm, cell.algorithm_params), *spaces) or 0) * copies
        needs[key] = (cell.learner_processes * (replay + model), cell, replay, model)
    return sorted(needs.values(), key=lambda need: need[0], reverse=True)


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"
