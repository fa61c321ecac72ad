"""``jsonl`` and ``csv``: a learner's metric rows appended to ``OUT/live/<cell_id>/learner-<r>.*``.

Each row is flushed as it is written, so ``tail -f`` shows a running cell. A resumed cell appends to
its files (rows from before the checkpoint may then appear twice, as they were logged twice).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TextIO

from benchbase.api.contracts import LiveRun, Logger, MetricRow
from benchbase.api.hookspecs import Register, hookimpl

#: The csv logger's columns: the metrics table's, one line per metric.
CSV_COLUMNS = ("cell_id", "learner", "iteration", "env_step", "cell_env_step", "wall_time_s", "metric", "value")


def live_path(run: LiveRun, suffix: str) -> Path:
    """OUT/live/<cell_id>/learner-<r><suffix>, its folder made."""
    folder = Path(run.out_dir) / "live" / run.cell_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"learner-{run.learner}{suffix}"


class _JsonLinesWriter:
    def __init__(self, run: LiveRun) -> None:
        self.run = run
        self.file: TextIO = live_path(run, ".jsonl").open("a", encoding="utf-8")

    def write(self, row: MetricRow) -> None:
        record: dict[str, Any] = {
            "cell_id": self.run.cell_id,
            "learner": self.run.learner,
            "iteration": row.iteration,
            "env_step": row.env_step,
            "cell_env_step": row.cell_env_step,
            "wall_time_s": row.wall_time_s,
            "metrics": dict(row.values),
        }
        self.file.write(json.dumps(record) + "\n")  # NaN is written as NaN, which Python's json reads back
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _CsvWriter:
    def __init__(self, run: LiveRun) -> None:
        self.run = run
        path = live_path(run, ".csv")
        fresh = not path.exists() or path.stat().st_size == 0
        self.file: TextIO = path.open("a", encoding="utf-8", newline="")
        self.csv = csv.writer(self.file)
        if fresh:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, row: MetricRow) -> None:
        place = (self.run.cell_id, self.run.learner, row.iteration, row.env_step, row.cell_env_step, row.wall_time_s)
        self.csv.writerows((*place, metric, repr(float(value))) for metric, value in row.values.items())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JsonLines(Logger):
    name = "jsonl"
    description = (
        "one JSON object per metric row (iteration, steps, wall time, metrics) in OUT/live/<cell_id>/learner-<r>.jsonl"
    )

    def open(self, params: Any, run: LiveRun) -> _JsonLinesWriter:
        return _JsonLinesWriter(run)


class Csv(Logger):
    name = "csv"
    description = "the metrics table's columns, one line per metric, in OUT/live/<cell_id>/learner-<r>.csv"

    def open(self, params: Any, run: LiveRun) -> _CsvWriter:
        return _CsvWriter(run)


@hookimpl
def register_loggers(register: Register) -> None:
    register(JsonLines())
    register(Csv())
