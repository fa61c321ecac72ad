"""Writing a `Report`: the leaderboard as an Arrow table (`leaderboard.parquet`), and the report
folder with it, `report.md` and `report.html`.

Leaderboard columns: `rank` is the standard competition ranking ("1, 1, 3") of the IQM point
estimate, equal scores sharing a rank (null: no score); `runs` the independent seeds behind an
entry (the fewest on any of its env families); `setting` what sets an entry apart from others
with the same algorithm, topology, replay and variant (a start from checkpoints, a budget, …). An
interval from fewer than 2 runs is null (its `_low` and `_high` columns), its point estimate kept.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchbase.errors import UserError
from benchbase.report.model import Report, ranks
from benchbase.results import write_atomic

__all__ = ["LEADERBOARD_SCHEMA_VERSION", "leaderboard_arrow", "write_report"]

LEADERBOARD_SCHEMA_VERSION = 2  # 2: runs count seeds, rank may be null (ties share), a setting column

_TEXT_COLUMNS = ("entry", "algorithm", "topology", "replay", "variant", "setting")
_ESTIMATE_COLUMNS = ("iqm", "median", "mean", "optimality_gap", "auc", "probability_of_improvement")
_COST_COLUMNS = ("steps_per_second", "wall_time_s", "bytes_sent_per_learner", "consensus_distance")


def _optional(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def leaderboard_arrow(report: Report) -> pa.Table:
    """The leaderboard as an Arrow table: one row per entry, estimates as value/low/high columns."""
    columns: dict[str, list[Any]] = {name: [] for name in ("rank", *_TEXT_COLUMNS, "runs", "excluded")}
    for name in _ESTIMATE_COLUMNS:
        for suffix in ("", "_low", "_high"):
            columns[name + suffix] = []
    for name in _COST_COLUMNS:
        columns[name] = []
    for rank, row in zip(ranks(report.leaderboard), report.leaderboard):
        columns["rank"].append(rank)
        for name in (*_TEXT_COLUMNS, "runs", "excluded"):
            columns[name].append(getattr(row, name))
        for name in _ESTIMATE_COLUMNS:
            estimate = getattr(row, name)
            for suffix, part in (("", "value"), ("_low", "low"), ("_high", "high")):
                columns[name + suffix].append(None if estimate is None else _optional(getattr(estimate, part)))
        for name in _COST_COLUMNS:
            columns[name].append(_optional(getattr(row, name)))
    fields = [
        pa.field(
            name,
            pa.int64()
            if name in ("rank", "runs", "excluded")
            else pa.string()
            if name in _TEXT_COLUMNS
            else pa.float64(),
        )
        for name in columns
    ]
    metadata = {
        "benchbase.table": "leaderboard",
        "benchbase.schema_version": str(LEADERBOARD_SCHEMA_VERSION),
        "benchbase.metric": report.metric,
        "benchbase.split": report.split,
        "benchbase.baseline": report.baseline or "",
        "benchbase.checkpoints.sources": json.dumps(report.sources),
        "benchbase.repetitions": str(report.repetitions),
        "benchbase.confidence": str(report.confidence),
        "benchbase.score_kinds": json.dumps(report.score_kinds, sort_keys=True),
        "benchbase.rank": "standard competition ranking of the IQM point estimate: equal scores share a rank (1, 1, 3)",
        "benchbase.runs": "independent seeds per env family, the fewest over the entry's families",
    }
    return pa.Table.from_pydict(columns, schema=pa.schema(fields, metadata=metadata))


def _shared(write: Any) -> Any:
    def write_then_share(temporary: str) -> None:
        write(temporary)
        os.chmod(temporary, 0o644)  # the temporary file is private (mkstemp); a report is for sharing

    return write_then_share


def _text(content: str) -> Any:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(content)

    return write


def write_report(report: Report, out_dir: Path | str, *, html: bool = True) -> list[Path]:
    """Write leaderboard.parquet, report.md and (unless html=False) report.html into `out_dir`.

    Everything is rendered before anything is written, and each file is written to a temporary
    name and renamed, so a failure leaves the folder as it was, file by file.
    """
    from benchbase.report.text import render_markdown

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the report")
    table = leaderboard_arrow(report)
    texts = {"report.md": render_markdown(report)}
    if html:
        from benchbase.report.html import render_html

        texts["report.html"] = render_html(report)
    written = [out / "leaderboard.parquet"]
    write_atomic(written[0], _shared(lambda temporary: pq.write_table(table, temporary)))
    for name, content in texts.items():
        written.append(out / name)
        write_atomic(written[-1], _shared(_text(content)))
    return written
