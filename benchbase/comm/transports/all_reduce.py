"""One all-reduce over every learner: how a complete graph with weights 1/N is averaged (one
collective instead of N − 1 messages each), over the default gloo group or an NCCL group."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from benchbase.comm.counters import CommCounters
from benchbase.comm.transports.base import Transport


class AllReduceTransport(Transport):
    """Sums every learner's buffer in place (`group` None: the default group)."""

    def __init__(self, group: Any, n_learners: int, numel: int, counters: CommCounters) -> None:
        self.group = group
        self.n_learners = n_learners
        self.numel = numel
        self.counters = counters

    def sum_all(self, params: torch.Tensor) -> None:
        """params ← Σ over every learner of its params."""
        n = self.n_learners
        dist.all_reduce(params, group=self.group)
        # What a ring all-reduce sends per learner: 2(N−1)/N of the buffer.
        self.counters.bytes_sent += int(2 * (n - 1) / n * self.numel * params.element_size())
        self.counters.messages_sent += 2 * (n - 1)
        self.counters.messages_received += 2 * (n - 1)
