"""Grids on a Slurm cluster through submitit (`bench run --launcher slurm`): one array job, one
task per cell still to run.

The parent does what a local `bench run` does before running (validates the grid, writes the run
folder's grid.json, configs and cells rows), submits an array job with a task per cell that is
neither completed nor still queued in an earlier job (`OUT/slurm/jobs.json` names each cell's
job, and `squeue` says whether it is pending or running), prints the job id and returns; with
`--wait` it waits for the jobs and prints the usual summary and leaderboard (Ctrl-C stops the
waiting, never the jobs). Running the same command again submits only what is left.

Each task runs its cell as the local launcher does (`benchbase.run.local.LocalCells` on the
task's node, the same learner code and result files), holding the run folder shared
(`FolderLock`, as torchrun jobs do) and updating its row of cells.parquet under the file's lock,
so the tasks of a grid fill one folder side by side. A cell spread over `nodes` > 1 runs torchrun
on every node of its allocation (`torchrun_command`: the rendezvous is on the first host of
SLURM_JOB_NODELIST). Slurm's warning before the time limit (submitit asks for SIGUSR2 90 s
ahead) makes the cell checkpoint and stop, as Ctrl-C does: it is marked interrupted and a
re-run continues it from its checkpoints.

`--slurm cluster=local` runs the tasks as local processes through submitit's local executor: for
testing, no Slurm needed. Nothing here imports torch or submitit until a grid is submitted.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchbase.errors import UserError, close_match
from benchbase.learner.settings import ExecutionSettings

#: `--slurm KEY=VALUE` keys and what each sets.
SLURM_KEYS: dict[str, str] = {
    "partition": "sbatch --partition",
    "time": "time limit per cell: MINUTES, H:MM:SS or D-H:MM:SS (default 60 minutes)",
    "account": "sbatch --account",
    "qos": "sbatch --qos",
    "nodes": "nodes per cell (default 1); more than one runs torchrun across them",
    "gpus_per_node": "GPUs per node (sbatch --gpus-per-node)",
    "cpus_per_task": "cores per node (default: the cell's learners on a node)",
    "mem_gb": "memory per node in GB (sbatch --mem)",
    "array_parallelism": "cells of the array running at once (default: Slurm's limit)",
    "extra": "any other sbatch option, NAME=VALUE or NAME (e.g. extra=constraint=a100); repeatable",
    "cluster": "slurm, or local (the tasks run as processes here: for testing)",
}
CLUSTERS = ("slurm", "local")
SLURM_FOLDER = "slurm"  # under the run folder: submitit's pickles and every task's log
JOBS_FILE = "jobs.json"  # under SLURM_FOLDER: each cell's latest job
INSTALL_HINT = "pip install 'benchbase[slurm]'"


@dataclass(frozen=True)
class SlurmOptions:
    """What `--slurm KEY=VALUE …` asked for."""

    cluster: str = "slurm"
    time_min: int = 60
    nodes: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_slurm_options(items: list[str]) -> SlurmOptions:
    """`--slurm` items as options; a UserError for an unknown key (with a close match) or a bad value."""
    given: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if key not in SLURM_KEYS:
            hint = close_match(key, SLURM_KEYS)
            raise UserError(
                f"--slurm {item!r}: unknown key {key!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (allowed: {', '.join(SLURM_KEYS)})"
            )
        if not equals or not value.strip():
            raise UserError(f"--slurm {item!r}: give KEY=VALUE ({key}: {SLURM_KEYS[key]})")
        value = value.strip()
        if key == "extra":
            name, has_value, setting = value.partition("=")
            name = name.strip().lstrip("-")
            if not name:
                raise UserError(f"--slurm {item!r}: give extra=NAME=VALUE or extra=NAME (an sbatch option)")
            extra[name] = setting.strip() if has_value else True
        else:
            given["time_min" if key == "time" else key] = _value(key, value, item)
    return SlurmOptions(**given, extra=extra)


def _value(key: str, text: str, item: str) -> Any:
    if key == "cluster":
        if text not in CLUSTERS:
            raise UserError(f"--slurm {item!r}: choose cluster={' or cluster='.join(CLUSTERS)}")
        return text
    if key == "time":
        return _minutes(text, item)
    if key in ("nodes", "cpus_per_task", "array_parallelism", "gpus_per_node"):
        least = 0 if key == "gpus_per_node" else 1
        if not text.isdigit() or int(text) < least:
            raise UserError(f"--slurm {item!r}: give a whole number ≥ {least}")
        return int(text)
    if key == "mem_gb":
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if not number > 0 or number == float("inf"):
            raise UserError(f"--slurm {item!r}: give a number of GB > 0")
        return number
    return text  # partition, account, qos: Slurm checks the names


def _minutes(text: str, item: str) -> int:
    """MINUTES, H:MM:SS or D-H:MM:SS as whole minutes (rounded up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", text)
    if text.isdigit():
        minutes = int(text)
    elif match:
        days, hours, mins, secs = (int(part or 0) for part in match.groups())
        minutes = days * 1440 + hours * 60 + mins + (secs > 0)
    else:
        minutes = 0
    if minutes < 1:
        raise UserError(f"--slurm {item!r}: give the time limit as MINUTES, H:MM:SS or D-H:MM:SS (at least a minute)")
    return minutes


def require_submitit() -> Any:
    """The submitit module; a UserError naming the extra to install when it is missing."""
    try:
        import submitit
    except ImportError:
        raise UserError(f"--launcher slurm needs submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


def check_cluster(options: SlurmOptions) -> None:
    """Slurm's commands must be here to submit to it (submitit looks for srun, then calls sbatch)."""
    if options.cluster == "slurm" and not (shutil.which("srun") and shutil.which("sbatch")):
        raise UserError(
            "--launcher slurm: no Slurm here (srun or sbatch is not on PATH): run it on the cluster's login node "
            "(or try it on this machine with --slurm cluster=local)"
        )


def check_options(options: SlurmOptions, cells: list, settings: ExecutionSettings) -> None:
    """What the cells cannot run with, before anything is written or submitted."""
    if options.cluster == "local" and options.nodes > 1:
        raise UserError("--slurm cluster=local runs on this machine only: nodes must be 1")
    if options.nodes > 1 and settings.learners_per_process not in (None, 1):
        raise UserError(
            f"--learners-per-process {settings.learners_per_process}: a cell on {options.nodes} nodes runs "
            "through torchrun, one process per learner; give --slurm nodes=1 for a block"
        )
    if settings.device == "cuda" and not options.gpus_per_node:
        raise UserError("--device cuda with --launcher slurm needs GPUs on the nodes: add --slurm gpus_per_node=N")
    for cell in cells:
        if cell.learner_processes % options.nodes:
            raise UserError(
                f"cell {cell.cell_id} has {cell.learner_processes} learners, which {options.nodes} nodes cannot "
                "share equally: choose --slurm nodes=N dividing --learners"
            )


def executor_parameters(options: SlurmOptions, cells: list, name: str) -> dict[str, Any]:
    """submitit's `update_parameters` for one task per cell (one process per node: the cell's
    launcher, which starts the learners)."""
    learners_per_node = max(cell.learner_processes for cell in cells) // options.nodes
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": options.time_min,
        "nodes": options.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": options.cpus_per_task or learners_per_node,
    }
    if options.gpus_per_node is not None:
        parameters["gpus_per_node"] = options.gpus_per_node
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    for key in ("partition", "account", "qos", "array_parallelism"):
        if getattr(options, key) is not None:
            parameters[f"slurm_{key}"] = getattr(options, key)
    if options.extra:
        parameters["slurm_additional_parameters"] = dict(options.extra)
    return parameters


# -- the parent: submit, record, wait -------------------------------------------------------------


def submit_grid(
    spec: Any,
    cells: list,
    out: Path,
    registry: Any,
    console: Any,
    settings: ExecutionSettings,
    options: SlurmOptions,
    *,
    wait: bool = False,
    only: set[str] | None = None,
    poll_s: float = 2.0,
) -> int:
    """Prepare `out` and submit a task per cell left to run (or only those in `only`); with `wait`,
    wait for them and print the summary. Returns the exit code."""
    from benchbase.run.ownership import FolderLock, check_running_cells
    from benchbase.run.records import EXIT_OK, prepare_run

    submitit = require_submitit()
    check_options(options, cells, settings)
    out = out.resolve()  # the tasks may start in another working directory
    lock = FolderLock(out, shared=True).acquire()  # beside other jobs of this grid, never beside a local run
    try:
        try:
            _, rows, _ = prepare_run(spec, cells, out, registry)
        except UserError:
            if lock.created:  # nothing half-written is left behind to be taken for a run
                shutil.rmtree(out, ignore_errors=True)
            raise
        if lock.warning:
            console.print(lock.warning)
        selected = [cell for cell in cells if only is None or cell.cell_id in only]
        unfinished = [cell for cell in selected if rows[cell.cell_id]["status"] != "completed"]
        record = read_jobs(out)
        queued = still_queued({cell.cell_id: record.get(cell.cell_id) for cell in unfinished}, options.cluster, console)
        to_submit = [cell for cell in unfinished if cell.cell_id not in queued]
        done = len(selected) - len(unfinished)
        if queued:
            jobs_text = ", ".join(sorted({str(record[cell_id]["job_id"]) for cell_id in queued}))
            console.print(
                f"{len(queued)} cell(s) still pending or running in earlier jobs ({jobs_text}): not submitted"
            )
        if not to_submit:
            console.print(
                f"nothing to submit: {done} of {len(selected)} cell(s) completed"
                + (f", {len(queued)} still queued" if queued else "")
                + f" (bench report {out})"
            )
            return EXIT_OK
        for note in check_running_cells(rows, [cell.cell_id for cell in to_submit]):
            console.print(note)
        executor = submitit.AutoExecutor(folder=out / SLURM_FOLDER, cluster=options.cluster)
        executor.update_parameters(**executor_parameters(options, to_submit, f"bench-{out.name}"))
        tasks = [CellTask(str(out), cell.cell_id, settings, options.nodes) for cell in to_submit]
        jobs = _submit(executor, tasks, out)
        write_jobs(out, record, {task.cell_id: job.job_id for task, job in zip(tasks, jobs)}, options.cluster)
    finally:
        lock.release()
    _print_submitted(console, out, jobs, len(selected), done, options.cluster)
    if not wait:
        return EXIT_OK
    return _wait(jobs, to_submit, out, registry, console, poll_s)


def _submit(executor: Any, tasks: list[CellTask], out: Path) -> list:
    """The array's jobs; a UserError with sbatch's own words when it refuses them (a partition,
    account or limit it does not know)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):  # submitit prints sbatch's complaint as well as raising it
            return executor.map_array(run_task, tasks)
    except (FailedJobError, FailedSubmissionError, OSError) as error:
        words = [line.strip() for line in (str(error) or refusal.getvalue()).splitlines() if line.strip()]
        reason = words[0] if words else type(error).__name__
        raise UserError(
            f"sbatch refused the job array ({reason}): fix the --slurm options and run the command again "
            f"({out} is prepared; nothing was submitted)"
        ) from None


def _print_submitted(console: Any, out: Path, jobs: list, total: int, done: int, cluster: str) -> None:
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
    skipped = f" ({done} already completed)" if done else ""
    logs = out / SLURM_FOLDER
    if cluster == "local":
        console.print(
            f"submitted {len(jobs)} cell(s) of {total}{skipped} to the local executor: "
            f"processes {', '.join(ids)}; logs in {logs}"
        )
        return
    job = ids[0] if len(ids) == 1 else ",".join(ids)
    console.print(f"submitted {len(jobs)} cell(s) of {total}{skipped} as Slurm job array {job}; logs in {logs}")
    console.print(f"follow: squeue -j {job}   results so far: bench report {out}")
    console.print(
        f"stop: scancel --signal=USR2 {job} (every cell checkpoints, then stops; run this command again to "
        f"continue), or scancel {job} (at once)"
    )


def read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    """Each cell's latest job, {cell_id: {"job_id", "cluster"}}; {} when none was recorded (or unreadable)."""
    try:
        found = json.loads((out / SLURM_FOLDER / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_jobs(out: Path, record: dict[str, Any], submitted: dict[str, str], cluster: str) -> None:
    from benchbase.results import write_json

    record = {**record, **{cell_id: {"job_id": str(job), "cluster": cluster} for cell_id, job in submitted.items()}}
    write_json(out / SLURM_FOLDER / JOBS_FILE, record)


def still_queued(jobs: dict[str, dict[str, Any] | None], cluster: str, console: Any) -> set[str]:
    """The cells whose recorded job (of the same cluster) is still pending or running."""
    recorded = {cell_id: str(job["job_id"]) for cell_id, job in jobs.items() if job and job.get("cluster") == cluster}
    if not recorded:
        return set()
    if cluster == "local":  # the job id is the local controller's PID
        from benchbase.run.lifeline import running

        return {cell_id for cell_id, job in recorded.items() if job.isdigit() and running(int(job))}
    try:
        listing = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i", f"--user={getpass.getuser()}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        console.print(
            f"warning: squeue cannot say which earlier jobs still run ({type(error).__name__}): "
            "every unfinished cell is submitted, a cell still queued in an earlier job too"
        )
        return set()
    queue = set(listing.split())
    return {cell_id for cell_id, job in recorded.items() if job in queue}


def _wait(jobs: list, cells: list, out: Path, registry: Any, console: Any, poll_s: float) -> int:
    """Wait for the jobs, then the summary and leaderboard; Ctrl-C stops waiting, not the jobs."""
    from benchbase.results import RunFolder
    from benchbase.run.console import print_summary
    from benchbase.run.records import EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_OK, read_cells
    from benchbase.run.runner import print_leaderboard

    console.print("waiting for the jobs (Ctrl-C stops waiting; the jobs go on)")
    try:
        while not all(job.done() for job in jobs):
            time.sleep(poll_s)
    except KeyboardInterrupt:
        ids = ",".join(sorted({str(job.job_id).split("_")[0] for job in jobs}))
        console.print(f"stopped waiting: the jobs go on (squeue -j {ids}; scancel {ids} cancels them)")
        return EXIT_INTERRUPTED
    rows = read_cells(RunFolder(out))
    status = EXIT_OK
    for cell, job in zip(cells, jobs):
        row_status = rows[cell.cell_id]["status"]
        if row_status == "completed":
            continue
        problem = _job_problem(job)
        if row_status in ("running", "pending"):  # the job ended (killed, refused) before the cell did
            row_status = "failed"
            problem = f"its job ended without finishing the cell{': ' + problem if problem else ''}"
        console.print(f"{cell.cell_id}: {problem or row_status} (log: {job.paths.stdout})")
        if row_status == "failed":
            status = EXIT_FAILED_CELLS
        elif status == EXIT_OK:
            status = EXIT_INTERRUPTED
    print_summary(console, list(rows.values()))
    if any(row["status"] == "completed" for row in rows.values()):
        print_leaderboard(console, out, registry)
    console.print(f"results: {out}")
    return status


def _job_problem(job: Any) -> str | None:
    """The last line of what a finished job raised, or None."""
    try:
        error = job.exception()
    except Exception as failure:  # noqa: BLE001 - no result file: the job was killed before writing one
        error = failure
    if error is None:
        return None
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


# -- a task: one cell, on the nodes Slurm gave it ---------------------------------------------------


@dataclass(frozen=True)
class CellTask:
    """What a task is given: the run folder, its cell and how to run it (picklable)."""

    out: str
    cell_id: str
    settings: ExecutionSettings
    nodes: int = 1


def run_task(task: CellTask) -> str:
    """Run the task's cell (every node of a multi-node cell runs this); its status."""
    from rich.console import Console

    console = Console(highlight=False, width=160)  # the task's log file
    if task.nodes > 1:
        return _run_across_nodes(task, console)
    return _run_on_this_node(task, console)


def _run_on_this_node(task: CellTask, console: Any) -> str:
    """The cell as the local launcher runs it, with its row kept in cells.parquet under its lock."""
    import functools

    from benchbase.api.registry import load_registry
    from benchbase.results import RunFolder
    from benchbase.run.console import GridConsole
    from benchbase.run.forkserver import warm_up
    from benchbase.run.local import LocalCells
    from benchbase.run.ownership import FolderLock, Runner, check_running_cells
    from benchbase.run.records import cell_row, cells_of_run, read_cells
    from benchbase.run.runner import run_cells, show_event

    settings, out = task.settings, Path(task.out)
    _check_device(settings)
    # Slurm signals every process of the job: the learners (started by the forkserver, which
    # inherits this) ignore SIGUSR2, and this process takes it as Ctrl-C: checkpoint and stop.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    warm_up()
    signal.signal(signal.SIGUSR2, signal.default_int_handler)
    registry = load_registry(
        only=set(settings.plugins_only) if settings.plugins_only is not None else None,
        blocked=set(settings.plugins_blocked),
        extra=settings.plugins_extra,
    )
    hook = registry.manager.hook
    lock = FolderLock(out, shared=True).acquire()
    try:
        cell = _cell_of(cells_of_run(out), task.cell_id, out)
        folder = RunFolder(out)
        rows = read_cells(folder)
        if rows[cell.cell_id]["status"] == "completed":
            console.print(f"{cell.cell_id} is completed already: nothing to run")
            return "completed"
        for note in check_running_cells(rows, [cell.cell_id]):
            console.print(note)
        variant_text = rows[cell.cell_id]["variant"] or ""
        runner = Runner.this_process().to_json()
        finished: list[str] = []
        with GridConsole(1, cell.env_steps, console=console) as grid_console:

            def start(cell: Any) -> None:
                folder.clear_cell(cell.cell_id)
                folder.update_cells({cell.cell_id: cell_row(cell, variant_text, "running", runner=runner)})
                hook.cell_started(cell=cell, out_dir=str(out))
                label = cell.label + (f" ({variant_text})" if variant_text else "")
                grid_console.cell_started(cell.cell_id, label, cell.env_steps, cell.learner_processes)

            def finish(cell: Any, outcome: Any) -> None:
                if outcome.status != "completed":
                    folder.clear_cell(cell.cell_id)  # checkpoints stay: a re-run resumes from them
                row = cell_row(cell, variant_text, outcome.status, outcome, runner)
                folder.update_cells({cell.cell_id: row})
                hook.cell_finished(cell=cell, row=row, out_dir=str(out))
                hook.results_written(out_dir=str(out))
                finished.append(outcome.status)
                grid_console.cell_finished(
                    cell.cell_id,
                    outcome.status,
                    outcome.wall_time_s,
                    row["env_steps"] or 0,
                    row["steps_per_second"] or 0.0,
                    outcome.error,
                )

            def stopping() -> None:
                grid_console.message("stopping (time limit or scancel --signal=USR2): the cell checkpoints, then exits")

            with LocalCells(str(out), settings, functools.partial(show_event, grid_console), 1) as executor:
                run_cells([cell], executor, start, finish, stopping)
        return finished[0] if finished else "interrupted"
    finally:
        lock.release()


def _cell_of(cells: list, cell_id: str, out: Path) -> Any:
    for cell in cells:
        if cell.cell_id == cell_id:
            return cell
    raise UserError(f"{out} holds no cell {cell_id} any more (another grid was written there)")


def _check_device(settings: ExecutionSettings) -> None:
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible on this node (ask for --slurm gpus_per_node=N)")


def _run_across_nodes(task: CellTask, console: Any) -> str:
    """This node's share of the cell: torchrun, whose rank-0 worker records the cell's row."""
    from benchbase.run.lifeline import parent_death_signal
    from benchbase.run.records import cells_of_run

    cell = _cell_of(cells_of_run(Path(task.out)), task.cell_id, Path(task.out))
    command = torchrun_command(task, cell.learner_processes, os.environ)
    console.print("$ " + " ".join(command))
    # SIGUSR2 before the time limit reaches every process: the workers ignore it, and torchrun is
    # asked to stop them with SIGTERM, which under torchrun means "checkpoint and stop".
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *command[1:]],
        preexec_fn=parent_death_signal(signal.SIGTERM),
    )
    signal.signal(signal.SIGUSR2, lambda *_: process.send_signal(signal.SIGTERM))
    code = process.wait()
    if code != 0:
        raise RuntimeError(f"torchrun exited with {code} on node {os.environ.get('SLURM_NODEID', '?')}")
    return "completed"


def torchrun_command(task: CellTask, learners: int, environ: Any) -> list[str]:
    """The torchrun command every node of a multi-node cell's allocation runs: `learners / nodes`
    processes per node, rendezvousing (c10d) on the allocation's first host at a port chosen by
    the job id, then `bench run --out OUT --cell ID` with the run's execution settings."""
    from benchbase.run.torchrun import plugin_options, settings_options

    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise UserError("a multi-node cell runs inside a Slurm allocation: SLURM_JOB_NODELIST is not set")
    job_id = environ.get("SLURM_JOB_ID", "0")
    endpoint = f"{first_host(nodelist)}:{rendezvous_port(job_id)}"
    return [
        "torchrun",
        "--nnodes",
        str(task.nodes),
        "--nproc-per-node",
        str(learners // task.nodes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        f"{job_id}-{task.cell_id}",
        "--max-restarts",
        "0",
        "-m",
        "benchbase",
        *plugin_options(task.settings),
        "run",
        "--out",
        task.out,
        "--cell",
        task.cell_id,
        *settings_options(task.settings),
    ]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[07-09,12],cpu3' -> 'gpu07' (what `scontrol show
    hostnames` would print first, without calling it)."""
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            end = index
            break
    first = nodelist[:end].strip()
    match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", first)
    if not match:
        return first
    prefix, ranges, rest = match.groups()
    start = ranges.split(",")[0].split("-")[0]
    return prefix + start + (first_host(rest) if rest else "")


def rendezvous_port(job_id: str) -> int:
    """A port from 20000 to 39999 fixed by the job id: jobs sharing a node do not collide (unless
    their ids are 20000 apart), and every node of one job computes the same one."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 20000
