"""Cells as torchrun jobs: every process torchrun starts is one learner of the cell.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
             -m benchbase run --out results/x --cell 1a2b3c4d5e6f     # one cell of a prepared run
    torchrun --standalone --nproc-per-node 4 -m benchbase run -a diff-a2c -t ring …   # a whole grid

torchrun's own rendezvous (c10d) forms the process group; `bench run` notices it is a torchrun
worker from the environment torchrun sets, runs learner RANK of each cell in turn on the one
process group (the grid runner's loop, `run_cells`, with `WorkerCells` as its executor), and
every learner writes its own Parquet files into the results folder (shared by the nodes). Rank 0
keeps cells.parquet, under a file lock, since several jobs may fill one folder.

`bench run --launcher torchrun` prepares a run folder and prints one such command per cell (or,
with `--execute`, runs them here one after another).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from benchbase.errors import UserError
from benchbase.grid.cell import Cell
from benchbase.learner.events import LearnerEvent, Note, Progress, Report, Resumed
from benchbase.learner.process import run_learner
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch
from benchbase.run.lifeline import die_with, parent_death_signal
from benchbase.run.outcome import CellOutcome
from benchbase.run.ownership import FolderLock, Runner, check_running_cells
from benchbase.run.placement import Placement, device_for
from benchbase.run.records import EXIT_INTERRUPTED, EXIT_OK, cell_row, prepare_run
from benchbase.run.runner import run_cells


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    local_rank: int
    run_id: str

    @classmethod
    def from_environment(cls) -> Worker:
        return cls(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ["LOCAL_RANK"]),
            os.environ.get("TORCHELASTIC_RUN_ID", "none"),
        )


def check_sizes(cells: list[Cell], world: int) -> None:
    """Every cell must have exactly as many learner processes as torchrun started."""
    for cell in cells:
        if cell.learner_processes != world:
            raise UserError(
                f"cell {cell.cell_id} has {cell.learner_processes} learner processes but torchrun started {world} "
                f"(--nnodes × --nproc-per-node must equal the cell's learners)"
            )


def run_as_worker(
    spec: Any, cells: list[Cell], out: Path, registry: Any, console: Any, settings: ExecutionSettings
) -> int:
    """Run `cells` one after another as learner RANK (the grid runner's loop, `run_cells`); rank 0
    records each cell's row."""
    worker = Worker.from_environment()
    die_with(os.getppid())  # torchrun's agent: a worker never outlives it
    check_sizes(cells, worker.world)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available on this node (use cpu or auto)")
    # Before the group exists: torch.optim imports torch._dynamo on first use, and imported after
    # init_process_group it keeps the gloo group alive past destroy_process_group; the group's
    # threads then free a finished collective during interpreter shutdown and abort the worker
    # (SIGABRT, "terminate called without an active exception") now and then,
    # which failed the job and left the other node's agent waiting in torchrun's exit barrier.
    import torch._dynamo  # noqa: F401

    dist.init_process_group("gloo", timeout=timedelta(seconds=settings.comm_timeout_s))
    book = None
    try:
        if worker.rank == 0:
            book = _LeaderBook(spec, cells, out, registry, console, worker.world)
            to_run, start, finish = book.to_run, book.start, book.finish
        else:
            to_run, start, finish = [], (lambda cell: None), (lambda cell, outcome: None)
        chosen = [to_run]
        dist.broadcast_object_list(chosen, src=0)  # every worker runs the cells rank 0 found to do
        pending = [cell for cell in cells if cell.cell_id in set(chosen[0])]
        interrupted = run_cells(pending, WorkerCells(worker, str(out), settings, console), start, finish)
        return EXIT_INTERRUPTED if interrupted else EXIT_OK
    finally:
        if book is not None:
            book.lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


class _LeaderBook:
    """Rank 0's bookkeeping of a torchrun grid: the cells left to run and their rows in cells.parquet
    (updated under a file lock: several jobs may fill one folder). It holds the folder shared
    (`FolderLock`): beside other torchrun jobs, never beside a local run."""

    def __init__(self, spec: Any, cells: list[Cell], out: Path, registry: Any, console: Any, world: int) -> None:
        self.lock = FolderLock(out, shared=True).acquire()
        ids = [cell.cell_id for cell in cells]
        notes = [self.lock.warning] if self.lock.warning else []
        try:
            self.folder, rows, self.variants = prepare_run(
                spec, cells, out, registry, lambda previous: notes.extend(check_running_cells(previous, ids))
            )
        except BaseException:
            self.lock.release()
            raise
        for note in notes:
            console.print(note)
        self.to_run = [cell.cell_id for cell in cells if rows[cell.cell_id]["status"] != "completed"]
        self.console, self.world = console, world
        self.runners: dict[str, str] = {}

    def start(self, cell: Cell) -> None:
        self.folder.clear_cell(cell.cell_id)
        runner = self.runners[cell.cell_id] = Runner.this_process().to_json()
        self.folder.update_cells({cell.cell_id: cell_row(cell, self.variants[cell.cell_id], "running", runner=runner)})
        self.console.print(f"▶ {cell.label} (learner 0 of {self.world}, torchrun)")

    def finish(self, cell: Cell, outcome: CellOutcome) -> None:
        stopped = outcome.status == "interrupted"
        row = cell_row(cell, self.variants[cell.cell_id], outcome.status, outcome, self.runners.get(cell.cell_id))
        if stopped:
            self.folder.clear_cell(cell.cell_id)
        self.folder.update_cells({cell.cell_id: row})
        self.console.print(f"{'✓' if not stopped else '✗'} {cell.label} {outcome.status} in {outcome.wall_time_s:.1f}s")


class WorkerCells:
    """The grid runner's executor under torchrun: this worker runs its learner of each cell, in
    this thread (one cell at a time), and the workers gather their summaries into the outcome."""

    def __init__(self, worker: Worker, out_dir: str, settings: ExecutionSettings, console: Any) -> None:
        self.worker, self.out_dir, self.settings, self.console = worker, out_dir, settings, console

    def place(self, cell: Cell, running: int) -> Placement | None:
        return Placement() if running == 0 else None

    def submit(
        self, cell: Cell, placement: Placement, stop: threading.Event, stop_now: threading.Event
    ) -> Future[CellOutcome]:
        worker = self.worker
        launch = LearnerLaunch(
            cell_config=cell.config(),
            out_dir=self.out_dir,
            rank=worker.rank,
            world_size=worker.world,
            store_host="",
            store_port=0,
            device=device_for(worker.local_rank, self.settings.device),
            cell_started_at=time.time(),
            settings=self.settings,
            shm_prefix=f"benchbase-{worker.run_id[:16]}-{cell.cell_id}",
        )
        started = time.time()
        summary = run_learner(launch, _progress_printer(self.console) if worker.rank == 0 else (lambda event: None))
        everyone: list[Any] = [None] * worker.world
        dist.all_gather_object(everyone, summary)
        stopped = any(s.get("stopped") for s in everyone)
        if stopped:  # torchrun stopped every worker (SIGTERM): no more cells in this job
            stop.set()
        outcome = CellOutcome(
            "interrupted" if stopped else "completed",
            None,
            time.time() - started,
            float("nan"),
            [] if stopped else everyone,
        )
        done: Future[CellOutcome] = Future()
        done.set_result(outcome)
        return done

    def release(self, placement: Placement) -> None:
        pass


def _progress_printer(console: Any, every_s: float = 10.0) -> Report:
    last = [0.0]

    def report(event: LearnerEvent) -> None:
        match event:
            case Progress() if time.monotonic() - last[0] >= every_s:
                last[0] = time.monotonic()
                console.print(
                    f"  {event.cell_id}: learner 0 at {event.env_steps:,} env steps, "
                    f"{event.steps_per_second:,.0f} steps/s"
                )
            case Note():
                console.print(f"  {event.cell_id}: {event.text}")
            case Resumed():
                console.print(f"  {event.cell_id}: resuming at learner step {event.env_steps:,}")

    return report


# -- bench run --launcher torchrun ----------------------------------------------------------------


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int = 1
    endpoint: str | None = None  # HOST:PORT of the c10d store; None with one node (--standalone)
    join_timeout_s: int = 120


def commands(cells: list[Cell], out: Path, rendezvous: Rendezvous, global_options: list[str]) -> list[list[str]]:
    """One torchrun command per cell (run on every node when there are several);
    `global_options` go before `run` (e.g. --plugins)."""
    found = []
    for cell in cells:
        if cell.learner_processes % rendezvous.nnodes:
            raise UserError(
                f"cell {cell.cell_id} has {cell.learner_processes} learners, which {rendezvous.nnodes} "
                "nodes cannot share equally: choose --nnodes dividing --learners"
            )
        per_node = cell.learner_processes // rendezvous.nnodes
        if rendezvous.nnodes == 1:
            launcher = ["torchrun", "--standalone", "--nproc-per-node", str(per_node)]
        else:
            launcher = [
                "torchrun",
                "--nnodes",
                str(rendezvous.nnodes),
                "--nproc-per-node",
                str(per_node),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                rendezvous.endpoint or "",
                "--rdzv-id",
                cell.cell_id,
                "--rdzv-conf",
                f"join_timeout={rendezvous.join_timeout_s}",
            ]
        found.append(
            [
                *launcher,
                "--max-restarts",
                "0",
                "-m",
                "benchbase",
                *global_options,
                "run",
                "--out",
                str(out),
                "--cell",
                cell.cell_id,
            ]
        )
    return found


def check_endpoint(rendezvous: Rendezvous) -> None:
    """On a node that does not host the rendezvous, wait up to the join timeout for its store to
    answer, then fail with one line instead of leaving torchrun to hang. The node whose address
    the endpoint names hosts it (its torchrun starts the store), so it has nothing to wait for."""
    if rendezvous.nnodes == 1:
        return
    if not rendezvous.endpoint or ":" not in rendezvous.endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the node that hosts the rendezvous)")
    host, _, port = rendezvous.endpoint.rpartition(":")
    try:
        address = socket.gethostbyname(host)
        number = int(port)
    except (socket.gaierror, ValueError) as error:
        raise UserError(f"--rdzv-endpoint {rendezvous.endpoint}: {error}") from None
    if _is_local(address):
        return
    deadline = time.monotonic() + rendezvous.join_timeout_s
    while True:
        try:  # the c10d rendezvous is a TCPStore: a client's handshake proves it is one, not just an open port
            with _quiet_stderr():  # c10d logs every failed attempt from C++
                timeout = timedelta(seconds=min(5.0, rendezvous.join_timeout_s))
                dist.TCPStore(address, number, is_master=False, timeout=timeout)
            return
        except Exception as error:  # noqa: BLE001 - refused, timed out, or not a store
            if time.monotonic() >= deadline:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserError(
                    f"rendezvous endpoint {rendezvous.endpoint} is unreachable within "
                    f"{rendezvous.join_timeout_s} s ({reason}); start the node that hosts it first, "
                    "or check the address"
                ) from None
            time.sleep(1.0)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ code writes there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _is_local(address: str) -> bool:
    """Whether `address` belongs to this machine (it can be bound)."""
    if address.startswith("127."):
        return True
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
            return True
        except OSError:
            return False


def execute(found: list[list[str]], console: Any) -> int:
    """Run the commands here, one after another (with several nodes, every node runs the same
    list); the first failure stops the grid."""
    for command in found:
        console.print("$ " + shlex.join(command), highlight=False)
        # torchrun stops its workers when it gets SIGTERM, sent to it if this process is killed.
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", *command[1:]],
            preexec_fn=parent_death_signal(signal.SIGTERM),
        )
        if result.returncode != 0:
            code = 130 if result.returncode in (130, -2) else 1
            console.print(f"torchrun exited with {result.returncode}: stopping here (re-run to continue)")
            return code
    return 0


def plugin_options(settings: ExecutionSettings) -> list[str]:
    """The global options (before `run`) that choose the run's plugins."""
    options = []
    if settings.plugins_only is not None:
        options.append(f"--plugins={','.join(settings.plugins_only)}")
    if settings.plugins_blocked:
        options.append(f"--block-plugins={','.join(settings.plugins_blocked)}")
    return options


def settings_options(settings: ExecutionSettings) -> list[str]:
    """`bench run` options that give a `--cell` run the same execution settings."""
    from benchbase.grid.spec import AxisEntry

    options = ["--device", settings.device, "--comm-timeout", repr(settings.comm_timeout_s)]
    options += ["--transport", settings.transport]
    if settings.checkpoint_every is not None:
        options += ["--checkpoint-every", str(settings.checkpoint_every)]
    if settings.checkpoint_replay:
        options.append("--checkpoint-replay")
    for name, values in settings.loggers:
        options += ["--logger", str(AxisEntry(name, values))]
    return options
