"""What a learner tells its launcher while it runs, one frozen dataclass per kind of event.

Learners create them and pass them to a `Report` callback; readers `match` on the type. The local
launcher's callback is a multiprocessing queue's `put`, so events must pickle (frozen dataclasses
of plain values do). Every event names its cell and the learner's rank in the cell: a learner's
rank, not a process's, so that a process hosting several learners can report each of them.
"""

from __future__ import annotations

import errno
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Started:
    """The learner is about to take its first step (after building, resuming, joining its group)."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: time.time() at the first step: the launcher's start-up time ends at the last learner's.
    at: float


@dataclass(frozen=True)
class Progress:
    """Where the learner stands, at most every PROGRESS_INTERVAL_S and at its last iteration."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: Env steps this learner has taken (not the cell's).
    env_steps: int
    #: This learner's env steps per second of training (evaluation time left out).
    steps_per_second: float
    #: Mean return of its last 20 training episodes; None before the first one ends.
    recent_return: float | None


@dataclass(frozen=True)
class Note:
    """Something the user should know (e.g. a checkpoint that could not be used)."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: One line for the console.
    text: str


@dataclass(frozen=True)
class Resumed:
    """The learner continues from a checkpoint."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: Env steps this learner had taken when the checkpoint was saved.
    env_steps: int


@dataclass(frozen=True)
class Done:
    """The learner finished (or checkpointed and stopped, when asked to)."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: The loop's summary: env_steps, train_time_s, bytes_sent, final_return, final_success,
    #: stopped, transport.
    summary: dict[str, Any]


#: errno values of a disk that refuses writes: a fault of the machine, not of the code, so the
#: learner reports one line (the file, and what to do) rather than a traceback.
DISK_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def failure_text(error: BaseException) -> str:
    """What a learner that raised `error` reports in `Failed.traceback`."""
    if isinstance(error, OSError) and error.errno in DISK_FAULTS:
        where = error.filename or "a checkpoint or results file"
        return (
            f"cannot write {where} ({error.strerror}): free some space (or make it writable), then re-run: "
            "the cell resumes from its last checkpoint"
        )
    return "".join(traceback.format_exception(error))


@dataclass(frozen=True)
class Failed:
    """The learner raised; it fails its cell."""

    #: The cell's id.
    cell_id: str
    #: The learner's rank in the cell.
    learner: int
    #: The formatted traceback.
    traceback: str
    #: time.time() when it was raised: the first learner to fail names the cell's root cause.
    at: float


@dataclass(frozen=True)
class Stopping:
    """Sent by the launcher, not a learner: every learner of the cell was asked to checkpoint and stop."""

    #: The cell's id.
    cell_id: str


LearnerEvent = Started | Progress | Note | Resumed | Done | Failed
CellEvent = LearnerEvent | Stopping  # what a launcher passes on to the grid runner

Report = Callable[[LearnerEvent], None]  # the launcher's event sink
