"""`bench`'s command-line conventions: --version, -h, shell completion, flags shown as flags, the
grid's defaults in `bench run --help`, `bench plugins NAME`, a dry run that tells cells apart, and
a tolerant --baseline. In this process (fast), but for start-up: no torch on these paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchbase import cli
from benchbase.errors import UserError
from benchbase.report.entries import resolve_baseline
from benchbase.run import forkserver, runner

COMMANDS = [[], ["plugins"], ["run"], ["report"], ["eval"], ["export"], ["reproduce"]]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`bench ARGS` in this process: (exit code, stdout, stderr), help at 250 columns (no wrapping)."""
    for name in ("BENCHBASE_PLUGINS", "BENCHBASE_BLOCK_PLUGINS", "BENCHBASE_EXTRA_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(forkserver, "warm_up", lambda: None)  # a dry run needs no learner processes
    monkeypatch.setattr(runner, "warm_up", lambda: None)

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capsys.readouterr()
        return exit_.value.code, _ANSI.sub("", out), _ANSI.sub("", err)

    return call


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


# -- --version, -h, completion, flags ----------------------------------------------------------------


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_names_benchbase_torch_and_python(bench, option: str) -> None:
    code, out, _ = bench(option)
    python = ".".join(map(str, sys.version_info[:3]))
    assert code == 0
    assert (
        out.strip() == f"benchbase {metadata.version('benchbase')} (torch {metadata.version('torch')}, Python {python})"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bench")
def test_h_is_help_for_every_command(bench, command: list[str]) -> None:
    code, short, _ = bench(*command, "-h")
    assert code == 0 and short == bench(*command, "--help")[1]
    assert f"Usage: bench {' '.join(command)}".strip() in short  # `bench`, also under `python -m benchbase`
    assert "-h" in short


def test_bare_bench_prints_the_help_once(bench) -> None:
    _, out, _ = bench()
    assert out.count("Usage: bench") == 1 and "run" in out


def test_shell_completion_is_offered_and_completes(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = bench("--help")
    assert "--install-completion" in out and "--show-completion" in out
    # What the installed bash script asks for when <TAB> follows "bench pl" and "bench run --dr".
    monkeypatch.setenv("_BENCH_COMPLETE", "complete_bash")
    for words, expected in (("bench pl", "plugins"), ("bench run --dr", "--dry-run")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - 1))
        code, out, _ = bench()
        assert code == 0 and out.split() == [expected]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bench")
def test_flags_are_shown_without_a_type(bench, command: list[str]) -> None:
    _, out, _ = bench(*command, "-h")
    assert "<bool>" not in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ -")}
    assert rows["--help"].split()[1:4] == ["--help", "-h", "Show"]
    if command == ["run"]:
        assert rows["--dry-run"].split()[2] == "Print" and rows["--seeds"].split()[2] == "<int>"


# -- defaults in `bench run --help` --------------------------------------------------------------------


def test_run_help_shows_the_grid_defaults(bench) -> None:
    _, out, _ = bench("run", "-h")
    rows = {line.split()[1]: " ".join(line.split()) for line in out.splitlines() if line.startswith("│ --")}
    assert "[default: (1; 2 in the default grid)]" in rows["--seeds"]
    assert "[default: (4)]" in rows["--learners"]
    assert "[default: (8)]" in rows["--envs-per-learner"]
    assert "[default: (100,000; 200,000 in the default grid)]" in rows["--env-steps"]
    assert "[default: (10)]" in rows["--evaluations"]


def test_the_shown_defaults_are_the_grids() -> None:
    """cli.py writes them out (importing the grid module costs numpy at start-up): they must agree."""
    from benchbase.grid import spec

    grid = spec.make_spec({}, {"algorithms": ["diff-a2c"], "topologies": ["ring"], "envs": ["CartPole-v1"]})
    given = {"seeds": len(grid.seeds), **{k: getattr(grid, k) for k in cli.SPEC_DEFAULTS if k != "seeds"}}
    assert given == cli.SPEC_DEFAULTS
    assert {key: spec.default_grid()[key] for key in cli.DEFAULT_GRID_VALUES} == cli.DEFAULT_GRID_VALUES


def test_an_option_not_given_leaves_the_grid_files_value(bench, tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('algorithms = ["diff-a2c"]\ntopologies = ["ring"]\nenvs = ["CartPole-v1"]\nlearners = 2\n')
    code, out, err = bench("run", "--grid", str(grid), "--env-steps", "400", "--dry-run", "--json")
    assert code == 0, err
    (config,) = [row["config"] for row in json.loads(out)]
    assert config["learners"] == 2 and config["env_steps"] == 400 and config["envs_per_learner"] == 8


# -- bench plugins NAME ----------------------------------------------------------------------------------


def test_plugins_name_shows_one_plugin_with_every_parameter(bench) -> None:
    code, out, _ = bench("plugins", "diff-a2c")
    assert code == 0
    assert out.splitlines()[0] == "diff-a2c: algorithm, from benchbase 0.1.0 (plugin plugins.algorithms.diff_a2c)"
    assert "Diff-DAC" in out and "-a diff-a2c:KEY=VALUE" in out
    cells = [[cell.strip() for cell in line.split("│")[1:5]] for line in out.splitlines() if line.startswith("│")]
    rows = {cell[0]: cell[1:] for cell in cells if cell[0]}  # a wrapped help goes on in a row without a name
    assert rows["lr"] == ["float", "0.0007", "RMSprop learning rate"]
    assert rows["gae_lambda"][:2] == ["float or none", "none"]
    assert rows["normaliser"][:2] == ["mixed|local|off", "mixed"]
    assert "random-cartpole" not in out  # one plugin, not the listing


def test_plugins_name_json_is_its_row_of_the_listing(bench) -> None:
    _, listing, _ = bench("plugins", "--json")
    (ring,) = [row for row in json.loads(listing) if row["name"] == "ring"]
    code, out, _ = bench("plugins", "ring", "--json")
    assert code == 0 and json.loads(out) == ring
    assert json.loads(bench("plugins", "topology:ring", "--json")[1]) == ring
    assert json.loads(bench("plugins", "gala", "--json")[1])["name"] == "gala-a2c"  # an alias
    hopper = json.loads(bench("plugins", "Hopper-v5", "--json")[1])  # an id resolved on demand
    assert hopper["kind"] == "env" and hopper["plugin"] == "plugins.envs.mujoco.family"
    assert [p["name"] for p in hopper["parameters"]] == ["resample"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("diff-a2cc", 'unknown plugin "diff-a2cc"; did you mean "diff-a2c"? (`bench plugins` lists all'),
        ("topology:rnig", 'unknown topology "rnig"; did you mean "ring"? (available: adjacency,'),
        ("algorithm:ring", 'unknown algorithm "ring"'),
        ("colour:red", 'plugin "colour:red": expected NAME or KIND:NAME, KIND one of algorithm, topology'),
    ],
)
def test_a_misspelt_plugin_is_one_line_with_a_close_match(bench, name: str, message: str) -> None:
    assert message in one_line_error(*bench("plugins", name)[::2])


# -- bench run --dry-run -----------------------------------------------------------------------------------

AXES = ["-t", "ring", "-e", "CartPole-v1", "--learners", "2", "--envs-per-learner", "2", "--env-steps", "400"]


def test_dry_run_tells_apart_cells_that_differ_only_in_parameters(bench, tmp_path: Path) -> None:
    args = ["run", "-a", "diff-a2c:lr=0.1", "-a", "diff-a2c", *AXES, "--out", str(tmp_path / "run"), "--dry-run"]
    code, out, _ = bench(*args)
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "non-default parameters" in out
    assert sorted(row.split("│")[-2].strip() for row in rows) == ["(defaults)", "diff-a2c.lr=0.1"]
    code, out, err = bench(*args, "--json")
    assert code == 0 and "dry run" in err and not (tmp_path / "run").exists()
    cells = json.loads(out)  # stdout holds only the JSON
    assert sorted(cell["config"]["algorithm_params"]["lr"] for cell in cells) == [0.0007, 0.1]
    assert sorted(cell["variant"] for cell in cells) == ["", "diff-a2c.lr=0.1"]
    assert all(len(cell["cell_id"]) == 12 and cell["config"]["env_steps"] == 400 for cell in cells)


def test_dry_run_json_keeps_notes_off_stdout(bench, tmp_path: Path) -> None:
    args = ["run", "-a", "vtrace", "-r", "queue", *AXES, "--out", str(tmp_path / "run"), "--dry-run", "--json"]
    code, out, err = bench(*args)
    assert code == 0 and "replay memory" in err
    assert [cell["config"]["replay"] for cell in json.loads(out)] == ["queue"]


def test_json_without_dry_run_is_refused(bench, tmp_path: Path) -> None:
    line = one_line_error(*bench("run", "-a", "diff-a2c", *AXES, "--out", str(tmp_path / "run"), "--json")[::2])
    assert "--json applies only with --dry-run" in line and not (tmp_path / "run").exists()


def test_dry_run_with_cell_lists_that_cell_and_runs_nothing(bench, tmp_path: Path) -> None:
    out = tmp_path / "run"
    prepared = ["run", "-a", "diff-a2c", "-a", "diff-a2c:lr=0.1", *AXES, "--out", str(out), "--launcher", "torchrun"]
    assert bench(*prepared)[0] == 0  # torchrun prepares the folder, runs nothing
    before = (out / "cells.parquet").read_bytes()
    cells = pq.read_table(out / "cells.parquet").to_pylist()
    chosen = next(row["cell_id"] for row in cells if row["variant"])
    code, printed, err = bench("run", "--out", str(out), "--cell", chosen, "--dry-run")
    assert code == 0, err
    assert chosen in printed and "diff-a2c.lr=0.1" in printed and "1 cells" in printed
    assert (out / "cells.parquet").read_bytes() == before


# -- --baseline ------------------------------------------------------------------------------------------

LABELS = [
    "diff-a2c · ring · none",
    "diff-a2c · ring · none (diff-a2c.lr=0.1)",
    "diff-a2c · isolated · none",
    "diff-a2c · directed-ring · none",
    "gala-a2c · ring · none",
]


@pytest.mark.parametrize(
    ("typed", "entry"),
    [
        ("diff-a2c · ring · none", LABELS[0]),
        ("diff-a2c - ring - none", LABELS[0]),
        ("diff-a2c ring none", LABELS[0]),
        ("diff-a2c . ring . none", LABELS[0]),
        ("Diff-A2C, Ring, None", LABELS[0]),
        ("diff-a2c/ring/none", LABELS[0]),
        ("diff-a2c ring none diff-a2c.lr=0.1", LABELS[1]),
        ("lr=0.1", LABELS[1]),
        ("isolated", LABELS[2]),
        ("a2c · iso", LABELS[2]),
        ("directed", LABELS[3]),
        ("gala", LABELS[4]),
        ("gala ring", LABELS[4]),
    ],
)
def test_baseline_accepts_any_separator_and_unambiguous_parts(typed: str, entry: str) -> None:
    assert resolve_baseline(typed, LABELS) == entry


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("ring", 'baseline "ring" matches 3 entries ("diff-a2c · ring · none"; '),
        ("diff-a2c", 'baseline "diff-a2c" matches 4 entries'),
        ("diff-a2c - rnig - none", 'unknown baseline entry "diff-a2c - rnig - none"; did you mean "diff-a2c · ring'),
        ("isolatd", 'unknown baseline entry "isolatd"; did you mean "isolated"?'),
        (" · ", 'baseline " · " names no entry'),
    ],
)
def test_an_ambiguous_or_unknown_baseline_is_one_line_naming_the_candidates(typed: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        resolve_baseline(typed, LABELS)
    assert message in str(error.value) and "\n" not in str(error.value)


# -- start-up ----------------------------------------------------------------------------------------------


def _cartpole_run(topology: str, learners: int, *options: str) -> list[str]:
    return ["run", "-a", "diff-a2c", "-t", topology, "-e", "CartPole-v1", "--learners", str(learners), *options]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--version"], 0),
        (["-h"], 0),
        (["run", "-h"], 0),
        (["plugins", "diff-a2c", "--json"], 0),
        (["plugins", "rnig"], 2),
        # every cell's process layout is checked before a run (`benchbase.run.blocks`), and refused
        (["run", "--dry-run"], 0),
        (_cartpole_run("ring", 4, "--learners-per-process", "3"), 2),
        (_cartpole_run("exponential", 64, "--transport", "shm", "--dry-run"), 2),
    ],
)
def test_conventions_answer_without_importing_torch(args: list[str], code: int) -> None:
    body = f"""
import sys
from benchbase.cli import main
sys.argv = ["bench", *{args!r}]
try:
    main()
except SystemExit as stop:
    assert (stop.code or 0) == {code}, stop.code
else:
    assert {code} == 0
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BENCHBASE_")}
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no torch"


# -- the leaderboard in a narrow terminal -------------------------------------------------------------------


def _report():
    from benchbase.report.model import Estimate, LeaderboardRow, Report

    def row(entry: str, score: float) -> LeaderboardRow:
        value = Estimate(score, score - 0.05, score + 0.05)
        algorithm, topology, replay = entry.split(" · ")[:3]
        return LeaderboardRow(
            entry, algorithm, topology, replay, "", 5, 0, value, value, value, Estimate(1 - score, 0.1, 0.2),
            value, value, 1234.0, 10.0, 2048.0, 0.15,
        )  # fmt: skip

    rows = [row("diff-a2c · fully-connected · none", 0.85), row("gala-a2c · ring · none", 0.55)]
    rows.append(row("diff-a2c · isolated · none", 0.25))
    return Report(["run"], "final", "train", {}, rows, baseline=rows[-1].entry, repetitions=2000)


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_the_leaderboard_fits_the_terminal_without_cutting_a_number(width: int) -> None:
    from rich.console import Console

    from benchbase.report.text import leaderboard_table

    console = Console(width=width, record=True, highlight=False)
    console.print(leaderboard_table(_report(), width=width))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width and "…" not in text
    assert all(f"[{low:.2f}, {low + 0.1:.2f}]" in text for low in (0.8, 0.5, 0.2))  # every IQM interval, whole
    header = next(line for line in text.splitlines() if "Entry" in line)
    assert ("Consensus" in header) == (width >= 160) and ("not shown, to fit" in text) == (width < 160)
    assert "P(>base)" in header and "baseline" in text  # the comparison with the baseline stays at any width
