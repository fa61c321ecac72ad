"""The report's header: what each run folder's grid.json says about how the run was made, and
"not recorded" for what an older folder lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import REPETITIONS, Cell, write_run  # the synthetic run folders of the report tests

from benchbase import __version__
from benchbase.report.build import build_report, env_registry, load_runs
from benchbase.report.header import (
    NOT_RECORDED,
    budget_text,
    grid_text,
    machine_text,
    read_run_header,
    seeds_text,
    versions_text,
    written_text,
)
from benchbase.report.html import render_html
from benchbase.report.model import Report, RunHeader
from benchbase.report.text import render_markdown

COMMAND = "bench run -a diff-a2c -t ring -t isolated -e random-cartpole --seeds 3 --out /tmp/run"
SPEC = {
    "algorithms": ["diff-a2c"],
    "topologies": ["ring", "isolated"],
    "envs": ["random-cartpole"],
    "replay": ["none"],
    "seeds": [0, 1, 2],
    "learners": 4,
    "envs_per_learner": 8,
    "env_steps": 200_000,
    "evaluations": 10,
    "eval_episodes": 5,
    "set": {},
}
VERSIONS = {"benchbase": "0.1.0", "python": "3.11.7", "torch": "2.3.0", "plugins": {}}


def _grid(folder: Path, **grid) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid.json").write_text(json.dumps({"schema_version": 1, "cell_ids": [], **grid}))
    return folder


def test_a_new_folder_records_everything(tmp_path: Path) -> None:
    folder = _grid(
        tmp_path / "new",
        spec=SPEC,
        versions=VERSIONS,
        command=COMMAND,
        machine={"host": "node-7", "cpus": 16, "cpu_model": "Intel(R) Xeon(R) Gold 6338", "gpus": ["NVIDIA H200"]},
        written_at="2026-12-02T10:14:37.215731+00:00",
    )
    header = read_run_header(folder)
    assert header.command == COMMAND and header.note == ""
    assert versions_text(header) == "benchbase 0.1.0 (torch 2.3.0, Python 3.11.7)"
    assert written_text(header) == "2026-12-02 10:14 UTC"
    assert (
        budget_text(header) == "200,000 env steps per cell · 4 learners × 8 simulators · 10 evaluations of 5 episodes"
    )
    assert seeds_text(header) == "3: 0–2"
    assert grid_text(header) == "algorithms diff-a2c; topologies ring, isolated; envs random-cartpole; replay none"
    assert machine_text(header) == "node-7: 16 CPUs (Intel(R) Xeon(R) Gold 6338), GPUs: NVIDIA H200"


def test_an_old_folder_without_command_or_machine_says_not_recorded(tmp_path: Path) -> None:
    folder = _grid(
        tmp_path / "old", spec={**SPEC, "seeds": [0, 1, 5]}, versions=VERSIONS, written_at="2025-03-01T09:00:00+00:00"
    )
    header = read_run_header(folder)
    assert header.command is None and header.host is None and header.gpus is None
    assert machine_text(header) == NOT_RECORDED == "not recorded"
    assert seeds_text(header) == "3: 0, 1, 5"
    assert budget_text(header).startswith("200,000 env steps per cell")
    html = render_html(_report([header]))
    assert '<th>Command</th><td><span class="muted">not recorded</span>' in html
    assert '<th>Machine</th><td><span class="muted">not recorded</span>' in html
    line = (
        f"`{folder}`: benchbase 0.1.0 (torch 2.3.0, Python 3.11.7), written 2025-03-01 09:00 UTC; command not recorded;"
    )
    assert line in render_markdown(_report([header]))


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (None, "no grid.json in the folder"),
        ("{not json", "grid.json cannot be read (JSONDecodeError)"),
        ("[1, 2]", "grid.json is not a JSON object"),
    ],
)
def test_a_missing_or_broken_grid_json_leaves_an_empty_header(tmp_path: Path, content, note) -> None:
    if content is not None:
        (tmp_path / "grid.json").write_text(content)
    header = read_run_header(tmp_path)
    assert header == RunHeader(str(tmp_path), note=note)
    html = render_html(_report([header]))
    assert f"{note}: not recorded" in html


def test_unexpected_values_are_not_recorded_rather_than_shown_wrong(tmp_path: Path) -> None:
    folder = _grid(
        tmp_path / "odd",
        spec={"seeds": "three", "env_steps": 1.5, "learners": True, "algorithms": "diff-a2c"},
        versions=[],
        command=["bench", "run"],
        machine={"host": "vm", "cpus": 2, "cpu_model": "x86_64"},  # a machine without GPUs lacks "gpus"
        written_at="yesterday",
    )
    header = read_run_header(folder)
    assert (header.seeds, header.env_steps, header.learners, header.grid) == (None, None, None, ())
    assert header.command is None and versions_text(header) == NOT_RECORDED
    assert budget_text(header) == seeds_text(header) == grid_text(header) == NOT_RECORDED
    assert written_text(header) == "yesterday"  # not ISO 8601: shown as written
    assert machine_text(header) == "vm: 2 CPUs (x86_64), no GPU"


def test_written_at_keeps_its_offset() -> None:
    assert written_text(RunHeader("f", written_at="2026-01-02T03:04:05+02:00")) == "2026-01-02 03:04 UTC+0200"
    assert written_text(RunHeader("f", written_at="2026-01-02T03:04:05")) == "2026-01-02 03:04"


def test_build_report_reads_every_folders_header(tmp_path: Path) -> None:
    recorded = write_run(tmp_path / "a", [Cell("ring", 0), Cell("ring", 1)])
    _grid(
        recorded,
        spec=SPEC,
        versions=VERSIONS,
        command=COMMAND,
        machine={"host": "vm", "cpus": 2},
        written_at="2026-12-02T10:14:37+00:00",
    )
    bare = write_run(tmp_path / "b", [Cell("isolated", 0)])  # no grid.json at all
    report = build_report(load_runs([str(recorded), str(bare)]), registry=env_registry(), repetitions=REPETITIONS)
    assert report.benchbase_version == __version__
    assert [h.folder for h in report.run_headers] == [str(recorded), str(bare)]
    assert report.run_headers[0].command == COMMAND and report.run_headers[1].note == "no grid.json in the folder"
    assert not any("grid.json" in problem for problem in report.problems)  # a header is no problem
    markdown = render_markdown(report)
    assert f"command `{COMMAND}`" in markdown and "machine vm: 2 CPUs, no GPU" in markdown
    assert f"`{bare}`: no grid.json in the folder: not recorded" in markdown


def _report(headers: list[RunHeader]) -> Report:
    return Report(
        sources=[h.folder for h in headers],
        metric="final",
        split="train",
        score_kinds={},
        leaderboard=[],
        run_headers=headers,
    )
