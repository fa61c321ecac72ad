"""A test plugin: `faulty-a2c` is Diff-A2C whose learner fails on cue, for the fault tests
(`faulty-block-a2c`: the same inside a learner block).

Point ``BENCHBASE_FAULT`` at a JSON file ``{"rank": 1, "at_step": 4000, "how": "kill"}``: learner
`rank` kills itself with SIGKILL ("kill") or raises ("raise") once it has taken `at_step` env
steps, or from then on finds the disk full ("enospc": its next checkpoint write fails with ENOSPC,
as on a full disk). The file is removed when the fault fires, so the next cell and a re-run go
through. In `faulty-block-a2c`, "stop" instead has every block's process send itself SIGUSR1 at
`at_step`, as the launcher signals every process of a cell to checkpoint and stop; that file stays.
Loaded with ``BENCHBASE_EXTRA_PLUGINS=fault_plugin`` and ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

from benchbase.api.hookspecs import hookimpl
from benchbase.checkpoints import checkpoint
from plugins.algorithms.diff_a2c import A2CBlock, A2CLearner, DiffA2C


class FaultyLearner(A2CLearner):
    def __init__(self, params, spec) -> None:
        super().__init__(params, spec)
        self.rank = spec.rank
        self.steps_taken = 0

    def iterate(self):
        output = super().iterate()
        self.steps_taken += output.env_steps
        fault = os.environ.get("BENCHBASE_FAULT")
        plan = _read_plan(fault)
        if plan is not None:
            if plan["rank"] == self.rank and self.steps_taken >= plan["at_step"]:
                Path(fault).unlink()
                if plan["how"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if plan["how"] == "enospc":
                    checkpoint.write_encoded = _disk_full  # the checkpoint writer thread calls it by name
                    return output
                raise RuntimeError("injected fault")
        return output


def _read_plan(fault: str | None) -> dict | None:
    """The fault plan, or None once it has fired: another process may remove the file between a
    check for it and the read, so the read itself is the check."""
    if not fault:
        return None
    try:
        return json.loads(Path(fault).read_text())
    except FileNotFoundError:
        return None


def _disk_full(folder, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


class FaultyA2C(DiffA2C):
    name = "faulty-a2c"
    description = "Diff-A2C whose learner fails on cue (tests)"

    def make_learner(self, params, spec) -> FaultyLearner:
        return FaultyLearner(params, spec)


@hookimpl
def register_algorithms(register) -> None:
    register(FaultyA2C())
    register(FaultyBlockA2C())


class FaultyBlock(A2CBlock):
    """A Diff-A2C block in which learner `rank` fails on cue, as `FaultyLearner` does alone."""

    def __init__(self, params, learners, envs) -> None:
        super().__init__(params, learners, envs)
        self.ranks = [learner.learner.spec_rank for learner in self.learners]
        self.steps_taken = 0
        self.stop_sent = False

    def iterate(self):
        outputs = super().iterate()
        self.steps_taken += outputs[0].env_steps
        fault = os.environ.get("BENCHBASE_FAULT")
        plan = _read_plan(fault)
        if plan is not None:
            if plan["how"] == "stop":
                if self.steps_taken >= plan["at_step"] and not self.stop_sent:
                    # As the launcher asks every process of a cell to checkpoint and stop (the file stays).
                    self.stop_sent = True
                    os.kill(os.getpid(), signal.SIGUSR1)
            elif plan["rank"] in self.ranks and self.steps_taken >= plan["at_step"]:
                Path(fault).unlink()
                raise RuntimeError(f"injected fault in learner {plan['rank']} of a block")
        return outputs


class FaultyBlockA2C(DiffA2C):
    name = "faulty-block-a2c"
    description = "Diff-A2C whose learner block fails on cue (tests)"

    def make_learner_block(self, params, specs, envs=None):
        learners = [A2CLearner(params, spec) for spec in specs]
        for learner, spec in zip(learners, specs):
            learner.spec_rank = spec.rank
        return FaultyBlock(params, learners, envs)
