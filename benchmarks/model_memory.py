"""How many copies of its parameters a learner block holds, for the memory checks' MODEL_COPIES.

Each built-in on-policy and off-policy algorithm runs a block of K learners with wide MLPs (so the
parameters outweigh everything else) on the CPU, in a process of its own, for a dozen
iterations; the process's peak resident memory (VmHWM) less what it held before the block was
built, over the block's parameter bytes, is the figure `bench run`'s memory checks multiply a
learner's parameters by (`benchbase.grid.expand.MODEL_COPIES`, docs/running.md).

    python benchmarks/model_memory.py [--learners 16] [--hidden 2048]
"""

from __future__ import annotations

import argparse
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
    from benchbase.grid.expand import MODEL_COPIES, expand, memory_needs
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
    ((_, _, _, model),) = memory_needs([cell], registry)
    parameters = learners * model / MODEL_COPIES / 2**20
    out = tempfile.mkdtemp(prefix="model-memory-")
    settings = ExecutionSettings(checkpoint_every=0)
    launch = LearnerLaunch(cell.config(), out, 0, 1, "", 0, "cpu", time.time(), settings, learners=learners)
    before = resident("VmRSS")
    run_block(launch, lambda event: None)
    peak = resident("VmHWM") - before
    shutil.rmtree(out, ignore_errors=True)
    print(f"{algorithm:<9} {parameters:>10,.0f} MiB {peak:>10,.0f} MiB {peak / parameters:>8.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), help=argparse.SUPPRESS)  # one, in its process
    options = parser.parse_args()
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
