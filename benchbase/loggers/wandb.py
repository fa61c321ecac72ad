"""``wandb``: a Weights & Biases run per cell, grouped by grid (``pip install 'benchbase[wandb]'``).

The run is named after the cell, its group is the run folder's name (``grid-<id>`` by default) and its
config is the cell's resolved config; its files go under ``OUT/wandb/``. ``WANDB_MODE=offline`` keeps
everything local (``wandb sync OUT/wandb/wandb/offline-run-*`` uploads it later); ``WANDB_PROJECT`` and
``WANDB_ENTITY`` apply unless the parameters say otherwise. Learners log independently (no IPC): by
default only learner 0 logs, so a cell is one run; ``learners=all`` makes one run per learner
(``<cell_id>/learner-<r>``), grouped by grid. The x axis is the cell's env steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchbase.api.contracts import LiveRun, Logger, LoggerParams, MetricRow
from benchbase.api.hookspecs import Register, hookimpl
from benchbase.api.params import param


@dataclass(frozen=True)
class WandbParams(LoggerParams):
    project: str | None = param(None, "the W&B project (none: WANDB_PROJECT, else benchbase)")
    entity: str | None = param(None, "the W&B entity, a user or team (none: WANDB_ENTITY, else your default)")
    learners: Literal["first", "all"] = param(
        "first", "first: learner 0 logs, one run per cell; all: one run per learner, named <cell_id>/learner-<r>"
    )


def run_id(run: LiveRun, per_learner: bool) -> str:
    """A stable id per run folder and cell (and learner), so that a resumed cell continues its run."""
    key = f"{Path(run.out_dir).resolve()}\n{run.cell_id}" + (f"\n{run.learner}" if per_learner else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class _Skipped:
    """Learners other than 0 when one run stands for the cell."""

    def write(self, row: MetricRow) -> None:
        pass

    def close(self) -> None:
        pass


class _Writer:
    def __init__(self, params: WandbParams, run: LiveRun) -> None:
        import os

        import wandb  # imported here: the learner's logging thread; `bench run` checked it is installed

        per_learner = params.learners == "all"
        folder = Path(run.out_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=params.project or os.environ.get("WANDB_PROJECT") or "benchbase",
            entity=params.entity,
            group=run.grid,
            job_type="cell",
            name=f"{run.cell_id}/learner-{run.learner}" if per_learner else run.cell_id,
            id=run_id(run, per_learner),
            resume="allow",
            # a new run even when this process has one open: a learner block's learners share a process
            reinit="create_new",
            config=dict(run.config),
            dir=str(folder),
            settings=wandb.Settings(console="off", silent=True),  # the learner's console stays the launcher's
        )

    def write(self, row: MetricRow) -> None:
        logged = {**row.values, "env_step": row.env_step, "iteration": row.iteration, "wall_time_s": row.wall_time_s}
        self.run.log(logged, step=row.cell_env_step)

    def close(self) -> None:
        self.run.finish()


class Wandb(Logger):
    name = "wandb"
    description = "a Weights & Biases run per cell, grouped by grid (WANDB_MODE=offline keeps it local)"
    Params = WandbParams
    requires = ("wandb",)
    install = "benchbase[wandb]"

    def open(self, params: Any, run: LiveRun) -> _Writer | _Skipped:
        if params.learners == "first" and run.learner != 0:
            return _Skipped()
        return _Writer(params, run)


@hookimpl
def register_loggers(register: Register) -> None:
    register(Wandb())
