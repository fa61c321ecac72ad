"""Checkpoints inside a cell: when a learner saves, where a re-run resumes, how a cell stops.

Each learner keeps its own checkpoints in ``<run>/checkpoints/<cell_id>/learner-<r>/`` (see
`benchbase.checkpoints.checkpoint` for the files). A checkpoint holds the learner's state (model, optimiser,
normalisers, RNG, simulators where the env can save them), the communicator's (push-sum weight,
counters) and the training loop's, including every result row produced so far: a resumed cell
re-produces the rows after its checkpoint and none before it, so rows are neither lost nor
duplicated. A synchronous cell (off-policy ones with `--checkpoint-replay`) resumes exactly: the same
parameters and rows as run straight through, timings' values aside (tests/checkpoints/test_exact_resume.py).

Where a cell resumes: learners of a synchronous cell with edges must restart from the same
iteration (a neighbour's message of that iteration is what each waits for), so they agree on the
newest checkpoint that every one of them has intact. Learners that never wait for each other
(isolated, or asynchronous) each take their own newest good checkpoint.

How a cell stops (Ctrl-C): the launcher sends every learner SIGUSR1. A learner of a synchronous
cell with edges cannot simply stop where it is: a neighbour may already be one iteration further,
waiting for its message. The first learner to notice proposes stopping at its iteration + N
(N learners, more than any graph's diameter, so no learner has gone past it) through the cell's
rendezvous store; everyone reads the same value, runs to it, checkpoints and exits.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from benchbase.checkpoints import checkpoint

CHECKPOINTS_PER_CELL = 10  # the default: one every 10% of the budget
STOP_KEY = "benchbase/stop_at"


def checkpoint_folder(out_dir: str | Path, cell_id: str, rank: int) -> Path:
    return Path(out_dir) / "checkpoints" / cell_id / f"learner-{rank}"


@dataclass
class LoopState:
    """The training loop's own state: counters, running averages and the rows written so far."""

    iteration: int = 0
    iterations: int | None = None  # known after the first iteration (steps per iteration)
    local_steps: int = 0
    recent_returns: list[float] = field(default_factory=list)
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_count: int = 0
    eval_time_s: float = 0.0
    wall_s: float = 0.0  # training wall time before this process started (a resumed cell)
    final_train: list[tuple[float, Any]] = field(default_factory=list)  # (return, success) of the last evaluation
    # Periodic checkpoints so far and the time the learner spent copying and encoding its state for
    # them (what its neighbours may wait for; the checkpoint_copy_s metric). A stop's checkpoint is left out:
    # a resumed learner reports them exactly where the uninterrupted one does.
    checkpoints_saved: int = 0
    checkpoint_copy_s: float = 0.0
    rows: dict[str, dict[str, list]] = field(default_factory=dict)  # table -> columns

    def to_dict(self) -> dict[str, Any]:
        """A copy for a checkpoint, written on a thread while the loop goes on: the containers the loop
        changes in place (the running metric sums) are copied, `rows` is replaced, never changed."""
        values = dict(self.__dict__)
        values.update(
            metric_sums=dict(self.metric_sums),
            recent_returns=list(self.recent_returns),
            final_train=list(self.final_train),
        )
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopState:
        return cls(**values)


class StopSignal:
    """Set when the launcher asks the learner to checkpoint and stop (SIGUSR1, or the given
    signals, e.g. SIGTERM under torchrun)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1,)) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            for number in signals:
                signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        self.requested = True

    def stop_iteration(self, iteration: int, world: int, store: Any, lockstep: bool) -> int:
        """The iteration after which this learner stops (see the module docstring)."""
        if not lockstep or store is None:
            return iteration
        agreed = store.compare_set(STOP_KEY, "", str(iteration + world))
        return int(agreed)


class CheckpointKeeper:
    """One learner's checkpoints: saves every `every_steps` of its own env steps (0 = only at
    the end), on a background thread."""

    def __init__(
        self,
        folder: Path,
        cell_config: dict[str, Any],
        every_steps: int,
        enabled: bool,
        writer: checkpoint.BackgroundWriter | None = None,
    ) -> None:
        self.folder = folder
        self.cell_config = cell_config
        self.every_steps = every_steps
        self.enabled = enabled
        # A learner block's keepers share one writer (its learners' checkpoints in one queue).
        self.writer = writer if writer is not None else checkpoint.BackgroundWriter()
        self._every_iterations: int | None = None

    def due(self, iteration: int, iterations: int, steps_per_iteration: int) -> bool:
        if not self.enabled or self.every_steps <= 0 or iteration >= iterations:
            return False
        if self._every_iterations is None:
            self._every_iterations = max(1, round(self.every_steps / steps_per_iteration))
        return iteration % self._every_iterations == 0

    def save(self, state: dict[str, Any], env_steps: int, *, wait: bool = False, keep: int = checkpoint.KEEP) -> float:
        """Write `state` (a copy the learner no longer touches) on the writer thread; `wait` for it.
        The seconds the learner spent encoding it."""
        writer, config = self.writer, self.cell_config
        encoding_s = writer.submit(self.folder, state, env_steps=env_steps, cell_config=config, keep=keep)
        if wait:
            self.writer.wait()
        return encoding_s

    def raise_failed(self) -> None:
        """Re-raise the error of a checkpoint write that has already failed (a full disk)."""
        self.writer.raise_failed()

    def close(self) -> None:
        self.writer.wait()


def default_every(cell_env_steps: int, world: int, requested: int | None) -> int:
    """A learner's checkpoint interval in its own env steps, from the cell-level request."""
    every = math.ceil(cell_env_steps / CHECKPOINTS_PER_CELL) if requested is None else requested
    return math.ceil(every / world) if every > 0 else 0


def resume_point(
    folder: Path, cell_config: dict[str, Any], *, lockstep: bool, world: int
) -> tuple[Path | None, list[str]]:
    """The checkpoint this learner resumes from (None: from scratch) and notes on what was
    skipped. With `lockstep` every learner of the cell calls it (a collective)."""
    good, notes = checkpoint.good_checkpoints(folder, cell_config)
    chosen = max(good) if good else None
    if lockstep and world > 1:
        chosen = _agreed_step(_every_learners_steps([sorted(good)], world), chosen, notes)
    return (good[chosen] if chosen is not None else None), notes


def common_resume_points(
    folders: list[Path], cell_config: dict[str, Any], *, processes: int = 1
) -> tuple[list[Path | None], list[str]]:
    """The checkpoints the learners of one block resume from: the newest step every learner of
    the cell has intact (None: from scratch), one path per folder, and notes on what was
    skipped. With the cell's blocks in several `processes`, every process calls it (a collective)."""
    found = [checkpoint.good_checkpoints(folder, cell_config) for folder in folders]
    notes = [note for _, learner_notes in found for note in learner_notes]
    steps = _every_learners_steps([sorted(good) for good, _ in found], processes)
    newest = max((max(learner) for learner in steps if learner), default=None)
    agreed = _agreed_step(steps, newest, notes)
    return [good[agreed] if agreed is not None else None for good, _ in found], notes


def _every_learners_steps(own: list[list[int]], processes: int) -> list[list[int]]:
    """The intact steps of every learner of the cell, from each process's learners' `own` (a
    collective when the cell has several processes)."""
    if processes == 1:
        return own
    everyone: list[Any] = [None] * processes
    dist.all_gather_object(everyone, own)
    return [learner for process in everyone for learner in process]


def _agreed_step(steps: list[Any], newest: int | None, notes: list[str]) -> int | None:
    """The newest step among every learner's intact `steps` (None: none in common); a note when
    that is not `newest`, the step some learner would have resumed from."""
    common = set(steps[0]).intersection(*map(set, steps[1:]))
    agreed = max(common) if common else None
    if newest is not None and agreed != newest:
        notes.append(
            f"step {newest:,} is not intact on every learner: the cell resumes from "
            f"{'the start' if agreed is None else f'step {agreed:,}'}"
        )
    return agreed
