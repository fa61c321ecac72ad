"""Same-host transport: every learner publishes into its own shared-memory segment and its
in-neighbours read it there (`benchbase.comm.shm`, which explains why this is faster than gloo
when learners share cores)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout
from benchbase.comm.shm import SharedBoard
from benchbase.comm.transports.base import Peers, Transport


class SharedMemoryTransport(Transport):
    """Messages through a `SharedBoard`: one channel that every out-neighbour reads, or (running
    sums of asynchronous push-sum) one channel per out-neighbour."""

    def __init__(
        self,
        board: SharedBoard,
        plan: Peers,
        rank: int,
        layout: MessageLayout,
        counters: CommCounters,
        device: Any = "cpu",
    ) -> None:
        self.board = board
        self.plan = plan
        self.rank = rank
        self.layout = layout
        self.counters = counters
        self._received = {j: torch.empty(layout.width, dtype=layout.dtype, device=device) for j in plan.in_peers(rank)}
        self._last_read: dict[int, int] = {}

    def exchange(
        self, message: torch.Tensor, iteration: int, send_to: list[int], receive_from: list[int], silent: list[int]
    ) -> dict[int, torch.Tensor]:
        # The slot doubles as the synchronisation point, so it is written even when skipped
        # (never read then, nor counted): a writer never laps a reader that skipped it.
        self.board.publish(message, iteration)
        self.counters.count_sent(len(send_to), message)
        for j in receive_from:
            self.board.read_exact(j, iteration, self._received[j])
        for j in silent:
            self.board.wait_exact(j, iteration)
        self.counters.messages_received += len(receive_from)
        return self._received

    def publish(self, content: torch.Tensor, iteration: int, send_to: list[int]) -> None:
        if not self.layout.running_sums:
            self.board.publish(content, iteration)
            self.counters.count_sent(len(send_to), content)
            return
        for i in send_to:
            self.board.publish(content, iteration, self.layout.channel(self.plan, self.rank, i))
            self.counters.count_sent(1, content)

    def newest(self, peer: int, min_iteration: int) -> tuple[torch.Tensor, float] | None:
        into = self._received[peer]
        channel = self.layout.channel(self.plan, peer, self.rank)
        sent_at = self.board.read_newest(peer, min_iteration, into, channel)
        if sent_at is None:
            return None
        if sent_at != self._last_read.get(peer):  # count each message once, however often read
            self._last_read[peer] = sent_at
            self.counters.messages_received += 1
        return into.clone(), float(sent_at)

    def finish(self, final_message: Callable[[int], torch.Tensor]) -> None:
        # The finished word is the marker; running sums need the in-peers' last ones, so wait.
        self.board.finish()
        if self.layout.running_sums:
            for j in self.plan.in_peers(self.rank):
                self.board.wait_finished(j)

    def release(self) -> None:
        # Nothing is in flight: a neighbour that still reads our last iteration keeps its
        # own mapping of the segment after we close and unlink it.
        self.board.close()
