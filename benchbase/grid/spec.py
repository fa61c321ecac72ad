"""Grid spec (command line or TOML) → validated cells with stable identities.

A grid is the cross-product algorithm × topology × env family × replay × seed, plus settings
shared by every cell. Axis entries may carry parameters: ``random:p=0.3`` or, in TOML,
``{ name = "random", p = 0.3 }``. ``--set PLUGIN.KEY=VALUE`` sets a parameter of a plugin
wherever it appears; an entry's own parameters win over ``--set``. A grid file's ``loggers`` (like
``--logger``) choose how the run is watched; they are part of no cell.

Everything is resolved and checked before anything runs: names, parameter types, topology data,
and algorithm/env/replay compatibility. A cell's id is a hash of its resolved config, so the
same config always maps to the same id (this is what makes resume work).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from benchbase.errors import UserError, close_match
from benchbase.grid.cell import parse_straggler

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
            if key.strip() in (given for given, _ in overrides):
                raise UserError(f"{option} {text!r}: parameter {key.strip()!r} is given twice; give it once")
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

#: By default a cell's evaluation rests on at least this many episodes per split, spread over its learners
#: (Packer et al. used 1,000); an explicit eval_episodes replaces the default.
CELL_EVAL_EPISODES = 100


def default_eval_episodes(learners: int) -> int:
    """Episodes per split and learner that give a cell of `learners` learners ≥ CELL_EVAL_EPISODES per split."""
    return -(-CELL_EVAL_EPISODES // learners)


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
    evaluations: int = 10
    #: per split and learner at each evaluation; None: default_eval_episodes(learners)
    eval_episodes: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "RANK:FACTOR": that learner of every cell runs FACTOR times slower (straggler studies)
    straggler: str | None = None

    def __post_init__(self) -> None:
        if self.eval_episodes is None:
            self.eval_episodes = default_eval_episodes(self.learners)

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
            **({"straggler": self.straggler} if self.straggler is not None else {}),
        }


_SCALARS = {"learners": 1, "envs_per_learner": 1, "env_steps": 1, "evaluations": 0, "eval_episodes": 1}

#: Limits checked before anything is expanded or allocated, so a typo (`--seeds 1000000000`) is
#: refused at once instead of filling the memory: cells per grid, learners per cell (a mixing plan
#: holds learners² weights) and simulators per cell (learners × simulators each).
MAX_CELLS = 10_000
MAX_LEARNERS = 1_024
MAX_SIMULATORS = 65_536
#: A cell's budget: env-step counters are 64-bit integers in the result tables.
MAX_ENV_STEPS = 10**15
_AXES = ("algorithms", "topologies", "envs", "replay")
#: `loggers` chooses how the run is watched (like `bench run --logger`): no cell's config holds it.
GRID_KEYS = (*_AXES, "seeds", *_SCALARS, "set", "straggler", "loggers")


def load_grid_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML grid file into the keyword form `make_spec` takes."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"grid file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"grid file {path} is a folder: give a TOML file") from None
    except UnicodeDecodeError:
        raise UserError(f"grid file {path} is not text (not UTF-8): give a TOML file") from None
    except OSError as error:
        raise UserError(f"grid file {path} cannot be read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"grid file {path} is not valid TOML: {error}") from None
    for key in data:
        if key not in GRID_KEYS:
            hint = close_match(key, GRID_KEYS)
            raise UserError(
                f"grid file {path}: unknown key {key!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (allowed: {', '.join(GRID_KEYS)})"
            )
    return data


def default_grid() -> dict[str, Any]:
    """The small grid `bench run` runs with no arguments (benchbase/grid/default_grid.toml)."""
    return tomllib.loads(resources.files("benchbase.grid").joinpath("default_grid.toml").read_text())


def _axis_from_file(values: Any, key: str) -> list[AxisEntry]:
    if isinstance(values, (str, dict)):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise UserError(f'grid {key}: {values!r} is neither a list nor "name:key=value" nor {{ name = … }}')
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
            raise UserError(f'grid {key}: {value!r} is neither "name:key=value" nor {{ name = … }}')
    return entries


def chosen_loggers(file_values: Mapping[str, Any], cli_entries: list[str]) -> list[AxisEntry]:
    """The loggers of a run: the --logger entries, else the grid file's ``loggers`` (names, "name:key=value"
    or ``{ name = "jsonl", every_s = 0 }``). They are not part of any cell: they change no cell id."""
    if cli_entries:
        entries = [parse_axis_entry(text, "--logger") for text in cli_entries]
    else:
        entries = _axis_from_file(file_values.get("loggers", []), "loggers")
    names = [entry.name for entry in entries]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f'logger "{name}" is given twice: give each logger once (with all its parameters)')
    return entries


def check_grid_size(axis_lengths: Mapping[str, int], seeds: int) -> None:
    """Refuse a grid of more than MAX_CELLS cells before it is expanded."""
    cells = seeds
    for length in axis_lengths.values():
        cells *= max(length, 1)
    if cells > MAX_CELLS:
        sizes = " × ".join(f"{length:,} {key}" for key, length in axis_lengths.items())
        raise UserError(
            f"the grid has {cells:,} cells ({sizes} × {seeds:,} seeds); at most {MAX_CELLS:,} per run: "
            "split it into several runs or give fewer seeds"
        )


def check_cell_size(learners: int, envs_per_learner: int) -> None:
    """Refuse cells of more than MAX_LEARNERS learners or MAX_SIMULATORS simulators before any is built."""
    if learners > MAX_LEARNERS:
        raise UserError(f"learners: {learners:,} learners per cell; at most {MAX_LEARNERS:,}")
    if learners * envs_per_learner > MAX_SIMULATORS:
        raise UserError(
            f"envs-per-learner: {learners:,} learners × {envs_per_learner:,} simulators = "
            f"{learners * envs_per_learner:,} simulators per cell; at most {MAX_SIMULATORS:,}"
        )


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
    # A count is checked before range() turns it into a list: 10^9 seeds would fill the memory.
    check_grid_size({key: len(axes[key]) for key in _AXES}, seeds if isinstance(seeds, int) else len(seeds))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not seed_list or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_list):
        raise UserError(f"seeds: expected a positive count or a list of non-negative integers, got {seeds!r}")
    scalars = {}
    for key, minimum in _SCALARS.items():
        if key in merged:
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"{key.replace('_', '-')}: expected an integer ≥ {minimum}, got {value!r}")
            if key == "env_steps" and value > MAX_ENV_STEPS:
                raise UserError(f"env-steps: {value:,} is more than a cell's limit of {MAX_ENV_STEPS:,}")
            scalars[key] = value
    check_cell_size(
        scalars.get("learners", GridSpec.learners), scalars.get("envs_per_learner", GridSpec.envs_per_learner)
    )
    overrides: dict[str, dict[str, Any]] = {}
    tables = merged.get("set") or {}
    if not isinstance(tables, dict):
        raise UserError(f"set: expected a table of plugins' parameters ([set.diff-a2c] lr = 0.001), got {tables!r}")
    for plugin, table in tables.items():
        if not isinstance(table, dict):
            raise UserError(f"set.{plugin}: expected a table of parameters, got {table!r}")
        overrides.setdefault(plugin, {}).update(table)
    given: set[tuple[str, str]] = set()
    for plugin, key, value in cli_values.get("set_items") or []:
        if (plugin, key) in given:
            raise UserError(f"--set {plugin}.{key} is given twice: give each parameter once")
        given.add((plugin, key))
        overrides.setdefault(plugin, {})[key] = value
    straggler = merged.get("straggler")
    if straggler is not None:
        rank, factor = parse_straggler(straggler)
        straggler = f"{rank}:{factor:g}"
    return GridSpec(
        straggler=straggler,
        algorithms=axes["algorithms"],
        topologies=axes["topologies"],
        envs=axes["envs"],
        replay=axes["replay"],
        seeds=sorted(set(seed_list)),
        overrides=overrides,
        **scalars,
    )
