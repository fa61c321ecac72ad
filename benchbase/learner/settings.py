"""What a learner process is told: how cells execute (`ExecutionSettings`, never part of a cell's
identity) and everything one learner needs to start (`LearnerLaunch`, picklable).

No torch import here: the command line builds these settings before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExecutionSettings:
    """How cells run, as opposed to what they are: none of this is part of a cell's identity."""

    device: str = "cpu"  # cpu, cuda or auto (CUDA round-robin when present)
    comm_timeout_s: float = 120.0
    transport: str = "auto"  # shm (same host, benchbase.comm.shm), p2p (gloo messages) or auto
    plugins_only: tuple[str, ...] | None = None
    plugins_blocked: tuple[str, ...] = ()
    plugins_extra: tuple[str, ...] = ()
    #: Cell env steps between checkpoints; None = every 10% of the budget, 0 = only at the end.
    checkpoint_every: int | None = None
    #: Off-policy learners: also checkpoint the replay buffers' contents (as large as the buffers).
    checkpoint_replay: bool = False
    #: The loggers every learner opens (`bench run --logger`): (name, ((key, value), …)) as given, checked by
    #: `bench run` and resolved again in each learner (`benchbase.learner.live`).
    loggers: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    #: Learners per process (`bench run --learners-per-process`): None = chosen per cell (a block of
    #: every learner where the cell allows one, `benchbase.run.blocks`), 1 = one process per learner,
    #: K = blocks of K learners.
    learners_per_process: int | None = None


@dataclass(frozen=True)
class LearnerLaunch:
    """Everything one learner process needs (picklable)."""

    cell_config: dict[str, Any]
    out_dir: str
    rank: int  # this process's rank in the cell's group (one learner per process: its learner's too)
    world_size: int
    store_host: str
    store_port: int
    device: str  # this learner's device, resolved from settings.device
    cell_started_at: float  # time.time() when the launcher started the cell
    settings: ExecutionSettings
    shm_prefix: str = ""
    cores: tuple[int, ...] = ()  # the cores the launcher gave this cell (empty: all)
    #: Learners this process hosts: 1, or a block of K consecutive ones, ranks rank·K … rank·K + K − 1
    #: (`benchbase.learner.block`); `rank` and `world_size` then count the cell's processes.
    learners: int = 1
