"""`bench report`: synthetic results folders written with the real schemas, then one real tiny run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchbase.errors import UserError
from benchbase.report.build import build_report, env_registry, load_runs, write_report
from benchbase.report.html import render_html
from benchbase.report.model import runs_warning
from benchbase.report.stats import wilson_interval
from benchbase.report.text import leaderboard_table, render_markdown
from benchbase.results import (
    EPISODES_SCHEMA,
    EVALUATIONS_SCHEMA,
    METRICS_SCHEMA,
    RunFolder,
    write_table,
)

REPETITIONS = 200  # enough for the tests; the default is 2000
PENDULUM_RANDOM, PENDULUM_REFERENCE = -1222.0, -150.0
SPLITS = {"random-cartpole": ("D", "R", "E")}  # held-out splits of the families used here
SUCCESS_FAMILIES = {"random-cartpole", "CartPole-v1"}
EPISODES_PER_SPLIT = 20  # per learner and evaluation: success rates in steps of 0.05


@pytest.fixture(scope="module")
def registry():
    return env_registry()


@dataclass
class Cell:
    """One synthetic cell. `curve`: its score at each evaluation (success rate, or the return for
    families without success); `held_out`: its final score per held-out split (default: the
    curve's last value)."""

    topology: str = "ring"
    seed: int = 0
    env: str = "random-cartpole"
    algorithm: str = "diff-a2c"
    replay: str = "none"
    variant: str = ""
    status: str = "completed"
    error: str | None = None
    curve: tuple[float, ...] = (0.5, 1.0)
    held_out: dict[str, float] = field(default_factory=dict)
    learners: int = 2
    consensus: float | None = 0.1
    evaluated: bool = True
    budget: int = 1000
    steps_per_second: float = 1000.0
    wall_time_s: float = 10.0
    bytes_sent: float = 2048.0
    init_from: dict | None = None  # `bench run --init-from`: the checkpoints' source, in the config

    @property
    def cell_id(self) -> str:
        key = f"{self.algorithm}|{self.topology}|{self.env}|{self.replay}|{self.seed}|{self.variant}|{self.budget}"
        if self.init_from is not None:
            key += f"|{self.init_from['cell_id']}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def config(self) -> dict:
        config = {"env_steps": self.budget, "seed": self.seed}
        return config if self.init_from is None else {**config, "init_from": self.init_from}


def _cell_row(cell: Cell) -> dict:
    completed = cell.status == "completed"
    return {
        "cell_id": cell.cell_id,
        "algorithm": cell.algorithm,
        "topology": cell.topology,
        "env": cell.env,
        "replay": cell.replay,
        "variant": cell.variant,
        "seed": cell.seed,
        "learners": cell.learners,
        "status": cell.status,
        "error": cell.error,
        "wall_time_s": cell.wall_time_s,
        "startup_s": 0.1,
        "env_steps": cell.budget if completed else None,
        "steps_per_second": cell.steps_per_second if completed else None,
        "final_return": None,
        "final_success": None,
        "bytes_sent_per_learner": cell.bytes_sent if completed else None,
        "transport": "shm" if completed else None,
        "config": json.dumps(cell.config, sort_keys=True),
    }


def _evaluations(cell: Cell, learner: int) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in EVALUATIONS_SCHEMA.names}
    has_success = cell.env in SUCCESS_FAMILIES
    points = len(cell.curve)
    for k, score in enumerate(cell.curve, start=1):
        final = k == points
        for split in ("train", *SPLITS.get(cell.env, ())):
            value = cell.held_out.get(split, score) if final else score
            for i in range(EPISODES_PER_SPLIT):
                success = i < round(value * EPISODES_PER_SPLIT) if has_success else None
                step = cell.budget * k // points
                row = {
                    "cell_id": cell.cell_id,
                    "learner": learner,
                    "evaluation": k,
                    "final": final,
                    "env_step": step // cell.learners,
                    "cell_env_step": step,
                    "split": split,
                    "task_id": f"{split}-{i}",
                    "task_params": [("length", 0.5)],
                    "episode_return": (500.0 if success else 20.0) if has_success else float(value),
                    "episode_length": 10,
                    "success": success,
                    "wall_time_s": 1.0,
                }
                for name, column in columns.items():
                    column.append(row.get(name))  # bench eval's columns are null in training's rows
    return pa.Table.from_pydict(columns, schema=EVALUATIONS_SCHEMA)


def _episodes(cell: Cell, learner: int, count: int = 20) -> pa.Table:
    """`count` training episodes evenly over the budget; the score climbs along `cell.curve`."""
    has_success = cell.env in SUCCESS_FAMILIES
    steps = np.linspace(cell.budget / count, cell.budget, count).astype(np.int64)
    values = np.interp(np.arange(count), np.linspace(0, count - 1, len(cell.curve)), cell.curve)
    return pa.Table.from_pydict(
        {
            "cell_id": [cell.cell_id] * count,
            "learner": [learner] * count,
            "simulator": [0] * count,
            "task_id": ["t"] * count,
            "task_params": [[("length", 0.5)]] * count,
            "env_step": (steps // cell.learners).tolist(),
            "cell_env_step": steps.tolist(),
            "episode_return": [(500.0 if v >= 0.5 else 20.0) if has_success else float(v) for v in values],
            "episode_length": [10] * count,
            "success": [bool(v >= 0.5) for v in values] if has_success else [None] * count,
            "wall_time_s": [1.0] * count,
        },
        schema=EPISODES_SCHEMA,
    )


def _metrics(cell: Cell, learner: int) -> pa.Table:
    rows: dict[str, list] = {name: [] for name in METRICS_SCHEMA.names}
    for iteration in (1, 2, 3):
        names = ["loss", "consensus_distance"] if cell.consensus is not None else ["loss"]
        for metric in names:
            # The last iteration's value: learner r records consensus × (r + 1).
            value = cell.consensus * (learner + 1) if iteration == 3 and metric == "consensus_distance" else 99.0
            values = (
                ("cell_id", cell.cell_id),
                ("learner", learner),
                ("iteration", iteration),
                ("env_step", iteration),
                ("cell_env_step", iteration * 2),
                ("wall_time_s", 1.0),
                ("metric", metric),
                ("value", value),
            )
            for name, v in values:
                rows[name].append(v)
    return pa.Table.from_pydict(rows, schema=METRICS_SCHEMA)


def write_run(root: Path, cells: list[Cell]) -> Path:
    folder = RunFolder(root)
    folder.write_cells([_cell_row(cell) for cell in cells])
    for cell in cells:
        if cell.status != "completed":
            continue
        for learner in range(cell.learners):
            evaluations = _evaluations(cell, learner) if cell.evaluated else EVALUATIONS_SCHEMA.empty_table()
            write_table(folder.learner_path("evaluations", cell.cell_id, learner), evaluations)
            write_table(folder.learner_path("episodes", cell.cell_id, learner), _episodes(cell, learner))
            write_table(folder.learner_path("metrics", cell.cell_id, learner), _metrics(cell, learner))
    return root


def report_of(paths: list[Path], registry, **options):
    options.setdefault("repetitions", REPETITIONS)
    return build_report(load_runs([str(p) for p in paths]), registry=registry, **options)


def row(report, entry: str):
    return next(r for r in report.leaderboard if r.entry == entry)


def bench(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


# --------------------------------------------------------------------------------------------
# Reading folders


def test_several_runs_merge_into_one_leaderboard(tmp_path: Path, registry) -> None:
    first = write_run(tmp_path / "a", [Cell("ring", 0, curve=(0.2, 1.0)), Cell("ring", 1, curve=(0.4, 0.8))])
    second = write_run(
        tmp_path / "b",
        [Cell("ring", 2, curve=(0.5, 0.9))]
        + [Cell("isolated", s, curve=(0.1, 0.5), consensus=None, bytes_sent=0.0) for s in range(3)],
    )
    report = report_of([first, second], registry)
    assert [r.entry for r in report.leaderboard] == ["diff-a2c · ring · none", "diff-a2c · isolated · none"]
    ring, isolated = report.leaderboard
    assert ring.runs == 3 and isolated.runs == 3 and ring.excluded == 0
    # Three runs: the IQM keeps all of them (int(0.25 × 3) = 0 cut from each end).
    assert ring.iqm.value == pytest.approx((1.0 + 0.8 + 0.9) / 3)
    assert ring.median.value == pytest.approx(0.9) and isolated.mean.value == pytest.approx(0.5)
    assert ring.optimality_gap.value == pytest.approx((0.0 + 0.2 + 0.1) / 3)
    assert ring.iqm.low <= ring.iqm.value <= ring.iqm.high
    assert ring.consensus_distance == pytest.approx(0.15)  # (0.1 + 0.2) / 2 at the last iteration
    assert isolated.consensus_distance is None and isolated.bytes_sent_per_learner == 0.0
    assert ring.steps_per_second == 1000.0 and ring.wall_time_s == 10.0
    assert report.sources == [str(first), str(second)]
    assert report.problems == [runs_warning(report.leaderboard)]  # 3 seeds: fewer than 5
    assert report.score_kinds == {"random-cartpole": "success rate"}


def test_a_glob_names_many_runs(tmp_path: Path, registry) -> None:
    write_run(tmp_path / "runs" / "a", [Cell("ring", 0)])
    write_run(tmp_path / "runs" / "b", [Cell("ring", 1)])
    (tmp_path / "runs" / "notes.txt").write_text("not a run")
    runs = load_runs([str(tmp_path / "runs" / "*")])
    assert len(runs.sources) == 2 and len(runs.cells) == 2
    with pytest.raises(UserError, match="matches no run folder"):
        load_runs([str(tmp_path / "nothing-*")])
    with pytest.raises(UserError, match=r"holds 2 .*runs/\*"):
        load_runs([str(tmp_path / "runs")])


def test_a_cell_found_twice_is_taken_once_from_its_latest_completed_copy(tmp_path: Path, registry) -> None:
    old = write_run(tmp_path / "old", [Cell("ring", 0, curve=(0.2, 0.2))])
    time.sleep(0.05)
    new = write_run(tmp_path / "new", [Cell("ring", 0, curve=(0.2, 0.8))])
    failed = write_run(tmp_path / "failed", [Cell("ring", 0, status="failed", error="boom")])
    report = report_of([new, old, failed], registry)
    assert row(report, "diff-a2c · ring · none").runs == 1
    assert row(report, "diff-a2c · ring · none").iqm.value == pytest.approx(0.8)
    assert row(report, "diff-a2c · ring · none").excluded == 0
    [line] = [p for p in report.problems if "appears 3 times" in p]
    assert f"using {new}" in line and str(old) in line and "failed" in line


def test_failed_interrupted_and_pending_cells_are_listed_and_left_out(tmp_path: Path, registry) -> None:
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: learner 1 exploded'
    run = write_run(
        tmp_path / "run",
        [
            Cell("ring", 0, curve=(1.0,)),
            Cell("ring", 1, status="failed", error=traceback),
            Cell("ring", 2, status="interrupted"),
            Cell("isolated", 0, status="pending"),
            Cell("isolated", 1, status="failed"),
        ],
    )
    report = report_of([run], registry)
    ring, isolated = row(report, "diff-a2c · ring · none"), row(report, "diff-a2c · isolated · none")
    assert (ring.runs, ring.excluded) == (1, 2) and ring.iqm.value == 1.0
    assert (isolated.runs, isolated.excluded) == (0, 2) and math.isnan(isolated.iqm.value)
    assert report.leaderboard[-1] is isolated  # nothing scored: last
    failed_id = Cell("ring", 1).cell_id
    assert any(failed_id in p and "failed" in p and "RuntimeError: learner 1 exploded" in p for p in report.problems)
    assert any(Cell("ring", 2).cell_id in p and "interrupted" in p for p in report.problems)
    assert any(Cell("isolated", 0).cell_id in p and "pending" in p for p in report.problems)
    assert any(Cell("isolated", 1).cell_id in p and "no error recorded" in p for p in report.problems)
    # Still rendered, with the exclusions visible.
    text = render_markdown(report)
    assert "learner 1 exploded" in text and "| 2 |" in text


def test_missing_seeds_are_reported_and_left_out(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [Cell("ring", s, env="random-cartpole", curve=(1.0,)) for s in range(3)]
        + [Cell("ring", s, env="CartPole-v1", curve=(0.5,)) for s in range(2)],
    )
    report = report_of([run], registry)
    ring = row(report, "diff-a2c · ring · none")
    # Runs are seeds per family, the fewest over its families; the scores pool all 5 cells.
    assert ring.runs == 2 and ring.mean.value == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert any("missing runs (CartPole-v1 2 of 3)" in p for p in report.problems)


def test_an_entry_without_a_family_others_have_is_reported(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [
            Cell("ring", 0, env="CartPole-v1"),
            Cell("ring", 0, env="random-cartpole"),
            Cell("isolated", 0, env="CartPole-v1"),
        ],
    )
    report = report_of([run], registry)
    assert any(p.startswith("diff-a2c · isolated · none: no runs on random-cartpole") for p in report.problems)


def test_an_older_schema_version_is_one_clear_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "old", [Cell("ring", 0)])
    table = pq.read_table(run / "cells.parquet")
    metadata = {**table.schema.metadata, b"benchbase.schema_version": b"0"}
    pq.write_table(table.replace_schema_metadata(metadata), run / "cells.parquet")
    with pytest.raises(UserError) as error:
        load_runs([str(run)])
    message = str(error.value)
    assert str(run) in message and "schema version 0" in message and "reads version 1" in message
    assert "\n" not in message


def test_an_empty_folder_or_one_with_nothing_completed_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a benchbase run folder"):
        load_runs([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no such folder"):
        load_runs([str(tmp_path / "missing")])
    run = write_run(
        tmp_path / "failed", [Cell("ring", 0, status="failed", error="x"), Cell("ring", 1, status="interrupted")]
    )
    with pytest.raises(UserError, match=r"no completed cell \(1 failed, 1 interrupted\): nothing to report"):
        load_runs([str(run)])
    RunFolder(tmp_path / "none").write_cells([])
    with pytest.raises(UserError, match="no cells listed"):
        load_runs([str(tmp_path / "none")])


# --------------------------------------------------------------------------------------------
# Scores


def test_scores_are_success_rates_normalised_returns_or_raw_returns(tmp_path: Path, registry) -> None:
    returns = (-1222.0, -686.0)  # random, then halfway to the reference
    run = write_run(
        tmp_path / "run",
        [
            Cell("ring", 0, env="CartPole-v1", curve=(0.25, 0.75)),
            Cell("ring", 0, env="Pendulum-v1", curve=returns),
            Cell("ring", 0, env="NoSuchEnv-v0", curve=(10.0, 42.0)),
        ],
    )
    report = report_of([run], registry, group_by=["algorithm"])
    assert report.score_kinds == {
        "CartPole-v1": "success rate",
        "Pendulum-v1": "normalised return",
        "NoSuchEnv-v0": "raw return",
    }
    assert report.score_ranges == {"Pendulum-v1": (PENDULUM_RANDOM, PENDULUM_REFERENCE)}
    halfway = (returns[1] - PENDULUM_RANDOM) / (PENDULUM_REFERENCE - PENDULUM_RANDOM)
    finals = {c.family: c.score.value for c in report.generalisation}
    assert finals == pytest.approx({"CartPole-v1": 0.75, "Pendulum-v1": halfway, "NoSuchEnv-v0": 42.0})
    assert any("NoSuchEnv-v0 is not installed here: scored by its raw return" in p for p in report.problems)
    assert any("raw returns are pooled" in p for p in report.problems)
    assert "(R − -1,222) / (-150 − -1,222)" in render_markdown(report)


def test_raw_returns_only_give_profiles_over_the_data_range(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", s, env="NoSuchEnv-v0", curve=(s * 10.0,)) for s in range(3)])
    report = report_of([run], registry)
    [profile] = report.profiles
    assert profile.thresholds[0] == 0.0 and profile.thresholds[-1] == 20.0 and len(profile.thresholds) == 101


def test_area_under_the_curve_and_the_final_score_rank_differently(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [
            Cell("late", 0, curve=(0.0, 0.0, 0.0, 1.0)),  # final 1.0, AUC 0.25
            Cell("steady", 0, curve=(0.8, 0.8, 0.8, 0.9)),  # final 0.9, AUC 0.825
        ],
    )
    final = report_of([run], registry)
    auc = report_of([run], registry, metric="auc")
    assert [r.topology for r in final.leaderboard] == ["late", "steady"]
    assert [r.topology for r in auc.leaderboard] == ["steady", "late"]
    assert row(final, "diff-a2c · late · none").auc.value == pytest.approx(0.25)
    assert row(auc, "diff-a2c · steady · none").iqm.value == pytest.approx(0.825)
    curve = next(c for c in final.curves if c.entry == "diff-a2c · late · none")
    assert curve.steps.tolist() == [250, 500, 750, 1000] and curve.mean.tolist() == pytest.approx([0, 0, 0, 1])
    with pytest.raises(UserError, match='unknown metric "fnal"; did you mean "final"'):
        report_of([run], registry, metric="fnal")


def test_a_held_out_split_ranks_and_the_generalisation_table_has_every_split(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [
            Cell("ring", 0, curve=(1.0,), held_out={"D": 1.0, "R": 0.8, "E": 0.3}),
            Cell("isolated", 0, curve=(0.6,), held_out={"D": 0.6, "R": 0.6, "E": 0.6}),
        ],
    )
    train = report_of([run], registry)
    extreme = report_of([run], registry, split="E")
    assert train.leaderboard[0].topology == "ring" and extreme.leaderboard[0].topology == "isolated"
    cells = {(c.entry, c.split): c.score.value for c in train.generalisation}
    assert cells[("diff-a2c · ring · none", "R")] == pytest.approx(0.8)
    assert {split for _, split in cells} == {"train", "D", "R", "E"}
    assert "E (extrapolation)" in render_markdown(train)
    no_split = r'no evaluations on split "e"; did you mean "E"\? \(available: train, D, R, E\)'
    with pytest.raises(UserError, match=no_split):
        report_of([run], registry, split="e")


def test_a_family_without_the_chosen_split_is_left_out_and_said_so(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", 0, env="random-cartpole"), Cell("ring", 0, env="CartPole-v1")])
    report = report_of([run], registry, split="D")
    assert row(report, "diff-a2c · ring · none").runs == 1
    assert any("CartPole-v1 has no evaluations on split D" in p for p in report.problems)


def test_cells_without_evaluations_are_scored_from_training_episodes(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run", [Cell("ring", 0, curve=(0.0, 1.0), evaluated=False), Cell("isolated", 0, curve=(0.0, 0.0))]
    )
    report = report_of([run], registry)
    assert row(report, "diff-a2c · ring · none").iqm.value == 1.0
    assert any("no evaluations" in p and "training episodes" in p for p in report.problems)


# --------------------------------------------------------------------------------------------
# Entries, baseline, statistics


def test_group_by_pools_what_is_left_out(tmp_path: Path, registry) -> None:
    cells = [Cell(t, s, curve=(v,)) for t, v in (("ring", 1.0), ("isolated", 0.5)) for s in range(2)]
    run = write_run(tmp_path / "run", cells)
    report = report_of([run], registry, group_by=["algorithm"])
    [entry] = report.leaderboard
    assert entry.entry == "diff-a2c" and entry.runs == 2 and entry.topology == "*"  # 4 cells, 2 seeds
    assert entry.mean.value == pytest.approx(0.75)
    with pytest.raises(UserError, match='cannot group by "topolgy"; did you mean "topology"'):
        report_of([run], registry, group_by=["topolgy"])


def test_parameters_split_entries_and_env_parameters_split_tasks(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [
            Cell("ring", 0),
            Cell("ring", 0, variant="diff-a2c.lr=0.002"),
            Cell("ring", 1, variant="diff-a2c.lr=0.002 random-cartpole.resample=True"),
        ],
    )
    report = report_of([run], registry)
    entries = {r.entry for r in report.leaderboard}
    assert entries == {"diff-a2c · ring · none", "diff-a2c · ring · none (diff-a2c.lr=0.002)"}
    assert set(report.score_kinds) == {"random-cartpole", "random-cartpole (resample=True)"}


def test_baseline_column_and_probability_of_improvement(tmp_path: Path, registry) -> None:
    run = write_run(
        tmp_path / "run",
        [
            Cell(t, s, curve=(v + 0.05 * s,))
            for t, v in (("ring", 0.8), ("isolated", 0.2), ("random", 0.5))
            for s in range(3)
        ],
    )
    report = report_of([run], registry, baseline="isolated")
    assert report.baseline == "diff-a2c · isolated · none"
    assert row(report, "diff-a2c · ring · none").probability_of_improvement.value == 1.0
    assert row(report, "diff-a2c · isolated · none").probability_of_improvement is None
    assert len(report.improvements) == 6  # every ordered pair of 3 entries
    pairs = {(i.better, i.worse): i.probability.value for i in report.improvements}
    assert pairs[("diff-a2c · isolated · none", "diff-a2c · random · none")] == 0.0
    assert len(report.profiles) == 3 and report.profiles[0].fraction[0] == 1.0
    table = leaderboard_table(report)
    assert "P(>base)" in [column.header for column in table.columns]
    with pytest.raises(UserError, match='unknown baseline entry "rnig"; did you mean "ring"'):
        report_of([run], registry, baseline="rnig")
    with pytest.raises(UserError, match='baseline "diff-a2c" matches 3 entries'):
        report_of([run], registry, baseline="diff-a2c")


def test_many_entries_compare_with_the_baseline_or_the_leader_only(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell(f"t{k}", 0, curve=(k / 10,)) for k in range(10)])
    report = report_of([run], registry)
    assert len(report.improvements) == 9 and {i.worse for i in report.improvements} == {"diff-a2c · t9 · none"}
    report = report_of([run], registry, baseline="t3")
    assert {i.worse for i in report.improvements} == {"diff-a2c · t3 · none"}
    assert all(r.probability_of_improvement is not None for r in report.leaderboard if r.topology != "t3")


def test_intervals_are_seeded(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", s, curve=(0.1 * s,)) for s in range(6)])
    a, b = report_of([run], registry, seed=3), report_of([run], registry, seed=3)
    assert a.leaderboard[0].iqm == b.leaderboard[0].iqm
    with pytest.raises(UserError, match="confidence"):
        report_of([run], registry, confidence=95)


# --------------------------------------------------------------------------------------------
# Writing, and the CLI


def test_write_report_writes_parquet_markdown_and_html(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", 0), Cell("isolated", 0, status="failed", error="bad")])
    report = report_of([run], registry, baseline="ring")
    written = write_report(report, tmp_path / "out")
    assert [p.name for p in written] == ["leaderboard.parquet", "report.md", "report.html", "curves.parquet"]
    table = pq.read_table(tmp_path / "out" / "leaderboard.parquet")
    assert table.schema.metadata[b"benchbase.table"] == b"leaderboard"
    rows = table.to_pylist()
    assert rows[0]["entry"] == "diff-a2c · ring · none" and rows[0]["iqm"] == 1.0 and rows[1]["excluded"] == 1
    assert rows[1]["iqm"] is None and rows[0]["probability_of_improvement"] is None
    markdown = (tmp_path / "out" / "report.md").read_text()
    for heading in (
        "## Leaderboard",
        "## Generalisation",
        "## Probability of improvement",
        "## Problems",
        "## How scores were normalised",
    ):
        assert heading in markdown
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "diff-a2c · ring · none" in html
    assert [p.name for p in write_report(report, tmp_path / "plain", html=False)] == [
        "leaderboard.parquet",
        "report.md",
        "curves.parquet",
    ]
    assert not (tmp_path / "plain" / "report.html").exists()


def test_cli_report_end_to_end(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "a", [Cell("ring", 0), Cell("isolated", 0, curve=(0.2,))])
    write_run(tmp_path / "runs" / "b", [Cell("ring", 1), Cell("isolated", 1, status="failed", error="oops")])
    result = bench(
        "report", str(tmp_path / "runs" / "*"), "--baseline", "isolated", "--repetitions", "300", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Leaderboard" in result.stdout and "diff-a2c · ring · none" in result.stdout and "oops" in result.stdout
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "leaderboard.parquet",
        "curves.parquet",
        "report.md",
        "report.html",
    }
    single = bench("report", str(tmp_path / "runs" / "a"), "--no-html", "--group-by", "algorithm", "--metric", "auc")
    assert single.returncode == 0, single.stderr
    assert {p.name for p in (tmp_path / "runs" / "a" / "report").iterdir()} == {
        "leaderboard.parquet",
        "curves.parquet",
        "report.md",
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["{runs}/a", "--baseline", "rnig"], 'did you mean "ring"'),
        (["{runs}/a", "--split", "X"], 'no evaluations on split "X"'),
        (["{runs}/a", "--metric", "best"], 'unknown metric "best"'),
        (["{runs}/a", "--group-by", "algo"], 'cannot group by "algo"'),
        (["{runs}/empty"], "empty: not a benchbase run folder"),
        (["{runs}/old"], "schema version 0"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "a", [Cell("ring", 0)])
    (runs / "empty").mkdir()
    write_run(runs / "old", [Cell("ring", 0)])
    table = pq.read_table(runs / "old" / "cells.parquet")
    pq.write_table(table.replace_schema_metadata({b"benchbase.schema_version": b"0"}), runs / "old" / "cells.parquet")
    result = bench("report", *[a.format(runs=runs) for a in args], "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_real_tiny_run_ends_with_its_leaderboard_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = bench(
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "ring",
        "-t",
        "isolated",
        "-e",
        "CartPole-v1",
        "--learners",
        "2",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "400",
        "--evaluations",
        "2",
        "--eval-episodes",
        "1",
        "--seeds",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    tail = result.stdout[result.stdout.index("Leaderboard") :]
    assert "diff-a2c · ring · none" in tail and "diff-a2c · isolated · none" in tail
    assert "warning" not in result.stdout
    report = bench("report", str(out), "--baseline", "isolated", "--repetitions", "500")
    assert report.returncode == 0, report.stderr
    assert {p.name for p in (out / "report").iterdir()} == {
        "leaderboard.parquet",
        "report.md",
        "report.html",
        "curves.parquet",
    }
    curves = pq.read_table(out / "report" / "curves.parquet").to_pylist()
    training = [c for c in curves if c["source"] == "training"]
    assert {c["source"] for c in curves} == {"evaluation", "training"} and sum(c["episodes"] for c in training) > 0
    assert all(0 < c["env_step"] < 400 and c["bin_start"] < c["env_step"] < c["bin_end"] for c in training)
    rows = pq.read_table(out / "report" / "leaderboard.parquet").to_pylist()
    assert {r["runs"] for r in rows} == {2} and all(r["steps_per_second"] > 0 for r in rows)
    ring = next(r for r in rows if r["topology"] == "ring")
    assert ring["bytes_sent_per_learner"] > 0 and ring["consensus_distance"] is not None


def test_the_run_leaderboard_never_fails_the_run(tmp_path: Path, registry) -> None:
    from rich.console import Console

    from benchbase.run.runner import print_leaderboard

    console = Console(record=True, width=200)
    (tmp_path / "empty").mkdir()
    print_leaderboard(console, tmp_path / "empty", registry)
    text = " ".join(console.export_text().split())
    assert text.startswith("warning: no leaderboard (UserError:") and f"try bench report {tmp_path / 'empty'}" in text
    run = write_run(tmp_path / "run", [Cell("ring", 0), Cell("ring", 1, status="failed", error="x")])
    print_leaderboard(console, run, registry, repetitions=100)
    text = console.export_text()
    # The failed cell, and intervals from 1 run.
    assert "Leaderboard" in text and "2 problem(s) behind this leaderboard" in text


def test_the_run_leaderboard_has_the_intervals_of_bench_report(tmp_path: Path, registry) -> None:
    """The end-of-run leaderboard and `bench report` use the same bootstrap (repetitions, seed), so
    the same folder gives the same intervals in both."""
    from rich.console import Console

    from benchbase.report.build import build_report, load_runs
    from benchbase.report.text import leaderboard_table
    from benchbase.run.runner import print_leaderboard

    finals = {("ring", 0): 0.5, ("ring", 1): 0.8, ("isolated", 0): 0.3, ("isolated", 1): 0.6}
    run = write_run(tmp_path / "run", [Cell(t, s, curve=(0.1, final)) for (t, s), final in finals.items()])
    at_end = Console(record=True, width=200)
    print_leaderboard(at_end, run, registry)
    by_report = Console(record=True, width=200)
    by_report.print(leaderboard_table(build_report(load_runs([str(run)]), registry=registry), width=200))
    table = by_report.export_text()
    assert at_end.export_text().startswith(table) and "[0.50, 0.80]" in table
    assert build_report(load_runs([str(run)]), registry=registry).repetitions == 2000


def test_a_family_of_games_is_normalised_game_by_game(tmp_path: Path, registry) -> None:
    """atari-games declares each game's (random, human) scores: a learner 30% of the way from
    random to human on Pong and one 50% of the way on Breakout score 0.3 and 0.5."""
    cell = Cell("isolated", 0, env="atari-games", curve=(0.0, 0.0), evaluated=True)
    run = write_run(tmp_path / "run", [cell])
    pong, breakout = (-20.7, 14.6), (1.7, 30.5)  # the Atari-57 table's random and human scores
    for learner in range(cell.learners):
        path = RunFolder(run).learner_path("evaluations", cell.cell_id, learner)
        table = pq.read_table(path)
        games = ["Pong" if learner == 0 else "Breakout"] * table.num_rows
        fraction = 0.3 if learner == 0 else 0.5
        low, high = pong if learner == 0 else breakout
        table = table.set_column(table.schema.get_field_index("task_id"), "task_id", pa.array(games))
        returns = pa.array([low + fraction * (high - low)] * table.num_rows)
        table = table.set_column(table.schema.get_field_index("episode_return"), "episode_return", returns)
        write_table(path, table)
    report = report_of([run], registry, group_by=["algorithm"])
    assert report.score_kinds == {"atari-games": "normalised return"}
    assert "atari-games" not in report.score_ranges  # one range per game, not per family
    assert row(report, "diff-a2c").iqm.value == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------
# Honest statistics: how many runs stand behind a number, ties, what is pooled


def _console_text(report) -> str:
    from rich.console import Console

    console = Console(record=True, width=240)
    console.print(leaderboard_table(report))
    return console.export_text()


def _seeds(tmp_path: Path, seeds: int) -> Path:
    """ring well above isolated, `seeds` seeds each."""
    cells = [Cell(t, s, curve=(v + 0.01 * s,)) for t, v in (("ring", 0.9), ("isolated", 0.3)) for s in range(seeds)]
    return write_run(tmp_path / f"run{seeds}", cells)


def test_one_seed_gives_no_interval(tmp_path: Path, registry) -> None:
    report = report_of([_seeds(tmp_path, 1)], registry, baseline="isolated")
    ring = row(report, "diff-a2c · ring · none")
    assert ring.runs == 1 and ring.iqm.value == pytest.approx(0.9)
    for estimate in (ring.iqm, ring.median, ring.mean, ring.optimality_gap, ring.auc, ring.probability_of_improvement):
        assert math.isnan(estimate.low) and math.isnan(estimate.high)
    assert all(np.isnan(c.low).all() for c in report.curves) and all(np.isnan(p.low).all() for p in report.profiles)
    written = write_report(report, tmp_path / "out")
    parquet = pq.read_table(written[0]).to_pylist()
    assert parquet[0]["iqm"] == pytest.approx(0.9) and parquet[0]["iqm_low"] is None and parquet[0]["iqm_high"] is None
    assert parquet[0]["probability_of_improvement_low"] is None
    markdown = render_markdown(report)
    assert "| 0.90 [n/a] |" in markdown and "[0.90, 0.90]" not in markdown
    assert '0.900 <span class="ci">[n/a]</span>' in render_html(report)
    assert "0.90 [n/a]" in _console_text(report)
    assert "intervals from 1 run are unreliable" in report.problems[-1]


@pytest.mark.parametrize("seeds", [2, 5])
def test_fewer_than_five_seeds_warn_and_no_text_calls_a_difference_meaningful(
    tmp_path: Path, registry, seeds: int
) -> None:
    report = report_of([_seeds(tmp_path, seeds)], registry, baseline="isolated")
    assert {r.runs for r in report.leaderboard} == {seeds}
    assert all(math.isfinite(r.iqm.low) for r in report.leaderboard)  # 2 runs are enough for an interval
    warning = f"intervals from {seeds} runs are unreliable"
    written = write_report(report, tmp_path / "out")
    texts = {
        "problems": "\n".join(report.problems),
        "markdown": written[1].read_text(),
        "html": written[2].read_text(),
        "console": " ".join(_console_text(report).split()),
    }
    for where, text in texts.items():
        assert (warning in text) == (seeds < 5), where
    if seeds < 5:
        assert not any("meaningful" in text for text in texts.values())
        assert "## Problems" in texts["markdown"] and f"- {warning}" in texts["markdown"]
        assert texts["html"].index(warning) < texts["html"].index('id="leaderboard"')  # in the problems box
    else:
        assert report.problems == [] and "meaningful difference" in texts["html"]


def test_equal_scores_share_a_rank(tmp_path: Path, registry) -> None:
    cells = [
        Cell(topology, s, curve=(value,))
        for topology, value in (("b-ring", 0.5), ("a-ring", 0.5), ("c-ring", 0.9), ("d-ring", 0.2))
        for s in range(2)
    ]
    report = report_of([write_run(tmp_path / "run", cells)], registry)
    written = write_report(report, tmp_path / "out")
    ranks = {r["topology"]: r["rank"] for r in pq.read_table(written[0]).to_pylist()}
    assert ranks == {"c-ring": 1, "a-ring": 2, "b-ring": 2, "d-ring": 4}  # 1, 2, 2, 4: not broken by name
    markdown = written[1].read_text()
    assert "| 2 | diff-a2c · a-ring · none |" in markdown and "| 2 | diff-a2c · b-ring · none |" in markdown
    assert "| 4 | diff-a2c · d-ring · none |" in markdown
    html = written[2].read_text()
    assert html.count("<tr><td>2</td>") == 2 and "<tr><td>3</td>" not in html


def test_a_start_from_checkpoints_is_never_pooled_with_one_from_scratch(tmp_path: Path, registry) -> None:
    source = {"cell_id": "3fa2c0ffee00", "sha256": ["ab"], "checkpoints": ["/x/c.pt"], "env_steps": 1000}
    run = write_run(
        tmp_path / "run",
        [Cell("ring", 0, curve=(0.2,)), Cell("ring", 0, curve=(0.8,), init_from=source), Cell("isolated", 0)],
    )
    report = report_of([run], registry)
    labels = {r.entry: r for r in report.leaderboard}
    assert set(labels) == {
        "diff-a2c · ring · none · from scratch",
        "diff-a2c · ring · none · init_from=3fa2c0ffee00",
        "diff-a2c · isolated · none",  # nothing differs: today's label
    }
    assert labels["diff-a2c · ring · none · init_from=3fa2c0ffee00"].iqm.value == pytest.approx(0.8)
    assert all(r.runs == 1 for r in report.leaderboard)
    assert labels["diff-a2c · ring · none · from scratch"].setting == "from scratch"
    written = write_report(report, tmp_path / "out")
    settings = {r["entry"]: r["setting"] for r in pq.read_table(written[0]).to_pylist()}
    assert settings["diff-a2c · ring · none · init_from=3fa2c0ffee00"] == "init_from=3fa2c0ffee00"
    # The same source cell's checkpoints written twice (other files): still two entries.
    rewritten = {**source, "sha256": ["cd"], "env_steps": 2000}
    twice = write_run(tmp_path / "twice", [Cell("ring", 0, init_from=source), Cell("ring", 1, init_from=rewritten)])
    assert len({r.entry for r in report_of([twice], registry).leaderboard}) == 2


def test_cells_with_different_budgets_are_separate_entries(tmp_path: Path, registry) -> None:
    cells = [Cell("ring", s, curve=(0.5,)) for s in range(2)] + [
        Cell("ring", s, curve=(0.9,), budget=200000) for s in range(2)
    ]
    report = report_of([write_run(tmp_path / "run", cells)], registry)
    assert [(r.entry, r.runs) for r in report.leaderboard] == [
        ("diff-a2c · ring · none · env_steps=200000", 2),
        ("diff-a2c · ring · none · env_steps=1000", 2),
    ]


def test_a_single_cells_success_rate_carries_its_wilson_interval(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", 0, curve=(0.5, 0.75), held_out={"E": 0.25})])
    report = report_of([run], registry)
    episodes = 2 * EPISODES_PER_SPLIT  # two learners
    cells = {c.split: c for c in report.generalisation}
    assert cells["train"].runs == 1 and cells["train"].episodes == episodes
    low, high = wilson_interval(round(0.75 * episodes), episodes)
    assert (cells["train"].score.low, cells["train"].score.high) == pytest.approx((low, high))
    assert cells["E"].score.low == pytest.approx(wilson_interval(round(0.25 * episodes), episodes)[0])
    assert math.isnan(row(report, "diff-a2c · ring · none").iqm.low)  # the leaderboard's interval is over runs
    assert f"(n=1, Wilson over {episodes} episodes)" in render_markdown(report)
    assert f"n=1 · Wilson, {episodes} episodes" in render_html(report)
    returns = write_run(tmp_path / "returns", [Cell("ring", 0, env="Pendulum-v1", curve=(-700.0,))])
    [cell] = report_of([returns], registry).generalisation
    assert cell.episodes == 0 and math.isnan(cell.score.low)  # no success rate: no interval from one run
