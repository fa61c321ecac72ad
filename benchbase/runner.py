"""Run a validated grid into a results folder: resume, one cell after another, statuses, hooks."""

from __future__ import annotations

import datetime
import json
import math
import platform
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.text import Text

from benchbase import __version__
from benchbase.console import GridConsole, print_summary
from benchbase.errors import UserError
from benchbase.grid import Cell, GridSpec, grid_fingerprint, variant
from benchbase.launch.local import CellOutcome, Placement, run_cell, warm_up
from benchbase.learner import ExecutionSettings
from benchbase.plugins import Registry
from benchbase.results import SCHEMA_VERSION, RunFolder, write_json
from benchbase.schedule import Allocator, visible_gpus

EXIT_OK, EXIT_FAILED_CELLS, EXIT_INTERRUPTED = 0, 1, 130


def package_versions(registry: Registry) -> dict[str, Any]:
    versions: dict[str, Any] = {"benchbase": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "gymnasium", "numpy", "pyarrow", "pluggy", "typer", "rich", "mujoco", "ale-py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    versions["plugins"] = {name: provider for name, provider in registry.loaded}
    return versions


def check_folder(folder: RunFolder, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """The folder's earlier rows, or a UserError if it holds a different grid."""
    existing = folder.read_grid()
    if existing is not None and existing.get("cell_ids") != grid_fingerprint(cells):
        ours, theirs = set(grid_fingerprint(cells)), set(existing.get("cell_ids", []))
        raise UserError(
            f"{folder.root} holds a different grid ({len(theirs)} cells, {len(ours & theirs)} in common with "
            f"this one's {len(ours)}): choose another --out"
        )
    return folder.read_cells()


def cell_row(cell: Cell, variant_text: str, status: str, outcome: CellOutcome | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cell_id": cell.cell_id, "algorithm": cell.algorithm, "topology": cell.topology, "env": cell.env,
        "replay": cell.replay, "variant": variant_text, "seed": cell.seed, "learners": cell.learner_processes, "status": status,
        "error": None, "wall_time_s": None, "startup_s": None, "env_steps": None, "steps_per_second": None,
        "final_return": None, "final_success": None, "bytes_sent_per_learner": None, "transport": None,
        "resumed_from_env_step": None, "config": json.dumps(cell.config(), sort_keys=True),
    }
    if outcome is not None:
        row.update(error=outcome.error, wall_time_s=outcome.wall_time_s,
                   startup_s=None if math.isnan(outcome.startup_s) else outcome.startup_s,
                   resumed_from_env_step=outcome.resumed_from_env_step)
        if outcome.summaries:
            summaries = outcome.summaries
            steps = sum(s["env_steps"] for s in summaries)
            train_time = max(s["train_time_s"] for s in summaries)
            row.update(
                env_steps=steps,
                steps_per_second=steps / train_time if train_time > 0 else None,
                final_return=_nanmean([s["final_return"] for s in summaries]),
                final_success=_nanmean([s["final_success"] for s in summaries]),
                bytes_sent_per_learner=sum(s["bytes_sent"] for s in summaries) / len(summaries),
                transport=summaries[0]["transport"],
            )
    return row


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def cells_of_run(out: Path) -> list[Cell]:
    """The cells of the grid already in run folder `out` (`bench run --out OUT --cell ID`)."""
    folder = RunFolder(out)
    grid = folder.read_grid()
    if grid is None:
        raise UserError(f"{out} holds no grid (no grid.json): run the grid there first, or bench run --launcher torchrun")
    cells = []
    for cell_id in grid.get("cell_ids", []):
        path = folder.root / "configs" / f"{cell_id}.json"
        if not path.is_file():
            raise UserError(f"{out}: the config of cell {cell_id} is missing ({path})")
        cells.append(Cell.from_config(json.loads(path.read_text())))
    return cells


def prepare_run(spec: GridSpec | None, cells: list[Cell], out: Path, registry: Registry) -> tuple[RunFolder, dict, dict]:
    """Check or create the run folder: grid.json (unless `spec` is None: a cell of a grid already
    there), every cell's config, and a row per cell (earlier rows kept). Returns the folder, the
    rows by cell id and the variants by cell id."""
    folder = RunFolder(out)
    previous = check_folder(folder, cells)
    variants = {cell.cell_id: variant(cell, registry) for cell in cells}
    rows = {cell.cell_id: previous.get(cell.cell_id) or cell_row(cell, variants[cell.cell_id], "pending") for cell in cells}
    if spec is not None:
        write_json(folder.grid_path, {
            "schema_version": SCHEMA_VERSION,
            "spec": spec.to_dict(),
            "cell_ids": grid_fingerprint(cells),
            "versions": package_versions(registry),
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        })
        for cell in cells:
            write_json(folder.root / "configs" / f"{cell.cell_id}.json", cell.config())
    folder.write_cells(rows.values())
    return folder, rows, variants


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
        from benchbase.report import build_report, load_runs
        from benchbase.report_text import leaderboard_table

        report = build_report(load_runs([str(out)]), repetitions=repetitions, registry=registry)
        console.print(leaderboard_table(report))
        if report.problems:
            console.print(Text(f"{len(report.problems)} problem(s) behind this leaderboard: bench report {out} lists them"))
    except Exception as error:  # noqa: BLE001 - the results are written; the leaderboard is a courtesy
        first = (str(error).strip().splitlines() or [""])[0]
        console.print(Text("warning: ", style="yellow") + Text(f"no leaderboard ({type(error).__name__}: {first}); try bench report {out}"))
