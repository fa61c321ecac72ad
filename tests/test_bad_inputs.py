"""Every bad input to `bench run` is refused before anything runs: exit 2, one line on stderr, no
traceback, and nothing written (a run folder that was there is left byte for byte as it was).

The cases run in this process (`benchbase.cli.main`, as the `bench` script calls it) with the
forkserver's warm-up stubbed out; one case runs `bench` as a real process to time the refusal of a
runaway grid. A small plugin (written to a temporary folder) adds what the built-ins do not
declare yet: an algorithm that says how many env steps one iteration takes, which parameters apply
only to vector observations and how large its model is, and a family with image observations.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchbase import cli, results
from benchbase.checkpoints import checkpoint
from benchbase.run import forkserver, runner

PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from gymnasium import spaces

    from benchbase.api.contracts import EnvFamily, Task
    from benchbase.api.hookspecs import hookimpl
    from plugins.algorithms.diff_a2c import DiffA2C


    class DeclaringA2C(DiffA2C):
        name = "declaring-a2c"
        description = "Diff-A2C declaring its iteration, vector-only parameters and model size (a test plugin)"
        vector_only_params = frozenset({"hidden"})

        def steps_per_simulator(self, params):
            return params.n_steps

        def model_bytes(self, params, observation_space, action_space):
            return 4 * 2 * params.hidden * params.hidden


    class _Frames:
        num_envs = 1
        observation_space = spaces.Box(0, 255, (84, 84, 4), dtype=np.uint8)
        action_space = spaces.Discrete(3)

        def close(self):
            pass


    class Frames(EnvFamily):
        name = "fake-frames"
        description = "image observations, never stepped (a test plugin)"

        def training_tasks(self, params, count, seed):
            return [Task(f"frames-{index}") for index in range(count)]

        def make_env(self, params, tasks, seed):
            return _Frames()


    @hookimpl
    def register_algorithms(register):
        register(DeclaringA2C())


    @hookimpl
    def register_env_families(register):
        register(Frames())
    """
)

BASE = ["-a", "diff-a2c", "-t", "ring", "-e", "CartPole-v1", "--learners", "2", "--envs-per-learner", "2"]
BUDGET = ["--env-steps", "400", "--evaluations", "1", "--eval-episodes", "1"]


def grid_file(tmp: Path, text: str | bytes) -> str:
    path = tmp / "grid.toml"
    path.write_bytes(text if isinstance(text, bytes) else textwrap.dedent(text).encode())
    return str(path)


AXES_TOML = 'algorithms = ["diff-a2c"]\ntopologies = ["ring"]\nenvs = ["CartPole-v1"]\n'


def forged_checkpoint(tmp: Path) -> str:
    """A checkpoint folder whose file is not what bench run writes, though its sidecar matches."""
    config = {"algorithm": "diff-a2c", "env": "CartPole-v1", "seed": 0}
    folder = tmp / "source" / "checkpoints" / "0123456789ab"
    for rank in (0, 1):
        checkpoint.save(folder / f"learner-{rank}", {"weights": [1.0, 2.0]}, env_steps=100, cell_config=config)
    return str(folder)


def text_file(tmp: Path) -> str:
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    return str(tmp / "notes.txt")


#: (id, arguments after `run` (OUT and TMP stand for the --out folder and a scratch folder; a
#: callable gets the scratch folder), a part of the one error line). BASE and BUDGET are added
#: unless the arguments replace them (an entry of the same option, or --grid / --cell).
CASES: list[tuple[str, list, str]] = [
    # the size of the grid and of its cells, checked before anything is expanded
    ("seeds-1e9", ["--seeds", "1000000000"], "1,000,000,000 cells"),
    ("seeds-1e5", ["--seeds", "100000"], "at most 10,000 per run"),
    ("seeds-10001", ["--seeds", "10001"], "10,001 cells"),
    ("algorithms-times-seeds", ["-a", "diff-a2c", "-a", "gala-a2c", "-a", "diff-ppo", "--seeds", "4000"], "12,000"),
    ("learners-1e5", ["--learners", "100000"], "100,000 learners per cell; at most 1,024"),
    ("learners-2000", ["--learners", "2000"], "at most 1,024"),
    ("simulators", ["--envs-per-learner", "100000"], "200,000 simulators per cell; at most 65,536"),
    ("env-steps-huge", ["--env-steps", "10000000000000000"], "more than a cell's limit"),
    # malformed numbers and counts
    ("seeds-text", ["--seeds", "abc"], "Invalid value for '--seeds'"),
    ("learners-text", ["--learners", "four"], "Invalid value for '--learners'"),
    ("env-steps-text", ["--env-steps", "1e3"], "Invalid value for '--env-steps'"),
    ("comm-timeout-text", ["--comm-timeout", "soon"], "Invalid value for '--comm-timeout'"),
    ("seeds-0", ["--seeds", "0"], "seeds"),
    ("seeds-negative", ["--seeds", "-1"], "seeds"),
    ("learners-0", ["--learners", "0"], "learners: expected an integer ≥ 1"),
    ("learners-negative", ["--learners", "-3"], "learners: expected an integer ≥ 1"),
    ("envs-per-learner-0", ["--envs-per-learner", "0"], "envs-per-learner: expected an integer ≥ 1"),
    ("env-steps-0", ["--env-steps", "0"], "env-steps: expected an integer ≥ 1"),
    ("env-steps-negative", ["--env-steps", "-400"], "env-steps: expected an integer ≥ 1"),
    ("evaluations-negative", ["--evaluations", "-1"], "evaluations: expected an integer ≥ 0"),
    ("eval-episodes-0", ["--eval-episodes", "0"], "eval-episodes: expected an integer ≥ 1"),
    ("unknown-option", ["--sedes", "2"], "No such option: --sedes"),
    ("unknown-command-option", ["--seed", "2"], "No such option: --seed"),
    # how the cells would run
    ("jobs-0", ["--jobs", "0"], "--jobs 0"),
    ("transport", ["--transport", "mpi"], "choose auto, shm or p2p"),
    ("device", ["--device", "tpu"], "choose cpu, cuda or auto"),
    ("launcher", ["--launcher", "slurn"], "choose local, torchrun or slurm"),
    ("checkpoint-every", ["--checkpoint-every", "-1"], "--checkpoint-every -1"),
    ("comm-timeout-negative", ["--comm-timeout", "-5"], "--comm-timeout -5: give a number of seconds > 0"),
    ("comm-timeout-0", ["--comm-timeout", "0"], "--comm-timeout 0"),
    ("comm-timeout-nan", ["--comm-timeout", "nan"], "--comm-timeout nan"),
    ("comm-timeout-inf", ["--comm-timeout", "inf"], "--comm-timeout inf"),
    ("rdzv-timeout", ["--launcher", "torchrun", "--rdzv-timeout", "0"], "--rdzv-timeout 0"),
    ("nnodes-0", ["--nnodes", "0"], "--nnodes 0"),
    ("nnodes-local", ["--nnodes", "2"], "--nnodes applies only with --launcher torchrun"),
    ("endpoint-local", ["--rdzv-endpoint", "node0:29500"], "--rdzv-endpoint applies only with --launcher torchrun"),
    ("execute-local", ["--execute"], "--execute applies only with --launcher torchrun"),
    ("nnodes-no-endpoint", ["--launcher", "torchrun", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint"),
    (
        "endpoint-one-node",
        ["--launcher", "torchrun", "--rdzv-endpoint", "node0:29500"],
        "--rdzv-endpoint applies only with --nnodes > 1",
    ),
    ("endpoint-no-port", ["--launcher", "torchrun", "--nnodes", "2", "--rdzv-endpoint", "node0"], "HOST:PORT"),
    ("endpoint-no-host", ["--launcher", "torchrun", "--nnodes", "2", "--rdzv-endpoint", ":29500"], "HOST:PORT"),
    ("endpoint-port", ["--launcher", "torchrun", "--nnodes", "2", "--rdzv-endpoint", "node0:99999"], "HOST:PORT"),
    ("endpoint-port-text", ["--launcher", "torchrun", "--nnodes", "2", "--rdzv-endpoint", "node0:http"], "HOST:PORT"),
    ("torchrun-uneven-nodes", ["--launcher", "torchrun", "--nnodes", "3", "--rdzv-endpoint", "n:1"], "nodes cannot"),
    # a parameter given twice, or malformed
    ("set-twice", ["--set", "diff-a2c.lr=0.1", "--set", "diff-a2c.lr=0.2"], "diff-a2c.lr is given twice"),
    ("entry-twice", ["-a", "diff-a2c:lr=0.1,lr=0.2"], "parameter 'lr' is given twice"),
    ("topology-entry-twice", ["-t", "random:p=0.3,p=0.4"], "parameter 'p' is given twice"),
    ("env-entry-twice", ["-e", "random-cartpole:resample=true,resample=false"], "'resample' is given twice"),
    ("replay-entry-twice", ["-a", "vtrace", "-r", "uniform:capacity=8,capacity=9"], "'capacity' is given twice"),
    ("set-no-plugin", ["--set", "lr=0.1"], "expected PLUGIN.KEY=VALUE"),
    ("set-empty-plugin", ["--set", ".lr=0.1"], "expected PLUGIN.KEY=VALUE"),
    ("set-empty-key", ["--set", "diff-a2c.=0.1"], "expected PLUGIN.KEY=VALUE"),
    ("set-no-value", ["--set", "diff-a2c.lr"], "expected PLUGIN.KEY=VALUE"),
    ("entry-no-name", ["-a", ":lr=0.1"], "expected NAME or NAME:key=value"),
    ("entry-not-key-value", ["-a", "diff-a2c:lr"], "parameter 'lr' is not key=value"),
    ("entry-empty-key", ["-t", "ring:=1"], "is not key=value"),
    ("mix-twice", ["-a", "vtrace", "-r", "uniform:ratio=0.5+uniform:ratio=0.5"], "names each strategy once"),
    # names and parameters
    ("topology-typo", ["-t", "rnig"], 'unknown topology "rnig"; did you mean "ring"?'),
    ("algorithm-typo", ["-a", "diff-a2"], 'did you mean "diff-a2c"?'),
    ("env-typo", ["-e", "random-cartpol"], 'did you mean "random-cartpole"?'),
    ("replay-typo", ["-r", "unifrom"], 'unknown replay strategy "unifrom"; did you mean "uniform"?'),
    ("set-unknown-plugin", ["--set", "dif-a2c.lr=0.1"], 'unknown plugin "dif-a2c"; did you mean "diff-a2c"?'),
    ("set-bad-value", ["--set", "diff-a2c.lr=fast"], "diff-a2c.lr"),
    ("set-unknown-key", ["--set", "diff-a2c.learning_rate=0.1"], 'unknown parameter of diff-a2c "learning_rate"'),
    ("set-below-minimum", ["--set", "diff-a2c.n_steps=0"], "minimum"),
    ("staleness", ["--set", "diff-a2c.staleness=-1"], "diff-a2c.staleness: -1 is below the minimum 0"),
    ("link-drop-1", ["--set", "diff-a2c.link_drop=1"], "diff-a2c.link_drop: 1.0 is not allowed; it must be below 1.0"),
    ("link-drop-negative", ["--set", "diff-a2c.link_drop=-0.1"], "diff-a2c.link_drop: -0.1 is below the minimum 0.0"),
    ("entry-bad-value", ["-a", "diff-a2c:gamma=2"], "diff-a2c.gamma: 2.0 is above the maximum 1.0"),
    ("topology-bad-choice", ["-t", "ring:weights=magic"], "'magic' is not allowed"),
    ("random-p", ["-t", "random:p=1.5"], "random.p"),
    ("adjacency-size", ["-t", "adjacency:matrix=[[0,1],[1,0]]", "--learners", "4"], "2×2 but the cell has 4 learners"),
    (
        "adjacency-asymmetric",
        ["-t", "adjacency:matrix=[[0,1,0],[0,0,1],[1,0,0]]", "--learners", "3"],
        "symmetric",
    ),
    (
        "adjacency-disconnected",
        ["-t", "adjacency:matrix=[[0,1,0,0],[1,0,0,0],[0,0,0,1],[0,0,1,0]]", "--learners", "4"],
        "disconnected",
    ),
    ("adjacency-malformed", ["-t", "adjacency:matrix=[[0,1],[1"], ""),
    (
        "gala-peers",
        ["-a", "gala-a2c:num_peers=2", "-t", "directed-ring"],
        "num_peers=2 but learner 0 has only 1 out-neighbour in this topology; use num_peers between 1 and 1",
    ),
    # topologies that need more learners than given
    ("ring-of-1", ["--learners", "1"], "topology ring needs at least 2 learners and the cell has 1"),
    ("directed-ring-of-1", ["-t", "directed-ring", "--learners", "1"], "topology directed-ring needs at least 2"),
    ("complete-of-1", ["-t", "fully-connected", "--learners", "1"], "needs at least 2"),
    ("exponential-of-1", ["-t", "exponential", "--learners", "1"], "needs at least 2"),
    ("random-of-1", ["-t", "random", "--learners", "1"], "needs at least 2"),
    ("star-of-1", ["-t", "star", "--learners", "1"], "needs at least 2"),
    # spaces the algorithm cannot take, refused from its declarations (the reason goes to stdout)
    ("discrete-observations", ["-e", "FrozenLake-v1"], "no valid cell"),
    ("discrete-observations-8x8", ["-e", "FrozenLake8x8-v1"], "no valid cell"),
    ("discrete-observations-cliff", ["-e", "CliffWalking-v1"], "no valid cell"),
    ("tuple-observations", ["-e", "Blackjack-v1"], "no valid cell"),
    ("off-policy-without-replay", ["-a", "vtrace"], "no valid cell"),
    ("on-policy-with-replay", ["-r", "uniform"], "no valid cell"),
    ("unknown-gymnasium-version", ["-e", "CartPole-v9"], "CartPole"),
    # a parameter that does not apply to the chosen network
    ("vector-only-set", ["-a", "declaring-a2c", "-e", "fake-frames", "--set", "declaring-a2c.hidden=16"], "no valid"),
    ("vector-only-entry", ["-a", "declaring-a2c:hidden=16", "-e", "fake-frames"], "no valid cell"),
    # a budget smaller than one iteration (learners × simulators × rollout length)
    ("budget-10", ["-a", "declaring-a2c", "--env-steps", "10"], "less than one iteration of declaring-a2c"),
    ("budget-19", ["-a", "declaring-a2c", "--env-steps", "19"], "2 learners × 2 simulators × 5 steps = 20"),
    ("budget-long-rollout", ["-a", "declaring-a2c:n_steps=200", "--env-steps", "400"], "give at least 800"),
    # memory: replay buffers and models against this machine's memory
    ("replay-1e12", ["-a", "vtrace", "-r", "uniform:capacity=1000000000000"], "replay when full"),
    ("queue-1e12", ["-a", "vtrace", "-r", "queue:capacity=1000000000000"], "more than this machine's"),
    ("mix-1e12", ["-a", "vtrace", "-r", "queue:capacity=64,ratio=0.5+uniform:capacity=1e12,ratio=0.5"], "memory:"),
    ("model-too-large", ["-a", "declaring-a2c:hidden=10000000"], "model), more than this machine's"),
    # grid files
    ("grid-folder", ["--grid", "TMP"], "is a folder: give a TOML file"),
    ("grid-binary", ["--grid", lambda tmp: grid_file(tmp, bytes(range(256)) * 4)], "is not text"),
    ("grid-missing", ["--grid", "TMP/nowhere.toml"], "does not exist"),
    ("grid-not-toml", ["--grid", lambda tmp: grid_file(tmp, 'algorithms = ["diff-a2c"\n')], "not valid TOML"),
    ("grid-unknown-key", ["--grid", lambda tmp: grid_file(tmp, 'topology = ["ring"]\n')], "did you mean 'topologies'"),
    ("grid-seeds-float", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "seeds = 1e9\n")], "seeds"),
    ("grid-seeds-1e9", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "seeds = 1000000000\n")], "cells"),
    ("grid-axis-number", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "replay = 5\n")], "grid replay"),
    ("grid-set-number", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "set = 5\n")], "set: expected a table"),
    ("grid-set-plugin", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "set = { diff-a2c = 1 }\n")], "set.diff"),
    ("grid-learners-text", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + 'learners = "4"\n')], "learners"),
    ("grid-learners-1e4", ["--grid", lambda tmp: grid_file(tmp, AXES_TOML + "learners = 10000\n")], "at most 1,024"),
    (
        "grid-no-envs",
        ["--grid", lambda tmp: grid_file(tmp, 'algorithms = ["diff-a2c"]\ntopologies = ["ring"]\nenvs = []\n')],
        "the grid names no envs",
    ),
    (
        "grid-entry",
        [
            "--grid",
            lambda tmp: grid_file(
                tmp, 'algorithms = ["diff-a2c"]\nenvs = ["CartPole-v1"]\ntopologies = [{ p = 0.3 }]\n'
            ),
        ],
        "topologies",
    ),
    # the results folder
    ("out-is-a-file", ["--out", lambda tmp: text_file(tmp)], "is a file: give a folder"),
    ("out-under-a-file", ["--out", lambda tmp: text_file(tmp) + "/run/x"], "no folder can be made under it"),
    ("cell-without-grid", ["--cell", "0123456789ab", "--out", "OUT"], "holds no grid"),
    ("cell-with-axes", ["--cell", "0123456789ab", "-a", "diff-a2c", "--out", "OUT"], "give no axes"),
    # --init-from
    ("init-from-nowhere", ["--init-from", "TMP/nowhere"], "no such file or folder"),
    ("init-from-text-file", ["--init-from", text_file], "is not a checkpoint"),
    ("init-from-forged", ["--init-from", forged_checkpoint], "is not a checkpoint bench run wrote"),
]


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`bench ARGS` in this process: (exit code, stdout, stderr)."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "bad_inputs_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setenv("BENCHBASE_EXTRA_PLUGINS", "bad_inputs_plugin")
    for name in ("BENCHBASE_PLUGINS", "BENCHBASE_BLOCK_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    # A refused run must not need learner processes; the forkserver would only slow the cases down.
    monkeypatch.setattr(forkserver, "warm_up", lambda: None)
    monkeypatch.setattr(runner, "warm_up", lambda: None)

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capsys.readouterr()
        return exit_.value.code, out, err

    return call


def assert_refused(code: int, out: str, err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in out + err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a digest of its bytes."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_LONG = {"-a": "--algorithm", "-t": "--topology", "-e": "--env", "-r": "--replay", "-o": "--out"}


def _arguments(args: list, tmp: Path, out: Path) -> list[str]:
    """`run`, BASE and BUDGET less the options the case gives itself, the case's arguments, --out."""
    given = []
    for arg in args:
        arg = arg(tmp) if callable(arg) else arg
        given.append(arg.replace("OUT", str(out)).replace("TMP", str(tmp)))
    named = {_LONG.get(arg, arg) for arg in given if arg.startswith("-")}
    base = []
    if not named & {"--grid", "--cell"}:
        defaults = [*BASE, *BUDGET]
        for option, value in zip(defaults[::2], defaults[1::2]):
            if _LONG.get(option, option) not in named:
                base += [option, value]
    if "--out" not in named:
        given += ["--out", str(out)]
    return ["run", *base, *given]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bench, tmp_path: Path, args: list, message: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "run"
    arguments = _arguments(args, scratch, out)
    before = snapshot(scratch)
    assert_refused(*bench(*arguments), message)
    assert not out.exists()
    assert snapshot(scratch) == before


def test_the_cases_cover_at_least_a_hundred_inputs() -> None:
    assert len(CASES) + len(FOLDER_FAULTS) >= 100
    assert len({case[0] for case in CASES}) == len(CASES)


# -- faults in a run folder that is already there --------------------------------------------------


def _prepared_run(bench, out: Path) -> None:
    """A run folder as bench run leaves it before its cells run (torchrun prepares it and stops)."""
    code, _, err = bench("run", *BASE, *BUDGET, "--launcher", "torchrun", "--out", str(out))
    assert code == 0, err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _enospc(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, write) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "write_atomic", full)


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(path: Path, write) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(results, "write_atomic", refused)


#: (id, damage done to the prepared folder (a callable of the folder, or of the folder and
#: monkeypatch), extra arguments, a part of the error line).
FOLDER_FAULTS: list[tuple[str, object, list[str], str]] = [
    ("cells-truncated", lambda out: _truncate(out / "cells.parquet"), [], "cells.parquet is unreadable"),
    ("cells-garbage", lambda out: (out / "cells.parquet").write_bytes(b"PAR1" * 50), [], "cells.parquet is unreadable"),
    ("cells-empty", lambda out: (out / "cells.parquet").write_bytes(b""), [], "cells.parquet is unreadable"),
    ("cells-a-folder", lambda out: ((out / "cells.parquet").unlink(), (out / "cells.parquet").mkdir()), [], "cells"),
    ("grid-json-garbage", lambda out: (out / "grid.json").write_text("{garbage"), [], "grid.json is unreadable"),
    ("grid-json-list", lambda out: (out / "grid.json").write_text("[1, 2]"), [], "grid.json is unreadable"),
    ("grid-json-cells", lambda out: (out / "grid.json").write_text('{"cell_ids": 5}'), [], "grid.json is unreadable"),
    ("grid-json-binary", lambda out: (out / "grid.json").write_bytes(bytes(range(256))), [], "grid.json"),
    ("different-grid", lambda out: None, ["-t", "isolated"], "holds a different grid"),
    (
        "cell-config-garbage",
        lambda out: [path.write_text("{oops") for path in (out / "configs").glob("*.json")],
        ["--cell"],
        "is unreadable",
    ),
    ("cell-grid-garbage", lambda out: (out / "grid.json").write_text("{garbage"), ["--cell"], "grid.json"),
    ("cell-unknown", lambda out: None, ["--cell", "fedcba987654"], "unknown cell of"),
    ("full-disk", lambda out, patch: _enospc(patch), [], "No space left on device"),
    ("read-only", lambda out, patch: _read_only(patch), [], "Read-only file system"),
]


@pytest.mark.parametrize(
    ("damage", "extra", "message"), [fault[1:] for fault in FOLDER_FAULTS], ids=[fault[0] for fault in FOLDER_FAULTS]
)
def test_a_fault_in_the_run_folder_is_one_line_and_changes_nothing(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    _prepared_run(bench, out)
    if damage.__code__.co_argcount == 2:
        damage(out, monkeypatch)
    else:
        damage(out)
    before = snapshot(out)
    if extra[:1] == ["--cell"]:
        cell_id = extra[1] if len(extra) > 1 else next((out / "configs").glob("*.json")).stem
        arguments = ["run", "--cell", cell_id, "--out", str(out)]
    else:
        arguments = ["run", *BASE, *BUDGET, *extra, "--out", str(out)]
        if extra[:1] == ["-t"]:
            arguments = ["run", "-a", "diff-a2c", *extra, *BASE[4:], *BUDGET, "--out", str(out)]
    code, stdout, err = bench(*arguments)
    assert_refused(code, stdout, err, message)
    assert str(out) in err or "cell" in message
    assert snapshot(out) == before
    rows = [] if not (out / "cells.parquet").is_file() else _statuses(out)
    assert "running" not in rows


def _statuses(out: Path) -> list[str]:
    try:
        return [row["status"] for row in results.RunFolder(out).read_cells().values()]
    except Exception:  # noqa: BLE001 - a damaged table holds no status
        return []


def test_a_full_disk_on_a_new_folder_leaves_no_folder(bench, tmp_path: Path, monkeypatch) -> None:
    _enospc(monkeypatch)
    out = tmp_path / "run"
    assert_refused(*bench("run", *BASE, *BUDGET, "--out", str(out)), "No space left on device")
    assert not out.exists()


def test_an_unwritable_out_is_refused_before_anything_runs(bench, tmp_path: Path, monkeypatch) -> None:
    # As root every folder is writable; a read-only mount is what os.access reports here.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode))
    out = tmp_path / "run"
    assert_refused(*bench("run", *BASE, *BUDGET, "--out", str(out)), "is not writable")
    assert not out.exists()


def test_a_huge_grid_is_refused_at_once_by_the_bench_command(tmp_path: Path) -> None:
    """The issue's runaway: refused from its size before the plugins (and torch) load."""
    out = tmp_path / "x"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "benchbase", "run", "-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole"]
        + ["--learners", "2", "--env-steps", "4000", "--seeds", "1000000000", "--out", str(out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert_refused(result.returncode, result.stdout, result.stderr, "1,000,000,000 cells")
    assert not out.exists()
    assert elapsed < 30  # seconds on a loaded machine; about 0.4 s on an idle one
