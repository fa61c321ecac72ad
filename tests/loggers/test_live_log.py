"""`LiveLog` on its own: a slow logger does not hold the loop up, a full queue drops rows with one note,
a logger that cannot open is one note, and closing waits for the last rows."""

from __future__ import annotations

import threading
import time

from benchbase.api.contracts import LiveRun, Logger, LoggerParams, MetricRow
from benchbase.learner import live
from benchbase.learner.events import Note
from benchbase.learner.live import LiveLog, _Channel

RUN = LiveRun("/nonexistent", "grid", "cell", 0, 1, {})


def row(iteration: int) -> MetricRow:
    return MetricRow(iteration, iteration * 10, iteration * 10, iteration * 0.1, {"loss": float(iteration)})


class _Slow:
    def __init__(self, gate: threading.Event, written: list[int]) -> None:
        self.gate, self.written = gate, written

    def write(self, row: MetricRow) -> None:
        self.gate.wait()  # as slow as the test wants
        self.written.append(row.iteration)

    def close(self) -> None:
        self.written.append(-1)


class SlowLogger(Logger):
    name = "slow"

    def __init__(self) -> None:
        self.gate, self.written = threading.Event(), []

    def open(self, params, run) -> _Slow:
        return _Slow(self.gate, self.written)


class CannotOpen(Logger):
    name = "cannot-open"

    def open(self, params, run):
        raise OSError("no room")


def live_log(*loggers: tuple[Logger, float]) -> tuple[LiveLog, list[Note]]:
    notes: list[str] = []
    events: list[Note] = []
    channels = [_Channel(logger, LoggerParams(every_s=every), RUN, notes) for logger, every in loggers]
    return LiveLog(channels, notes, events.append, "cell", 0), events


def test_a_stuck_logger_holds_nothing_up_and_misses_rows_past_its_queue(monkeypatch) -> None:
    monkeypatch.setattr(live, "QUEUE_ROWS", 4)
    slow = SlowLogger()
    log, events = live_log((slow, 0.0))
    started = time.perf_counter()
    for iteration in range(1, 21):
        log.offer(row(iteration), last=False)
    assert time.perf_counter() - started < 1.0  # the writer is stuck; offering never waited on it
    assert [event.text for event in events] == [
        "logger slow is behind (4 rows waiting): it misses rows (a larger every_s gives it fewer)"
    ]
    slow.gate.set()
    log.offer(row(21), last=True)
    log.close()
    assert slow.written[-2:] == [21, -1]  # the last row and the close come through
    assert len(slow.written) <= 4 + 2 + 1  # what the queue held, the row being written, the last one, close


def test_rows_are_throttled_by_every_s_but_the_last_always_goes() -> None:
    fast = SlowLogger()
    fast.gate.set()
    log, events = live_log((fast, 3600.0))
    for iteration in range(1, 11):
        log.offer(row(iteration), last=iteration == 10)
    log.close()
    assert fast.written == [1, 10, -1] and events == []


def test_a_logger_that_cannot_open_is_one_note_and_the_others_go_on() -> None:
    fine = SlowLogger()
    fine.gate.set()
    log, events = live_log((CannotOpen(), 0.0), (fine, 0.0))
    for iteration in range(1, 4):
        log.offer(row(iteration), last=iteration == 3)
    log.close()
    failed = "logger cannot-open failed and is off for this learner: OSError: no room"
    assert [event.text for event in events] == [failed]
    assert fine.written == [1, 2, 3, -1]


class _CloseFails:
    def write(self, row: MetricRow) -> None:
        pass

    def close(self) -> None:
        raise OSError("disk full")


class CannotClose(Logger):
    name = "cannot-close"

    def open(self, params, run) -> _CloseFails:
        return _CloseFails()


def test_a_logger_whose_close_fails_is_one_note_and_closing_does_not_wait(monkeypatch) -> None:
    """The end marker was taken before close raised: the failed logger must not wait for another."""
    monkeypatch.setattr(live, "CLOSE_TIMEOUT_S", 5.0)
    log, events = live_log((CannotClose(), 0.0))
    log.offer(row(1), last=True)
    started = time.perf_counter()
    log.close()
    assert time.perf_counter() - started < 2.0
    assert [event.text for event in events] == [
        "logger cannot-close failed and is off for this learner: OSError: disk full"
    ]
