"""``tensorboard``: a learner's metrics as scalars in ``OUT/tensorboard/<cell_id>/learner-<r>/``.

Written with torch's `SummaryWriter`, which needs the ``tensorboard`` package
(``pip install 'benchbase[tensorboard]'``); ``tensorboard --logdir OUT/tensorboard`` shows every
cell's learners side by side. Each metric is a tag; the step is the cell's env steps by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchbase.api.contracts import LiveRun, Logger, LoggerParams, MetricRow
from benchbase.api.hookspecs import Register, hookimpl
from benchbase.api.params import param


@dataclass(frozen=True)
class TensorBoardParams(LoggerParams):
    step: Literal["cell_env_step", "env_step", "iteration"] = param(
        "cell_env_step", "the x axis: the cell's env steps (as in the report), the learner's, or its iteration"
    )


def event_folder(run: LiveRun) -> Path:
    return Path(run.out_dir) / "tensorboard" / run.cell_id / f"learner-{run.learner}"


class _Writer:
    def __init__(self, params: TensorBoardParams, run: LiveRun) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: the learner's logging thread

        self.step = params.step
        self.writer = SummaryWriter(log_dir=str(event_folder(run)))

    def write(self, row: MetricRow) -> None:
        step = getattr(row, self.step)
        for metric, value in row.values.items():
            self.writer.add_scalar(metric, float(value), global_step=step)
        self.writer.flush()  # rows come at most every `every_s`: a running cell's events are on disk

    def close(self) -> None:
        self.writer.close()


class TensorBoard(Logger):
    name = "tensorboard"
    description = "TensorBoard event files (scalars) in OUT/tensorboard/<cell_id>/learner-<r>/"
    Params = TensorBoardParams
    requires = ("tensorboard",)
    install = "benchbase[tensorboard]"

    def open(self, params: Any, run: LiveRun) -> _Writer:
        return _Writer(params, run)


@hookimpl
def register_loggers(register: Register) -> None:
    register(TensorBoard())
