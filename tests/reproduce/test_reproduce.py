"""`bench reproduce`: the claims, the machinery and its tables at smoke scale (not agreement), and
one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from benchbase.grid.spec import load_grid_file, make_spec
from benchbase.reproduce import catalogue, execute
from benchbase.reproduce.catalogue import Quantity, Selection, grid_toml, load_claims
from benchbase.reproduce.measure import Measured, agrees

COLUMNS = {
    "claim",
    "quantity",
    "published",
    "published_low",
    "published_high",
    "ours",
    "ours_low",
    "ours_high",
    "runs",
    "agrees",
}


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_smoke_single_task_writes_the_comparison_and_the_table(tmp_path: Path) -> None:
    out = tmp_path / "reproduce"
    result = bench("reproduce", "single-task", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr  # smoke never fails on disagreement
    table = pq.read_table(out / "comparison.parquet")
    assert COLUMNS <= set(table.column_names)
    rows = table.to_pylist()
    claim = load_claims()["single-task"]
    assert [row["quantity"] for row in rows] == [quantity.name for quantity in claim.quantities]
    assert all(row["claim"] == "single-task" and row["runs"] == 1 and row["ours"] is not None for row in rows)
    published = {row["quantity"]: (row["published"], row["published_low"], row["published_high"]) for row in rows}
    assert published["a2c-acrobot-zoo"] == pytest.approx((-83.4, -100.6, -66.2))
    assert published["ppo-cartpole-cleanrl"] == pytest.approx((490.0, 483.9, 496.1))
    # One run: no interval, so agreement is not decided (n/a), never a silent pass.
    assert all(row["agrees"] is None and "too few" in row["note"] for row in rows)
    text = (out / "reproduction.md").read_text()
    for quantity in claim.quantities:
        assert quantity.label in text
    for figure in ("500.0 ± 0.0", "-83.4 ± 17.2", "-163.0 ± 103.2", "-73.5 ± 18.2", "-172.2 ± 104.2", "490.0 ± 6.1"):
        assert figure in text
    for words in ("RL Baselines3 Zoo", "CleanRL", "bench run --grid", "- machine:", "- versions:", "- date:"):
        assert words in text
    assert "bench reproduce single-task --scale smoke" in text
    # Each grid's file is a `bench run --grid` file; grids identical at this scale ran once.
    assert (out / "single-task" / "ppo-cartpole.toml").is_file()
    assert (out / "single-task" / "ppo-cartpole" / "cells.parquet").is_file()
    assert not (out / "single-task" / "ppo-cartpole-500k").exists() and "same as ppo-cartpole" in text


def test_a_listed_claim_that_is_not_implemented_is_refused_in_one_line() -> None:
    listed = catalogue.parse_claim(
        "later", {"claim": {"name": "later", "implemented": False, "not_implemented": "needs X"}}, "later.toml"
    )
    with pytest.raises(catalogue.UserError, match="listed but not implemented: needs X"):
        catalogue.select_claims(["later"], {"later": listed})
    assert catalogue.select_claims(["all"], {"later": listed}) == []


def test_smoke_gala_straggler_measures_every_learner_against_the_cell_without_it(tmp_path: Path) -> None:
    out = tmp_path / "reproduce"
    result = bench("reproduce", "gala-straggler", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    rows = {row["quantity"]: row for row in pq.read_table(out / "comparison.parquet").to_pylist()}
    assert set(rows) == {"gala-others", "diff-a2c-others", "gala-straggler-pace", "diff-a2c-straggler-pace"}
    assert all(row["runs"] == 1 and row["ours"] > 0 and row["agrees"] is None for row in rows.values())
    assert rows["gala-others"]["rule"] == "at-least" and rows["diff-a2c-others"]["rule"] == "at-most"
    # Only the straggler (learner 0) pauses, and only in the cells run with one.
    for grid, paused in (("gala-straggler", {0}), ("gala", set()), ("diff-a2c-straggler", {0})):
        metrics = pq.read_table(out / "gala-straggler" / grid / "metrics").to_pylist()
        pauses = [row for row in metrics if row["metric"] == "straggler_pause_s"]
        assert {row["learner"] for row in pauses} == paused
        assert all(row["value"] > 0 for row in pauses)
    text = (out / "reproduction.md").read_text()
    assert "≥ 80.0" in text and "≤ 50.0" in text


def test_list_names_every_claim_and_says_what_is_not_implemented() -> None:
    result = bench("reproduce", "--list")
    assert result.returncode == 0, result.stderr
    for name in ("single-task", "defaults-solve", "packer-2018", "diff-dac-acrobot", "gala-straggler"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["single-tsk", "--scale", "smoke"], ['unknown claim "single-tsk"', 'did you mean "single-task"']),
        (["single-task", "--scale", "quik"], ['unknown scale "quik"', 'did you mean "quick"']),
        (["--scale", "smoke"], ["name a claim"]),
    ],
)
def test_bad_request_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    out = tmp_path / "out"
    assert_one_line_error(bench("reproduce", *args, "--out", str(out)), *fragments)
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert_one_line_error(bench("reproduce", "single-task", "--scale", "smoke", "--out", str(out)), "is a file")
    assert out.read_text() == "keep me"


def test_packaged_claims_parse_with_the_issue_figures() -> None:
    claims = load_claims()
    assert set(claims) == {"single-task", "defaults-solve", "packer-2018", "diff-dac-acrobot", "gala-straggler"}
    assert all(claim.implemented for claim in claims.values())
    published = {
        (name, quantity.name): quantity.published for name, claim in claims.items() for quantity in claim.quantities
    }
    assert published["single-task", "ppo-pendulum-zoo"] == -172.2
    assert published["single-task", "ppo-acrobot-cleanrl"] == -86.4
    # Gymnasium's registered reward_threshold of each env
    assert {published["defaults-solve", f"{a}-cartpole"] for a in ("a2c", "ppo", "gala", "vtrace")} == {475.0}
    assert {published["defaults-solve", f"{a}-acrobot"] for a in ("a2c", "ppo", "gala", "vtrace")} == {-100.0}
    assert [published["packer-2018", f"a2c-{s}"] for s in ("default", "interpolation", "extrapolation")] == [
        78.14,
        76.63,
        63.72,
    ]
    assert [published["packer-2018", f"ppo-{s}"] for s in ("default", "interpolation", "extrapolation")] == [
        78.22,
        70.57,
        48.37,
    ]


PACKER_SUMMARIES = ("default", "interpolation", "extrapolation")
# Packer et al. 2018, supplement Tables 3-6, FF rows: (mean, std over five runs) for Default, Interpolation and
# Extrapolation, per (algorithm, base).
PACKER_FF = {
    ("a2c", "cartpole"): ((100.0, 0.0), (100.0, 0.0), (93.63, 9.30)),
    ("a2c", "mountaincar"): ((79.78, 11.38), (84.10, 1.25), (89.72, 0.65)),
    ("a2c", "acrobot"): ((88.52, 1.32), (72.88, 0.74), (66.56, 0.52)),
    ("a2c", "pendulum"): ((100.0, 0.0), (99.86, 0.14), (90.27, 3.07)),
    ("ppo", "cartpole"): ((100.0, 0.0), (100.0, 0.0), (86.20, 12.60)),
    ("ppo", "mountaincar"): ((99.96, 0.08), (84.12, 0.84), (90.21, 0.37)),
    ("ppo", "acrobot"): ((87.20, 1.11), (72.78, 0.44), (64.93, 1.05)),
    ("ppo", "pendulum"): ((0.0, 0.0), (31.80, 40.11), (0.0, 0.0)),
}
# Tables 7 (HalfCheetah) and 8 (Hopper), FF means: not in the claim (it has no MuJoCo families), only here to
# check that the six environments' rows average to Table 2's figures.
PACKER_MUJOCO = {
    "a2c": ((85.06, 91.96, 40.54), (15.46, 11.00, 1.63)),
    "ppo": ((96.62, 95.02, 38.51), (85.54, 39.68, 10.36)),
}


def test_packer_per_environment_rows_are_the_supplement_figures_and_make_table_2() -> None:
    quantities = {quantity.name: quantity for quantity in load_claims()["packer-2018"].quantities}
    for (algorithm, base), figures in PACKER_FF.items():
        for summary, (published, std) in zip(PACKER_SUMMARIES, figures, strict=True):
            quantity = quantities[f"{algorithm}-{base}-{summary}"]
            assert (quantity.kind, quantity.summary, quantity.bases, quantity.cells.grid) == (
                "packer",
                summary,
                (base,),
                algorithm,
            )
            assert (quantity.published, quantity.published_std, quantity.source) == (published, std, "packer-env")
            assert quantity.band == pytest.approx((published - std, published + std))  # ± 0.0: the figure itself
    for algorithm in ("a2c", "ppo"):
        for index, summary in enumerate(PACKER_SUMMARIES):
            six = [figures[index][0] for (name, _), figures in PACKER_FF.items() if name == algorithm]
            six += [environment[index] for environment in PACKER_MUJOCO[algorithm]]
            assert sum(six) / 6 == pytest.approx(quantities[f"{algorithm}-{summary}"].published, abs=0.006)


def test_every_grid_at_every_scale_is_a_bench_run_grid_file(tmp_path: Path) -> None:
    for claim in load_claims().values():
        for scale in catalogue.SCALES if claim.implemented else ():
            for grid in claim.grids_at(scale):
                values = claim.grid_values(grid, scale)
                path = tmp_path / f"{claim.name}-{grid}-{scale}.toml"
                path.write_text(grid_toml(values, "header"))
                assert load_grid_file(path) == values
                assert make_spec(load_grid_file(path), {}).to_dict() == make_spec(values, {}).to_dict()


def _quantity(rule: str = "overlap", published: float | None = 10.0, std: float | None = 2.0) -> Quantity:
    return Quantity("q", "q", "value", Selection("g"), published=published, published_std=std, rule=rule)


def test_agreement_rules() -> None:
    assert agrees(_quantity(), Measured(13.0, 11.0, 15.0, 3)) is True  # [11, 15] meets [8, 12]
    assert agrees(_quantity(), Measured(14.0, 12.5, 15.0, 3)) is False
    assert agrees(_quantity(), Measured(13.0, float("nan"), float("nan"), 1)) is None  # no interval
    assert agrees(_quantity(published=None), Measured(13.0, 11.0, 15.0, 3)) is None  # nothing published
    assert agrees(_quantity(), Measured(float("nan"), float("nan"), float("nan"), 0, "no cell")) is None
    at_least = _quantity("at-least", 0.5, None)
    assert agrees(at_least, Measured(0.5, 0.2, 0.8, 3)) is True
    assert agrees(at_least, Measured(0.4, 0.1, 0.7, 3)) is False
    assert agrees(at_least, Measured(0.9, float("nan"), float("nan"), 1)) is None  # one run decides nothing


def test_a_quantity_expected_to_agree_that_cannot_fails_the_command(tmp_path: Path, monkeypatch) -> None:
    from benchbase.api.registry import load_registry

    claim = load_claims()["single-task"]
    smoke = dataclasses.replace(
        claim.scales["smoke"],
        skip_grids=(
            "a2c-cartpole",
            "a2c-acrobot",
            "a2c-pendulum",
            "ppo-cartpole-500k",
            "ppo-acrobot",
            "ppo-acrobot-500k",
            "ppo-pendulum",
        ),
        expect=("ppo-cartpole-zoo",),
    )
    strict = dataclasses.replace(claim, scales={**claim.scales, "smoke": smoke})
    monkeypatch.setattr(execute, "select_claims", lambda names, claims: [strict])
    console = Console(quiet=True)
    code = execute.reproduce(["single-task"], "smoke", tmp_path / "out", load_registry(), _settings(), console)
    assert code == execute.EXIT_DISAGREES  # one run cannot show agreement: expected, so it fails
    rows = pq.read_table(tmp_path / "out" / "comparison.parquet").to_pylist()
    assert [(row["quantity"], row["expected"], row["agrees"]) for row in rows] == [("ppo-cartpole-zoo", True, None)]


def _settings():
    from benchbase.learner.settings import ExecutionSettings

    return ExecutionSettings()
