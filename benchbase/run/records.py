"""The run folder's bookkeeping: grid.json, cell configs, the cells table's rows and exit codes,
shared by the local runner and torchrun workers.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from benchbase import __version__
from benchbase.api.registry import Registry
from benchbase.errors import UserError
from benchbase.grid.cell import Cell, grid_fingerprint, variant
from benchbase.grid.spec import GridSpec
from benchbase.results import SCHEMA_VERSION, RunFolder, write_json
from benchbase.run.outcome import CellOutcome

EXIT_OK, EXIT_FAILED_CELLS, EXIT_INTERRUPTED = 0, 1, 130


def package_versions(registry: Registry) -> dict[str, Any]:
    versions: dict[str, Any] = {
        "benchbase": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for package in ("torch", "gymnasium", "numpy", "pyarrow", "pluggy", "typer", "rich", "mujoco", "ale-py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    versions["plugins"] = {name: provider for name, provider in registry.loaded}
    return versions


def machine_description() -> dict[str, Any]:
    """Where the run ran, for the report's header: host, CPU model and count, GPUs when torch sees any."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    except OSError:
        pass
    machine: dict[str, Any] = {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": cpu_model}
    torch = sys.modules.get("torch")  # only when loaded already: start-up stays free of torch
    if torch is not None and torch.cuda.is_available():
        machine["gpus"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return machine


def command_line() -> str:
    """The command that started this process, as a user would type it ("bench run -a diff-a2c ...")."""
    return shlex.join(["bench", *sys.argv[1:]])


def read_grid(folder: RunFolder) -> dict[str, Any] | None:
    """The folder's grid.json (None for a new folder); a UserError naming the file when it is unreadable."""
    try:
        grid = folder.read_grid()
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise unreadable(folder.grid_path, error) from None
    if grid is not None and not isinstance(grid, dict):
        raise unreadable(folder.grid_path, ValueError("not a JSON object"))
    cell_ids = grid.get("cell_ids") if grid is not None else []
    if not isinstance(cell_ids, list) or not all(isinstance(cell_id, str) for cell_id in cell_ids):
        raise unreadable(folder.grid_path, ValueError("no list of cell ids"))
    return grid


def read_cells(folder: RunFolder) -> dict[str, dict[str, Any]]:
    """The folder's cells.parquet rows by cell id; a UserError naming the file when it is unreadable."""
    try:
        return folder.read_cells()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds for a truncated or garbled file
        raise unreadable(folder.cells_path, error) from None


def unreadable(path: Path, error: BaseException) -> UserError:
    """One line for a results file that cannot be read back: which file, why, and what to do."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(
        f"{path} is unreadable ({reason[:200]}): move the folder aside and re-run into a new --out "
        "(or delete the file to start that run over)"
    )


def write_rows(folder: RunFolder, rows: Any) -> None:
    """cells.parquet rewritten with `rows`; a UserError naming the file when the disk refuses it."""
    try:
        folder.write_cells(rows)
    except OSError as error:
        raise unwritable(error, folder.root, folder.cells_path) from None


def unwritable(error: OSError, out: Path, path: Path | None = None) -> UserError:
    """One line for a write into the run folder that failed (a full disk, a read-only mount)."""
    where = error.filename or path or out
    return UserError(
        f"cannot write {where} ({error.strerror or error}): free some space or make {out} writable, "
        "or choose another --out, then re-run"
    )


def check_folder(folder: RunFolder, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """The folder's earlier rows, or a UserError if it holds a different grid."""
    existing = read_grid(folder)
    if existing is not None and existing.get("cell_ids") != grid_fingerprint(cells):
        ours, theirs = set(grid_fingerprint(cells)), set(existing.get("cell_ids", []))
        raise UserError(
            f"{folder.root} holds a different grid ({len(theirs)} cells, {len(ours & theirs)} in common with "
            f"this one's {len(ours)}): choose another --out"
        )
    return read_cells(folder)


def cell_row(
    cell: Cell, variant_text: str, status: str, outcome: CellOutcome | None = None, runner: str | None = None
) -> dict[str, Any]:
    """A cells.parquet row; `runner` is the JSON of the process running the cell (`benchbase.run.ownership.Runner`)."""
    row: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "algorithm": cell.algorithm,
        "topology": cell.topology,
        "env": cell.env,
        "replay": cell.replay,
        "variant": variant_text,
        "seed": cell.seed,
        "learners": cell.learner_processes,
        "status": status,
        "error": None,
        "wall_time_s": None,
        "startup_s": None,
        "env_steps": None,
        "steps_per_second": None,
        "final_return": None,
        "final_success": None,
        "bytes_sent_per_learner": None,
        "transport": None,
        "resumed_from_env_step": None,
        "config": json.dumps(cell.config(), sort_keys=True),
        "runner": runner,
    }
    if outcome is not None:
        row.update(
            error=outcome.error,
            wall_time_s=outcome.wall_time_s,
            startup_s=None if math.isnan(outcome.startup_s) else outcome.startup_s,
            resumed_from_env_step=outcome.resumed_from_env_step,
        )
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
    grid = read_grid(folder)
    if grid is None:
        raise UserError(
            f"{out} holds no grid (no grid.json): run the grid there first, or bench run --launcher torchrun"
        )
    cells = []
    for cell_id in grid.get("cell_ids", []):
        path = folder.root / "configs" / f"{cell_id}.json"
        if not path.is_file():
            raise UserError(f"{out}: the config of cell {cell_id} is missing ({path})")
        try:
            cells.append(Cell.from_config(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as error:
            raise unreadable(path, error) from None
    return cells


def prepare_run(
    spec: GridSpec | None,
    cells: list[Cell],
    out: Path,
    registry: Registry,
    before_writing: Callable[[dict[str, dict[str, Any]]], None] = lambda rows: None,
) -> tuple[RunFolder, dict, dict]:
    """Check or create the run folder: grid.json (unless `spec` is None: a cell of a grid already
    there), every cell's config, and a row per cell (earlier rows kept). `before_writing` sees the
    earlier rows first (it may refuse the run). Returns the folder, the rows by cell id and the
    variants by cell id."""
    folder = RunFolder(out)
    previous = check_folder(folder, cells)
    before_writing(previous)
    variants = {cell.cell_id: variant(cell, registry) for cell in cells}
    rows = {
        cell.cell_id: previous.get(cell.cell_id) or cell_row(cell, variants[cell.cell_id], "pending") for cell in cells
    }
    new_folder = not folder.root.exists()
    # Only the rows new to the folder are written, under cells.parquet's lock: another job (torchrun,
    # Slurm) may be updating its cell's row meanwhile, and rewriting the rows read above would undo that.
    added = {cell_id: row for cell_id, row in rows.items() if cell_id not in previous}
    try:
        _write_run(folder, spec, cells, added, registry)
    except OSError as error:
        if new_folder:  # nothing half-written is left behind to be taken for a run
            shutil.rmtree(folder.root, ignore_errors=True)
        raise unwritable(error, out) from None
    return folder, rows, variants


def _write_run(folder: RunFolder, spec: GridSpec | None, cells: list[Cell], added: dict, registry: Registry) -> None:
    if spec is not None:
        write_json(
            folder.grid_path,
            {
                "schema_version": SCHEMA_VERSION,
                "spec": spec.to_dict(),
                "cell_ids": grid_fingerprint(cells),
                "versions": package_versions(registry),
                "command": command_line(),
                "machine": machine_description(),
                "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
        )
        for cell in cells:
            write_json(folder.root / "configs" / f"{cell.cell_id}.json", cell.config())
    folder.update_cells(added)
