"""Point-to-point gloo messages over the default process group.

Synchronous mixing posts this iteration's sends and receives together and waits for them all.
Asynchronous mixing (staleness bound K > 0) tags each message with its iteration in a trailing
slot and runs a receiver thread per in-peer that keeps the newest message (gloo cannot poll a
pending receive: `is_completed()` only turns true inside `wait()`). `finish` sends a final marker
to every out-peer and drains every in-peer, so every send is matched before shutdown.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout
from benchbase.comm.transports.base import Peers, Transport

FINAL = -1.0  # iteration slot of the last message on a channel


class _Inbox(threading.Thread):
    """Receives one in-peer's messages in the background and keeps the newest."""

    def __init__(self, source: int, size: int, dtype: torch.dtype, starts_empty: bool) -> None:
        super().__init__(name=f"inbox-from-{source}", daemon=True)
        self.source = source
        self._receiving = torch.empty(size, dtype=dtype)
        # Running sums start at a known zero ("iteration −1"); plain messages start unknown.
        self.newest = torch.zeros(size, dtype=dtype)
        self.running_sums = starts_empty
        self.newest_iteration = -1.0 if starts_empty else -math.inf
        self.received = 0
        self.finished = False
        self.error: BaseException | None = None
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                dist.irecv(self._receiving, src=self.source).wait()
                iteration = float(self._receiving[-1])
                with self._changed:
                    self.received += 1
                    if iteration == FINAL:
                        # A running-sum channel's marker carries the final sum; a plain one's is empty.
                        if self.running_sums:
                            self._receiving, self.newest = self.newest, self._receiving
                        if self.newest_iteration == -math.inf:
                            self.newest_iteration = FINAL
                        self.finished = True
                        self._changed.notify_all()
                        return
                    self._receiving, self.newest = self.newest, self._receiving
                    self.newest_iteration = iteration
                    self._changed.notify_all()
        except BaseException as error:  # surfaced to the learner's thread by wait_fresh
            with self._changed:
                self.error = error
                self._changed.notify_all()

    def wait_fresh(self, min_iteration: int, timeout_s: float) -> tuple[torch.Tensor, float] | None:
        """The newest message (a copy) once it is from iteration ≥ min_iteration, or once the
        sender has finished (None if it never sent anything). The learners' common starting
        point counts as iteration −1: a negative `min_iteration` never waits."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.newest_iteration < min_iteration and not self.finished and min_iteration >= 0:
                if self.error is not None:
                    raise RuntimeError(f"receiving from learner {self.source} failed: {self.error}") from self.error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no message from learner {self.source} as fresh as iteration {min_iteration} "
                        f"within {timeout_s:.0f} s"
                    )
                self._changed.wait(remaining)
            if self.newest_iteration == -math.inf or self.newest_iteration == FINAL:
                return None
            return self.newest.clone(), self.newest_iteration


class GlooTransport(Transport):
    """Messages as gloo sends and receives between the learners' ranks."""

    def __init__(
        self,
        plan: Peers,
        rank: int,
        layout: MessageLayout,
        counters: CommCounters,
        staleness: int,
        timeout_s: float,
    ) -> None:
        self.plan = plan
        self.rank = rank
        self.layout = layout
        self.counters = counters
        self.asynchronous = staleness > 0
        self.timeout_s = timeout_s
        self._timeout = timedelta(seconds=timeout_s)
        # Tagged messages carry their iteration in a trailing slot: keep it exact.
        self.message_dtype = torch.float64 if layout.dtype == torch.float64 else torch.float32
        self._received = {j: torch.empty(layout.width, dtype=layout.dtype) for j in plan.in_peers(rank)}
        self._sending: deque[tuple[dist.Work, torch.Tensor]] = deque()
        self._max_pending = 4 * max(1, len(plan.out_peers(rank))) + min(staleness, 64)
        self._inboxes: dict[int, _Inbox] = {}
        if self.asynchronous:
            for j in plan.in_peers(rank):
                inbox = _Inbox(j, layout.width + 1, self.message_dtype, starts_empty=layout.running_sums)
                inbox.start()
                self._inboxes[j] = inbox

    def exchange(
        self, message: torch.Tensor, iteration: int, send_to: list[int], receive_from: list[int], silent: list[int]
    ) -> dict[int, torch.Tensor]:
        works = [dist.isend(message, dst=i) for i in send_to]
        works += [dist.irecv(self._received[j], src=j) for j in receive_from]
        deadline = time.monotonic() + self.timeout_s  # one timeout for the whole mix
        for work in works:
            work.wait(timedelta(seconds=max(0.001, deadline - time.monotonic())))
        self.counters.count_sent(len(send_to), message)
        self.counters.messages_received += len(receive_from)
        return self._received

    def publish(self, content: torch.Tensor, iteration: int, send_to: list[int]) -> None:
        for i in send_to:
            self._send_tagged(content, float(iteration), i)

    def newest(self, peer: int, min_iteration: int) -> tuple[torch.Tensor, float] | None:
        found = self._inboxes[peer].wait_fresh(min_iteration, self.timeout_s)
        if found is None:
            return None
        message, sent_at = found
        return message[:-1].to(self.layout.dtype), sent_at

    def received_in_background(self) -> int:
        return sum(inbox.received for inbox in self._inboxes.values())

    def finish(self, final_message: Callable[[int], torch.Tensor]) -> None:
        if not self.asynchronous:
            return
        for i in self.plan.out_peers(self.rank):
            self._send_tagged(final_message(i), FINAL, i)
        for inbox in self._inboxes.values():
            inbox.join(self.timeout_s)
            if inbox.is_alive():
                raise TimeoutError(f"learner {inbox.source} never sent its final message")
            if inbox.error is not None:
                raise RuntimeError(f"receiving from learner {inbox.source} failed: {inbox.error}")

    def release(self) -> None:
        while self._sending:
            work, _ = self._sending.popleft()
            work.wait(self._timeout)

    def _send_tagged(self, content: torch.Tensor, iteration: float, destination: int) -> None:
        message = torch.empty(content.numel() + 1, dtype=self.message_dtype)
        message[:-1].copy_(content)
        message[-1] = iteration
        self._sending.append((dist.isend(message, dst=destination), message))
        self.counters.count_sent(1, message)
        # Bound the memory held by unfinished sends; a receiver thread drains them promptly.
        while len(self._sending) > self._max_pending:
            work, _ = self._sending.popleft()
            work.wait(self._timeout)
