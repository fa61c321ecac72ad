"""The plugin API: every hook benchbase calls, in one documented module.

A plugin is a module (or object) with functions marked `@hookimpl` whose names match the specs
below. Built-in plugins and third-party packages register the same way: a third-party package
declares an entry point in the group ``benchbase``::

    [project.entry-points.benchbase]
    star = "benchbase_star"

Registration hooks receive a ``register`` callback and call it with component instances
(of subclasses of the classes in `benchbase.api.contracts`); they never touch global state::

    from benchbase.api.hookspecs import hookimpl

    @hookimpl
    def register_topologies(register):
        register(StarTopology())

Observer hooks are called in the process that runs the grid (never inside learner processes), once
per cell. To watch a cell while it runs, register a `benchbase.api.contracts.Logger` instead: each
learner process opens the loggers a run chose and gives them its metric rows as they are made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from benchbase.api.contracts import Component, EnvFamily

if TYPE_CHECKING:  # for annotations only: the grid is a room above this one
    from benchbase.grid.cell import Cell

PROJECT = "benchbase"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: What a registration hook receives: call it once per component instance.
Register = Callable[[Component], None]


@hookspec
def register_algorithms(register: Register) -> None:
    """Register `benchbase.api.contracts.Algorithm` instances."""


@hookspec
def register_topologies(register: Register) -> None:
    """Register `benchbase.api.contracts.Topology` instances."""


@hookspec
def register_env_families(register: Register) -> None:
    """Register `benchbase.api.contracts.EnvFamily` instances."""


@hookspec
def register_replay_strategies(register: Register) -> None:
    """Register `benchbase.api.contracts.ReplayStrategy` instances."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register `benchbase.api.contracts.Logger` instances (chosen per run with `bench run --logger`)."""


@hookspec(firstresult=True)
def resolve_env_family(name: str) -> EnvFamily | None:
    """Return an EnvFamily for a name no plugin registered (e.g. any Gymnasium id), or None."""


@hookspec
def cell_started(cell: Cell, out_dir: str) -> None:
    """A cell is about to start its learners."""


@hookspec
def cell_finished(cell: Cell, row: dict[str, Any], out_dir: str) -> None:
    """A cell ended; `row` is its row of the cells table (status, error, wall time, steps…)."""


@hookspec
def results_written(out_dir: str) -> None:
    """The run folder's tables were (re)written; a good moment to upload or index them."""
