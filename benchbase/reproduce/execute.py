"""`bench reproduce`: check the request, run each claim's grids as `bench run --grid` does (the same
files, the same runner), measure ours with the report's code and write the comparison.

Layout of OUT: ``OUT/<claim>/<grid>.toml`` (the grid at this scale, a `bench run --grid` file),
``OUT/<claim>/<grid>/`` (its run folder), ``OUT/comparison.parquet``, ``OUT/reproduction.md`` and
``OUT/reproduction.json`` (date, command, machine, versions). Re-running into the same OUT resumes:
completed cells are not run again.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbase.api.registry import Registry
from benchbase.errors import UserError, unknown_name
from benchbase.grid.cell import Cell
from benchbase.grid.expand import expand
from benchbase.grid.spec import GridSpec, load_grid_file, make_spec
from benchbase.learner.settings import ExecutionSettings
from benchbase.reproduce.catalogue import SCALES, Claim, grid_toml, load_claims, select_claims
from benchbase.reproduce.measure import Scorer, agrees, measure
from benchbase.reproduce.tables import (
    ClaimResult,
    GridRecord,
    comparison_rows,
    console_table,
    reproduction_markdown,
    write_comparison,
    write_reproduction,
)
from benchbase.run.records import EXIT_OK, package_versions
from benchbase.run.runner import run_grid

#: Exit code when a quantity that should agree at this scale does not (or cannot be measured).
EXIT_DISAGREES = 3


@dataclass
class PlannedGrid:
    claim: str
    name: str
    values: dict[str, Any]
    spec: GridSpec
    cells: list[Cell]
    same_as: str = ""


def check_request(names: list[str], scale: str, out: Path) -> list[Claim]:
    """The claims to run; a bad claim name, scale or output folder is a UserError (nothing is written)."""
    if scale not in SCALES:
        raise unknown_name("scale", scale, SCALES)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder (it is created if missing)")
    if not names:
        raise UserError("name a claim to reproduce, or all (bench reproduce --list shows them)")
    return select_claims(names, load_claims())


def plan(claims: list[Claim], scale: str, registry: Registry) -> list[PlannedGrid]:
    """Every grid of the claims at `scale`, validated and expanded before anything runs. A grid
    identical to one planned earlier in the same claim runs once and is shared."""
    planned: list[PlannedGrid] = []
    for claim in claims:
        seen: dict[str, str] = {}
        for grid in claim.grids_at(scale):
            values = claim.grid_values(grid, scale)
            try:
                spec = make_spec(values, {})
                grid_plan = expand(spec, registry)
            except UserError as error:
                raise UserError(f"claim {claim.name}, grid {grid}: {error}") from None
            if grid_plan.invalid:
                combination, reason = grid_plan.invalid[0]
                raise UserError(f"claim {claim.name}, grid {grid}: {combination} is not valid: {reason}")
            key = json.dumps(spec.to_dict(), sort_keys=True)
            planned.append(PlannedGrid(claim.name, grid, values, spec, grid_plan.cells, seen.get(key, "")))
            seen.setdefault(key, grid)
    return planned


def _run_claim(
    claim: Claim,
    grids: list[PlannedGrid],
    scale: str,
    out: Path,
    registry: Registry,
    settings: ExecutionSettings,
    console: Any,
    jobs: int,
) -> ClaimResult:
    records: dict[str, GridRecord] = {}
    code = EXIT_OK
    for grid in grids:
        file = out / claim.name / f"{grid.name}.toml"
        header = f"bench reproduce {claim.name} --scale {scale}: grid {grid.name} ({claim.file})"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(grid_toml(grid.values, header))
        folder = records[grid.same_as].folder if grid.same_as else out / claim.name / grid.name
        records[grid.name] = GridRecord(grid.name, file, folder, grid.values, grid.same_as)
        if grid.same_as:
            continue
        spec = make_spec(load_grid_file(file), {})  # the file just written: its command reruns exactly this
        console.print(f"[bold]{claim.name}[/bold]: grid {grid.name}, {len(grid.cells)} cells → {folder}")
        found = run_grid(spec, grid.cells, folder, registry, console=console, settings=settings, jobs=jobs)
        code = code or found
    scorer = Scorer({name: record.folder for name, record in records.items()})
    measured = [(quantity, measure(quantity, scorer)) for quantity in claim.quantities_at(scale)]
    return ClaimResult(claim, records, measured, code)


def _context(registry: Registry, settings: ExecutionSettings, command: str) -> dict[str, Any]:
    versions = package_versions(registry)
    versions.pop("plugins", None)
    versions.pop("platform", None)
    machine = f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, device {settings.device}"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine,
        "versions": versions,
    }


def reproduce(
    names: list[str],
    scale: str,
    out: Path,
    registry: Registry,
    settings: ExecutionSettings,
    console: Any,
    jobs: int = 1,
    command: str = "bench reproduce",
) -> int:
    """Run the claims at `scale` into `out`, write the comparison; the exit code: a run's code when
    cells failed or were interrupted, else EXIT_DISAGREES when a quantity expected to agree at this
    scale does not, else 0."""
    claims = check_request(names, scale, out)
    planned = plan(claims, scale, registry)
    results = []
    for claim in claims:
        grids = [grid for grid in planned if grid.claim == claim.name]
        results.append(_run_claim(claim, grids, scale, out, registry, settings, console, jobs))
    rows = comparison_rows(results, scale)
    context = _context(registry, settings, command)
    written = [
        write_comparison(rows, out),
        write_reproduction(reproduction_markdown(results, rows, scale, context), out, context),
    ]
    kinds = {(result.claim.name, quantity.name): quantity.kind for result in results for quantity, _ in result.measured}
    console.print(console_table(rows, kinds))
    console.print("reproduction: " + ", ".join(str(path) for path in written), highlight=False)
    run_code = next((result.run_code for result in results if result.run_code), EXIT_OK)
    if run_code:
        return run_code
    failing = [
        f"{result.claim.name}/{quantity.name}"
        for result in results
        for quantity, ours in result.measured
        if quantity.name in result.claim.scales[scale].expect and agrees(quantity, ours) is not True
    ]
    if failing:
        console.print(f"[red]does not agree[/red] where it should at {scale} scale: {', '.join(failing)}")
        return EXIT_DISAGREES
    return EXIT_OK
