"""A truncated or corrupted results file is a one-line error naming it (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import Cell, bench, write_run

from benchbase.errors import UserError
from benchbase.report.build import load_runs

CELLS = [Cell("ring", 0), Cell("ring", 1)]


def _file(run: Path, which: str) -> Path:
    """The file a case breaks: cells.parquet, or a learner file of the second cell (its learner 1,
    so that the file read for the schema version is not the broken one)."""
    if which == "cells":
        return run / "cells.parquet"
    cell_id = sorted(cell.cell_id for cell in CELLS)[1]
    return run / which / cell_id / "learner-1.parquet"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _pages(path: Path) -> None:
    """Header and footer kept, everything between overwritten."""
    data = path.read_bytes()
    path.write_bytes(data[:64] + b"\xff" * (len(data) - 128) + data[-64:])


@pytest.mark.parametrize(
    "which, damage",
    [
        ("cells", _truncate),
        ("cells", _garbage),
        ("evaluations", _truncate),
        ("episodes", _garbage),
        ("metrics", _empty),
        ("episodes", _pages),
    ],
)
def test_a_broken_file_is_one_error_naming_it(tmp_path: Path, which: str, damage) -> None:
    run = write_run(tmp_path / "run", CELLS)
    broken = _file(run, which)
    damage(broken)
    with pytest.raises(UserError) as error:
        load_runs([str(run)])
    message = str(error.value)
    assert message.startswith(f"{broken} cannot be read (") and "truncated or corrupted" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "which, damage",
    [("cells", _truncate), ("cells", _garbage), ("evaluations", _garbage), ("episodes", _truncate)],
)
def test_bench_report_on_a_broken_file_exits_2_with_one_line(tmp_path: Path, which: str, damage) -> None:
    run = write_run(tmp_path / "run", CELLS)
    broken = _file(run, which)
    damage(broken)
    result = bench("report", str(run), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "re-run its grid into a new --out folder" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_cells_table_of_another_kind_is_one_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = write_run(tmp_path / "run", CELLS)
    metadata = {b"benchbase.schema_version": b"1"}
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(metadata), run / "cells.parquet")
    with pytest.raises(UserError, match=r"cells.parquet has no cell_id, status, .* columns: not a benchbase cells"):
        load_runs([str(run)])
