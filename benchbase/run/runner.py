"""Run a validated grid into a results folder: resume, cells one after another (or side by side),
statuses, observer hooks, the end-of-run summary.

`run_cells` is the one loop over a grid's cells, for every launcher: it starts cells on a
`CellExecutor` (this machine's learner processes, `benchbase.run.local.LocalCells`, or a torchrun
worker's learner, `benchbase.run.torchrun.WorkerCells`) and hands each outcome to the caller's
bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Protocol

from rich.text import Text

from benchbase.api.registry import Registry
from benchbase.errors import UserError
from benchbase.grid.cell import Cell
from benchbase.grid.spec import GridSpec
from benchbase.learner.events import CellEvent, Note, Progress, Resumed, Stopping
from benchbase.learner.settings import ExecutionSettings
from benchbase.run.console import GridConsole, print_summary
from benchbase.run.forkserver import warm_up
from benchbase.run.local import LocalCells
from benchbase.run.outcome import CellOutcome
from benchbase.run.ownership import FolderLock, Runner, check_running_cells
from benchbase.run.placement import Placement
from benchbase.run.records import (
    EXIT_FAILED_CELLS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    cell_row,
    prepare_run,
    write_rows,
)


class CellExecutor(Protocol):
    """Where and how a grid's cells run."""

    def place(self, cell: Cell, running: int) -> Placement | None:
        """Where `cell` may run beside `running` cells now; None: only once one of them has finished."""

    def submit(
        self, cell: Cell, placement: Placement, stop: threading.Event, stop_now: threading.Event
    ) -> Future[CellOutcome]:
        """Start `cell`; its outcome when it ends. `stop` asks it to checkpoint and stop, `stop_now`
        to stop at once; an executor sets `stop` itself when no more cells may start."""

    def release(self, placement: Placement) -> None:
        """Take back what `place` gave a cell that has ended."""


def run_cells(
    cells: list[Cell],
    executor: CellExecutor,
    start: Callable[[Cell], None],
    finish: Callable[[Cell, CellOutcome], None],
    stopping: Callable[[], None] = lambda: None,
) -> bool:
    """Run `cells` in order on `executor`, calling `start` before each and `finish` with its
    outcome. Ctrl-C asks the running cells to checkpoint and stop (`stopping` says so) and starts
    no more; a second Ctrl-C stops them at once. Returns whether the run was interrupted."""
    waiting = list(cells)
    running: dict[Future, tuple[Cell, Placement]] = {}
    stop, stop_now = threading.Event(), threading.Event()
    while waiting or running:
        try:
            while waiting and not stop.is_set():
                placement = executor.place(waiting[0], len(running))
                if placement is None:
                    break
                cell = waiting.pop(0)
                start(cell)
                running[executor.submit(cell, placement, stop, stop_now)] = (cell, placement)
            if not running:
                break
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                cell, placement = running.pop(future)
                executor.release(placement)
                try:
                    outcome = future.result()
                except KeyboardInterrupt:  # stopped at once by a second Ctrl-C
                    outcome = CellOutcome("interrupted", None, 0.0, float("nan"))
                finish(cell, outcome)
        except KeyboardInterrupt:
            if stop.is_set():
                stop_now.set()
            else:
                stop.set()
                stopping()
    return stop.is_set()


def run_grid(
    spec: GridSpec | None,
    cells: list[Cell],
    out: Path,
    registry: Registry,
    *,
    console: Any,
    settings: ExecutionSettings = ExecutionSettings(),
    jobs: int = 1,
    only: set[str] | None = None,
) -> int:
    """Run every cell not already completed in `out` (or only those in `only`) on this machine,
    up to `jobs` at once; returns the exit code. The run holds `out` (`FolderLock`) throughout: a
    second run on it stops before writing anything."""
    lock = FolderLock(out).acquire()
    try:
        return _run_grid_holding(lock, spec, cells, out, registry, console, settings, jobs, only)
    finally:
        lock.release()


def _run_grid_holding(
    lock: FolderLock,
    spec: GridSpec | None,
    cells: list[Cell],
    out: Path,
    registry: Registry,
    console: Any,
    settings: ExecutionSettings,
    jobs: int,
    only: set[str] | None,
) -> int:
    warm_up()
    selected = [cell for cell in cells if only is None or cell.cell_id in only]
    notes = [lock.warning] if lock.warning else []

    def check_running(previous: dict[str, dict[str, Any]]) -> None:
        notes.extend(check_running_cells(previous, [cell.cell_id for cell in selected]))

    try:
        folder, rows, variants = prepare_run(spec, cells, out, registry, check_running)
    except UserError:
        if lock.created:  # nothing half-written is left behind to be taken for a run
            shutil.rmtree(out, ignore_errors=True)
        raise
    lock.announce()
    to_run = [cell for cell in selected if rows[cell.cell_id]["status"] != "completed"]

    hook = registry.manager.hook
    total_steps = sum(cell.env_steps for cell in to_run)
    status = EXIT_OK
    with GridConsole(len(selected), total_steps, console=console) as grid_console:
        for note in notes:
            grid_console.message(note)
        if len(to_run) < len(selected):
            grid_console.skipped(len(selected) - len(to_run))

        def start(cell: Cell) -> None:
            folder.clear_cell(cell.cell_id)
            runner = Runner.this_process().to_json()  # a later run tells a live cell from a dead one by it
            rows[cell.cell_id] = cell_row(cell, variants[cell.cell_id], "running", runner=runner)
            write_rows(folder, rows.values())
            hook.cell_started(cell=cell, out_dir=str(out))
            # the variant keeps two cells of one algorithm with different parameters apart on the console
            label = cell.label + (f" ({variants[cell.cell_id]})" if variants[cell.cell_id] else "")
            grid_console.cell_started(cell.cell_id, label, cell.env_steps, cell.learner_processes)

        def finish(cell: Cell, outcome: CellOutcome) -> None:
            nonlocal status
            if outcome.status != "completed":
                folder.clear_cell(cell.cell_id)  # checkpoints stay: a re-run resumes from them
                if outcome.status == "failed" and status == EXIT_OK:
                    status = EXIT_FAILED_CELLS
            row = cell_row(cell, variants[cell.cell_id], outcome.status, outcome, rows[cell.cell_id]["runner"])
            rows[cell.cell_id] = row
            write_rows(folder, rows.values())
            hook.cell_finished(cell=cell, row=row, out_dir=str(out))
            hook.results_written(out_dir=str(out))
            grid_console.cell_finished(
                cell.cell_id,
                outcome.status,
                outcome.wall_time_s,
                row["env_steps"] or 0,
                row["steps_per_second"] or 0.0,
                outcome.error,
            )

        def stopping() -> None:
            grid_console.message("stopping: every running cell checkpoints, then exits (Ctrl-C again to stop at once)")

        # The cells' threads call show_event; the console locks.
        with (
            terminate_as_interrupt(),
            LocalCells(str(out), settings, functools.partial(show_event, grid_console), jobs) as executor,
        ):
            interrupted = run_cells(to_run, executor, start, finish, stopping)
        if interrupted:
            grid_console.message("interrupted: re-run the same command to continue the grid from its checkpoints")
            status = EXIT_INTERRUPTED
    print_summary(console, list(rows.values()))
    if any(row["status"] == "completed" for row in rows.values()):
        print_leaderboard(console, out, registry)
    return status


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While a local run's cells run, SIGTERM does what Ctrl-C does: the first asks the running cells
    to checkpoint and stop, a second stops them at once. It is what `kill`, `timeout`, `docker stop`
    and a batch scheduler's time limit send first; without this, Python's default ends `bench run`
    at once and its learners with it (`benchbase.run.lifeline`), leaving the cell `running` with only
    its last periodic checkpoints. Local learners ignore SIGTERM as they ignore SIGINT, so a signal to
    the whole process group reaches them through the launcher. (A torchrun worker keeps its own
    meaning of SIGTERM: it is not a local run.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def show_event(grid_console: GridConsole, event: CellEvent) -> None:
    """A learner's (or the launcher's) event on the grid console."""
    match event:
        case Progress():
            grid_console.progress(
                event.cell_id, event.learner, event.env_steps, event.steps_per_second, event.recent_return
            )
        case Resumed(learner=0):
            grid_console.message(f"{event.cell_id}: resuming from its checkpoint at learner step {event.env_steps:,}")
        case Note():
            grid_console.message(f"{event.cell_id} learner {event.learner}: {event.text}")
        case Stopping():
            grid_console.message(f"{event.cell_id}: stopping: every learner checkpoints, then exits")


def print_leaderboard(console: Any, out: Path, registry: Registry, **options: Any) -> None:
    """The run's own leaderboard after its summary, with `bench report`'s defaults (the same bootstrap
    repetitions, so the same intervals); a failure here never fails the run."""
    try:
        from benchbase.report.build import build_report, load_runs
        from benchbase.report.text import leaderboard_table

        report = build_report(load_runs([str(out)]), registry=registry, **options)
        console.print(leaderboard_table(report, width=console.width))
        if report.problems:
            problems = f"{len(report.problems)} problem(s) behind this leaderboard: bench report {out} lists them"
            console.print(Text(problems))
    except Exception as error:  # noqa: BLE001 - the results are written; the leaderboard is a courtesy
        first = (str(error).strip().splitlines() or [""])[0]
        reason = f"no leaderboard ({type(error).__name__}: {first}); try bench report {out}"
        console.print(Text("warning: ", style="yellow") + Text(reason))
