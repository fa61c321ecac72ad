"""Scaling out on one machine, with real processes: concurrent cells (`--jobs`), many learners in
one cell, and cells run by torchrun (two "nodes" on loopback) giving the local results."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchbase.run.schedule import Allocator


def bench(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def episode_rows(out: Path) -> list[tuple]:
    table = ds.dataset(out / "episodes").to_table().drop(["wall_time_s"]).to_pylist()
    return sorted((r["cell_id"], r["learner"], r["simulator"], r["env_step"], r["episode_return"]) for r in table)


def test_cells_get_disjoint_cores_and_wait_for_free_ones():
    allocator = Allocator(cores=[0, 1, 2, 3])
    first, second = allocator.take(2), allocator.take(2)
    assert first.cores == (0, 1) and second.cores == (2, 3)
    assert allocator.take(1) is None  # nothing is free: the next cell waits
    allocator.release(first)
    assert allocator.take(1).cores == (0,)
    big = Allocator(cores=[0, 1])
    assert big.take(16).cores == (0, 1)  # a cell larger than the machine takes every core, alone
    assert big.take(1) is None
    gpus = Allocator(cores=[0, 1, 2, 3], gpus=[0, 1])
    assert gpus.take(2).gpus == (0, 1) and gpus.take(1) is None  # no GPU left


def test_unset_jobs_is_one_cell_per_core_at_most_the_grids_cells_and_what_fits_in_memory(monkeypatch):
    from benchbase.grid import expand
    from benchbase.run import schedule

    gib = 2**30
    monkeypatch.setattr(
        expand, "memory_needs", lambda cells, registry, in_blocks=None: [(3 * gib, cell, 0, 0) for cell in cells]
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(expand, "machine_memory", lambda: 100 * gib)
    assert schedule.cells_at_once(["cell"] * 12, None) == 4  # the cores
    assert schedule.cells_at_once(["cell"] * 3, None) == 3  # the grid's cells
    assert schedule.cells_at_once(["cell"], None) == 1  # one cell keeps every core
    monkeypatch.setattr(expand, "machine_memory", lambda: 7 * gib)
    assert schedule.cells_at_once(["cell"] * 12, None) == 2  # two of 3 GiB fit in 7 GiB, three do not
    monkeypatch.setattr(expand, "machine_memory", lambda: 2 * gib)
    assert schedule.cells_at_once(["cell"] * 12, None) == 1  # check_memory then refuses the grid itself


def test_jobs_2_runs_cells_side_by_side_with_the_results_of_jobs_1(tmp_path: Path):
    grid = [
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "isolated",
        "-e",
        "random-cartpole",
        "--learners",
        "1",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "6000",
        "--seeds",
        "4",
        "--evaluations",
        "1",
        "--eval-episodes",
        "2",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert bench(*grid, "--out", str(one)).returncode == 0
    result = bench(*grid, "--out", str(two), "--jobs", "2")
    assert result.returncode == 0, result.stderr
    cells = pq.read_table(two / "cells.parquet").to_pylist()
    assert [c["status"] for c in cells] == ["completed"] * 4
    assert episode_rows(one) == episode_rows(two)
    # On 2 cores two one-learner cells ran at once: a cell started before the previous one finished.
    lines = [line for line in result.stdout.splitlines() if line.startswith(("▶", "["))]
    assert lines[0].startswith("▶") and lines[1].startswith("▶"), lines


def test_sixteen_learners_start_mix_and_finish_on_two_cores(tmp_path: Path):
    out = tmp_path / "run"
    result = bench(
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "ring",
        "-e",
        "random-cartpole",
        "--learners",
        "16",
        "--envs-per-learner",
        "1",
        "--env-steps",
        "3200",
        "--seeds",
        "1",
        "--evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--out",
        str(out),
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    cell = pq.read_table(out / "cells.parquet").to_pylist()[0]
    assert cell["status"] == "completed" and cell["env_steps"] == 3200 and cell["learners"] == 16
    metrics = ds.dataset(out / "metrics").to_table().to_pylist()
    assert {row["learner"] for row in metrics} == set(range(16))
    # They mixed: every learner sent its parameters to its two ring neighbours every iteration.
    sent = [row["value"] for row in metrics if row["metric"] == "messages_sent"]
    assert min(sent) > 0


def free_port() -> int:
    with socket.socket() as probe:  # the OS picks a free port; torchrun binds it just after
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(command: str) -> list[str]:
    """A printed torchrun command, run with this interpreter's torch.distributed.run."""
    parts = command.split()
    assert parts[0] == "torchrun"
    return [sys.executable, "-m", "torch.distributed.run", *parts[1:]]


SYNC_CELL = [
    "-a",
    "diff-a2c",
    "-t",
    "ring",
    "-e",
    "random-cartpole",
    "--learners",
    "4",
    "--envs-per-learner",
    "2",
    "--env-steps",
    "8000",
    "--seeds",
    "1",
    "--evaluations",
    "1",
    "--eval-episodes",
    "1",
]


EXIT_THREADS = """
import atexit, os, sys


def _record_threads():
    # A torchrun worker of the test, as it exits: the threads it has left (Linux names them).
    if "benchbase.run.torchrun" not in sys.modules or "RANK" not in os.environ:
        return
    tasks = f"/proc/{os.getpid()}/task"
    names = [open(f"{tasks}/{task}/comm").read().strip() for task in os.listdir(tasks)]
    with open(os.path.join(os.environ["BENCHBASE_TEST_EXITS"], os.environ["RANK"]), "w") as record:
        record.write("\\n".join(names))


atexit.register(_record_threads)
"""


def test_a_cell_on_two_torchrun_nodes_gives_the_local_results(tmp_path: Path):
    local, spread = tmp_path / "local", tmp_path / "spread"
    # One process per learner here too: torchrun's row-for-row equal (a block samples in another order).
    assert bench("run", *SYNC_CELL, "--learners-per-process", "1", "--out", str(local)).returncode == 0
    printed = bench(
        "run",
        *SYNC_CELL,
        "--out",
        str(spread),
        "--launcher",
        "torchrun",
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
    )
    assert printed.returncode == 0, printed.stderr
    command = torchrun(printed.stdout.strip().splitlines()[-1])
    assert "--nproc-per-node 2" in " ".join(command) and "--nnodes 2" in " ".join(command)
    # Two torchrun agents on loopback, two learners each: one c10d rendezvous forms the cell. On one
    # machine both would take themselves for the rendezvous host: say which one is.
    conf = command.index("--rdzv-conf") + 1
    # Each worker records, as it exits, the threads it still has (see EXIT_THREADS).
    hooks, exits = tmp_path / "hooks", tmp_path / "exits"
    hooks.mkdir()
    exits.mkdir()
    (hooks / "sitecustomize.py").write_text(EXIT_THREADS)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "BENCHBASE_TEST_EXITS": str(exits)}
    nodes = []
    for is_host in ("true", "false"):
        node_command = list(command)
        node_command[conf] += f",is_host={is_host}"
        nodes.append(
            subprocess.Popen(node_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        )
    try:
        outputs = [node.communicate(timeout=240)[0] for node in nodes]
    except subprocess.TimeoutExpired as timeout:
        for node in nodes:
            node.kill()
        outputs = [node.communicate()[0] for node in nodes]
        raise AssertionError(
            f"a torchrun agent did not exit:\n{outputs[0][-3000:]}\n---\n{outputs[1][-3000:]}"
        ) from timeout
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # torch._dynamo imported after init_process_group kept the gloo group (and its threads) past
    # destroy_process_group; freeing a collective during interpreter shutdown then aborted a worker.
    left = {record.name: record.read_text().split() for record in exits.iterdir()}
    assert len(left) == 4 and not [name for names in left.values() for name in names if "gloo" in name], left
    assert any("completed" in output for output in outputs), outputs[0][-2000:] + outputs[1][-2000:]
    cell = pq.read_table(spread / "cells.parquet").to_pylist()[0]
    assert cell["status"] == "completed" and cell["env_steps"] == 8000
    assert {p.name for p in (spread / "episodes" / cell["cell_id"]).iterdir()} == {
        f"learner-{r}.parquet" for r in range(4)
    }
    assert episode_rows(spread) == episode_rows(local)  # a synchronous cell: identical, row for row


def test_torchrun_with_the_wrong_number_of_processes_is_one_line_in_each_process_that_reports(tmp_path: Path):
    out = tmp_path / "run"
    printed = bench("run", *SYNC_CELL, "--out", str(out), "--launcher", "torchrun")
    command = torchrun(printed.stdout.strip().splitlines()[-1])
    command[command.index("--nproc-per-node") + 1] = "3"
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if line.startswith("error:")]
    # torchrun stops the other workers once one exits, so one to three of them get to say it.
    assert 1 <= len(errors) <= 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert all("has 4 learner processes but torchrun started 3" in error for error in errors), errors


def test_an_unreachable_rendezvous_endpoint_is_one_line_and_exit_2(tmp_path: Path):
    result = bench(
        "run",
        *SYNC_CELL,
        "--out",
        str(tmp_path / "run"),
        "--launcher",
        "torchrun",
        "--execute",
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        "10.255.255.1:29400",
        "--rdzv-timeout",
        "3",
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "rendezvous endpoint 10.255.255.1:29400 is unreachable" in result.stderr
    odd = bench(
        "run",
        *SYNC_CELL,
        "--out",
        str(tmp_path / "odd"),
        "--launcher",
        "torchrun",
        "--nnodes",
        "3",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
    )
    assert odd.returncode == 2 and "3 nodes cannot share equally" in odd.stderr


def test_a_cell_of_a_run_folder_runs_alone_by_id(tmp_path: Path):
    out = tmp_path / "run"
    grid = [
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "isolated",
        "-e",
        "random-cartpole",
        "--learners",
        "1",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "2000",
        "--seeds",
        "2",
        "--evaluations",
        "0",
        "--out",
        str(out),
    ]
    printed = bench(*grid, "--launcher", "torchrun")
    ids = [line.split("--cell ")[1].split()[0] for line in printed.stdout.splitlines() if "--cell " in line]
    assert len(ids) == 2
    result = bench("run", "--out", str(out), "--cell", ids[1])
    assert result.returncode == 0, result.stderr
    statuses = {row["cell_id"]: row["status"] for row in pq.read_table(out / "cells.parquet").to_pylist()}
    assert statuses == {ids[0]: "pending", ids[1]: "completed"}
    wrong = bench("run", "--out", str(out), "--cell", ids[1][:-1] + "x")
    assert wrong.returncode == 2 and "did you mean" in wrong.stderr.lower()
