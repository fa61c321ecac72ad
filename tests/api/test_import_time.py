"""Fast errors: loading the plugin registry, resolving every name and checking a grid import
neither torch (seconds) nor OpenCV, so a misspelt name or a bad option is reported at once. The
plugin modules name them through `benchbase.lazy_import`; these tests run in a fresh interpreter
each, since the test process itself has imported torch long before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Records the stack of the first import of each heavy module (or of one of its submodules), so a
# failure names the module that pulled it in.
_WATCH = """
import importlib.abc, sys, traceback

HEAVY = ("torch", "cv2")
imported_by = {}

class _WatchHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in imported_by:
            imported_by[top] = "".join(traceback.format_stack()[:-1])
        return None

sys.meta_path.insert(0, _WatchHeavy())

def assert_no_heavy_imports():
    for name in HEAVY:
        assert name not in sys.modules, f"{name} was imported by:\\n" + imported_by.get(name, "?")
"""


def _run(body: str) -> subprocess.CompletedProcess:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BENCHBASE_PLUGINS", "BENCHBASE_BLOCK_PLUGINS", "BENCHBASE_EXTRA_PLUGINS")
    }
    return subprocess.run(
        [sys.executable, "-c", _WATCH + textwrap.dedent(body)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_registry_and_every_name_import_no_torch_nor_opencv() -> None:
    result = _run(
        """
        from benchbase.api.params import describe
        from benchbase.api.registry import load_registry

        registry = load_registry()
        assert not registry.errors, registry.errors
        resolved = 0
        for kind, table in registry.components.items():
            for name in [*table, *registry.aliases[kind]]:
                component = registry.get(kind, name)
                describe(component.Params)  # typed parameters resolve their hints without torch
                component.Params()
                resolved += 1
        # env ids resolved on demand: gymnasium's classic control, MuJoCo, Atari
        for name in ("CartPole-v1", "MountainCarContinuous-v0", "Hopper-v5", "PongNoFrameskip-v4", "ALE/Breakout-v5"):
            registry.get("env", name)
            resolved += 1
        registry.listing()
        assert_no_heavy_imports()
        print("resolved", resolved)
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 20  # every algorithm, topology, env family and replay strategy


def test_grid_expansion_and_memory_estimate_import_no_torch_nor_opencv() -> None:
    """What `bench run --dry-run` checks before it runs anything: the cells of a grid (with an
    off-policy algorithm and similarity-based replay) and the replay memory estimate."""
    result = _run(
        """
        from benchbase.api.registry import load_registry
        from benchbase.grid import expand, spec

        registry = load_registry()
        grid = spec.make_spec(
            {},
            {
                "algorithms": [
                    spec.parse_axis_entry(a, "--algorithm") for a in ("diff-a2c", "diff-ppo", "gala", "vtrace")
                ],
                "topologies": [spec.parse_axis_entry("ring", "--topology")],
                "envs": [spec.parse_axis_entry(e, "--env") for e in ("random-cartpole", "CartPole-v1")],
                "replay": [spec.parse_replay_entry(r, "--replay") for r in ("none", "queue:ratio=0.5+elite:ratio=0.5")],
                "seeds": 1,
                "learners": 2,
                "envs_per_learner": 2,
                "env_steps": 4000,
                "evaluations": 1,
                "eval_episodes": 1,
                "straggler": None,
                "set_items": [],
            },
        )
        plan = expand.expand(grid, registry)
        assert plan.cells, plan.invalid
        memory = expand.replay_memory(plan.cells, registry)
        assert memory and all(size > 0 for _, size in memory), memory
        assert_no_heavy_imports()
        print("cells", len(plan.cells))
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 4


def test_lazy_import_loads_on_first_attribute_and_only_then() -> None:
    result = _run(
        """
        import sys

        from benchbase import lazy_import

        colorsys = lazy_import("colorsys")
        assert "colorsys" not in sys.modules and "not imported yet" in repr(colorsys)
        assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
        assert "colorsys" in sys.modules and "(imported)" in repr(colorsys)
        assert colorsys.rgb_to_hsv is sys.modules["colorsys"].rgb_to_hsv
        import colorsys as real  # a plain import gets the real module, not the handle
        assert real is sys.modules["colorsys"] and real is not colorsys
        try:
            colorsys.no_such_function
        except AttributeError:
            print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


def test_bench_run_reports_a_misspelt_name_without_torch(tmp_path) -> None:
    result = _run(
        f"""
        import sys

        from benchbase.cli import main

        sys.argv = ["bench", "run", "-a", "diff-a2cc", "-t", "ring", "-e", "random-cartpole",
                    "--out", {str(tmp_path / "run")!r}, "--dry-run"]
        try:
            main()
        except SystemExit as stop:
            assert stop.code == 2, stop.code
        assert_no_heavy_imports()
        """
    )
    assert 'unknown algorithm "diff-a2cc"; did you mean "diff-a2c"?' in result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
