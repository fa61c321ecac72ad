"""The plugin manager: loads built-ins and entry points by one path, lists and looks up components.

Built-in plugins are plain module names (`BUILTIN_PLUGINS`); third-party plugins are entry
points in the group ``benchbase``. Both go through `_load`, so a built-in has no privilege a
third-party package lacks. What loads can be limited:

- ``BENCHBASE_PLUGINS=a,b``        load only these plugins (built-in module or entry-point names);
- ``BENCHBASE_BLOCK_PLUGINS=a,b``  load everything except these;
- ``BENCHBASE_EXTRA_PLUGINS=pkg.mod`` also load these modules by import path (a local plugin
  without packaging; handy for experiments and tests).

A plugin that fails to import or register is recorded in `Registry.errors` (shown by
`bench plugins`); the others keep working. Two components of one kind with the same name (or
alias) are a clash: `Registry.check()` raises a UserError naming both providers.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from benchbase import __version__
from benchbase.api import hookspecs
from benchbase.api.contracts import KINDS, Component, EnvFamily, Logger, ResolvedNames
from benchbase.api.params import describe
from benchbase.errors import UserError, unknown_name

#: The built-in plugins (module names, registered like entry points) and the kind each registers,
#: so that a caller that needs one kind (the report: env families) skips importing the others.
BUILTIN_KINDS: dict[str, str] = {
    "plugins.algorithms.diff_a2c": "algorithm",
    "plugins.algorithms.diff_ppo": "algorithm",
    "plugins.algorithms.gala": "algorithm",
    "plugins.algorithms.vtrace": "algorithm",
    "plugins.topologies.builtin": "topology",
    "plugins.envs.classic.family": "env",
    "plugins.envs.mujoco.family": "env",
    "plugins.envs.atari.family": "env",
    "plugins.envs.gymnasium.family": "env",
    "plugins.replay.none": "replay",
    "plugins.replay.queue": "replay",
    "plugins.replay.uniform": "replay",
    "plugins.replay.attentive": "replay",
    "plugins.replay.elite": "replay",
    "benchbase.loggers.files": "logger",
    "benchbase.loggers.tensorboard": "logger",
    "benchbase.loggers.wandb": "logger",
}
BUILTIN_PLUGINS: tuple[str, ...] = tuple(BUILTIN_KINDS)

ENTRY_POINT_GROUP = "benchbase"
#: Every kind the registry holds: a cell's components (`KINDS`) and the loggers a run may choose.
COMPONENT_KINDS: dict[str, type[Component]] = {**KINDS, "logger": Logger}
_HOOK_OF_KIND = {
    "algorithm": "register_algorithms",
    "topology": "register_topologies",
    "env": "register_env_families",
    "replay": "register_replay_strategies",
    "logger": "register_loggers",
}


@dataclass(frozen=True)
class Registered:
    kind: str
    component: Component
    plugin: str  # plugin (module or entry point) name
    provider: str  # "package version"

    @property
    def name(self) -> str:
        return self.component.name


@dataclass
class Registry:
    """Every registered component, by kind and name."""

    manager: pluggy.PluginManager
    components: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in COMPONENT_KINDS})
    aliases: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in COMPONENT_KINDS})
    errors: list[str] = field(default_factory=list)  # one line per plugin that failed to load or register
    tracebacks: list[str] = field(default_factory=list)  # the same failures in full
    clashes: list[str] = field(default_factory=list)
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (plugin name, provider)
    extra: tuple[str, ...] = ()  # modules loaded by import path (passed on to learner processes)

    def check(self) -> None:
        """Raise a UserError if two plugins claim one name."""
        if self.clashes:
            raise UserError(self.clashes[0] + " (block one with BENCHBASE_BLOCK_PLUGINS)")

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Component:
        """The component of `kind` called `name` (or an alias); a UserError with a close match."""
        table = self.components[kind]
        name = self.aliases[kind].get(name, name)
        if name in table:
            return table[name].component
        if kind == "env":
            family = self.manager.hook.resolve_env_family(name=name)
            if family is not None:
                return family
        choices = list(table) + list(self.aliases[kind])
        raise unknown_name({"env": "env family", "replay": "replay strategy"}.get(kind, kind), name, choices)

    def listing(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per component, for `bench plugins --json`."""
        rows = []
        for kind, table in self.components.items():
            for name in sorted(table):
                entry = table[name]
                component = entry.component
                rows.append(
                    {
                        "kind": kind,
                        "name": name,
                        "aliases": list(component.aliases),
                        "provider": entry.provider,
                        "plugin": entry.plugin,
                        "description": component.description,
                        "parameters": [
                            {"name": p.name, "type": p.type, "default": p.default, "help": p.help}
                            for p in describe(component.Params)
                        ],
                    }
                )
        return rows

    def resolved_names(self) -> list[ResolvedNames]:
        """The names that registered env families' plugins resolve on demand, in listing order."""
        families = [self.components["env"][name].component for name in sorted(self.components["env"])]
        return [names for family in families if isinstance(family, EnvFamily) for names in family.resolved_names]

    # -- registration ------------------------------------------------------------------------

    def _register(self, kind: str, plugin: str, provider: str, component: Any) -> None:
        expected = COMPONENT_KINDS[kind]
        if not isinstance(component, expected):
            raise TypeError(f"register() of {kind}s got {component!r}, not a {expected.__name__}")
        entry = Registered(kind, component, plugin, provider)
        for label in (component.name, *component.aliases):
            existing_name = self.aliases[kind].get(label, label)
            existing = self.components[kind].get(existing_name)
            if existing is not None:
                self.clashes.append(
                    f'{kind} "{label}" is provided twice: by {existing.plugin} ({existing.provider}) '
                    f"and by {plugin} ({provider})"
                )
                return
        self.components[kind][component.name] = entry
        for alias in component.aliases:
            self.aliases[kind][alias] = component.name

    def _load(self, plugin_name: str, load: Callable[[], Any], provider: str) -> None:
        """Import one plugin and collect its components. Failures are recorded, not raised."""
        try:
            module = load()
            self.manager.register(module, name=plugin_name)
        except Exception as error:  # a broken plugin must not take the others down
            self.errors.append(f"plugin {plugin_name} ({provider}) failed to load: {_one_line(error)}")
            self.tracebacks.append(traceback.format_exc())
            return
        for kind, hook_name in _HOOK_OF_KIND.items():
            hook = getattr(self.manager.hook, hook_name)
            impls = [impl for impl in hook.get_hookimpls() if impl.plugin is module]
            for impl in impls:
                try:
                    impl.function(register=lambda c, k=kind: self._register(k, plugin_name, provider, c))
                except Exception as error:
                    self.errors.append(f"plugin {plugin_name} ({provider}) failed in {hook_name}: {_one_line(error)}")
                    self.tracebacks.append(traceback.format_exc())
        self.loaded.append((plugin_name, provider))


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _split_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _plugin_sources(extra: Iterable[str] = ()) -> Iterable[tuple[str, Callable[[], Any], str]]:
    """(plugin name, loader, provider) for built-ins, extra modules, then entry points: one code path."""
    for module_name in BUILTIN_PLUGINS:
        yield module_name, (lambda m=module_name: importlib.import_module(m)), f"benchbase {__version__}"
    for module_name in extra:
        yield module_name, (lambda m=module_name: importlib.import_module(m)), "local module"
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        provider = f"{dist.name} {dist.version}" if dist is not None else entry_point.value
        yield entry_point.name, entry_point.load, provider


def load_registry(
    only: set[str] | None = None,
    blocked: set[str] | None = None,
    extra: Iterable[str] | None = None,
    kinds: Iterable[str] | None = None,
) -> Registry:
    """Load every allowed plugin. Defaults come from BENCHBASE_PLUGINS, BENCHBASE_BLOCK_PLUGINS
    and BENCHBASE_EXTRA_PLUGINS. `kinds` skips built-ins of other kinds (third-party plugins are
    always loaded: what they register is known only once they are imported)."""
    only = only if only is not None else _split_env("BENCHBASE_PLUGINS")
    blocked = blocked if blocked is not None else (_split_env("BENCHBASE_BLOCK_PLUGINS") or set())
    extra = tuple(extra) if extra is not None else tuple(sorted(_split_env("BENCHBASE_EXTRA_PLUGINS") or ()))
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager, extra=extra)
    wanted = set(kinds) if kinds is not None else None
    for plugin_name, load, provider in _plugin_sources(extra):
        if plugin_name in blocked or (only is not None and plugin_name not in only):
            continue
        if wanted is not None and plugin_name in BUILTIN_KINDS and BUILTIN_KINDS[plugin_name] not in wanted:
            continue
        registry._load(plugin_name, load, provider)
    return registry
