"""Training curves: each cell's training episodes binned by env steps, averaged over runs, drawn
beside the evaluation curves and written to curves.parquet; a report without episodes says so."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import REPETITIONS, Cell, report_of, write_run

from benchbase.report import stats
from benchbase.report.build import env_registry, load_runs, write_report
from benchbase.report.html import render_html
from benchbase.report.load import EPISODE_COLUMNS
from benchbase.report.training import TRAINING_BINS
from benchbase.results import EPISODES_SCHEMA, RunFolder, write_table

ENTRY = "diff-a2c · ring · none"


@pytest.fixture(scope="module")
def registry():
    return env_registry()


def _episodes(cell: Cell, learner: int, rows: list[tuple[int, float, bool | None]]) -> pa.Table:
    """Training episodes of one learner: (cell env step, return, success) each."""
    return pa.Table.from_pydict(
        {
            "cell_id": [cell.cell_id] * len(rows),
            "learner": [learner] * len(rows),
            "simulator": [0] * len(rows),
            "task_id": ["t"] * len(rows),
            "task_params": [[("length", 0.5)]] * len(rows),
            "env_step": [step // cell.learners for step, _, _ in rows],
            "cell_env_step": [step for step, _, _ in rows],
            "episode_return": [value for _, value, _ in rows],
            "episode_length": [10] * len(rows),
            "success": [success for _, _, success in rows],
            "wall_time_s": [1.0] * len(rows),
        },
        schema=EPISODES_SCHEMA,
    )


def _replace_episodes(run: Path, cell: Cell, rows: list[tuple[int, float, bool | None]]) -> None:
    """Learner 0 finished `rows`; learner 1 finished none (an empty table)."""
    folder = RunFolder(run)
    write_table(folder.learner_path("episodes", cell.cell_id, 0), _episodes(cell, 0, rows))
    write_table(folder.learner_path("episodes", cell.cell_id, 1), EPISODES_SCHEMA.empty_table())


# Budget 1000 in 25 bins of 40 env steps: bin k holds the episodes that ended in (40k, 40(k+1)].
CRAFTED = {
    0: [(40, 500.0, True), (41, 20.0, False), (80, 300.0, True), (1000, 100.0, True), (1010, 200.0, True)],
    1: [(60, 20.0, False), (999, 40.0, False)],
    2: [(0, 10.0, False), (960, 80.0, True), (961, 90.0, False)],
}


def _crafted_run(tmp_path: Path) -> tuple[Path, list[Cell]]:
    cells = [Cell("ring", seed) for seed in CRAFTED]
    run = write_run(tmp_path / "run", cells)
    for cell in cells:
        _replace_episodes(run, cell, CRAFTED[cell.seed])
    return run, cells


def _nan_equal(actual, expected) -> bool:
    return np.allclose(np.asarray(actual, float), np.asarray(expected, float), equal_nan=True, rtol=0, atol=1e-12)


def test_training_episodes_are_binned_per_cell_and_averaged_over_runs(tmp_path: Path, registry) -> None:
    assert TRAINING_BINS == 25  # the numbers below are for bins of 1000 / 25 = 40 env steps
    run, cells = _crafted_run(tmp_path)
    report = report_of([run], registry)
    assert [c.entry for c in report.curves] == [ENTRY]  # the evaluation curve is still there …
    assert _nan_equal(report.curves[0].mean, [0.5, 1.0]) and list(report.curves[0].runs) == [3, 3]
    (curve,) = report.training_curves  # … and the training curve beside it
    assert (curve.entry, curve.family) == (ENTRY, "random-cartpole")
    # Bins with episodes: 0 (seeds 0 and 2: step 0 goes to the first bin), 1 (seeds 0, 1),
    # 23 (seed 2) and 24 (all three: steps past the budget go to the last bin).
    assert list(curve.bin_start) == [0.0, 40.0, 920.0, 960.0] and list(curve.bin_end) == [40.0, 80.0, 960.0, 1000.0]
    assert list(curve.steps) == [20.0, 60.0, 940.0, 980.0]
    # Per cell, the success rate of its episodes in the bin (random-cartpole records success);
    # then the mean over the runs with episodes there.
    per_cell = {  # seed -> its score in bins 0, 1, 23, 24
        0: [1.0, 0.5, math.nan, 1.0],
        1: [math.nan, 0.0, math.nan, 0.0],
        2: [0.0, math.nan, 1.0, 0.0],
    }
    assert _nan_equal(curve.mean, [0.5, 0.25, 1.0, 1 / 3])
    assert _nan_equal(curve.episode_return, [(500 + 10) / 2, ((20 + 300) / 2 + 20) / 2, 80, (150 + 40 + 90) / 3])
    assert list(curve.episodes) == [2, 3, 1, 4] and list(curve.runs) == [2, 2, 1, 3]
    # The evaluation curves' interval (a bootstrap over runs), with the report's options; none at
    # the bin only one run has episodes in.
    ordered = sorted(cells, key=lambda cell: cell.cell_id)  # the cells' order in the report
    matrix = np.array([per_cell[cell.seed] for cell in ordered])
    mean, low, high = stats.mean_with_interval(matrix, repetitions=REPETITIONS, confidence=0.95, seed=0)
    assert _nan_equal(curve.mean, mean)
    assert _nan_equal(curve.low, [low[0], low[1], math.nan, low[3]])
    assert _nan_equal(curve.high, [high[0], high[1], math.nan, high[3]])
    assert low[0] < 0.5 < high[0]
    # The leaderboard still ranks on the evaluations.
    assert report.leaderboard[0].iqm.value == 1.0


def test_curves_parquet_holds_both_kinds_of_curve(tmp_path: Path, registry) -> None:
    run, _ = _crafted_run(tmp_path)
    report = report_of([run], registry)
    written = write_report(report, tmp_path / "out")
    assert written[-1].name == "curves.parquet"
    table = pq.read_table(written[-1])
    assert table.schema.metadata[b"benchbase.table"] == b"curves"
    assert table.schema.metadata[b"benchbase.training_bins"] == b"25"
    rows = table.to_pylist()
    evaluation = [r for r in rows if r["source"] == "evaluation"]
    training = [r for r in rows if r["source"] == "training"]
    assert len(evaluation) + len(training) == len(rows)
    assert [(r["point"], r["env_step"], r["score"], r["runs"]) for r in evaluation] == [
        (0, 500.0, 0.5, 3),
        (1, 1000.0, 1.0, 3),
    ]
    assert all(r["bin_start"] is None and r["episodes"] is None and r["episode_return"] is None for r in evaluation)
    assert [(r["entry"], r["family"]) for r in training] == [(ENTRY, "random-cartpole")] * 4
    assert [(r["point"], r["bin_start"], r["env_step"], r["bin_end"]) for r in training] == [
        (0, 0.0, 20.0, 40.0),
        (1, 40.0, 60.0, 80.0),
        (2, 920.0, 940.0, 960.0),
        (3, 960.0, 980.0, 1000.0),
    ]
    assert [r["score"] for r in training] == pytest.approx([0.5, 0.25, 1.0, 1 / 3])
    assert [r["episode_return"] for r in training] == pytest.approx([255.0, 90.0, 80.0, 280 / 3])
    assert [(r["runs"], r["episodes"]) for r in training] == [(2, 2), (2, 3), (1, 1), (3, 4)]
    assert training[2]["score_low"] is None and training[2]["score_high"] is None  # one run: no interval
    assert training[0]["score_low"] < 0.5 < training[0]["score_high"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="training-curves-chart"' in html and "Training episodes (stochastic policy)" in html


def test_returns_are_normalised_as_the_evaluations_are(tmp_path: Path, registry) -> None:
    """Pendulum-v1 declares no success: its training score is (R − random) / (reference − random)."""
    cell = Cell("ring", 0, env="Pendulum-v1", curve=(0.5,))
    run = write_run(tmp_path / "run", [cell])
    _replace_episodes(run, cell, [(500, -1222.0, None), (500, -150.0, None), (1000, -686.0, None)])
    report = report_of([run], registry)
    assert report.score_kinds == {"Pendulum-v1": "normalised return"}
    (curve,) = report.training_curves
    assert list(curve.steps) == [500.0, 980.0]  # step 500 ends bin 12, (480, 520]
    assert _nan_equal(curve.mean, [0.5, 0.5]) and _nan_equal(curve.episode_return, [-686.0, -686.0])
    assert np.isnan(curve.low).all() and np.isnan(curve.high).all() and list(curve.runs) == [1, 1]  # one seed


def test_cells_without_evaluations_get_training_curves_too(tmp_path: Path, registry) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", 0, evaluated=False)])
    report = report_of([run], registry)
    (curve,) = report.training_curves
    assert curve.episodes.sum() == 2 * 20  # every episode of both learners, not only the scored ones
    assert load_runs([str(run)]).training.column_names == EPISODE_COLUMNS  # only the columns needed


def test_a_cell_without_episodes_is_a_note_and_the_others_still_draw(tmp_path: Path, registry) -> None:
    cells = [Cell("ring", 0), Cell("ring", 1)]
    run = write_run(tmp_path / "run", cells)
    shutil.rmtree(run / "episodes" / cells[1].cell_id)  # as an older run without episode files
    report = report_of([run], registry)
    (curve,) = report.training_curves
    assert curve.episodes.sum() == 2 * 20 and set(curve.runs) == {1}
    assert np.isnan(curve.low).all() and np.isnan(curve.high).all()  # one run: no interval
    (note,) = [p for p in report.problems if "no training episodes" in p]
    assert note.startswith("1 scored cell(s) have no training episodes") and cells[1].cell_id in note


def test_no_episodes_at_all_gives_no_training_curve_and_says_so(tmp_path: Path, registry) -> None:
    cells = [Cell("ring", 0), Cell("ring", 1)]
    run = write_run(tmp_path / "run", cells)
    for cell in cells:  # every learner's table is there, but empty: no episode finished
        _replace_episodes(run, cell, [])
    report = report_of([run], registry)
    assert report.training_curves == [] and len(report.curves) == 1
    assert any(p.startswith("2 scored cell(s) have no training episodes") for p in report.problems)
    html = render_html(report)
    assert 'id="curves-chart"' in html and 'id="training-curves-empty"' in html
    write_report(report, tmp_path / "out")
    sources = pq.read_table(tmp_path / "out" / "curves.parquet").column("source").to_pylist()
    assert sources == ["evaluation", "evaluation"]
