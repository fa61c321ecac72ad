"""How many copies of its parameters a learner holds, for the memory checks' MODEL_COPIES and
PROCESS_MODEL_COPIES.

In blocks (the default): each built-in on-policy and off-policy algorithm runs a block of K
learners with wide MLPs (so the parameters outweigh everything else) on the CPU, in a process of
its own, for a dozen iterations; the process's peak resident memory (VmHWM) less what it held
before the block was built, over the block's parameter bytes, is the figure `bench run`'s memory
checks multiply a block learner's parameters by (`benchbase.grid.expand.MODEL_COPIES`,
docs/running.md).

With `--processes`: a ring of 2 learners, each in a process of its own (`bench run
--learners-per-process 1`, periodic checkpoints as by default), once with hidden 4096 and once
with hidden 64; each learner process's peak resident memory is polled until it exits. Its peak
with the wide network less its peak with the narrow one, less the half of its shared memory that
is its neighbour's segment (each process maps both), over its parameter bytes, is
PROCESS_MODEL_COPIES's figure: its own copies and its own message slots.

    python benchmarks/model_memory.py [--learners 16] [--hidden 2048]
    python benchmarks/model_memory.py --processes [--hidden 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ALGORITHMS = {"diff-a2c": "none", "diff-ppo": "none", "vtrace": "queue"}


def resident(key: str) -> float:
    """This process's `key` (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 2**10
    raise RuntimeError(f"no {key} in /proc/self/status")


def measure(algorithm: str, learners: int, hidden: int) -> None:
    """Run one block and print its peak over its parameters (in this process: VmHWM is per process)."""
    import torch

    from benchbase.api.registry import load_registry
    from benchbase.grid.expand import MODEL_COPIES, expand, in_a_block, memory_needs
    from benchbase.grid.spec import make_spec
    from benchbase.learner.block import run_block
    from benchbase.learner.settings import ExecutionSettings, LearnerLaunch

    torch.set_num_threads(2)
    spec = {
        **{"algorithms": [algorithm], "topologies": ["ring"], "envs": ["random-cartpole"], "seeds": 1},
        **{"replay": [ALGORITHMS[algorithm]], "learners": learners, "envs_per_learner": 1, "evaluations": 0},
        **{"env_steps": learners * 5 * 12, "set": {algorithm: {"hidden": hidden}}},
    }
    registry = load_registry()
    (cell,) = expand(make_spec(spec, {}), registry).cells
    ((_, _, _, model),) = memory_needs([cell], registry, in_blocks=in_a_block)
    parameters = learners * model / MODEL_COPIES / 2**20
    out = tempfile.mkdtemp(prefix="model-memory-")
    settings = ExecutionSettings(checkpoint_every=0)
    launch = LearnerLaunch(cell.config(), out, 0, 1, "", 0, "cpu", time.time(), settings, learners=learners)
    before = resident("VmRSS")
    run_block(launch, lambda event: None)
    peak = resident("VmHWM") - before
    shutil.rmtree(out, ignore_errors=True)
    print(f"{algorithm:<9} {parameters:>10,.0f} MiB {peak:>10,.0f} MiB {peak / parameters:>8.1f}", flush=True)


PROCESS_RUNS = {"diff-a2c": ("none", 400), "diff-ppo": ("none", 2048), "vtrace": ("uniform", 2048)}  # replay, env steps
NARROW = 64  # the hidden size whose peak stands for everything but the model


def process_tree() -> dict[int, int]:
    """Every process's parent, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def status_mib(pid: int, keys: tuple[str, ...]) -> dict[str, float] | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            values = {line.split(":")[0]: int(line.split()[1]) / 2**10 for line in status if line.split(":")[0] in keys}
    except OSError:
        return None
    return values if len(values) == len(keys) else None


def learner_peaks(algorithm: str, hidden: int) -> list[tuple[float, float]]:
    """(peak resident MiB, peak shared-memory MiB) of each learner process of a ring of 2 learners,
    one per process, polled every 20 ms until `bench run` exits."""
    replay, env_steps = PROCESS_RUNS[algorithm]
    out = tempfile.mkdtemp(prefix="model-memory-")
    command = [sys.executable, "-m", "benchbase", "run", "-a", algorithm, "-r", replay, "-t", "ring"]
    command += ["-e", "random-cartpole", "--learners", "2", "--envs-per-learner", "1", "--seeds", "1"]
    command += ["--evaluations", "0", "--env-steps", str(env_steps), "--learners-per-process", "1"]
    command += ["--set", f"{algorithm}.hidden={hidden}", "--out", f"{out}/run"]
    errors = open(f"{out}/stderr.txt", "w+")  # a file, not a pipe: nobody reads it until bench ends
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    peaks: dict[int, tuple[float, float]] = {}
    while bench.poll() is None:
        parents = process_tree()
        below = {bench.pid}
        for _ in range(3):  # bench, its forkserver, the learners it forks
            below |= {pid for pid, parent in parents.items() if parent in below}
        forkservers = {pid for pid in below if parents.get(pid) == bench.pid}
        for pid in (pid for pid in below if parents.get(pid) in forkservers):
            values = status_mib(pid, ("VmHWM", "RssShmem"))
            if values is not None:
                high, shared = peaks.get(pid, (0.0, 0.0))
                peaks[pid] = (max(high, values["VmHWM"]), max(shared, values["RssShmem"]))
        time.sleep(0.02)
    errors.seek(0)
    failure = errors.read().strip()[-500:]
    errors.close()
    shutil.rmtree(out, ignore_errors=True)
    if bench.returncode != 0:
        raise SystemExit(f"bench run failed for {algorithm} (hidden {hidden}): {failure}")
    return sorted(peaks.values())


def measure_processes(hidden: int) -> None:
    from benchbase.api.registry import load_registry
    from benchbase.grid.expand import MODEL_COPIES, PROCESS_MODEL_COPIES, expand, in_a_block, memory_needs
    from benchbase.grid.spec import make_spec

    registry = load_registry()
    print(f"2 ring learners, a process each, hidden {hidden} against {NARROW}, CartPole, CPU, periodic checkpoints")
    header = f"{'algorithm':<9} {'parameters':>12} {'peak':>10} {'shared':>8} {'copies':>7}"
    print(f"{header}  (the check counts {PROCESS_MODEL_COPIES})")
    for algorithm, (replay, _) in PROCESS_RUNS.items():
        spec = {"algorithms": [algorithm], "replay": [replay], "topologies": ["ring"], "envs": ["random-cartpole"]}
        spec |= {"seeds": 1, "learners": 2, "envs_per_learner": 1, "set": {algorithm: {"hidden": hidden}}}
        (cell,) = expand(make_spec(spec, {}), registry).cells
        ((_, _, _, model),) = memory_needs([cell], registry, in_blocks=in_a_block)
        parameters = model / MODEL_COPIES / 2**20
        narrow = max(peak for peak, _ in learner_peaks(algorithm, NARROW))
        for peak, shared in learner_peaks(algorithm, hidden):
            own = peak - narrow - shared / 2  # each process maps its neighbour's segment too
            print(
                f"{algorithm:<9} {parameters:>8,.0f} MiB {peak:>6,.0f} MiB {shared:>4,.0f} MiB {own / parameters:>7.1f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=16)
    parser.add_argument("--hidden", type=int, help="default: 2048 in blocks, 4096 with --processes")
    parser.add_argument("--processes", action="store_true", help="learners in processes of their own")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), help=argparse.SUPPRESS)  # one, in its process
    options = parser.parse_args()
    if options.processes:
        measure_processes(options.hidden or 4096)
        return 0
    options.hidden = options.hidden or 2048
    if options.algorithm:
        measure(options.algorithm, options.learners, options.hidden)
        return 0
    print(f"a block of {options.learners} learners, hidden {options.hidden}, CartPole, on the CPU")
    print(f"{'algorithm':<9} {'parameters':>14} {'peak':>14} {'copies':>8}")
    for algorithm in ALGORITHMS:
        sizes = ["--learners", str(options.learners), "--hidden", str(options.hidden)]
        subprocess.run([sys.executable, __file__, "--algorithm", algorithm, *sizes], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
