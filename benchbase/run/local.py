"""Run one cell as N learner processes on this machine, rendezvousing on loopback; `LocalCells`
runs a grid's cells so, up to `--jobs` at once (the grid runner's executor).

The launcher hosts the rendezvous store itself on a port the OS picks (port 0), so no fixed port
is ever used and no other program can take the port between choosing and binding it. Learners
start from a forkserver that has already imported torch and the built-in plugins
(`benchbase.run.forkserver`), so a cell starts in well under a second after the first. A learner
that raises or dies fails the cell at once (the others are stopped, not left waiting on a
collective); Ctrl-C stops every learner; a launcher that is killed takes its learners with it
(`benchbase.run.lifeline`).
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from benchbase.comm.shm import segment_name, unlink_segment
from benchbase.grid.cell import Cell
from benchbase.learner.events import CellEvent, Done, Failed, LearnerEvent, Resumed, Started, Stopping, failure_text
from benchbase.learner.process import run_learner
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch
from benchbase.run import forkserver
from benchbase.run.blocks import learners_per_process
from benchbase.run.lifeline import die_with
from benchbase.run.outcome import CellOutcome
from benchbase.run.placement import Placement, device_for
from benchbase.run.schedule import Allocator, visible_gpus


def _pin_to_core(rank: int, world: int, allotted: tuple[int, ...] = ()) -> None:
    """Keep a cell's learners on the cores it was given (`--jobs`: cells side by side never share
    a core), and with more learners than cores pin learner r to core r mod cores: synchronous
    neighbours then hand the core over at their natural blocking points instead of migrating
    (measured on 2 cores, 4 learners: a ring's exchange-plus-compute round fell from 6.0 to 4.8 ms)."""
    cores = list(allotted) or sorted(os.sched_getaffinity(0))
    if world > len(cores) > 1 or len(cores) == 1:
        os.sched_setaffinity(0, {cores[rank % len(cores)]})
    elif allotted:
        os.sched_setaffinity(0, set(cores))


def _learner_process(launch: LearnerLaunch, events: Any, launcher_pid: int) -> None:
    die_with(launcher_pid)  # the forkserver is our parent: watch the launcher itself (benchbase.run.lifeline)
    # The launcher decides when learners stop: Ctrl-C and SIGTERM to the process group reach them as its SIGUSR1.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _pin_to_core(launch.rank, launch.world_size, launch.cores)
    cell_id = Cell.from_config(launch.cell_config).cell_id
    try:
        if launch.learners > 1:
            from benchbase.learner.block import run_block

            for rank, summary in run_block(launch, events.put).items():
                events.put(Done(cell_id, rank, summary))
        else:
            events.put(Done(cell_id, launch.rank, run_learner(launch, events.put)))
    except BaseException as error:
        at, first = time.time(), launch.rank * launch.learners  # a block's process hosts learners first … first + K − 1
        events.put(Failed(cell_id, first, traceback=failure_text(error), at=at))
        for rank in range(first + 1, first + launch.learners):
            events.put(Failed(cell_id, rank, traceback=f"learner {rank} shares learner {first}'s process", at=at))
        events.close()
        events.join_thread()
        sys.exit(1)


def run_cell(
    cell: Cell,
    out_dir: str,
    on_event: Callable[[CellEvent], None],
    settings: ExecutionSettings = ExecutionSettings(),
    placement: Placement = Placement(),
    stop: threading.Event | None = None,
    stop_now: threading.Event | None = None,
) -> CellOutcome:
    """Run every learner of `cell` and wait for them. `on_event(event)` sees progress, notes,
    resumptions and `Stopping`.

    Setting `stop` asks every learner to checkpoint and exit (the outcome is then
    `interrupted`); `stop_now` terminates them at once. Ctrl-C in the calling thread does the
    first, a second Ctrl-C the second.
    """
    context = forkserver.context()
    world = cell.learner_processes
    started_at = time.time()
    block = learners_per_process(cell, _registry(settings), settings)
    store = _start_store(world // block, settings)
    port = store.port if store is not None else 0
    events = context.Queue()
    shm_prefix = f"benchbase-{secrets.token_hex(4)}"  # every learner on this host: shared memory may be used
    processes = _spawn_learners(
        context, cell, out_dir, settings, placement, events, port, started_at, shm_prefix, block
    )
    heard = _Heard(world)
    error: str | None = None
    try:
        stop, stop_now = stop or threading.Event(), stop_now or threading.Event()
        _watch(cell, settings, processes, events, heard, on_event, stop, stop_now, block)
        if heard.errors:
            error = _root_cause(heard.errors, block)
    except KeyboardInterrupt:
        _stop(processes)
        raise
    finally:
        if error is not None:
            _stop(processes)
        for process in processes:
            process.join(timeout=10)
        _stop(processes)
        events.close()
        del store
        for rank in range(world):  # a learner that crashed could not remove its segment
            unlink_segment(segment_name(shm_prefix, rank))
    return heard.outcome(time.time() - started_at, started_at, error)


def _registry(settings: ExecutionSettings) -> Any:
    """The plugins as the learners load them (cached: the grid runner loaded them already)."""
    from benchbase.api.registry import load_registry

    key = (settings.plugins_only, settings.plugins_blocked, settings.plugins_extra)
    if key not in _registries:
        _registries[key] = load_registry(
            only=set(key[0]) if key[0] is not None else None, blocked=set(key[1]), extra=key[2]
        )
    return _registries[key]


_registries: dict[tuple, Any] = {}


def _start_store(world: int, settings: ExecutionSettings) -> Any:
    """The cell's rendezvous store, hosted here on a port the OS picks; None for one learner."""
    if world == 1:
        return None
    return dist.TCPStore(
        "127.0.0.1",
        0,
        world,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=settings.comm_timeout_s),
    )


def _spawn_learners(
    context: Any,
    cell: Cell,
    out_dir: str,
    settings: ExecutionSettings,
    placement: Placement,
    events: Any,
    port: int,
    started_at: float,
    shm_prefix: str,
    block: int = 1,
) -> list[Any]:
    """One process per learner of the cell, or one per block of `block` consecutive learners,
    started from the forkserver."""
    processes = []
    world = cell.learner_processes // block
    for rank in range(world):
        launch = LearnerLaunch(
            cell_config=cell.config(),
            out_dir=out_dir,
            rank=rank,
            world_size=world,
            store_host="127.0.0.1",
            store_port=port,
            device=device_for(rank, settings.device, placement.gpus),
            cell_started_at=started_at,
            settings=settings,
            shm_prefix=shm_prefix,
            cores=placement.cores,
            learners=block,
        )
        process = context.Process(target=_learner_process, args=(launch, events, os.getpid()), name=f"learner-{rank}")
        process.start()
        processes.append(process)
    return processes


@dataclass
class _Heard:
    """What the launcher has heard from a cell's learners so far."""

    world: int
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    first_steps: dict[int, float] = field(default_factory=dict)
    resumed: dict[int, int] = field(default_factory=dict)
    errors: list[tuple[float, int, str]] = field(default_factory=list)  # (when it was raised, rank, traceback)
    grace_until: float | None = None  # after a first error, collect the others briefly to find the root cause
    interrupted: bool = False

    def waiting(self) -> bool:
        return len(self.summaries) + len(self.errors) < self.world

    def failed(self, at: float, rank: int, text: str) -> None:
        self.errors.append((at, rank, text))
        self.grace_until = self.grace_until or time.time() + _ERROR_GRACE_S

    def event(self, event: LearnerEvent, on_event: Callable[[CellEvent], None]) -> None:
        """Keep what the outcome needs; pass the rest on."""
        match event:
            case Started():
                self.first_steps[event.learner] = event.at
            case Done():
                self.summaries[event.learner] = event.summary
            case Failed():
                self.failed(event.at, event.learner, event.traceback)
            case Resumed():
                self.resumed[event.learner] = event.env_steps
                on_event(event)
            case _:
                on_event(event)

    def outcome(self, wall: float, started_at: float, error: str | None) -> CellOutcome:
        startup = max(self.first_steps.values()) - started_at if self.first_steps else float("nan")
        resumed_from = sum(self.resumed.values()) if self.resumed else None  # each learner's steps done, summed
        if self.interrupted or any(summary.get("stopped") for summary in self.summaries.values()):
            # The learners have checkpointed (or were stopped, if they could not).
            return CellOutcome("interrupted", None, wall, startup, resumed_from_env_step=resumed_from)
        if error is not None:
            return CellOutcome("failed", error, wall, startup, resumed_from_env_step=resumed_from)
        summaries = [self.summaries[rank] for rank in range(self.world)]
        return CellOutcome("completed", None, wall, startup, summaries, resumed_from)


def _watch(
    cell: Cell,
    settings: ExecutionSettings,
    processes: list[Any],
    events: Any,
    heard: _Heard,
    on_event: Callable[[CellEvent], None],
    stop: threading.Event,
    stop_now: threading.Event,
    block: int = 1,
) -> None:
    """Take the learners' events until each has finished or failed (or the grace after a first
    failure or a stop request ends); notice learners that die without a word (`block`: the
    learners each process hosts)."""
    while heard.waiting():
        if heard.grace_until is not None and time.time() > heard.grace_until:
            break
        if stop_now.is_set():
            raise KeyboardInterrupt
        if stop.is_set() and not heard.interrupted:
            heard.interrupted = True
            on_event(Stopping(cell.cell_id))
            _request_checkpoint_and_stop(processes, heard.summaries, block)
            heard.grace_until = time.time() + settings.comm_timeout_s
        try:
            event = events.get(timeout=0.1)
        except queue.Empty:
            for rank, text in _dead_learners(processes, heard.summaries, {rank for _, rank, _ in heard.errors}, block):
                heard.failed(time.time(), rank, text)
            continue
        except KeyboardInterrupt:
            if heard.interrupted:  # a second Ctrl-C: stop now, without waiting for checkpoints
                raise
            stop.set()
            continue
        heard.event(event, on_event)


_ERROR_GRACE_S = 1.0


def _root_cause(errors: list[tuple[float, int, str]], block: int = 1) -> str:
    """The error raised first is the cause; the others (a neighbour's broken connection…) follow,
    one line per process. A process of `block` learners is named by all of them (it reports its
    error as its first learner's, and that its other learners share its process)."""

    def who(rank: int) -> str:
        first = rank - rank % block
        return f"learner {rank}" if block == 1 else f"learners {first}-{first + block - 1} (one process)"

    errors.sort()
    _, rank, text = errors[0]
    lines = text.strip().splitlines()
    message = f"{who(rank)}: {lines[0]}" if len(lines) == 1 else f"{who(rank)} failed:\n{text}"
    named = {rank // block}
    for _, other, other_text in errors[1:]:
        if other // block not in named:
            named.add(other // block)
            message += f"\n(then {who(other)}: {other_text.strip().splitlines()[-1]})"
    return message


def _dead_learners(
    processes: list[Any], summaries: dict[int, Any], reported: set[int], block: int = 1
) -> list[tuple[int, str]]:
    """The learners of the first process that died without reporting (killed, out of memory):
    (rank, description) for each of its learners not heard from (a block's process hosts several)."""
    for index, process in enumerate(processes):
        code = process.exitcode
        ranks = [rank for rank in range(index * block, (index + 1) * block) if rank not in summaries]
        silent = [rank for rank in ranks if rank not in reported]
        if code is not None and code != 0 and silent:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            first = ranks[0]
            what = (
                f"learner {first} {how} without reporting an error"
                if block == 1
                else f"their process {how} without reporting an error"
            )
            return [
                (rank, what if rank == first else f"learner {rank} shares learner {first}'s process") for rank in silent
            ]
    return []


def _request_checkpoint_and_stop(processes: list[Any], finished: dict[int, Any], block: int = 1) -> None:
    """Ask every running learner to checkpoint and stop (benchbase.checkpoints.resume.StopSignal);
    process i hosts learners i·block … i·block + block − 1."""
    for index, process in enumerate(processes):
        ranks = range(index * block, (index + 1) * block)
        if any(rank not in finished for rank in ranks) and process.is_alive():
            try:
                os.kill(process.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass


def _stop(processes: list[Any]) -> None:
    """Kill learners still running (they ignore SIGTERM: `_learner_process`)."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=3)


class LocalCells:
    """Cells as learner processes on this machine, up to `jobs` at once on cores (and GPUs) of
    their own (`benchbase.run.schedule`), each in a thread that waits on its learners. A context
    manager: leaving it waits for the cells still running."""

    def __init__(
        self, out_dir: str, settings: ExecutionSettings, on_event: Callable[[CellEvent], None], jobs: int = 1
    ) -> None:
        self.out_dir, self.settings, self.on_event, self.jobs = out_dir, settings, on_event, jobs
        self.allocator = Allocator(gpus=visible_gpus(settings.device))
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")

    def __enter__(self) -> LocalCells:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)

    def place(self, cell: Cell, running: int) -> Placement | None:
        if running >= self.jobs:
            return None
        # One cell at a time keeps the machine to itself, as before `--jobs` existed.
        # A block of learners is one process: it takes one core.
        processes = cell.learner_processes // learners_per_process(cell, _registry(self.settings), self.settings)
        return self.allocator.take(processes) if self.jobs > 1 else Placement()

    def submit(
        self, cell: Cell, placement: Placement, stop: threading.Event, stop_now: threading.Event
    ) -> Future[CellOutcome]:
        return self.pool.submit(run_cell, cell, self.out_dir, self.on_event, self.settings, placement, stop, stop_now)

    def release(self, placement: Placement) -> None:
        self.allocator.release(placement)
