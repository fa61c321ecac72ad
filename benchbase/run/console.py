"""Console output for `bench run`: live grid progress while running, a summary table at the end.

Two modes share one bookkeeping core:

* live (a terminal): a rich ``Live`` area with one grid bar and one line per running cell. The
  area is drawn by rich's refresh thread from plain Python state, so ``progress`` - called many
  times a second per learner - only stores numbers and never touches rich.
* plain (CI, pipes, files): one line when a cell starts or finishes and at most one progress line
  per running cell every ``log_interval_s`` seconds; no cursor movement or bars.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from benchbase.formatting import count, duration

__all__ = ["GridConsole", "summary_tables", "print_summary"]

_STATUS_MARK = {
    "completed": ("✓", "green"),
    "failed": ("✗", "red"),
    "interrupted": ("✗", "yellow"),
}


def _clock() -> float:
    """Monotonic seconds; a module-level function so tests can substitute a fake clock."""
    return time.monotonic()


# --------------------------------------------------------------------------- formatting helpers


def _fmt_return(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (covers None, NaN, inf, pd.NA)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _last_line(error: str | None) -> str:
    """The last non-blank line of a traceback: the exception type and message."""
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- live progress


@dataclass
class _RunningCell:
    label: str
    budget: int
    n_learners: int
    started_at: float
    last_logged: float
    # Latest report per learner, keyed by learner index; aggregated only when drawn or logged.
    steps: dict[int, int] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)
    returns: dict[int, float] = field(default_factory=dict)

    def total_steps(self) -> int:
        return sum(self.steps.values())

    def total_rate(self) -> float:
        return sum(self.rates.values())

    def mean_return(self) -> float | None:
        values = list(self.returns.values())
        return sum(values) / len(values) if values else None

    def fraction(self) -> float:
        return min(1.0, self.total_steps() / self.budget) if self.budget > 0 else 0.0


class GridConsole:
    """Progress display for one grid run; use as a context manager around the run.

    ``total_cells`` counts every cell of the grid, including those later reported via ``skipped``;
    ``total_env_steps`` is the env-step budget of the cells this invocation will actually run
    (skipped cells contribute nothing to it), which is what the ETA is computed against.
    """

    def __init__(
        self,
        total_cells: int,
        total_env_steps: int,
        *,
        console: Console | None = None,
        live: bool | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        self.console = console if console is not None else Console()
        self.live = self.console.is_terminal if live is None else live
        self.total_cells = total_cells
        self.total_env_steps = total_env_steps
        self.log_interval_s = log_interval_s

        self._lock = threading.Lock()
        self._running: dict[str, _RunningCell] = {}
        self._skipped = 0
        self._finished = 0
        self._status_counts: dict[str, int] = {}
        self._finished_steps = 0  # env steps actually taken by finished cells
        self._finished_budget = 0  # budget "used up" by finished cells, done or not (for the ETA)
        self._started_at = _clock()
        self._live: Live | None = None

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> GridConsole:
        self._started_at = _clock()
        if self.live:
            # get_renderable lets rich's refresh thread pull a fresh view; nothing is pushed per update.
            self._live = Live(
                console=self.console,
                get_renderable=self._render,
                refresh_per_second=4,
                transient=False,
            )
            self._live.start()
        else:
            self._print(Text(f"Running {self.total_cells} cells ({count(self.total_env_steps)} env steps)"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self._status_counts.items()))
        if self._skipped:
            counts = f"{counts}, {self._skipped} skipped" if counts else f"{self._skipped} skipped"
        self._print(Text(f"Grid finished in {duration(_clock() - self._started_at)}: {counts or 'no cells run'}"))

    # ------------------------------------------------------------------ events from the runner

    def skipped(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self._skipped += count
        noun = "cell" if count == 1 else "cells"
        self._print(Text(f"Skipping {count} {noun} already completed in an earlier run", style="dim"))

    def cell_started(self, cell_id: str, label: str, budget_env_steps: int, n_learners: int) -> None:
        now = _clock()
        with self._lock:
            self._running[cell_id] = _RunningCell(
                label=label,
                budget=budget_env_steps,
                n_learners=n_learners,
                started_at=now,
                last_logged=now,
            )
        if not self.live:
            self._print(
                Text.assemble(
                    ("▶ ", "cyan"),
                    label,
                    f" (budget {count(budget_env_steps)} env steps, "
                    f"{n_learners} learner{'s' if n_learners != 1 else ''})",
                )
            )

    def progress(
        self,
        cell_id: str,
        learner: int,
        env_steps: int,
        steps_per_s: float,
        recent_return: float | None,
    ) -> None:
        # Hot path: store the numbers and, in plain mode, check the log interval. Nothing else.
        line: Text | None = None
        with self._lock:
            cell = self._running.get(cell_id)
            if cell is None:  # a late report for a cell that has already finished
                return
            cell.steps[learner] = env_steps
            cell.rates[learner] = steps_per_s
            if recent_return is not None:
                cell.returns[learner] = recent_return
            if not self.live:
                now = _clock()
                if now - cell.last_logged >= self.log_interval_s:
                    cell.last_logged = now
                    line = self._plain_progress_line(cell)
        if line is not None:
            self._print(line)

    def cell_finished(
        self,
        cell_id: str,
        status: str,
        wall_time_s: float,
        env_steps: int,
        steps_per_s: float,
        error: str | None,
    ) -> None:
        with self._lock:
            cell = self._running.pop(cell_id, None)
            self._finished += 1
            self._status_counts[status] = self._status_counts.get(status, 0) + 1
            self._finished_steps += env_steps
            # A failed cell will never use the rest of its budget, so count the whole budget as
            # consumed; otherwise the ETA would wait for steps that are never coming.
            budget = cell.budget if cell is not None else env_steps
            self._finished_budget += max(budget, env_steps)
            done = self._finished + self._skipped
        label = cell.label if cell is not None else cell_id
        mark, style = _STATUS_MARK.get(status, ("?", "yellow"))
        text = Text.assemble(
            (f"{mark} ", style),
            label,
            f"  {duration(wall_time_s)}  {count(steps_per_s)} steps/s",
        )
        if status != "completed":
            text.append(f"  {status}", style=style)
        if not self.live:
            text = Text.assemble(f"[{done}/{self.total_cells}] ", text)
        self._print(text)
        reason = _last_line(error)
        if status == "failed" and reason:
            self._print(Text(f"    {reason}", style="red"))

    def message(self, text: str) -> None:
        self._print(Text(text))

    # ------------------------------------------------------------------ rendering

    def _print(self, text: Text) -> None:
        # soft_wrap: a log line stays one line in CI logs rather than being wrapped at the width.
        self.console.print(text, soft_wrap=True, highlight=False)

    def _plain_progress_line(self, cell: _RunningCell) -> Text:
        return Text(
            f"  … {cell.label}: {cell.fraction():.0%} "
            f"({count(min(cell.total_steps(), cell.budget))}/{count(cell.budget)} steps), "
            f"{count(cell.total_rate())} steps/s, "
            f"return {_fmt_return(cell.mean_return())}"
        )

    def _render(self) -> RenderableType:
        """Draw the live area from current state; called by rich's refresh thread."""
        with self._lock:
            cells = list(self._running.values())
            running_steps = [c.total_steps() for c in cells]
            running_rows = [
                (c.label, c.budget, steps, c.fraction(), c.total_rate(), c.mean_return())
                for c, steps in zip(cells, running_steps)
            ]
            done_cells = self._finished + self._skipped
            steps_taken = self._finished_steps + sum(running_steps)
            # Capped per cell so a cell overshooting its budget cannot pull the bar ahead.
            accounted = self._finished_budget + sum(min(steps, c.budget) for c, steps in zip(cells, running_steps))
        elapsed = _clock() - self._started_at
        total = max(self.total_env_steps, 1)
        if done_cells >= self.total_cells:
            accounted = total  # every cell is accounted for, whatever the budgets said
        accounted = min(accounted, total)
        rate = steps_taken / elapsed if elapsed > 0 else 0.0
        eta = (total - accounted) / rate if rate > 0 else None

        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            Text("Grid", style="bold"),
            ProgressBar(total=total, completed=accounted, width=30),
            Text(
                f"{done_cells}/{self.total_cells} cells · "
                f"{count(min(steps_taken, self.total_env_steps))}/{count(self.total_env_steps)} env steps · "
                f"{duration(elapsed)} elapsed · ETA {duration(eta)}"
            ),
        )
        if not running_rows:
            return grid

        rows = Table.grid(padding=(0, 1))
        rows.add_column(no_wrap=True, overflow="ellipsis", max_width=60)
        rows.add_column(width=20)
        rows.add_column(justify="right", no_wrap=True)
        rows.add_column(justify="right", no_wrap=True)
        rows.add_column(justify="right", no_wrap=True)
        rows.add_column(justify="right", no_wrap=True)
        for label, budget, steps, fraction, cell_rate, ret in running_rows:
            rows.add_row(
                Text(f"  {label}"),
                ProgressBar(total=max(budget, 1), completed=min(steps, budget), width=20),
                f"{fraction:.0%}",
                f"{count(min(steps, budget))}/{count(budget)}",
                f"{count(cell_rate)} steps/s",
                f"return {_fmt_return(ret)}",
            )
        return Group(grid, rows)


# --------------------------------------------------------------------------- summary


@dataclass
class _Row:
    algorithm: str
    topology: str
    replay: str
    total: int
    completed: int
    failed: int
    interrupted: int
    mean_return: float | None
    std_return: float | None
    success: float | None
    steps_per_s: float | None
    wall_time_s: float


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _aggregate(key: tuple[str, str, str], cells: Iterable[dict[str, Any]]) -> _Row:
    cells = list(cells)
    completed = [c for c in cells if c.get("status") == "completed"]
    returns = [r for c in completed if (r := _finite(c.get("final_return"))) is not None]
    successes = [s for c in completed if (s := _finite(c.get("final_success"))) is not None]
    rates = [r for c in completed if (r := _finite(c.get("steps_per_second"))) is not None]
    return _Row(
        algorithm=key[0],
        topology=key[1],
        replay=key[2],
        total=len(cells),
        completed=len(completed),
        failed=sum(c.get("status") == "failed" for c in cells),
        interrupted=sum(c.get("status") == "interrupted" for c in cells),
        mean_return=_mean(returns),
        # Sample std (n-1): seeds are a sample of the seed distribution; undefined for one seed.
        std_return=statistics.stdev(returns) if len(returns) >= 2 else None,
        success=_mean(successes),
        steps_per_s=_mean(rates),
        # Failed and interrupted cells used machine time too, so all cells count towards it.
        wall_time_s=sum(w for c in cells if (w := _finite(c.get("wall_time_s"))) is not None),
    )


def _seeds_text(row: _Row) -> Text:
    text = Text(f"{row.completed}/{row.total}")
    extras = []
    if row.failed:
        extras.append((f"{row.failed} failed", "red"))
    if row.interrupted:
        extras.append((f"{row.interrupted} interrupted", "yellow"))
    for i, (extra, style) in enumerate(extras):
        text.append(" (" if i == 0 else ", ")
        text.append(extra, style=style)
    if extras:
        text.append(")")
    return text


def _return_text(row: _Row) -> str:
    if row.mean_return is None:
        return "—"
    if row.std_return is None:
        return f"{row.mean_return:.2f}"
    return f"{row.mean_return:.2f} ± {row.std_return:.2f}"


def summary_tables(cells: list[dict]) -> list[Table]:
    """One table per env family, one row per (algorithm, topology, replay), aggregated over seeds."""
    by_env: dict[str, dict[tuple[str, str, str], list[dict]]] = {}
    for cell in cells:
        # Entries of one plugin with different parameters (the cell's "variant") stay apart.
        algorithm = str(cell.get("algorithm")) + (f" ({cell['variant']})" if cell.get("variant") else "")
        key = (algorithm, str(cell.get("topology")), str(cell.get("replay")))
        by_env.setdefault(str(cell.get("env")), {}).setdefault(key, []).append(cell)

    tables = []
    for env in sorted(by_env):
        rows = [_aggregate(key, group) for key, group in by_env[env].items()]
        # Best mean return first; rows without a measured return go last, ties by name for stability.
        rows.sort(
            key=lambda r: (
                r.mean_return is None,
                -(r.mean_return or 0.0),
                (r.algorithm, r.topology, r.replay),
            )
        )
        table = Table(title=env, title_style="bold", show_lines=False)
        table.add_column("Algorithm")
        table.add_column("Topology")
        table.add_column("Replay")
        table.add_column("Seeds", justify="right")
        table.add_column("Final return", justify="right")
        table.add_column("Success", justify="right")
        table.add_column("Steps/s", justify="right")
        table.add_column("Wall time", justify="right")
        for row in rows:
            table.add_row(
                row.algorithm,
                row.topology,
                row.replay,
                _seeds_text(row),
                _return_text(row),
                "—" if row.success is None else f"{row.success * 100:.1f}%",
                "—" if row.steps_per_s is None else count(row.steps_per_s),
                duration(row.wall_time_s),
            )
        tables.append(table)
    return tables


def print_summary(console: Console, cells: list[dict]) -> None:
    """Print the per-env-family summary tables, or a line saying there is nothing to summarise."""
    tables = summary_tables(cells)
    if not tables:
        console.print("No cells to summarise.", highlight=False)
        return
    for table in tables:
        console.print(table)
    completed = sum(c.get("status") == "completed" for c in cells)
    if completed == 0:
        console.print(Text("No cell completed; no final metrics to compare.", style="yellow"))
