"""Run a validated grid into a results folder: resume, cells one after another (or side by side),
statuses, observer hooks, the end-of-run summary."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from rich.text import Text

from benchbase.api.registry import Registry
from benchbase.grid.cell import Cell
from benchbase.grid.spec import GridSpec
from benchbase.learner.settings import ExecutionSettings
from benchbase.run.console import GridConsole, print_summary
from benchbase.run.local import run_cell, warm_up
from benchbase.run.outcome import CellOutcome
from benchbase.run.placement import Placement
from benchbase.run.records import (
    EXIT_FAILED_CELLS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    cell_row,
    prepare_run,
)
from benchbase.run.schedule import Allocator, visible_gpus


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
    """Run every cell not already completed in `out` (or only those in `only`), up to `jobs` at
    once; returns the exit code."""
    warm_up()
    folder, rows, variants = prepare_run(spec, cells, out, registry)
    selected = [cell for cell in cells if only is None or cell.cell_id in only]
    to_run = [cell for cell in selected if rows[cell.cell_id]["status"] != "completed"]

    hook = registry.manager.hook
    total_steps = sum(cell.env_steps for cell in to_run)
    status = EXIT_OK
    with GridConsole(len(selected), total_steps, console=console) as grid_console:
        if len(to_run) < len(selected):
            grid_console.skipped(len(selected) - len(to_run))

        def on_event(event: tuple) -> None:  # called from the cells' threads; the console locks
            kind, cell_id, rank = event[:3]
            if kind == "progress":
                grid_console.progress(cell_id, rank, *event[3:])
            elif kind == "resumed" and rank == 0:
                grid_console.message(f"{cell_id}: resuming from its checkpoint at learner step {event[3]:,}")
            elif kind == "note":
                grid_console.message(f"{cell_id} learner {rank}: {event[3]}")
            elif kind == "stopping":
                grid_console.message(f"{cell_id}: stopping: every learner checkpoints, then exits")

        def start(cell: Cell) -> None:
            folder.clear_cell(cell.cell_id)
            rows[cell.cell_id] = cell_row(cell, variants[cell.cell_id], "running")
            folder.write_cells(rows.values())
            hook.cell_started(cell=cell, out_dir=str(out))
            grid_console.cell_started(cell.cell_id, cell.label, cell.env_steps, cell.learner_processes)

        def finish(cell: Cell, outcome: CellOutcome) -> None:
            nonlocal status
            if outcome.status != "completed":
                folder.clear_cell(cell.cell_id)  # checkpoints stay: a re-run resumes from them
                if outcome.status == "failed" and status == EXIT_OK:
                    status = EXIT_FAILED_CELLS
            row = cell_row(cell, variants[cell.cell_id], outcome.status, outcome)
            rows[cell.cell_id] = row
            folder.write_cells(rows.values())
            hook.cell_finished(cell=cell, row=row, out_dir=str(out))
            hook.results_written(out_dir=str(out))
            grid_console.cell_finished(cell.cell_id, outcome.status, outcome.wall_time_s, row["env_steps"] or 0,
                                       row["steps_per_second"] or 0.0, outcome.error)

        if _run_cells(to_run, str(out), settings, jobs, start, finish, on_event, grid_console):
            grid_console.message("interrupted: re-run the same command to continue the grid from its checkpoints")
            status = EXIT_INTERRUPTED
    print_summary(console, list(rows.values()))
    if any(row["status"] == "completed" for row in rows.values()):
        print_leaderboard(console, out, registry)
    return status


def _run_cells(cells: list[Cell], out: str, settings: ExecutionSettings, jobs: int, start: Any, finish: Any,
               on_event: Any, grid_console: Any) -> bool:
    """Run `cells` in order, up to `jobs` at once on cores of their own (`benchbase.schedule`),
    each in a thread that waits on its learner processes. Ctrl-C asks the running cells to
    checkpoint and stop and starts no more; a second Ctrl-C stops them at once. Returns whether
    the run was interrupted."""
    waiting = list(cells)
    allocator = Allocator(gpus=visible_gpus(settings.device))
    running: dict[Future, tuple[Cell, Placement]] = {}
    stop, stop_now = threading.Event(), threading.Event()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell") as pool:
        while waiting or running:
            try:
                while waiting and len(running) < jobs and not stop.is_set():
                    # One cell at a time keeps the machine to itself, as before `--jobs` existed.
                    placement = allocator.take(waiting[0].learner_processes) if jobs > 1 else Placement()
                    if placement is None:
                        break
                    cell = waiting.pop(0)
                    start(cell)
                    future = pool.submit(run_cell, cell, out, on_event, settings, placement, stop, stop_now)
                    running[future] = (cell, placement)
                if not running:
                    break
                done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in done:
                    cell, placement = running.pop(future)
                    allocator.release(placement)
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
                    grid_console.message("stopping: every running cell checkpoints, then exits (Ctrl-C again to stop at once)")
    return stop.is_set()


def print_leaderboard(console: Any, out: Path, registry: Registry, repetitions: int = 1000) -> None:
    """The run's own leaderboard after its summary; a failure here never fails the run."""
    try:
        from benchbase.report.build import build_report, load_runs
        from benchbase.report.text import leaderboard_table

        report = build_report(load_runs([str(out)]), repetitions=repetitions, registry=registry)
        console.print(leaderboard_table(report))
        if report.problems:
            console.print(Text(f"{len(report.problems)} problem(s) behind this leaderboard: bench report {out} lists them"))
    except Exception as error:  # noqa: BLE001 - the results are written; the leaderboard is a courtesy
        first = (str(error).strip().splitlines() or [""])[0]
        console.print(Text("warning: ", style="yellow") + Text(f"no leaderboard ({type(error).__name__}: {first}); try bench report {out}"))
