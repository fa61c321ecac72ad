"""A tiny-budget `bench run` of every MuJoCo and Atari family with Diff-A2C completes and writes
its Parquet rows (issue 5's end-to-end check; the conformance tests step them in-process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

MUJOCO = [
    f"{variant}-{robot}"
    for robot in ("hopper", "halfcheetah")
    for variant in ("air", "random-wind", "random-mass", "random-mujoco", "default", "random", "extreme")
]
ATARI = ["PongNoFrameskip-v4", "atari-games", "atari-modes"]
SHORT_GAMES = [f"{family}.max_episode_steps=100" for family in ATARI]  # evaluation episodes end quickly


def test_every_mujoco_and_atari_family_runs_with_diff_a2c(tmp_path: Path):
    out = tmp_path / "run"
    args = [
        "run",
        "-a",
        "diff-a2c",
        "-t",
        "isolated",
        *[arg for env in MUJOCO + ATARI for arg in ("-e", env)],
        *[arg for item in SHORT_GAMES for arg in ("--set", item)],
        "--learners",
        "1",
        "--envs-per-learner",
        "2",
        "--env-steps",
        "200",
        "--seeds",
        "1",
        "--evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    result = subprocess.run([sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    cells = pq.read_table(out / "cells.parquet").to_pylist()
    assert sorted(cell["env"] for cell in cells) == sorted(MUJOCO + ATARI)
    assert all(cell["status"] == "completed" and cell["env_steps"] >= 200 for cell in cells)
    for table in ("episodes", "evaluations", "metrics"):
        written = {row["cell_id"] for row in ds.dataset(out / table).to_table(columns=["cell_id"]).to_pylist()}
        if table == "episodes":  # 200 steps end no HalfCheetah episode (1,000 steps) and may end no Atari game
            assert written, table
        else:
            assert written == {cell["cell_id"] for cell in cells}, table
    evaluations = ds.dataset(out / "evaluations").to_table().to_pylist()
    params = {row["task_id"]: dict(row["task_params"]) for row in evaluations}
    assert any("wind_x" in found for found in params.values()) and any("power" in found for found in params.values())
