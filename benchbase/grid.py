"""Grid spec (command line or TOML) → validated cells with stable identities.

A grid is the cross-product algorithm × topology × env family × replay × seed, plus settings
shared by every cell. Axis entries may carry parameters: ``random:p=0.3`` or, in TOML,
``{ name = "random", p = 0.3 }``. ``--set PLUGIN.KEY=VALUE`` sets a parameter of a plugin
wherever it appears; an entry's own parameters win over ``--set``.

Everything is resolved and checked before anything runs: names, parameter types, topology data,
and algorithm/env/replay compatibility. A cell's id is a hash of its resolved config, so the
same config always maps to the same id (this is what makes resume work).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from benchbase.contracts import KINDS, GossipParams, params_of, space_kind, without_resampling
from benchbase.errors import UserError, close_match
from benchbase.params import to_dict
from benchbase.plugins import Registry
from benchbase.replay import batch_shares
from benchbase.topology import build_mixing_plan

# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisEntry:
    """One value of an axis: a plugin name and the parameters given with it."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{key}={value}" for key, value in self.overrides)


def split_top_level(text: str, separator: str) -> list[str]:
    """Split on `separator` outside brackets and quotes ("matrix=[[0,1],[1,0]],weights=uniform")."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def parse_axis_entry(text: str, option: str) -> AxisEntry:
    """``name`` or ``name:key=value,key=value``."""
    name, _, rest = text.strip().partition(":")
    if not name:
        raise UserError(f"{option} {text!r}: expected NAME or NAME:key=value,…")
    overrides = []
    if rest.strip():
        for part in split_top_level(rest, ","):
            key, equals, value = part.partition("=")
            if not equals or not key.strip():
                raise UserError(f"{option} {text!r}: parameter {part!r} is not key=value")
            overrides.append((key.strip(), unquote(value.strip())))
    return AxisEntry(name.strip(), tuple(overrides))


def unquote(value: str) -> str:
    """A value quoted to protect its commas (`games="Pong,Breakout"`) without its quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


@dataclass(frozen=True)
class MixEntry:
    """A replay axis value that mixes strategies by ratio: ``queue:ratio=0.5+uniform:ratio=0.5``."""

    parts: tuple[AxisEntry, ...]

    @property
    def name(self) -> str:
        return "+".join(part.name for part in self.parts)

    def __str__(self) -> str:
        return "+".join(str(part) for part in self.parts)


def parse_replay_entry(text: str, option: str) -> AxisEntry | MixEntry:
    """One strategy, or several joined by '+' (a '+' inside a number such as 1e+3 stays put)."""
    pieces: list[str] = []
    for piece in split_top_level(text, "+"):
        if pieces and (not piece.strip() or not (piece.strip()[0].isalpha())):
            pieces[-1] += "+" + piece
        else:
            pieces.append(piece)
    parts = tuple(parse_axis_entry(piece, option) for piece in pieces)
    if len(parts) == 1:
        return parts[0]
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise UserError(f"{option} {text!r}: a mix names each strategy once")
    return MixEntry(parts)


def parse_set(text: str) -> tuple[str, str, str]:
    """``PLUGIN.KEY=VALUE`` → (plugin, key, value)."""
    target, equals, value = text.partition("=")
    plugin, dot, key = target.rpartition(".")
    if not equals or not dot or not plugin or not key:
        raise UserError(f"--set {text!r}: expected PLUGIN.KEY=VALUE, e.g. diff-a2c.lr=0.001")
    return plugin.strip(), key.strip(), unquote(value.strip())


# -- the spec ---------------------------------------------------------------------------------


@dataclass
class GridSpec:
    algorithms: list[AxisEntry]
    topologies: list[AxisEntry]
    envs: list[AxisEntry]
    replay: list[AxisEntry]
    seeds: list[int]
    learners: int = 4
    envs_per_learner: int = 8
    env_steps: int = 100_000
    evaluations: int = 3
    eval_episodes: int = 5
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithms": [str(e) for e in self.algorithms],
            "topologies": [str(e) for e in self.topologies],
            "envs": [str(e) for e in self.envs],
            "replay": [str(e) for e in self.replay],
            "seeds": self.seeds,
            "learners": self.learners,
            "envs_per_learner": self.envs_per_learner,
            "env_steps": self.env_steps,
            "evaluations": self.evaluations,
            "eval_episodes": self.eval_episodes,
            "set": self.overrides,
        }


_SCALARS = {"learners": 1, "envs_per_learner": 1, "env_steps": 1, "evaluations": 0, "eval_episodes": 1}
_AXES = ("algorithms", "topologies", "envs", "replay")
GRID_KEYS = (*_AXES, "seeds", *_SCALARS, "set")


def load_grid_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML grid file into the keyword form `make_spec` takes."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"grid file {path} is not valid TOML: {error}") from None
    for key in data:
        if key not in GRID_KEYS:
            hint = close_match(key, GRID_KEYS)
            raise UserError(
                f"grid file {path}: unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
                + f" (allowed: {', '.join(GRID_KEYS)})"
            )
    return data


def default_grid() -> dict[str, Any]:
    """The small grid `bench run` runs with no arguments (benchbase/default_grid.toml)."""
    return tomllib.loads(resources.files("benchbase").joinpath("default_grid.toml").read_text())


def _axis_from_file(values: Any, key: str) -> list[AxisEntry]:
    if isinstance(values, (str, dict)):
        values = [values]
    entries = []
    for value in values:
        if isinstance(value, str) and key == "replay":
            entries.append(parse_replay_entry(value, key))
        elif isinstance(value, list) and key == "replay" and all(isinstance(v, (str, dict)) for v in value):
            # TOML: replay = [[{ name = "queue", capacity = 1, ratio = 0.5 }, "uniform:ratio=0.5"]]
            parts = tuple(entry for v in value for entry in _axis_from_file(v, key))
            if any(isinstance(part, MixEntry) for part in parts):
                raise UserError(f"grid {key}: {value!r}: a mix lists single strategies")
            entries.append(MixEntry(parts) if len(parts) > 1 else parts[0])
        elif isinstance(value, str):
            entries.append(parse_axis_entry(value, key))
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            rest = tuple((k, v) for k, v in value.items() if k != "name")
            entries.append(AxisEntry(value["name"], rest))
        else:
            raise UserError(f"grid {key}: {value!r} is neither \"name:key=value\" nor {{ name = … }}")
    return entries


def make_spec(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> GridSpec:
    """Merge grid-file values with command-line values (the command line wins, axis by axis)."""
    merged: dict[str, Any] = {}
    for key in GRID_KEYS:
        if cli_values.get(key) not in (None, [], ()):
            merged[key] = cli_values[key]
        elif key in file_values:
            merged[key] = file_values[key]
    axes = {}
    for key in _AXES:
        values = merged.get(key, ["none"] if key == "replay" else [])
        if isinstance(values, (list, tuple)) and values and all(isinstance(v, (AxisEntry, MixEntry)) for v in values):
            axes[key] = list(values)
        else:
            axes[key] = _axis_from_file(values, key)
        if not axes[key]:
            option = {"algorithms": "--algorithm", "topologies": "--topology", "envs": "--env"}.get(key, "--replay")
            raise UserError(f"the grid names no {key} (give at least one, e.g. {option} NAME)")
    seeds = merged.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise UserError(f"seeds: expected a count or a list of integers, got {seeds!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not seed_list or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_list):
        raise UserError(f"seeds: expected a positive count or a list of non-negative integers, got {seeds!r}")
    scalars = {}
    for key, minimum in _SCALARS.items():
        if key in merged:
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"{key.replace('_', '-')}: expected an integer ≥ {minimum}, got {value!r}")
            scalars[key] = value
    overrides: dict[str, dict[str, Any]] = {}
    for plugin, table in (merged.get("set") or {}).items():
        if not isinstance(table, dict):
            raise UserError(f"set.{plugin}: expected a table of parameters, got {table!r}")
        overrides.setdefault(plugin, {}).update(table)
    for plugin, key, value in cli_values.get("set_items") or []:
        overrides.setdefault(plugin, {})[key] = value
    return GridSpec(
        algorithms=axes["algorithms"], topologies=axes["topologies"], envs=axes["envs"], replay=axes["replay"],
        seeds=sorted(set(seed_list)), overrides=overrides, **scalars,
    )


# -- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One fully resolved point of the grid."""

    algorithm: str
    algorithm_params: dict[str, Any]
    topology: str
    topology_params: dict[str, Any]
    env: str
    env_params: dict[str, Any]
    replay: str
    replay_params: dict[str, Any]
    seed: int
    learners: int  # as asked for: the number of tasks (and of learners, unless centralised)
    learner_processes: int  # learner processes actually run (1 for the centralised baseline)
    envs_per_learner: int  # simulators of each learner process
    env_steps: int  # budget: total env steps across the cell's learners
    evaluations: int  # periodic evaluations, the last at the end
    eval_episodes: int  # episodes per split and learner at each evaluation
    #: `bench run --init-from`: the checkpoints the learners start from (None: from scratch).
    init_from: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        if config["init_from"] is None:
            del config["init_from"]  # cells started from scratch keep the ids they always had
        return config

    @property
    def cell_id(self) -> str:
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.algorithm} · {self.topology} · {self.env} · {self.replay} · seed {self.seed}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Cell:
        return cls(**config)


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
    for (a_name, algorithm, a_params), (t_name, topology, t_params), (e_name, family, e_params), (r_name, replay, r_params) in itertools.product(
        resolved["algorithm"], resolved["topology"], resolved["env"], resolved["replay"]
    ):
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
                    algorithm=a_name, algorithm_params=to_dict(a_params),
                    topology=t_name, topology_params=to_dict(t_params),
                    env=e_name, env_params=to_dict(e_params),
                    replay=r_name, replay_params=r_params,
                    seed=seed, learners=spec.learners, learner_processes=processes,
                    envs_per_learner=spec.envs_per_learner * spec.learners // processes,
                    env_steps=spec.env_steps, evaluations=spec.evaluations, eval_episodes=spec.eval_episodes,
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


def _resolve_replay(spec: GridSpec, registry: Registry, entry: AxisEntry | MixEntry) -> tuple[str, _Mix, dict[str, Any]]:
    """(label, strategies, the cell's replay_params): one strategy's parameters, or {name: params}
    for a mix."""
    parts = entry.parts if isinstance(entry, MixEntry) else (entry,)
    components, params = [], {}
    for part in parts:
        component = registry.get("replay", part.name)
        components.append(component)
        params[component.name] = to_dict(params_of(component, _overrides_for(spec, registry, "replay", component, part)))
    if len(components) > 1 and not all(c.stores_segments for c in components):
        raise UserError(f"replay {entry}: none stores nothing and cannot be part of a mix")
    label = "+".join(c.name for c in components)
    return label, _Mix(components), (params if len(components) > 1 else params[components[0].name])


def replay_parts(label: str, replay_params: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(strategy, its parameters)] of a cell's replay (one entry unless a mix)."""
    if "+" in label:
        return [(name, dict(replay_params[name])) for name in label.split("+")]
    return [(label, dict(replay_params))]


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
    from benchbase.replay import memory_estimate

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


def variant(cell: Cell, registry: Registry) -> str:
    """The cell's parameters that differ from their plugins' defaults ("diff-a2c.lr=0.002 random.p=0.3"),
    so that two entries of one plugin with different parameters stay apart in summaries."""
    parts = []
    for kind, name, values in (
        ("algorithm", cell.algorithm, cell.algorithm_params),
        ("topology", cell.topology, cell.topology_params),
        ("env", cell.env, cell.env_params),
        *(("replay", strategy, values) for strategy, values in replay_parts(cell.replay, cell.replay_params)),
    ):
        defaults = to_dict(params_of(registry.get(kind, name)))
        parts += [f"{name}.{key}={value}" for key, value in values.items() if defaults.get(key) != value]
    return " ".join(parts)


def grid_fingerprint(cells: Sequence[Cell]) -> list[str]:
    return sorted(cell.cell_id for cell in cells)
