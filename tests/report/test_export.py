"""`bench report --export`: the report's normalised per-run scores as rliable's score matrices
(.npz) and marl-eval's JSON, from synthetic run folders with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from test_report import PENDULUM_RANDOM, PENDULUM_REFERENCE, REPETITIONS, Cell, write_run

from benchbase.errors import UserError
from benchbase.report.build import build_report, env_registry, load_runs
from benchbase.report.export import check_export_formats, export_report

RING, ISOLATED = "diff-a2c · ring · none", "diff-a2c · isolated · none"
CARTPOLE_CURVES = [(0.2, 0.6, 1.0), (0.4, 0.5, 0.8), (0.1, 0.3, 0.5)]
PENDULUM_RETURNS = [(-1222.0, -900.0, -686.0), (-1000.0, -800.0, -150.0), (-1100.0, -700.0, -418.0)]
HELD_OUT_D = [0.25, 0.5, 0.75]
TASKS = ["Pendulum-v1", "random-cartpole"]  # sorted: the matrices' columns
BUDGET = 900  # evaluation k of 3 at 300·k env steps


def normalised(value: float) -> float:
    return (value - PENDULUM_RANDOM) / (PENDULUM_REFERENCE - PENDULUM_RANDOM)


@pytest.fixture(scope="module")
def registry():
    return env_registry()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ring: three seeds on random-cartpole (success rates) and Pendulum-v1 (normalised returns);
    isolated: two seeds on random-cartpole only."""
    cells = [
        Cell("ring", seed, curve=curve, held_out={"D": held}, budget=BUDGET)
        for seed, (curve, held) in enumerate(zip(CARTPOLE_CURVES, HELD_OUT_D))
    ]
    cells += [
        Cell("ring", seed, env="Pendulum-v1", curve=returns, budget=BUDGET)
        for seed, returns in enumerate(PENDULUM_RETURNS)
    ]
    cells += [Cell("isolated", seed, curve=(0.0, 0.5), consensus=None, budget=BUDGET) for seed in (0, 1)]
    return write_run(tmp_path_factory.mktemp("export") / "run", cells)


@pytest.fixture(scope="module")
def exported(run: Path, registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    written = export_report(load_runs([str(run)]), out, ["rliable", "marl-eval"], registry=registry)
    names = sorted(str(path.relative_to(out)) for path in written)
    expected = [
        f"rliable/{kind}-{split}.npz" for split in ("D", "E", "R", "train") for kind in ("curves", "final", "steps")
    ]
    assert names == sorted(
        [*expected, "rliable/layout.json", *(f"marl-eval/{s}.json" for s in ("D", "E", "R", "train"))]
    )
    return out


def cell_ids(run: Path) -> dict[tuple[str, str, int], str]:
    """(topology, env, seed) -> cell id, as written."""
    rows = json.loads(json.dumps(load_runs([str(run)]).cells, default=str))
    return {(row["topology"], row["env"], row["seed"]): row["cell_id"] for row in rows}


def test_final_scores_are_the_reports_matrices_runs_by_tasks(run: Path, exported: Path, registry) -> None:
    final = dict(np.load(exported / "rliable" / "final-train.npz"))
    assert set(final) == {RING, ISOLATED}
    expected_ring = np.array(
        [[normalised(returns[-1]), curve[-1]] for returns, curve in zip(PENDULUM_RETURNS, CARTPOLE_CURVES)]
    )
    assert final[RING].shape == (3, 2) and final[RING].dtype == np.float64
    np.testing.assert_allclose(final[RING], expected_ring, rtol=1e-12, atol=0)
    # Isolated has no Pendulum-v1 run: that column is NaN.
    np.testing.assert_array_equal(final[ISOLATED], np.array([[np.nan, 0.5], [np.nan, 0.5]]))
    # The report's own aggregate of the same matrix: its IQM over all runs and tasks.
    report = build_report(load_runs([str(run)]), registry=registry, repetitions=REPETITIONS)
    ring = next(row for row in report.leaderboard if row.entry == RING)
    assert ring.iqm.value == pytest.approx(scipy_stats.trim_mean(final[RING].ravel(), 0.25), rel=1e-12)
    held_out = dict(np.load(exported / "rliable" / "final-D.npz"))
    np.testing.assert_allclose(held_out[RING], np.array(HELD_OUT_D)[:, None])
    assert held_out[ISOLATED].shape == (2, 1)


def test_curves_and_steps_are_per_run_task_and_evaluation(exported: Path) -> None:
    curves = dict(np.load(exported / "rliable" / "curves-train.npz"))
    steps = dict(np.load(exported / "rliable" / "steps-train.npz"))
    assert curves[RING].shape == steps[RING].shape == (3, 2, 3)
    np.testing.assert_allclose(curves[RING][:, 1, :], np.array(CARTPOLE_CURVES))
    np.testing.assert_allclose(curves[RING][:, 0, :], normalised(np.array(PENDULUM_RETURNS)), rtol=1e-12)
    np.testing.assert_array_equal(steps[RING], np.broadcast_to([300.0, 600.0, 900.0], (3, 2, 3)))
    assert curves[ISOLATED].shape == (2, 2, 2)  # two evaluations, at 450 and 900 env steps
    assert np.isnan(curves[ISOLATED][:, 0]).all()
    np.testing.assert_array_equal(curves[ISOLATED][:, 1], [[0.0, 0.5], [0.0, 0.5]])
    np.testing.assert_array_equal(steps[ISOLATED][:, 1], [[450.0, 900.0], [450.0, 900.0]])


def test_layout_names_tasks_cells_seeds_and_points(run: Path, exported: Path) -> None:
    layout = json.loads((exported / "rliable" / "layout.json").read_text())
    ids = cell_ids(run)
    train = layout["splits"]["train"]
    assert train["tasks"] == TASKS
    assert train["files"] == {"final": "final-train.npz", "curves": "curves-train.npz", "steps": "steps-train.npz"}
    ring = train["entries"][RING]
    assert ring["cells"] == [[ids[("ring", "Pendulum-v1", s)], ids[("ring", "random-cartpole", s)]] for s in range(3)]
    assert ring["seeds"] == [[s, s] for s in range(3)]
    assert ring["points"] == [1, 2, 3] and ring["complete"] is True
    isolated = train["entries"][ISOLATED]
    assert isolated["cells"] == [[None, ids[("isolated", "random-cartpole", s)]] for s in (0, 1)]
    assert isolated["points"] == [1, 2] and isolated["complete"] is False  # no Pendulum-v1 run
    assert layout["splits"]["D"]["tasks"] == ["random-cartpole"]
    assert layout["score_kinds"] == {"Pendulum-v1": "normalised return", "random-cartpole": "success rate"}
    assert layout["axes"]["final"] == ["run", "task"]


def test_rliable_reads_the_matrices(exported: Path) -> None:
    library = pytest.importorskip("rliable.library", reason="rliable is not installed (not a benchbase dependency)")
    metrics = pytest.importorskip("rliable.metrics")
    final = dict(np.load(exported / "rliable" / "final-train.npz"))
    complete = {label: matrix for label, matrix in final.items() if not np.isnan(matrix).any()}
    points, intervals = library.get_interval_estimates(
        complete, lambda scores: np.array([metrics.aggregate_iqm(scores)]), reps=200
    )
    assert points[RING][0] == pytest.approx(scipy_stats.trim_mean(final[RING].ravel(), 0.25))
    assert intervals[RING].shape == (2, 1)
    curves = dict(np.load(exported / "rliable" / "curves-train.npz"))
    iqm = lambda scores: np.array([metrics.aggregate_iqm(scores[..., k]) for k in range(scores.shape[-1])])  # noqa: E731
    curve_points, _ = library.get_interval_estimates({RING: curves[RING]}, iqm, reps=50)
    assert curve_points[RING].shape == (3,)


def test_marl_eval_json_is_env_task_algorithm_run_step(run: Path, exported: Path) -> None:
    data = json.loads((exported / "marl-eval" / "train.json").read_text())
    assert set(data) == {"pendulum-v1", "random-cartpole"}  # lower-cased, as marl-eval looks them up
    assert set(data["random-cartpole"]["random-cartpole"]) == {RING, ISOLATED}
    assert set(data["pendulum-v1"]["pendulum-v1"]) == {RING}
    runs = data["random-cartpole"]["random-cartpole"][RING]
    assert list(runs) == ["run_0", "run_1", "run_2"]
    for curve, steps in zip(CARTPOLE_CURVES, runs.values()):
        assert list(steps) == ["step_1", "step_2", "step_3", "absolute_metrics"]  # absolute metrics last
        for k, value in enumerate(curve, start=1):
            step = steps[f"step_{k}"]
            assert step["step_count"] == 300 * k
            assert len(step["score"]) == len(step["return"]) == 40  # 20 episodes × 2 learners
            assert np.mean(step["score"]) == pytest.approx(value)
            assert step["return"].count(500.0) == 2 * round(value * 20)  # the successes
        assert steps["absolute_metrics"] == {key: steps["step_3"][key] for key in ("return", "score")}
    pendulum = data["pendulum-v1"]["pendulum-v1"][RING]["run_1"]
    assert pendulum["step_3"]["return"] == [-150.0] * 40
    assert pendulum["absolute_metrics"]["score"] == pytest.approx([1.0] * 40)
    held_out = json.loads((exported / "marl-eval" / "D.json").read_text())["random-cartpole"]["random-cartpole"]
    finals = [np.mean(held_out[RING][f"run_{i}"]["absolute_metrics"]["score"]) for i in range(3)]
    assert finals == pytest.approx(HELD_OUT_D)


def test_grouping_follows_the_report(run: Path, registry, tmp_path: Path) -> None:
    export_report(load_runs([str(run)]), tmp_path, ["rliable"], group_by=["algorithm"], registry=registry)
    final = dict(np.load(tmp_path / "rliable" / "final-train.npz"))
    assert list(final) == ["diff-a2c"]
    matrix = final["diff-a2c"]
    assert matrix.shape == (5, 2)  # five cartpole runs (ring and isolated pooled), three on Pendulum
    assert np.isnan(matrix[3:, 0]).all() and not np.isnan(matrix[:3]).any()
    np.testing.assert_allclose(sorted(matrix[:, 1]), sorted([0.5, 0.5, *(c[-1] for c in CARTPOLE_CURVES)]))


def test_cells_without_evaluations_export_the_reports_training_scores(registry, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [Cell("ring", s, curve=(0.0, 1.0), evaluated=False) for s in range(2)])
    runs = load_runs([str(run)])
    export_report(runs, tmp_path / "out", ["rliable", "marl-eval"], registry=registry)
    report = build_report(runs, registry=registry, repetitions=REPETITIONS)
    final = dict(np.load(tmp_path / "out" / "rliable" / "final-train.npz"))[RING]
    (cell,) = [c for c in report.generalisation if c.entry == RING]
    assert final.shape == (2, 1) and np.mean(final) == pytest.approx(cell.score.value)
    data = json.loads((tmp_path / "out" / "marl-eval" / "train.json").read_text())
    run_0 = data["random-cartpole"]["random-cartpole"][RING]["run_0"]
    assert np.mean(run_0["absolute_metrics"]["score"]) == pytest.approx(final[0, 0])
    assert list(run_0)[-1] == "absolute_metrics" and all(k.startswith("step_") for k in list(run_0)[:-1])


def test_bad_export_requests_are_one_line_errors(run: Path, registry, tmp_path: Path) -> None:
    assert check_export_formats(["rliable,marl-eval", "rliable"]) == ("rliable", "marl-eval")
    with pytest.raises(UserError, match='--export rliabel: unknown format; did you mean "rliable"'):
        check_export_formats(["rliabel"])
    with pytest.raises(UserError, match="--export is empty"):
        check_export_formats([" , "])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file: give a folder"):
        export_report(load_runs([str(run)]), tmp_path / "file", ["rliable"], registry=registry)
