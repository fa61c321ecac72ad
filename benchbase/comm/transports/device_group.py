"""Batched point-to-point messages in a separate process group: NCCL between the learners' own
GPUs (synchronous mixing only), so parameters travel GPU to GPU, never through host memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout
from benchbase.comm.transports.base import Peers, Transport


class DeviceGroupTransport(Transport):
    """Each exchange posts its sends and receives as one batch in `group`."""

    def __init__(
        self, group: Any, plan: Peers, rank: int, layout: MessageLayout, counters: CommCounters, device: Any
    ) -> None:
        self.group = group
        self.counters = counters
        self._received = {j: torch.empty(layout.width, dtype=layout.dtype, device=device) for j in plan.in_peers(rank)}

    def exchange(
        self, message: torch.Tensor, iteration: int, send_to: list[int], receive_from: list[int], silent: list[int]
    ) -> dict[int, torch.Tensor]:
        # NCCL pairs sends with receives only when they are posted together.
        operations = [dist.P2POp(dist.isend, message, i, self.group) for i in send_to]
        operations += [dist.P2POp(dist.irecv, self._received[j], j, self.group) for j in receive_from]
        for work in dist.batch_isend_irecv(operations) if operations else []:
            work.wait()
        self.counters.count_sent(len(send_to), message)
        self.counters.messages_received += len(receive_from)
        return self._received
