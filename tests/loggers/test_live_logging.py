"""Live logging: a running cell's metric rows reach the chosen loggers (jsonl, csv, tensorboard, wandb)
while it runs, equal to its metrics table, without a failing logger failing the cell; a wrong or
uninstalled logger is one line and exit 2 before anything runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from benchbase.api.registry import load_registry
from benchbase.errors import UserError
from benchbase.learner.live import resolve_logger

HERE = Path(__file__).resolve().parent
CELL = ["-a", "diff-a2c", "-t", "ring", "-e", "CartPole-v1", "--learners", "2", "--evaluations", "0"]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def bench(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class LiveRun:
    """One tiny cell run with every logger, its live files polled from a thread while it runs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows_seen_running = 0  # jsonl lines read while no learner had written its Parquet files
        loggers = ["jsonl:every_s=0", "csv", "broken"]
        loggers += ["tensorboard:every_s=0"] if HAS_TENSORBOARD else []
        loggers += ["wandb:every_s=0"] if HAS_WANDB else []
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "BENCHBASE_EXTRA_PLUGINS": "broken_logger",
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
        }
        command = [sys.executable, "-m", "benchbase", "run", *CELL, "--env-steps", "6000", "--out", str(out)]
        command += [part for logger in loggers for part in ("--logger", logger)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        watcher = threading.Thread(target=self._watch, args=(process,), daemon=True)
        watcher.start()
        self.stdout, self.stderr = process.communicate(timeout=600)
        watcher.join()
        assert process.returncode == 0, self.stdout[-3000:] + self.stderr
        (self.cell,) = pq.read_table(out / "cells.parquet").to_pylist()
        self.cell_id = self.cell["cell_id"]

    def _watch(self, process: subprocess.Popen) -> None:
        while process.poll() is None:
            for path in self.out.glob("live/*/learner-*.jsonl"):
                finished = (self.out / "metrics" / path.parent.name / f"{path.stem}.parquet").exists()
                lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
                if lines and not finished:
                    self.rows_seen_running = max(self.rows_seen_running, len(lines))
            time.sleep(0.02)

    def jsonl(self, learner: int) -> list[dict]:
        path = self.out / "live" / self.cell_id / f"learner-{learner}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def metric_rows(self) -> list[dict]:
        return ds.dataset(self.out / "metrics").to_table().to_pylist()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveRun:
    return LiveRun(tmp_path_factory.mktemp("live") / "run")


def test_jsonl_rows_appear_while_the_cell_runs(live: LiveRun) -> None:
    assert live.cell["status"] == "completed"
    assert live.rows_seen_running >= 1


def test_jsonl_rows_equal_the_metrics_table(live: LiveRun) -> None:
    table = {(r["learner"], r["iteration"], r["metric"]): r for r in live.metric_rows() if r["metric"] != "eval_time_s"}
    logged = {}
    for learner in (0, 1):
        rows = live.jsonl(learner)
        assert [row["iteration"] for row in rows] == sorted({row["iteration"] for row in rows})  # in order, once each
        for row in rows:
            assert (row["cell_id"], row["learner"]) == (live.cell_id, learner)
            for metric, value in row["metrics"].items():
                logged[(learner, row["iteration"], metric)] = (value, row)
    assert set(logged) == set(table)  # every_s=0: every metric row, and nothing else
    for key, (value, row) in logged.items():
        expected = table[key]
        assert value == expected["value"] or (math.isnan(value) and math.isnan(expected["value"])), key
        for column in ("env_step", "cell_env_step", "wall_time_s"):
            assert row[column] == expected[column], (key, column)


def test_csv_is_throttled_to_every_second_and_keeps_the_last_row(live: LiveRun) -> None:
    for learner in (0, 1):
        path = live.out / "live" / live.cell_id / f"learner-{learner}.csv"
        with path.open(newline="") as file:
            lines = list(csv.DictReader(file))
        jsonl = {row["iteration"]: row for row in live.jsonl(learner)}
        iterations = sorted({int(line["iteration"]) for line in lines})
        assert iterations[0] == min(jsonl) and iterations[-1] == max(jsonl)  # the first and the last row
        assert set(iterations) < set(jsonl)  # throttled: fewer rows than the table's
        walls = [jsonl[i]["wall_time_s"] for i in iterations]
        # every_s=1 is measured when the row is offered, a little after its wall_time_s: a margin for a busy machine
        assert all(later - earlier >= 0.5 for earlier, later in zip(walls[:-2], walls[1:-1])), walls
        for line in lines:
            assert float(line["value"]) == jsonl[int(line["iteration"])]["metrics"][line["metric"]] or math.isnan(
                float(line["value"])
            )


def test_a_failing_logger_is_reported_once_per_learner_and_switched_off(live: LiveRun) -> None:
    text = "logger broken failed and is off for this learner: RuntimeError: the disk is on fire"
    said = [line for line in (live.stdout + live.stderr).splitlines() if text in line]
    assert len(said) == 2, live.stdout[-3000:]
    assert {f"learner {r}" in " ".join(said) for r in (0, 1)} == {True}


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard package is not installed")
def test_tensorboard_event_files_hold_every_metric(live: LiveRun) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for learner in (0, 1):
        folder = live.out / "tensorboard" / live.cell_id / f"learner-{learner}"
        events = EventAccumulator(str(folder))
        events.Reload()
        rows = live.jsonl(learner)
        assert set(events.Tags()["scalars"]) == {metric for row in rows for metric in row["metrics"]}
        losses = events.Scalars("loss")
        assert [scalar.step for scalar in losses] == [row["cell_env_step"] for row in rows]
        assert [scalar.value for scalar in losses] == pytest.approx([row["metrics"]["loss"] for row in rows], 1e-6)


@pytest.mark.skipif(not HAS_WANDB, reason="the wandb package is not installed")
def test_wandb_offline_makes_one_run_per_cell(live: LiveRun) -> None:
    from benchbase.api.contracts import LiveRun as Learner
    from benchbase.loggers.wandb import run_id

    runs = list((live.out / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # learners=first: learner 0 logs for the cell
    expected = run_id(Learner(str(live.out), live.out.name, live.cell_id, 0, 2, {}), per_learner=False)
    (records,) = runs[0].glob("run-*.wandb")
    assert records.name == f"run-{expected}.wandb" and records.stat().st_size > 0


def test_loggers_change_no_cell_id(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('loggers = ["jsonl:every_s=0", { name = "csv", every_s = 2 }]\n')
    base = [*CELL, "--env-steps", "6000", "--dry-run", "--json", "--out", str(tmp_path / "out")]
    plain, logged = bench("run", *base), bench("run", *base, "--grid", str(grid), "--logger", "csv")
    assert plain.returncode == 0 and logged.returncode == 0, plain.stderr + logged.stderr
    assert [c["cell_id"] for c in json.loads(plain.stdout)] == [c["cell_id"] for c in json.loads(logged.stdout)]


def test_a_misspelt_logger_is_one_line_and_exit_2_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_error_line(bench("run", *CELL, "--env-steps", "2000", "--logger", "jsnol", "--out", str(out)))
    assert line.startswith('error: unknown logger "jsnol"; did you mean "jsonl"?'), line
    line = one_error_line(bench("run", *CELL, "--logger", "jsonl:evry_s=0", "--out", str(out)))
    assert 'did you mean "every_s"?' in line
    line = one_error_line(bench("run", *CELL, "--logger", "csv", "--logger", "csv:every_s=0", "--out", str(out)))
    assert 'logger "csv" is given twice' in line
    grid = tmp_path / "grid.toml"
    grid.write_text('loggers = ["tensorbord"]\n')
    line = one_error_line(bench("run", *CELL, "--grid", str(grid), "--out", str(out)))
    assert 'unknown logger "tensorbord"; did you mean "tensorboard"?' in line
    assert not out.exists()


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    hide = (
        "import importlib.util as u, sys; found = u.find_spec; "
        "u.find_spec = lambda name, *a: None if name in ('wandb', 'tensorboard') else found(name, *a); "
        "from benchbase.cli import main; sys.argv = ['bench'] + sys.argv[1:]; main()"
    )
    out = tmp_path / "out"
    for name in ("wandb", "tensorboard"):
        result = subprocess.run(
            [sys.executable, "-c", hide, "run", *CELL, "--logger", name, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        line = one_error_line(result)
        assert line == f"error: logger {name} needs the {name} package: pip install 'benchbase[{name}]'"
    assert not out.exists()


def test_missing_package_check_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = load_registry(kinds={"logger"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    with pytest.raises(UserError, match=r"pip install 'benchbase\[wandb\]'"):
        resolve_logger(registry, "wandb", ())
    logger, params = resolve_logger(registry, "jsonl", (("every_s", "0.5"),))  # needs no package
    assert logger.name == "jsonl" and params.every_s == 0.5


def test_bench_plugins_lists_the_loggers() -> None:
    result = bench("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout) if row["kind"] == "logger"}
    assert set(rows) == {"csv", "jsonl", "tensorboard", "wandb"}
    assert {p["name"] for p in rows["wandb"]["parameters"]} == {"every_s", "project", "entity", "learners"}


def test_torchrun_commands_carry_the_loggers_and_the_runs_settings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = ["--device", "auto", "--checkpoint-every", "500", "--comm-timeout", "30", "--transport", "p2p"]
    result = bench("run", *CELL, "--launcher", "torchrun", "--logger", "jsonl:every_s=0", *settings, "--out", str(out))
    assert result.returncode == 0, result.stderr
    (command,) = [line for line in result.stdout.splitlines() if line.startswith("torchrun ")]
    words = command.split()
    assert "--cell" in words and words[-2:] == ["--logger", "jsonl:every_s=0"], command
    given = dict(zip(words[words.index("--cell") + 2 :: 2], words[words.index("--cell") + 3 :: 2]))
    assert given["--device"] == "auto" and given["--checkpoint-every"] == "500", command
    assert given["--transport"] == "p2p" and float(given["--comm-timeout"]) == 30.0, command
