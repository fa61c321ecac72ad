"""`bench run` in a subprocess, as a user runs it, and what the learning tests read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq


def bench_run(out: Path, *args: str, timeout: float = 600) -> None:
    """Run `bench run ARGS --out OUT`; fail the test with its output unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "benchbase", "run", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def learners_succeeding(out: Path, min_length: int) -> tuple[set[int], list[tuple[int, int]]]:
    """Learners with a final greedy episode of ≥ `min_length` steps on their own training task,
    and every (learner, length) seen, for the assertion message."""
    final = [
        row
        for row in ds.dataset(out / "evaluations").to_table().to_pylist()
        if row["final"] and row["split"] == "train"
    ]
    lengths = sorted((row["learner"], row["episode_length"]) for row in final)
    return {learner for learner, length in lengths if length >= min_length}, lengths


def cells_solving(out: Path, threshold: float, max_env_steps: int) -> tuple[int, list[float]]:
    """How many cells' final greedy evaluation averages ≥ `threshold` (and every cell's final
    return), checking that no cell spent more than `max_env_steps`."""
    cells = pq.read_table(out / "cells.parquet").to_pylist()
    final = [row for row in ds.dataset(out / "evaluations").to_table().to_pylist() if row["final"]]
    solved = 0
    for cell in cells:
        assert cell["env_steps"] <= max_env_steps, cell["env_steps"]
        returns = [row["episode_return"] for row in final if row["cell_id"] == cell["cell_id"]]
        solved += sum(returns) / len(returns) >= threshold
    return solved, [cell["final_return"] for cell in cells]
