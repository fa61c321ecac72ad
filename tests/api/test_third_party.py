"""Third-party plugins: the installable example package (examples/benchbase-star), loading
limits, name clashes and broken plugins.

The entry-point tests need `benchbase-star` installed (`make setup` does it:
``pip install -e examples/benchbase-star``); without it they are skipped, never failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.errors import UserError

ENV_VARS = ("BENCHBASE_PLUGINS", "BENCHBASE_BLOCK_PLUGINS", "BENCHBASE_EXTRA_PLUGINS")


def _star_installed() -> bool:
    try:
        metadata.distribution("benchbase-star")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_star = pytest.mark.skipif(
    not _star_installed(),
    reason="the example plugin is not installed: pip install -e examples/benchbase-star (make setup does it)",
)


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch):
    """Tests set the plugin selection themselves; the caller's shell must not leak in."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def bench(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run the `bench` command in a fresh interpreter with a clean plugin selection."""
    environment = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environment.update(env or {})
    environment.setdefault("COLUMNS", "200")
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_module(folder: Path, body: str, stem: str = "local_plugin") -> str:
    """A throwaway plugin module in `folder`; a unique name so no import cache is shared."""
    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """tmp_path on sys.path (for in-process loading); modules imported from it are forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in sys.modules[name].__file__:
            del sys.modules[name]


CLASHING_RING = """
    from benchbase.api.contracts import Topology
    from benchbase.api.hookspecs import hookimpl
    import numpy as np


    class AnotherRing(Topology):
        name = "ring"
        description = "a second ring, to clash with the built-in one"

        def build(self, n_learners, params, rng):
            return np.zeros((n_learners, n_learners), dtype=np.int8)


    @hookimpl
    def register_topologies(register):
        register(AnotherRing())
"""

RAISING = """
    from benchbase.api.hookspecs import hookimpl


    @hookimpl
    def register_topologies(register):
        raise RuntimeError("this plugin is broken on purpose")
"""


# -- the example package, found through its entry point ---------------------------------------


@needs_star
def test_star_is_discovered_through_its_entry_point():
    registry = load_registry(blocked=set(), extra=())
    assert "star" in registry.names("topology")
    entry = registry.components["topology"]["star"]
    assert entry.provider == "benchbase-star 0.1.0"
    assert entry.plugin == "star"
    assert ("star", "benchbase-star 0.1.0") in registry.loaded
    assert not registry.errors
    registry.check()


@needs_star
def test_star_builds_a_star_and_checks_its_hub():
    registry = load_registry(blocked=set(), extra=())
    star = registry.get("topology", "star")
    plan = build_mixing_plan(star, params_of(star), 5, seed=0)
    adjacency = plan.in_adjacency[0]
    assert adjacency[0, 1:].all() and adjacency[1:, 0].all()
    assert not adjacency[1:, 1:].any()
    moved = build_mixing_plan(star, params_of(star, {"hub": "3"}), 5, seed=0)
    assert moved.in_neighbours(3, 0) == [0, 1, 2, 4] and moved.in_neighbours(1, 0) == [3]
    with pytest.raises(UserError, match=r"hub=5 .* 5 learners"):
        build_mixing_plan(star, params_of(star, {"hub": 5}), 5, seed=0)
    with pytest.raises(UserError, match="minimum"):
        params_of(star, {"hub": -1})


@needs_star
def test_bench_plugins_json_lists_star():
    result = bench("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    (star,) = [row for row in rows if row["kind"] == "topology" and row["name"] == "star"]
    assert star["provider"] == "benchbase-star 0.1.0"
    assert star["description"]
    parameters = {p["name"]: p for p in star["parameters"]}
    assert parameters["hub"]["default"] == 0 and parameters["hub"]["type"] == "int" and parameters["hub"]["help"]
    assert "weights" in parameters  # inherited from TopologyParams


@needs_star
def test_star_runs_in_a_grid(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    result = bench(
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "star",
        "-e",
        "CartPole-v1",
        "--learners",
        "3",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "600",
        "--evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--seeds",
        "1",
        "--out",
        str(out),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = pq.read_table(out / "cells.parquet").to_pylist()
    assert len(rows) == 1
    (row,) = rows
    assert row["topology"] == "star" and row["status"] == "completed", row
    assert row["learners"] == 3 and row["env_steps"] >= 600
    assert json.loads(row["config"])["topology_params"] == {"hub": 0, "weights": "auto"}


# -- limiting what loads ----------------------------------------------------------------------


@needs_star
def test_blocking_star_removes_it(monkeypatch):
    assert "star" not in load_registry(blocked={"star"}, extra=()).names("topology")
    monkeypatch.setenv("BENCHBASE_BLOCK_PLUGINS", "star")
    registry = load_registry()
    assert "star" not in registry.names("topology")
    assert "ring" in registry.names("topology")  # the rest still load
    with pytest.raises(UserError, match='unknown topology "star"'):
        registry.get("topology", "star")


@needs_star
def test_bench_run_with_star_blocked_is_a_one_line_error(tmp_path):
    out = tmp_path / "never"
    result = bench(
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "star",
        "-e",
        "CartPole-v1",
        "--learners",
        "3",
        "--seeds",
        "1",
        "--out",
        str(out),
        env={"BENCHBASE_BLOCK_PLUGINS": "star"},
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: unknown topology "star"')
    assert "ring" in lines[0]  # it says what is available
    assert not out.exists()  # nothing half-written


@needs_star
def test_bench_plugins_json_without_star_when_blocked():
    result = bench("plugins", "--json", env={"BENCHBASE_BLOCK_PLUGINS": "star"})
    assert result.returncode == 0, result.stderr
    names = {(row["kind"], row["name"]) for row in json.loads(result.stdout)}
    assert ("topology", "star") not in names and ("topology", "ring") in names


@needs_star
def test_only_list_limits_loading(monkeypatch):
    monkeypatch.setenv("BENCHBASE_PLUGINS", "star")
    registry = load_registry()
    assert registry.names("topology") == ["star"]
    assert registry.names("algorithm") == [] and registry.names("env") == []
    assert [name for name, _ in registry.loaded] == ["star"]

    result = bench("plugins", "--json", env={"BENCHBASE_PLUGINS": "plugins.topologies.builtin"})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and {row["kind"] for row in rows} == {"topology"}
    assert "star" not in {row["name"] for row in rows}


def test_only_list_limits_builtins_too(monkeypatch):
    monkeypatch.setenv("BENCHBASE_PLUGINS", "plugins.replay.none,plugins.algorithms.diff_a2c")
    registry = load_registry()
    assert registry.names("replay") == ["none"]
    assert registry.names("algorithm") == ["diff-a2c"]
    assert registry.names("topology") == []


# -- clashes and broken plugins ---------------------------------------------------------------


def test_name_clash_names_both_providers_in_process(plugin_dir):
    module = write_module(plugin_dir, CLASHING_RING, "clash")
    registry = load_registry(blocked=set(), extra=[module])
    with pytest.raises(UserError) as caught:
        registry.check()
    message = str(caught.value)
    assert 'topology "ring"' in message
    assert "plugins.topologies.builtin" in message and "benchbase " in message
    assert module in message and "local module" in message
    # The first provider keeps the name.
    assert registry.components["topology"]["ring"].plugin == "plugins.topologies.builtin"


def test_name_clash_through_an_alias(plugin_dir):
    body = CLASHING_RING.replace('name = "ring"', 'name = "my-ring"\n        aliases = ("complete",)')
    module = write_module(plugin_dir, body, "alias_clash")
    registry = load_registry(blocked=set(), extra=[module])
    with pytest.raises(UserError, match=r'"complete" is provided twice.*plugins\.topologies\.builtin.*' + module):
        registry.check()


def extra_plugin_env(folder, module: str) -> dict[str, str]:
    """Environment that makes `bench` load `module` from `folder` as a local plugin."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
        "BENCHBASE_EXTRA_PLUGINS": module,
    }


def test_bench_plugins_reports_a_clash(tmp_path):
    module = write_module(tmp_path, CLASHING_RING, "clash")
    env = extra_plugin_env(tmp_path, module)
    result = bench("plugins", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and 'topology "ring"' in lines[0]
    assert "plugins.topologies.builtin" in lines[0] and module in lines[0]


def test_a_raising_plugin_is_reported_and_the_rest_load(plugin_dir):
    module = write_module(plugin_dir, RAISING, "broken")
    registry = load_registry(blocked=set(), extra=[module])
    failures = [line for line in registry.errors if module in line]
    assert failures, registry.errors
    assert "register_topologies" in failures[0] and "broken on purpose" in failures[0]
    assert {"ring", "random", "fully-connected"} <= set(registry.names("topology"))
    assert "diff-a2c" in registry.names("algorithm")
    registry.check()  # a broken plugin is not a clash


def test_a_plugin_that_fails_to_import_is_reported(plugin_dir):
    module = write_module(plugin_dir, "raise ImportError('needs a package that is not installed')\n", "unimportable")
    missing = f"no_such_module_{uuid.uuid4().hex[:8]}"
    registry = load_registry(blocked=set(), extra=[module, missing])
    assert any(module in line and "failed to load" in line and "not installed" in line for line in registry.errors)
    assert any(missing in line and "failed to load" in line for line in registry.errors)
    assert "ring" in registry.names("topology")


def test_bench_plugins_warns_about_a_raising_plugin(tmp_path):
    module = write_module(tmp_path, RAISING, "broken")
    env = extra_plugin_env(tmp_path, module)
    result = bench("plugins", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" in result.stdout and module in result.stdout
    assert "ring" in result.stdout


def test_a_plugin_registering_the_wrong_kind_is_reported(plugin_dir):
    body = """
        from benchbase.api.hookspecs import hookimpl

        @hookimpl
        def register_topologies(register):
            register("not a topology")
    """
    module = write_module(plugin_dir, body, "wrong_kind")
    registry = load_registry(blocked=set(), extra=[module])
    assert any(module in line and "TypeError" in line for line in registry.errors)


def test_blocking_and_only_apply_to_extra_modules(plugin_dir):
    module = write_module(plugin_dir, CLASHING_RING, "clash")
    registry = load_registry(blocked={module}, extra=[module])
    registry.check()  # the clashing module was not loaded
    assert module not in [name for name, _ in registry.loaded]
    only = load_registry(only={module}, blocked=set(), extra=[module])
    assert only.names("topology") == ["ring"]
    assert only.components["topology"]["ring"].provider == "local module"


# -- components as plain instances ------------------------------------------------------------

LINE_FAMILIES = """
    from dataclasses import dataclass

    from benchbase.api.contracts import EnvFamily, EnvFamilyParams, ResolvedNames, Task
    from benchbase.api.hookspecs import hookimpl
    from benchbase.api.params import param


    @dataclass(frozen=True)
    class LineParams(EnvFamilyParams):
        length: int = param(5, "steps per episode", min=1)


    class LineFamily(EnvFamily):
        Params = LineParams

        def __init__(self, slope):
            self.slope = slope
            self.name = f"line-{slope}"
            self.description = f"a line of slope {slope}"
            self.aliases = (f"Line{slope}-v0",)
            if slope == 2:
                self.resolved_names = (ResolvedNames("<line-N>", "line maker", "a line of any slope"),)

        def training_tasks(self, params, count, seed):
            return [Task(f"{self.name}-{k}", {"slope": float(self.slope)}) for k in range(count)]


    @hookimpl
    def register_env_families(register):
        for slope in (1, 2):
            register(LineFamily(slope))
"""


def test_components_may_be_instances_of_one_class(plugin_dir):
    module = write_module(plugin_dir, LINE_FAMILIES, "lines")
    registry = load_registry(only={module}, blocked=set(), extra=[module])
    registry.check()
    assert not registry.errors, registry.errors
    assert registry.names("env") == ["line-1", "line-2"]
    assert registry.get("env", "Line2-v0") is registry.get("env", "line-2")
    line = registry.get("env", "line-1")
    assert line.training_tasks(params_of(line), 1, 0)[0].parameters == {"slope": 1.0}
    rows = {row["name"]: row for row in registry.listing()}
    assert rows["line-1"]["description"] == "a line of slope 1" and rows["line-1"]["aliases"] == ["Line1-v0"]
    assert [p["name"] for p in rows["line-2"]["parameters"]] == ["resample", "length"]
    assert [names.pattern for names in registry.resolved_names()] == ["<line-N>"]


def test_bench_plugins_lists_the_names_a_family_resolves_on_demand(tmp_path):
    module = write_module(tmp_path, LINE_FAMILIES, "lines")
    result = bench("plugins", env={**extra_plugin_env(tmp_path, module), "BENCHBASE_PLUGINS": module}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<line-N>" in result.stdout and "a line of any slope" in result.stdout
    assert "NoFrameskip" not in result.stdout  # the Atari plugin is not loaded: nor are its names
