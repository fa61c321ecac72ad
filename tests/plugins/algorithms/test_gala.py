"""gala-a2c end to end: synchronous runs are deterministic; asynchronous runs record gossip metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Timing columns and metrics differ between runs by nature; everything else must not.
TIMING_METRICS = {"steps_per_second", "mix_wait_s", "checkpoint_copy_s", "eval_time_s"}


def run(out: Path, *args: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchbase",
            "run",
            "-e",
            "random-cartpole",
            "--learners",
            "4",
            "--envs-per-learner",
            "4",
            "--seeds",
            "1",
            "--evaluations",
            "1",
            "--eval-episodes",
            "2",
            *args,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def rows(out: Path, table: str) -> list[dict]:
    found = ds.dataset(out / table).to_table().to_pylist()
    for row in found:
        row.pop("wall_time_s", None)
    found = [row for row in found if row.get("metric") not in TIMING_METRICS]
    return sorted(found, key=lambda row: [str(value) for value in row.values()])


def test_synchronous_gala_runs_are_deterministic(tmp_path: Path) -> None:
    args = ["-a", "gala-a2c:staleness=0", "-t", "directed-ring", "-t", "exponential", "--env-steps", "16000"]
    run(tmp_path / "first", *args)
    run(tmp_path / "second", *args)
    for table in ("episodes", "evaluations", "metrics"):
        first, second = rows(tmp_path / "first", table), rows(tmp_path / "second", table)
        assert first and first == second, table
    metrics = {row["metric"] for row in rows(tmp_path / "first", "metrics")}
    assert {"consensus_distance", "push_sum_weight", "bytes_sent", "messages_sent", "messages_received"} <= metrics


def test_asynchronous_gala_with_link_drops_records_its_gossip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, "-a", "gala-a2c:link_drop=0.2,num_peers=2", "-t", "fully-connected", "--env-steps", "16000")
    cell = pq.read_table(out / "cells.parquet").to_pylist()[0]
    assert cell["status"] == "completed"
    metrics = ds.dataset(out / "metrics").to_table().to_pylist()
    for learner in range(4):
        mine = {}
        for row in sorted((r for r in metrics if r["learner"] == learner), key=lambda r: r["iteration"]):
            mine.setdefault(row["metric"], []).append(row["value"])
        # Gossip: staleness of the mixes, skipped publishes, a local distance during training;
        # learner 0 records the global consensus distance from every learner's snapshots.
        # Recorded at (nearly) every metric point — not before a first message arrived — and each
        # point's mean staleness is at most its maximum.
        assert len(mine["staleness_max"]) == len(mine["staleness_mean"]) >= len(mine["bytes_sent"]) // 2
        assert all(0 <= mean <= most for mean, most in zip(mine["staleness_mean"], mine["staleness_max"]))
        assert mine["publishes_skipped"][-1] > 0
        assert mine["neighbour_distance"]
        if learner == 0:
            assert len(mine["consensus_distance"]) == len(mine["bytes_sent"])  # one per metric point
            assert all(0 <= d < 1 for d in mine["consensus_distance"])
        else:
            assert "consensus_distance" not in mine
        # Each iteration sends to 2 peers, unless the link dropped (20%).
        iterations = 16000 // 4 // (5 * 4)
        assert mine["messages_sent"][-1] == 2 * (iterations - mine["publishes_skipped"][-1])
