"""Writing a `Report`: the leaderboard and the learning curves as Arrow tables
(`leaderboard.parquet`, `curves.parquet`), and the report folder with them, `report.md` and
`report.html`.

Leaderboard columns: `rank` is the standard competition ranking ("1, 1, 3") of the IQM point
estimate, equal scores sharing a rank (null: no score); `runs` the independent seeds behind an
entry (the fewest on any of its env families); `setting` what sets an entry apart from others
with the same algorithm, topology, replay and variant (a start from checkpoints, a budget, …). An
interval from fewer than 2 runs is null (its `_low` and `_high` columns), its point estimate kept.

Curves columns, one row per point of a curve (an entry on a task, i.e. an env family with its
non-default parameters):

- `source`: `evaluation` (the greedy evaluations) or `training` (the training episodes of the
  stochastic policy, binned: `benchbase.report.training`);
- `entry`, `family`: the curve's entry label and task; `point`: 0, 1, … along the curve;
- `env_step`: the x axis, the cell's env steps with all its learners together: an evaluation's
  mean `cell_env_step`, a training bin's middle; `bin_start`, `bin_end`: the training bin
  (start, end] in env steps (null for evaluations);
- `score`, `score_low`, `score_high`: the mean normalised score over runs (the success rate where
  the family records success, else the normalised or raw return, as the leaderboard's
  `score_kinds` metadata says) with its bootstrap interval over runs, null from fewer than 2
  runs;
- `runs`: the independent seeds behind the point (a training bin: those with episodes in it);
- `episode_return`: training only, the mean over runs of the bin's mean raw return;
  `episodes`: training only, the training episodes in the bin over all runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchbase.errors import UserError
from benchbase.report.model import Curve, Report, TrainingCurve, ranks
from benchbase.report.training import TRAINING_BINS
from benchbase.results import write_atomic

__all__ = ["CURVES_SCHEMA", "LEADERBOARD_SCHEMA_VERSION", "curves_arrow", "leaderboard_arrow", "write_report"]

LEADERBOARD_SCHEMA_VERSION = 2  # 2: runs count seeds, rank may be null (ties share), a setting column
CURVES_SCHEMA_VERSION = 1

CURVES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("entry", pa.string()),
        pa.field("family", pa.string()),
        pa.field("point", pa.int64()),
        pa.field("env_step", pa.float64()),
        pa.field("bin_start", pa.float64()),
        pa.field("bin_end", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("score_low", pa.float64()),
        pa.field("score_high", pa.float64()),
        pa.field("runs", pa.int64()),
        pa.field("episode_return", pa.float64()),
        pa.field("episodes", pa.int64()),
    ]
)

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


def _curve_rows(curve: Curve, source: str, columns: dict[str, list[Any]]) -> None:
    training = isinstance(curve, TrainingCurve)
    for point in range(len(curve.steps)):
        columns["source"].append(source)
        columns["entry"].append(curve.entry)
        columns["family"].append(curve.family)
        columns["point"].append(point)
        columns["env_step"].append(_optional(curve.steps[point]))
        columns["score"].append(_optional(curve.mean[point]))
        columns["score_low"].append(_optional(curve.low[point]))
        columns["score_high"].append(_optional(curve.high[point]))
        columns["runs"].append(None if curve.runs is None else int(curve.runs[point]))
        for name in ("bin_start", "bin_end", "episode_return"):
            columns[name].append(_optional(getattr(curve, name)[point]) if training else None)
        columns["episodes"].append(int(curve.episodes[point]) if training else None)


def curves_arrow(report: Report) -> pa.Table:
    """Every learning curve as an Arrow table: one row per point, evaluation curves first (the
    columns are in the module docstring)."""
    columns: dict[str, list[Any]] = {name: [] for name in CURVES_SCHEMA.names}
    for curve in report.curves:
        _curve_rows(curve, "evaluation", columns)
    for curve in report.training_curves:
        _curve_rows(curve, "training", columns)
    metadata = {
        "benchbase.table": "curves",
        "benchbase.schema_version": str(CURVES_SCHEMA_VERSION),
        "benchbase.split": report.split,
        "benchbase.score_kinds": json.dumps(report.score_kinds, sort_keys=True),
        "benchbase.repetitions": str(report.repetitions),
        "benchbase.confidence": str(report.confidence),
        "benchbase.training_bins": str(TRAINING_BINS),
        "benchbase.env_step": "the cell's env steps, all its learners together",
    }
    return pa.Table.from_pydict(columns, schema=CURVES_SCHEMA.with_metadata(metadata))


def _text(content: str) -> Any:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(content)

    return write


def write_report(report: Report, out_dir: Path | str, *, html: bool = True) -> list[Path]:
    """Write leaderboard.parquet, report.md, (unless html=False) report.html and curves.parquet
    into `out_dir`; the paths in that order.

    Everything is rendered before anything is written, and each file is written to a temporary
    name and renamed, so a failure leaves the folder as it was, file by file.
    """
    from benchbase.report.text import render_markdown

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the report")
    tables = {"leaderboard.parquet": leaderboard_arrow(report), "curves.parquet": curves_arrow(report)}
    texts = {"report.md": render_markdown(report)}
    if html:
        from benchbase.report.html import render_html

        texts["report.html"] = render_html(report)
    # In this order (curves.parquet last: it came later, and callers index the others).
    contents: list[tuple[str, Any]] = [("leaderboard.parquet", tables["leaderboard.parquet"])]
    contents += [(name, _text(content)) for name, content in texts.items()]
    contents.append(("curves.parquet", tables["curves.parquet"]))
    written = []
    for name, content in contents:
        written.append(out / name)
        if isinstance(content, pa.Table):
            write_atomic(written[-1], lambda temporary, table=content: pq.write_table(table, temporary))
        else:
            write_atomic(written[-1], content)  # with the umask's mode, like every results file
    return written
