"""`normaliser = "mixed"` end to end: real learner processes mix their observation statistics with
the parameters, so learners on different tasks end with one scaling; "local" ones keep their own."""

from __future__ import annotations

from pathlib import Path

import torch
from bench_helpers import bench_run

from benchbase.checkpoints import checkpoint


def final_statistics(out: Path, learner: int) -> dict:
    path = max(out.glob(f"checkpoints/*/learner-{learner}/step-*.pt"))
    return checkpoint.load(path).state["learner"]["observation_statistics"]


def run_pair(out: Path, normaliser: str) -> list[dict]:
    # A ring of 2 is one average per mix (weights ½, ½), so mixed statistics agree after every mix.
    bench_run(
        out,
        "-a",
        "diff-a2c",
        "-t",
        "ring",
        "-e",
        "random-cartpole",
        "--learners",
        "2",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "4000",
        "--seeds",
        "1",
        "--evaluations",
        "1",
        "--eval-episodes",
        "2",
        "--set",
        f"diff-a2c.normaliser={normaliser}",
        timeout=300,
    )
    return [final_statistics(out, learner) for learner in (0, 1)]


def test_mixed_statistics_agree_across_learners_and_local_ones_do_not(tmp_path: Path) -> None:
    mixed = run_pair(tmp_path / "mixed", "mixed")
    assert torch.equal(mixed[0]["sums"], mixed[1]["sums"])
    # Both learners' observations are in them: the count is the learners' average, 2 simulators x 1,000 steps.
    assert abs(mixed[0]["count"] - 2_000) < 1
    local = run_pair(tmp_path / "local", "local")
    assert "sums" not in local[0]
    assert (local[0]["mean"] != local[1]["mean"]).any()
