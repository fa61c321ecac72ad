"""`bench run --launcher slurm`: a grid through submitit's local executor (real processes) gives the
local launcher's cells and rows, a resubmission submits only what is left, the multi-node torchrun
command a task builds from Slurm's environment, and the one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from benchbase import cli
from benchbase.learner.settings import ExecutionSettings
from benchbase.results import RunFolder
from benchbase.run import slurm

GRID = [
    "-a",
    "diff-a2c",
    "-t",
    "ring",
    "-e",
    "random-cartpole",
    "--seeds",
    "2",
    "--learners",
    "2",
    "--envs-per-learner",
    "1",
    "--env-steps",
    "2000",
    "--evaluations",
    "0",
]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchbase", *args], capture_output=True, text=True, timeout=timeout)


def statuses(out: Path) -> dict[str, str]:
    return {row["cell_id"]: row["status"] for row in pq.read_table(out / "cells.parquet").to_pylist()}


def episode_rows(out: Path) -> list[tuple]:
    table = ds.dataset(out / "episodes").to_table().drop(["wall_time_s"]).to_pylist()
    return sorted((r["cell_id"], r["learner"], r["simulator"], r["env_step"], r["episode_return"]) for r in table)


def test_a_grid_through_the_local_executor_gives_the_local_results_and_resubmits_only_what_is_left(tmp_path: Path):
    here, there = tmp_path / "here", tmp_path / "there"
    assert bench("run", *GRID, "--out", str(here)).returncode == 0
    submit = ["run", *GRID, "--out", str(there), "--launcher", "slurm", "--slurm", "cluster=local"]

    result = bench(*submit, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "submitted 2 cell(s) of 2 to the local executor" in result.stdout
    assert "Leaderboard" in result.stdout  # --wait ends as a local run does
    assert statuses(there) == statuses(here) and set(statuses(there).values()) == {"completed"}
    assert episode_rows(there) == episode_rows(here)
    jobs = json.loads((there / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == sorted(statuses(here)) and {job["cluster"] for job in jobs.values()} == {"local"}
    assert all((there / "slurm" / f"{job['job_id']}_0_log.out").is_file() for job in jobs.values())

    # A cell that did not finish is the only one a resubmission sends; its job runs it again.
    failed = sorted(jobs)[0]
    RunFolder(there).update_cells({failed: {**RunFolder(there).read_cells()[failed], "status": "failed"}})
    result = bench(*submit, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "submitted 1 cell(s) of 2 (1 already completed)" in result.stdout
    assert json.loads((there / "slurm" / "jobs.json").read_text())[failed] != jobs[failed]
    assert statuses(there) == statuses(here) and episode_rows(there) == episode_rows(here)

    # Everything completed: nothing is submitted.
    pickles = sorted((there / "slurm").glob("*_submitted.pkl"))
    result = bench(*submit)
    assert result.returncode == 0, result.stderr
    assert "nothing to submit: 2 of 2 cell(s) completed" in result.stdout
    assert sorted((there / "slurm").glob("*_submitted.pkl")) == pickles


def test_cells_still_queued_in_earlier_jobs_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    console = SimpleNamespace(print=lambda *args, **kwargs: None)
    local_jobs = {
        "alive": {"job_id": str(os.getpid()), "cluster": "local"},
        "gone": {"job_id": "999999999", "cluster": "local"},
        "elsewhere": {"job_id": str(os.getpid()), "cluster": "slurm"},
        "never": None,
    }
    assert slurm.still_queued(local_jobs, "local", console) == {"alive"}
    # squeue lists one line per array task (--array), the user's jobs only.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\nprintf '4242_0\\n4242_3\\n77\\n'\n")
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    slurm_jobs = {cell: {"job_id": job, "cluster": "slurm"} for cell, job in [("a", "4242_0"), ("b", "4242_1")]}
    assert slurm.still_queued({**slurm_jobs, "c": {"job_id": "77", "cluster": "slurm"}}, "slurm", console) == {"a", "c"}
    (fake / "squeue").write_text("#!/bin/sh\nexit 1\n")
    printed = []
    assert slurm.still_queued(slurm_jobs, "slurm", SimpleNamespace(print=printed.append)) == set()
    assert "squeue cannot say" in printed[0]


def test_a_multi_node_cell_runs_torchrun_on_every_node_with_the_first_host_as_rendezvous():
    settings = ExecutionSettings(
        device="cuda",
        comm_timeout_s=60.0,
        transport="p2p",
        plugins_only=("diff-a2c", "ring"),
        checkpoint_every=500,
        loggers=(("jsonl", (("every_s", 5),)),),
    )
    task = slurm.CellTask("/shared/run", "1a2b3c4d5e6f", settings, nodes=2)
    environ = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242"}
    assert slurm.torchrun_command(task, 8, environ) == [
        *("torchrun", "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d"),
        *("--rdzv-endpoint", "gpu07:24242", "--rdzv-id", "4242-1a2b3c4d5e6f", "--max-restarts", "0"),
        *("-m", "benchbase", "--plugins=diff-a2c,ring", "run", "--out", "/shared/run", "--cell", "1a2b3c4d5e6f"),
        *("--device", "cuda", "--comm-timeout", "60.0", "--transport", "p2p", "--checkpoint-every", "500"),
        *("--logger", "jsonl:every_s=5"),
    ]
    assert slurm.first_host("node1") == "node1"
    assert slurm.first_host("cpu3,gpu[07-09]") == "cpu3"
    assert slurm.first_host("gpu[007-009,012],cpu3") == "gpu007"
    assert slurm.first_host("rack[2-3]-n[10-11]") == "rack2-n10"
    assert slurm.rendezvous_port("4242_3") == 20000 + 42423 % 20000
    with pytest.raises(slurm.UserError, match="SLURM_JOB_NODELIST"):
        slurm.torchrun_command(task, 8, {})


def test_slurm_options_become_submitit_parameters():
    options = slurm.parse_slurm_options(
        [
            "partition=gpu",
            "time=1-1:30:20",
            "account=rl",
            "nodes=2",
            "gpus_per_node=4",
            "mem_gb=64",
            "array_parallelism=8",
            "extra=constraint=a100",
            "extra=--exclusive",
        ]
    )
    cells = [SimpleNamespace(learner_processes=8), SimpleNamespace(learner_processes=4)]
    assert slurm.executor_parameters(options, cells, "bench-run") == {
        "name": "bench-run",
        "timeout_min": 1440 + 90 + 1,
        "nodes": 2,
        "tasks_per_node": 1,
        "cpus_per_task": 4,  # the largest cell's learners on a node
        "gpus_per_node": 4,
        "mem_gb": 64.0,
        "slurm_partition": "gpu",
        "slurm_account": "rl",
        "slurm_array_parallelism": 8,
        "slurm_additional_parameters": {"constraint": "a100", "exclusive": True},
    }
    assert slurm.parse_slurm_options([]) == slurm.SlurmOptions(cluster="slurm", time_min=60, nodes=1)
    assert slurm.parse_slurm_options(["time=90", "cpus_per_task=3"]).time_min == 90


def test_submitit_takes_every_parameter_into_the_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import submitit

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")  # submitit's Slurm executor looks for srun first
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    options = slurm.parse_slurm_options(
        ["partition=gpu", "time=90", "qos=high", "gpus_per_node=2", "array_parallelism=3", "extra=constraint=a100"]
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "slurm", cluster="slurm")
    executor.update_parameters(**slurm.executor_parameters(options, [SimpleNamespace(learner_processes=4)], "b"))
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ["--partition=gpu", "--time=90", "--qos=high", "--gpus-per-node=2", "--cpus-per-task=4"]:
        assert f"#SBATCH {line}" in script, script
    assert "#SBATCH --constraint=a100" in script and "#SBATCH --signal=USR2@90" in script, script


def fake_slurm(folder: Path, sbatch: str = "echo 'Submitted batch job 4242'") -> Path:
    """A folder with stand-ins for srun and sbatch (`sbatch` runs the given shell line)."""
    folder.mkdir(exist_ok=True)
    for name, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def bench_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`bench ARGS` in this process, with Slurm's commands faked on PATH: (exit code, stdout, stderr)."""
    for name in ("BENCHBASE_PLUGINS", "BENCHBASE_BLOCK_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capsys.readouterr()
        return exit_.value.code, out, err

    return call


REFUSALS = [
    (["--slurm", "partiton=gpu"], "unknown key 'partiton'; did you mean 'partition'?"),
    (["--slurm", "partition"], "give KEY=VALUE"),
    (["--slurm", "time=soon"], "MINUTES, H:MM:SS or D-H:MM:SS"),
    (["--slurm", "nodes=0"], "--slurm 'nodes=0': give a whole number ≥ 1"),
    (["--slurm", "mem_gb=-1"], "give a number of GB > 0"),
    (["--slurm", "cluster=aws"], "choose cluster=slurm or cluster=local"),
    (["--slurm", "extra="], "give KEY=VALUE"),
    (["--jobs", "2"], "--jobs 2: with --launcher slurm every cell is a job of its own"),
    (["--slurm", "nodes=3"], "which 3 nodes cannot share equally"),
    (["--slurm", "cluster=local", "--slurm", "nodes=2"], "nodes must be 1"),
    (["--device", "cuda"], "--device cuda with --launcher slurm needs GPUs on the nodes"),
    (["--slurm", "nodes=2", "--learners-per-process", "2"], "a cell on 2 nodes runs through torchrun"),
]


@pytest.mark.parametrize(("args", "message"), REFUSALS, ids=[" ".join(args) for args, _ in REFUSALS])
def test_bad_slurm_options_are_one_line_and_exit_2_before_anything_runs(bench_here, tmp_path, args, message):
    out = tmp_path / "run"
    code, stdout, stderr = bench_here("run", *GRID, "--out", str(out), "--launcher", "slurm", *args)
    assert_refused(code, stdout, stderr, message)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--slurm", "partition=gpu"], ["--wait"]])
def test_slurm_options_without_the_slurm_launcher_are_refused(bench_here, tmp_path, option):
    out = tmp_path / "run"
    code, stdout, stderr = bench_here("run", *GRID, "--out", str(out), *option)
    assert_refused(code, stdout, stderr, f"{option[0]} applies only with --launcher slurm")
    assert not out.exists()


def test_without_submitit_the_slurm_launcher_names_the_extra(bench_here, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    out = tmp_path / "run"
    code, stdout, stderr = bench_here("run", *GRID, "--out", str(out), "--launcher", "slurm")
    assert_refused(code, stdout, stderr, "needs submitit, which is not installed: pip install 'benchbase[slurm]'")
    assert not out.exists()


def test_a_submission_records_each_cells_task_and_a_resubmission_skips_cells_still_queued(bench_here, tmp_path):
    out = tmp_path / "run"
    submit = ["run", *GRID, "--out", str(out), "--launcher", "slurm", "--slurm", "partition=cpu"]
    code, stdout, stderr = bench_here(*submit)
    assert code == 0, stdout + stderr
    assert "submitted 2 cell(s) of 2 as Slurm job array 4242" in stdout and "scancel --signal=USR2 4242" in stdout
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(job["job_id"] for job in jobs.values()) == ["4242_0", "4242_1"]
    assert set(statuses(out).values()) == {"pending"}  # prepared, as a local run prepares it
    script = next((out / "slurm").glob("*.sh")).read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --partition=cpu" in script, script

    queued = next(cell for cell, job in jobs.items() if job["job_id"] == "4242_1")
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 4242_1\n")
    (tmp_path / "bin" / "squeue").chmod(0o755)
    code, stdout, stderr = bench_here(*submit)
    assert code == 0, stdout + stderr
    assert "1 cell(s) still pending or running in earlier jobs (4242_1): not submitted" in stdout
    assert "submitted 1 cell(s) of 2 as Slurm job array 4242" in stdout
    assert json.loads((out / "slurm" / "jobs.json").read_text())[queued] == jobs[queued]


def test_a_job_array_sbatch_refuses_is_one_line_naming_its_reason(bench_here, tmp_path):
    complaint = "echo 'sbatch: error: invalid partition specified: gpux' >&2; exit 1"
    fake_slurm(tmp_path / "bin", sbatch=complaint)
    out = tmp_path / "run"
    code, stdout, stderr = bench_here(
        "run", *GRID, "--out", str(out), "--launcher", "slurm", "--slurm", "partition=gpux"
    )
    assert_refused(code, stdout, stderr, "sbatch refused the job array (sbatch: error: invalid partition specified")
    assert not (out / "slurm" / "jobs.json").exists()  # nothing was submitted


def test_without_slurm_here_the_slurm_cluster_is_one_line(bench_here, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no srun, no sbatch
    out = tmp_path / "run"
    code, stdout, stderr = bench_here("run", *GRID, "--out", str(out), "--launcher", "slurm")
    assert_refused(code, stdout, stderr, "no Slurm here (srun or sbatch is not on PATH)")
    assert not out.exists()
    # --dry-run only lists the cells: it needs no cluster
    code, stdout, stderr = bench_here("run", *GRID, "--out", str(out), "--launcher", "slurm", "--dry-run")
    assert code in (0, None) and "cell" in stdout and not out.exists(), stdout + stderr


def assert_refused(code: int, stdout: str, stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stdout + stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
