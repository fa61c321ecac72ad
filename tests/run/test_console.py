"""Tests for the run console: plain log lines, the live display, and the summary tables."""

from __future__ import annotations

import io
import math
import re

import pytest
from rich.console import Console

from benchbase.run import console as console_mod
from benchbase.run.console import GridConsole, print_summary, summary_tables

ANSI = re.compile(r"\x1b\[")
LABEL = "diff-a2c · ring · random-cartpole · none · seed 0"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "learner.py", line 3, in step\n'
    "    raise RuntimeError('loss is NaN')\n"
    "RuntimeError: loss is NaN\n"
)


def make_console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def output(con: Console) -> str:
    return con.file.getvalue()  # type: ignore[attr-defined]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(console_mod, "_clock", fake)
    return fake


# --------------------------------------------------------------------------- plain mode


def test_plain_mode_is_chosen_without_a_terminal() -> None:
    assert GridConsole(1, 100, console=make_console(False)).live is False
    assert GridConsole(1, 100, console=make_console(True)).live is True
    assert GridConsole(1, 100, console=make_console(True), live=False).live is False


def test_plain_mode_prints_start_and_finish_lines_without_ansi(clock: FakeClock) -> None:
    con = make_console(False)
    with GridConsole(3, 3000, console=con, log_interval_s=5.0) as grid:
        grid.skipped(1)
        grid.cell_started("c1", LABEL, 1000, 2)
        grid.progress("c1", 0, 500, 100.0, 1.0)
        clock.now += 12.5
        grid.cell_finished("c1", "completed", 12.5, 1000, 80.0, None)
        grid.cell_started("c2", "diff-a2c · ring · random-cartpole · none · seed 1", 1000, 2)
        grid.cell_finished("c2", "failed", 3.0, 200, 66.0, TRACEBACK)
        grid.message("a note [not markup]")
    text = output(con)
    assert not ANSI.search(text)
    assert "━" not in text  # no progress bars in logs
    assert "Skipping 1 cell already completed" in text
    assert f"▶ {LABEL} (budget 1k env steps, 2 learners)" in text
    assert f"[2/3] ✓ {LABEL}  12.5s  80 steps/s" in text
    assert "[3/3] ✗ diff-a2c · ring · random-cartpole · none · seed 1" in text
    assert "failed" in text
    # Only the last line of the traceback is shown.
    assert "RuntimeError: loss is NaN" in text
    assert "Traceback" not in text
    assert "a note [not markup]" in text
    assert "1 completed, 1 failed, 1 skipped" in text


def test_plain_mode_rate_limits_progress_lines(clock: FakeClock) -> None:
    con = make_console(False)
    with GridConsole(1, 2000, console=con, log_interval_s=10.0) as grid:
        grid.cell_started("c1", LABEL, 2000, 2)
        for step in range(100):  # many reports inside one interval: no progress line yet
            grid.progress("c1", step % 2, step, 10.0, None)
        grid.progress("c1", 1, 400, 50.0, 4.0)
        assert "…" not in output(con)

        clock.now += 10.0
        grid.progress("c1", 0, 600, 150.0, 2.0)  # interval elapsed: one line
        grid.progress("c1", 1, 400, 50.0, 4.0)  # same instant: rate-limited
        clock.now += 3.0
        grid.progress("c1", 1, 500, 50.0, 4.0)  # still inside the interval
        clock.now += 7.0
        grid.progress("c1", 1, 600, 50.0, 4.0)
        grid.cell_finished("c1", "completed", 20.0, 2000, 100.0, None)
        grid.progress("c1", 0, 2000, 1.0, 1.0)  # late report after finish is ignored
    lines = [line for line in output(con).splitlines() if "…" in line]
    assert len(lines) == 2
    # Aggregation: steps summed over learners, rates summed, return averaged.
    assert "50% (1k/2k steps), 200 steps/s, return 3.00" in lines[0]
    assert "60% (1.2k/2k steps), 200 steps/s, return 3.00" in lines[1]


def test_plain_mode_logs_each_running_cell_separately(clock: FakeClock) -> None:
    con = make_console(False)
    with GridConsole(2, 200, console=con, log_interval_s=1.0) as grid:
        grid.cell_started("a", "cell A", 100, 1)
        grid.cell_started("b", "cell B", 100, 1)
        clock.now += 1.0
        for _ in range(5):
            grid.progress("a", 0, 10, 1.0, None)
            grid.progress("b", 0, 20, 1.0, None)
    lines = [line for line in output(con).splitlines() if "…" in line]
    assert len(lines) == 2
    assert "cell A: 10%" in lines[0] and "return —" in lines[0]
    assert "cell B: 20%" in lines[1]


def test_interrupted_cell_is_reported(clock: FakeClock) -> None:
    con = make_console(False)
    with GridConsole(1, 100, console=con) as grid:
        grid.cell_started("c1", LABEL, 100, 1)
        grid.cell_finished("c1", "interrupted", 1.0, 40, 40.0, None)
    assert "interrupted" in output(con)
    assert "1 interrupted" in output(con)


# --------------------------------------------------------------------------- live mode


def test_live_mode_runs_and_prints_finished_cells() -> None:
    con = make_console(True)
    with GridConsole(2, 2000, console=con) as grid:
        grid.cell_started("c1", LABEL, 1000, 2)
        grid.cell_started("c2", "diff-a2c · ring · random-cartpole · none · seed 1", 1000, 2)
        for step in range(0, 1000, 100):
            grid.progress("c1", 0, step, 500.0, 1.5)
            grid.progress("c1", 1, step, 500.0, None)
            grid.progress("c2", 0, step, 400.0, 0.5)
        grid.message("halfway")
        grid.cell_finished("c1", "completed", 2.0, 1000, 500.0, None)
        grid.cell_finished("c2", "failed", 1.0, 300, 300.0, TRACEBACK)
    text = output(con)
    assert "✓" in text and LABEL in text
    assert "✗" in text and "RuntimeError: loss is NaN" in text
    assert "halfway" in text
    assert "Grid finished" in text


def test_live_render_shows_grid_bar_and_running_cells(clock: FakeClock) -> None:
    grid = GridConsole(4, 4000, console=make_console(True))
    grid._started_at = clock.now  # what __enter__ would do, without starting the refresh thread
    grid.skipped(1)
    grid.cell_started("c1", LABEL, 1000, 2)
    grid.progress("c1", 0, 250, 100.0, 2.0)
    grid.progress("c1", 1, 250, 100.0, 4.0)
    clock.now += 10.0

    view = make_console(True)
    view.print(grid._render())
    text = output(view)
    assert "1/4 cells" in text
    assert "500/4k env steps" in text
    assert LABEL in text
    assert "50%" in text
    assert "200 steps/s" in text
    assert "return 3.00" in text
    # 500 steps in 10 s -> 50 steps/s; 3500 steps left -> 70 s.
    assert "ETA 1m 10s" in text

    grid.cell_finished("c1", "completed", 10.0, 1000, 100.0, None)
    view = make_console(False)
    view.print(grid._render())
    assert LABEL not in output(view)  # finished cells leave the live area


def test_progress_never_shows_more_steps_than_the_budget(clock: FakeClock) -> None:
    """A learner's last iteration may end past the cell's budget (484k of 480k); progress stops at
    the budget, and the end-of-run summary reports the steps actually taken."""
    grid = GridConsole(1, 480_000, console=make_console(True))
    grid._started_at = clock.now
    grid.cell_started("c1", LABEL, 480_000, 2)
    grid.progress("c1", 0, 242_000, 100.0, 2.0)
    grid.progress("c1", 1, 242_000, 100.0, 2.0)
    clock.now += 10.0
    view = make_console(True)
    view.print(grid._render())
    text = output(view)
    assert "480k/480k" in text and "484k" not in text and "100%" in text

    con = make_console(False)
    with GridConsole(1, 480_000, console=con, log_interval_s=0.0) as plain:
        plain.cell_started("c1", LABEL, 480_000, 2)
        plain.progress("c1", 0, 242_000, 100.0, 2.0)
        plain.progress("c1", 1, 242_000, 100.0, 2.0)
    assert "484k" not in output(con) and "(480k/480k steps)" in output(con)


def test_live_eta_counts_a_failed_cells_whole_budget_as_used(clock: FakeClock) -> None:
    grid = GridConsole(2, 2000, console=make_console(True))
    grid._started_at = clock.now
    grid.cell_started("c1", "a", 1000, 1)
    clock.now += 10.0
    grid.cell_finished("c1", "failed", 10.0, 100, 10.0, "boom")
    view = make_console(False)
    view.print(grid._render())
    # 100 steps in 10 s; 1000 of the 2000 remain (the failed cell's budget is done with) -> 100 s.
    assert "ETA 1m 40s" in output(view)

    grid.cell_started("c2", "b", 1000, 1)
    grid.cell_finished("c2", "completed", 1.0, 990, 990.0, None)
    view = make_console(False)
    view.print(grid._render())
    assert "2/2 cells" in output(view) and "ETA 0.0s" in output(view)


# --------------------------------------------------------------------------- summary


def cell(seed: int, **overrides: object) -> dict:
    base = dict(
        cell_id=f"id{seed}",
        algorithm="diff-a2c",
        topology="ring",
        env="random-cartpole",
        replay="none",
        seed=seed,
        status="completed",
        error=None,
        wall_time_s=10.0,
        env_steps=1000,
        steps_per_second=100.0,
        final_return=10.0,
        final_success=0.5,
    )
    base.update(overrides)
    return base


def render(tables: list) -> str:
    con = make_console(False)
    for table in tables:
        con.print(table)
    return output(con)


def test_summary_groups_by_env_family_and_aggregates_over_seeds() -> None:
    cells = [
        cell(0, final_return=10.0, final_success=0.5, steps_per_second=100.0),
        cell(1, final_return=20.0, final_success=1.0, steps_per_second=300.0),
        cell(2, status="failed", error="x", final_return=None, wall_time_s=5.0),
        cell(0, topology="star", final_return=30.0, final_success=0.25),
        cell(0, env="meta-world", final_return=1.0),
    ]
    tables = summary_tables(cells)
    assert [t.title for t in tables] == ["meta-world", "random-cartpole"]
    assert tables[1].row_count == 2

    text = render(tables[1:])
    ring = next(line for line in text.splitlines() if "ring" in line)
    assert "2/3 (1 failed)" in ring
    assert "15.00 ± 7.07" in ring  # sample std of {10, 20}
    assert "75.0%" in ring
    assert "200" in ring  # mean steps/s over completed seeds
    assert "25.0s" in ring  # wall time summed over every cell, failed included
    # Sorted by mean final return, best first: star (30) above ring (15).
    assert text.index("star") < text.index("ring")


def test_summary_tolerates_missing_metrics_and_no_completed_cells() -> None:
    cells = [
        cell(0, final_return=math.nan, final_success=None),
        cell(1, final_return=None, final_success=math.nan),
        cell(0, algorithm="ppo", status="failed", error="boom", final_return=None),
        cell(1, algorithm="ppo", status="interrupted", final_return=None),
    ]
    text = render(summary_tables(cells))
    ppo = next(line for line in text.splitlines() if "ppo" in line)
    assert "0/2 (1 failed, 1 interrupted)" in ppo
    a2c = next(line for line in text.splitlines() if "diff-a2c" in line)
    assert "2/2" in a2c and "—" in a2c and "nan" not in a2c.lower()


def test_summary_single_seed_shows_mean_without_std() -> None:
    text = render(summary_tables([cell(0, final_return=12.345)]))
    assert "12.35" in text and "±" not in text


def test_print_summary_handles_empty_and_all_failed() -> None:
    con = make_console(False)
    print_summary(con, [])
    assert "No cells to summarise" in output(con)

    con = make_console(False)
    print_summary(con, [cell(0, status="failed", error="boom", final_return=None)])
    text = output(con)
    assert "random-cartpole" in text
    assert "0/1 (1 failed)" in text
    assert "No cell completed" in text
