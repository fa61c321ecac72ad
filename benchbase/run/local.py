"""Run one cell as N learner processes on this machine, rendezvousing on loopback.

The launcher hosts the rendezvous store itself on a port the OS picks (port 0), so no fixed port
is ever used and no other program can take the port between choosing and binding it. Learners
start from a forkserver that has already imported torch and the built-in plugins, so a cell
starts in well under a second after the first. A learner that raises or dies fails the cell at
once (the others are stopped, not left waiting on a collective); Ctrl-C stops every learner.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from benchbase.api.registry import BUILTIN_PLUGINS
from benchbase.comm.shm import segment_name, unlink_segment
from benchbase.grid.cell import Cell
from benchbase.learner.process import run_learner
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch
from benchbase.run.outcome import CellOutcome
from benchbase.run.placement import Placement, device_for

_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # torch._dynamo: torch.optim imports it lazily on first use, ~1 s per learner otherwise.
        _context.set_forkserver_preload(["torch._dynamo", "benchbase.learner.process", *BUILTIN_PLUGINS])
    return _context


def warm_up() -> None:
    """Start the forkserver (it imports torch) while the caller does other work."""
    from multiprocessing import forkserver

    _forkserver()
    forkserver.ensure_running()


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


def _learner_process(launch: LearnerLaunch, events: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when learners stop
    _pin_to_core(launch.rank, launch.world_size, launch.cores)
    cell_id = Cell.from_config(launch.cell_config).cell_id
    try:
        summary = run_learner(launch, events.put)
        events.put(("done", cell_id, launch.rank, summary))
    except BaseException:
        events.put(("error", cell_id, launch.rank, traceback.format_exc(), time.time()))
        events.close()
        events.join_thread()
        sys.exit(1)


def run_cell(
    cell: Cell,
    out_dir: str,
    on_event: Any,
    settings: ExecutionSettings = ExecutionSettings(),
    placement: Placement = Placement(),
    stop: threading.Event | None = None,
    stop_now: threading.Event | None = None,
) -> CellOutcome:
    """Run every learner of `cell` and wait for them. `on_event(event)` sees progress events.

    Setting `stop` asks every learner to checkpoint and exit (the outcome is then
    `interrupted`); `stop_now` terminates them at once. Ctrl-C in the calling thread does the
    first, a second Ctrl-C the second.
    """
    context = _forkserver()
    world = cell.learner_processes
    started_at = time.time()
    store = None
    port = 0
    if world > 1:
        store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=settings.comm_timeout_s))
        port = store.port
    events = context.Queue()
    shm_prefix = f"benchbase-{secrets.token_hex(4)}"  # every learner on this host: shared memory may be used
    processes = []
    for rank in range(world):
        launch = LearnerLaunch(
            cell_config=cell.config(), out_dir=out_dir, rank=rank, world_size=world, store_host="127.0.0.1",
            store_port=port, device=device_for(rank, settings.device, placement.gpus), cell_started_at=started_at,
            settings=settings, shm_prefix=shm_prefix, cores=placement.cores,
        )
        process = context.Process(target=_learner_process, args=(launch, events), name=f"learner-{rank}")
        process.start()
        processes.append(process)

    summaries: dict[int, dict[str, Any]] = {}
    first_steps: dict[int, float] = {}
    resumed: dict[int, int] = {}
    errors: list[tuple[float, int, str]] = []  # (when it was raised, rank, traceback)
    grace_until = None  # after a first error, collect the others briefly to find the root cause
    error: str | None = None
    interrupted = False
    stop = stop or threading.Event()
    stop_now = stop_now or threading.Event()
    try:
        while len(summaries) + len(errors) < world:
            if grace_until is not None and time.time() > grace_until:
                break
            if stop_now.is_set():
                raise KeyboardInterrupt
            if stop.is_set() and not interrupted:
                interrupted = True
                on_event(("stopping", cell.cell_id, -1))
                _request_checkpoint_and_stop(processes, summaries)
                grace_until = time.time() + settings.comm_timeout_s
            try:
                event = events.get(timeout=0.1)
            except queue.Empty:
                dead = _dead_learner(processes, summaries, {rank for _, rank, _ in errors})
                if dead is not None:
                    errors.append((time.time(), dead[0], dead[1]))
                    grace_until = grace_until or time.time() + _ERROR_GRACE_S
                continue
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop now, without waiting for checkpoints
                    raise
                stop.set()
                continue
            kind, rank = event[0], event[2]
            if kind == "started":
                first_steps[rank] = event[3]
            elif kind == "done":
                summaries[rank] = event[3]
            elif kind == "error":
                errors.append((event[4], rank, event[3]))
                grace_until = grace_until or time.time() + _ERROR_GRACE_S
            else:
                if kind == "resumed":
                    resumed[rank] = event[3]
                on_event(event)
        if errors:
            error = _root_cause(errors)
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
    wall = time.time() - started_at
    startup = max(first_steps.values()) - started_at if first_steps else float("nan")
    resumed_from = sum(resumed.values()) if resumed else None  # each learner's steps done, summed
    if interrupted or any(summary.get("stopped") for summary in summaries.values()):
        # The learners have checkpointed (or were stopped, if they could not).
        return CellOutcome("interrupted", None, wall, startup, resumed_from_env_step=resumed_from)
    if error is not None:
        return CellOutcome("failed", error, wall, startup, resumed_from_env_step=resumed_from)
    return CellOutcome("completed", None, wall, startup, [summaries[r] for r in range(world)], resumed_from)


_ERROR_GRACE_S = 1.0


def _root_cause(errors: list[tuple[float, int, str]]) -> str:
    """The error raised first is the cause; the others (a neighbour's broken connection…) follow."""
    errors.sort()
    _, rank, text = errors[0]
    message = f"learner {rank} failed:\n{text}"
    for _, other, other_text in errors[1:]:
        message += f"\n(then learner {other}: {other_text.strip().splitlines()[-1]})"
    return message


def _dead_learner(processes: list[Any], summaries: dict[int, Any], reported: set[int]) -> tuple[int, str] | None:
    """A learner that died without reporting (killed, out of memory): (rank, description)."""
    for rank, process in enumerate(processes):
        if process.exitcode is not None and process.exitcode != 0 and rank not in summaries and rank not in reported:
            code = process.exitcode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return rank, f"learner {rank} {how} without reporting an error"
    return None


def _request_checkpoint_and_stop(processes: list[Any], finished: dict[int, Any]) -> None:
    """Ask every running learner to checkpoint and stop (benchbase.resume.StopSignal)."""
    for rank, process in enumerate(processes):
        if rank not in finished and process.is_alive():
            try:
                os.kill(process.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass


def _stop(processes: list[Any]) -> None:
    """Terminate learners still running; kill those that ignore it."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.time() + 3
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.time()))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join(timeout=1)
