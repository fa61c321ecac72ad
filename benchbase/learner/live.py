"""A learner's live loggers: the metric rows of a running cell, given to the loggers a run chose.

The loop calls `LiveLog.offer` with each metric row it makes (every `metric_every` iterations, about
100 per learner and cell, and at the last iteration). Each logger gets a row only when its `every_s`
seconds have passed since the last one it got (its learner's last row always goes), and takes it
from a small queue on a thread of its own: opening, writing and closing happen there, so a slow
logger never holds training up. A full queue drops the row; a logger that raises is switched off.
Either is reported once, as a `Note` event, and the cell trains on. Only the end waits: the last row
and the loggers' closing get CLOSE_TIMEOUT_S together, then a logger still busy is left behind.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchbase.api.contracts import LiveRun, Logger, LoggerParams, MetricRow, params_of
from benchbase.errors import UserError
from benchbase.learner.events import Note, Report
from benchbase.learner.settings import LearnerLaunch

#: Rows that wait for a logger at most; past that they are dropped.
QUEUE_ROWS = 256  # a cell makes at most about 200 metric rows per learner (METRIC_POINTS)
#: How long the last iteration waits for the loggers to take their last rows and close.
CLOSE_TIMEOUT_S = 30.0
_END = object()


def resolve_logger(registry: Any, name: str, overrides: Iterable[tuple[str, Any]]) -> tuple[Logger, Any]:
    """The logger called `name` and its parameters; a UserError for an unknown name, a bad parameter or
    a package that is not installed (so that `bench run` refuses before anything runs)."""
    logger = registry.get("logger", name)
    params = params_of(logger, dict(overrides))
    missing = logger.missing()
    if missing is not None:
        raise UserError(missing)
    return logger, params


class _Channel:
    """One logger of one learner: its throttle, its queue and the thread that feeds it."""

    def __init__(self, logger: Logger, params: Any, run: LiveRun, notes: list[str]) -> None:
        self.logger, self.params, self.run, self.notes = logger, params, run, notes
        self.rows: queue.Queue[Any] = queue.Queue(QUEUE_ROWS)
        # A third-party logger's Params need not derive from LoggerParams: the default throttle then.
        self.every_s = float(getattr(params, "every_s", LoggerParams.every_s))
        self.given_at = -math.inf
        self.failed = self.dropped = False
        self.thread = threading.Thread(target=self._feed, name=f"logger-{logger.name}", daemon=True)
        self.thread.start()

    def offer(self, row: MetricRow, now: float, deadline: float | None) -> None:
        """Queue `row` if `every_s` has passed; the last row (with a `deadline`) waits for room until then."""
        if self.failed or (deadline is None and now - self.given_at < self.every_s):
            return
        self.given_at = now
        try:
            if deadline is None:
                self.rows.put_nowait(row)
            else:
                self.rows.put(row, timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Full:
            if not self.dropped:
                self.dropped = True
                self.notes.append(
                    f"logger {self.logger.name} is behind ({QUEUE_ROWS} rows waiting): it misses rows "
                    "(a larger every_s gives it fewer)"
                )

    def close(self, deadline: float) -> None:
        try:
            self.rows.put(_END, timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Full:
            pass
        self.thread.join(max(deadline - time.monotonic(), 0.0))
        if self.thread.is_alive():
            self.notes.append(f"logger {self.logger.name} did not close within {CLOSE_TIMEOUT_S:g} s; left behind")

    def _feed(self) -> None:
        row = None
        try:
            writer = self.logger.open(self.params, self.run)
            while (row := self.rows.get()) is not _END:
                writer.write(row)
            writer.close()
        except Exception as error:  # a logger's failure is the logger's, not the cell's
            self.failed = True
            text = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
            self.notes.append(f"logger {self.logger.name} failed and is off for this learner: {text}")
            # Let offers and close go on without blocking, unless the end has come already (close raised).
            while row is not _END and (row := self.rows.get()) is not _END:
                pass


class LiveLog:
    """The loggers of one learner."""

    def __init__(self, channels: list[_Channel], notes: list[str], report: Report, cell_id: str, rank: int) -> None:
        self.channels, self.notes, self.report = channels, notes, report
        self.cell_id, self.rank = cell_id, rank
        self.closed = False
        self.deadline: float | None = None  # set by the last row: when closing gives up on a logger

    @classmethod
    def open(cls, launch: LearnerLaunch, cell_id: str, report: Report) -> LiveLog | None:
        """The run's loggers for this learner (None when the run chose none); each opens on its thread."""
        settings = launch.settings
        if not settings.loggers:
            return None
        from benchbase.api.registry import load_registry

        registry = load_registry(
            only=set(settings.plugins_only) if settings.plugins_only is not None else None,
            blocked=set(settings.plugins_blocked),
            extra=settings.plugins_extra,
            kinds={"logger"},
        )
        run = LiveRun(
            out_dir=launch.out_dir,
            grid=Path(launch.out_dir).resolve().name,
            cell_id=cell_id,
            learner=launch.rank,
            learners=launch.world_size,
            config=launch.cell_config,
        )
        notes: list[str] = []
        channels = []
        for name, overrides in settings.loggers:
            try:
                logger, params = resolve_logger(registry, name, overrides)
            except UserError as error:  # `bench run` checked them; a learner elsewhere may lack a package
                notes.append(f"logger {name} is off for this learner: {error}")
                continue
            channels.append(_Channel(logger, params, run, notes))
        return cls(channels, notes, report, cell_id, launch.rank)

    def offer(self, row: MetricRow, last: bool) -> None:
        """Give `row` to each logger whose `every_s` has passed, without waiting; the `last` row goes to
        every logger, waiting for room in a full queue (CLOSE_TIMEOUT_S at most, with the closing)."""
        now = time.monotonic()
        if last and self.deadline is None:
            self.deadline = now + CLOSE_TIMEOUT_S
        for channel in self.channels:
            channel.offer(row, now, self.deadline if last else None)
        self._report_notes()

    def close(self) -> None:
        """Let each logger take its last rows and close, waiting CLOSE_TIMEOUT_S at most (from the last row)."""
        if self.closed:
            return
        self.closed = True
        if self.deadline is None:
            self.deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for channel in self.channels:
            channel.close(self.deadline)
        self._report_notes()

    def _report_notes(self) -> None:
        while self.notes:
            self.report(Note(self.cell_id, self.rank, self.notes.pop(0)))
