"""Who runs a run folder, with real processes: a killed `bench run` leaves no learner, forkserver
or resource tracker behind and a re-run completes its grid as if uninterrupted; SIGTERM to its
whole process group checkpoints and stops it as Ctrl-C does; a second `bench
run` on a folder in use stops naming the holder; a `running` cell names its process, so a re-run
resumes it when that process is gone and refuses while it lives."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from benchbase.errors import UserError
from benchbase.results import RunFolder, read_parquet
from benchbase.run.lifeline import start_ticks
from benchbase.run.ownership import HOLDER_NAME, FolderLock, Runner, check_running_cells

GRID = [
    "run",
    "-a",
    "diff-a2c",
    "-t",
    "ring",
    "-e",
    "CartPole-v1",
    "--seeds",
    "1",
    "--learners",
    "2",
    "--evaluations",
    "0",
    "--learners-per-process",  # the learners are processes of their own: what could be orphaned
    "1",
]


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=timeout)


def start_bench(*args: str) -> subprocess.Popen:
    """`bench ARGS` in a session of its own: its process group is every process it starts."""
    return subprocess.Popen(
        [sys.executable, "-m", "benchbase", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def process_group(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of process group `pgid`, with their command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(entry)] = command[:120]
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def cell_rows(out: Path) -> list[dict]:
    return read_parquet(out / "cells.parquet").to_pylist()


def episodes(out: Path) -> list[dict]:
    rows = ds.dataset(out / "episodes").to_table().drop(["wall_time_s"]).to_pylist()
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def kill_group(process: subprocess.Popen) -> None:
    """Leave nothing of a test's bench run behind, whatever happened."""
    for pid in process_group(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.kill()
    process.communicate()


def test_a_killed_bench_run_leaves_no_process_and_a_rerun_completes_it_as_if_uninterrupted(tmp_path: Path):
    grid = [*GRID, "--env-steps", "12000", "--checkpoint-every", "2000"]
    out, straight = tmp_path / "killed", tmp_path / "straight"
    reference = start_bench(*grid, "--out", str(straight))  # uninterrupted, meanwhile
    try:
        killed_pid = _kill_once_running(grid, out)
        [row] = cell_rows(out)
        runner = Runner.from_json(row["runner"])
        assert row["status"] == "running" and runner is not None and runner.pid == killed_pid
        assert runner.host == socket.gethostname() and runner.alive() is False
        assert not (out / "episodes").exists()  # no learner outlived it to write its results

        result = bench(*grid, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert f"left running by PID {killed_pid} on host {socket.gethostname()}" in result.stdout
        assert "resuming from its checkpoint" in result.stdout
        [row] = cell_rows(out)
        assert row["status"] == "completed" and row["resumed_from_env_step"] > 0 and row["env_steps"] == 12000

        _, stderr = reference.communicate(timeout=60)
        assert reference.returncode == 0, stderr
    finally:
        kill_group(reference)
    assert episodes(out) == episodes(straight) and len(episodes(out)) > 10  # synchronous on CPU: exact


def _kill_once_running(grid: list[str], out: Path) -> int:
    """Start `bench run`, SIGKILL it once its cell's learners have checkpointed, and check that
    every process it started ends within 5 s; its PID."""
    process = start_bench(*grid, "--out", str(out))
    try:
        wait_for(lambda: list(out.glob("checkpoints/*/learner-1/step-*.json")), 60, "a first checkpoint")
        learners = {pid for pid, command in process_group(process.pid).items() if "forkserver" in command}
        assert len(learners) >= 3  # the forkserver and the cell's two learners
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
        killed = time.monotonic()
        wait_for(lambda: not process_group(process.pid), 5, "the killed run's processes to end")
        print(f"every process of the killed run ended {time.monotonic() - killed:.2f} s after it")  # noqa: T201
    finally:
        kill_group(process)
    return process.pid


@pytest.mark.parametrize("per_process", ["1", "2"], ids=["processes", "blocks"])
def test_sigterm_to_the_process_group_checkpoints_and_stops_the_run_as_ctrl_c_does(tmp_path: Path, per_process: str):
    """What `kill -TERM -PGID`, `docker stop` or a scheduler's time limit sends: every process of the
    run gets it, the learners and their forkserver included. The learners stop at one agreed step
    and checkpoint there, the cell is marked interrupted (exit 130), nothing is left running, and a
    re-run resumes from that step."""
    grid = [*GRID[:-2], "--learners-per-process", per_process, "--env-steps", "40000", "--checkpoint-every", "4000"]
    out = tmp_path / "run"
    process = start_bench(*grid, "--out", str(out))
    try:
        wait_for(lambda: list(out.glob("checkpoints/*/learner-1/step-*.json")), 60, "a first checkpoint")
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr[-2000:]
        assert "stopping" in stdout
        wait_for(lambda: not process_group(process.pid), 5, "the run's processes to end")
    finally:
        kill_group(process)
    [row] = cell_rows(out)
    assert row["status"] == "interrupted", row["error"]
    stopped = {max(folder.glob("step-*.json")).name for folder in out.glob("checkpoints/*/learner-*")}
    assert len(stopped) == 1  # both learners at one agreed step

    result = bench(*grid, "--out", str(out))
    assert result.returncode == 0, result.stderr
    [row] = cell_rows(out)
    assert row["status"] == "completed" and row["env_steps"] == 40000
    assert row["resumed_from_env_step"] == 2 * int(stopped.pop().removeprefix("step-").removesuffix(".json"))


def test_a_second_bench_run_on_a_folder_in_use_stops_and_names_the_holder(tmp_path: Path):
    out = tmp_path / "run"
    # A budget the first run never spends here: it holds the folder until the test stops it, so
    # the second run finds it there however long either takes to start.
    grid = [*GRID, "--env-steps", "2000000", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "benchbase", *grid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C as a terminal gives it
    )
    try:
        wait_for(lambda: f'"pid": {first.pid}' in _text(out / HOLDER_NAME), 60, "the first run to hold the folder")
        wait_for(lambda: _statuses(out) == ["running"], 60, "the first run's cell to start")
        second = bench(*grid)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=90)
    finally:
        kill_group(first)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0  # one line
    assert f"in use by bench run PID {first.pid} on host {socket.gethostname()}" in second.stderr
    assert first.returncode == 130, stderr  # the first run, stopped as Ctrl-C stops it, undisturbed
    assert [row["status"] for row in cell_rows(out)] == ["interrupted"]


def _statuses(out: Path) -> list[str]:
    """The cells' statuses, or none while the table is not there (or being replaced)."""
    try:
        return [row["status"] for row in cell_rows(out)]
    except Exception:  # noqa: BLE001 - not written yet
        return []


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_running_cell_is_resumed_when_its_process_is_gone_and_refused_while_it_lives(tmp_path: Path):
    out = tmp_path / "run"
    grid = [*GRID, "--env-steps", "2000", "--out", str(out)]
    assert bench(*grid, "--launcher", "torchrun").returncode == 0  # the folder prepared, nothing run
    folder = RunFolder(out)
    [row] = cell_rows(out)

    with subprocess.Popen(["sleep", "60"]) as alive:
        try:
            live = dataclasses.replace(Runner.this_process(), pid=alive.pid, pid_started=start_ticks(alive.pid))
            folder.write_cells([{**row, "status": "running", "runner": live.to_json()}])
            before = (out / "cells.parquet").read_bytes()
            result = bench(*grid)
            assert result.returncode == 2
            assert result.stderr.strip() == (
                f"error: cell {row['cell_id']} is running in {live.describe()}: wait for it to finish "
                "(or stop it) before running it again"
            )
            assert (out / "cells.parquet").read_bytes() == before  # refused before writing anything
        finally:
            alive.kill()
    # The same row, its process now killed: the re-run takes the cell as interrupted and runs it.
    result = bench(*grid)
    assert result.returncode == 0, result.stderr
    assert f"left running by {live.describe()}, which has ended" in result.stdout
    [row] = cell_rows(out)
    assert row["status"] == "completed" and Runner.from_json(row["runner"]).pid != alive.pid


def test_a_runner_is_alive_only_while_its_own_process_runs():
    me = Runner.this_process()
    assert me.alive() is True and Runner.from_json(me.to_json()) == me
    assert dataclasses.replace(me, pid_started=(me.pid_started or 0) + 1).alive() is False  # the PID was reused
    assert dataclasses.replace(me, boot_id="another boot").alive() is False
    assert dataclasses.replace(me, host=me.host + "-elsewhere").alive() is None  # not checkable here
    assert Runner.from_json("not json") is None and Runner.from_json(None) is None


def test_running_cells_of_dead_or_unknown_runners_are_run_again():
    me = Runner.this_process()
    rows = {
        "a": {"status": "running", "runner": dataclasses.replace(me, boot_id="before a restart").to_json()},
        "b": {"status": "running", "runner": None},  # an older benchbase's row
        "c": {"status": "running", "runner": dataclasses.replace(me, host="elsewhere").to_json()},
        "d": {"status": "completed", "runner": me.to_json()},
    }
    notes = check_running_cells(rows, ["a", "b", "c", "d"])
    assert [note.split()[0] for note in notes] == ["a", "b", "c"]
    assert "which has ended" in notes[0] and "cannot be checked from this host" in notes[2]
    with pytest.raises(UserError, match=f"cell d is running in PID {me.pid} on host {me.host}"):
        check_running_cells({"d": {"status": "running", "runner": me.to_json()}}, ["d"])
    assert check_running_cells({"d": {"status": "running", "runner": me.to_json()}}, ["a"]) == []


def test_the_folder_lock_is_exclusive_for_a_local_run_and_shared_between_torchrun_jobs(tmp_path: Path):
    out = tmp_path / "new" / "run"
    with FolderLock(out) as local:
        assert local.created and out.is_dir()
        with pytest.raises(UserError, match=f"in use by bench run PID {os.getpid()} on host"):
            FolderLock(out).acquire()
        with pytest.raises(UserError, match="in use by bench run"):
            FolderLock(out, shared=True).acquire()
    with FolderLock(out, shared=True), FolderLock(out, shared=True):  # two torchrun jobs side by side
        with pytest.raises(UserError, match=rf"in use by torchrun job\(s\) \(rank-0 worker PID {os.getpid()} on host"):
            FolderLock(out).acquire()
    with FolderLock(out) as again:  # released when its holder lets go (or dies)
        assert not again.created
        again.announce()
        assert Runner.from_json((out / HOLDER_NAME).read_text()).pid == os.getpid()
    assert list(out.iterdir()) == []  # the lock makes no file; the announcement goes with its holder
