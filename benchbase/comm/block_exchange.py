"""What learner blocks in several processes send each other: only the rows that learners in
other blocks read.

A cell of N learners runs as N/K processes of K consecutive learners. Block b's process needs,
at each iteration, the rows of its learners' in-neighbours that live in other blocks, and
nothing else: for a ring that is one row from each neighbouring block, whatever N.
`benchbase.comm.block_graph.BlockGraph` is the cell's graph seen between blocks (which rows each
block reads from which, phase by phase); `BlockExchange` carries them with the transports
learners use between processes (`benchbase.comm.transports`): shared-memory segments on one
host, gloo point-to-point messages, or an NCCL group between GPUs. Each block sends one message,
its boundary rows (those any other block reads in some phase), to the blocks that read them this
phase.
"""

from __future__ import annotations

from typing import Any

import torch

from benchbase.comm.block_graph import BlockGraph
from benchbase.comm.counters import CommCounters
from benchbase.comm.transports import DeviceGroupTransport, GlooTransport, SharedMemoryTransport, Transport


class BlockExchange:
    """Block `block`'s side of the exchange. `exchange(buffers, iteration)` sends its boundary
    rows (of `buffers` [size, numel], on `device`) to the blocks that read them this phase and
    returns, by block, the boundary rows it reads from the others, [rows, numel] in
    `graph.exported` order (reused by the next exchange). `transport` carries flat messages of
    `graph.layout` on `message_device`: the host for shared memory and gloo, the GPU for NCCL."""

    def __init__(
        self,
        graph: BlockGraph,
        block: int,
        numel: int,
        transport: Transport,
        counters: CommCounters,
        name: str,
        device: Any = "cpu",
        message_device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.graph, self.block, self.numel = graph, block, numel
        self.transport, self.counters, self.name = transport, counters, name
        # Who this block sends to and reads from, per phase: the mixing loop only looks them up.
        self._peers = [(graph.send_to(block, phase), graph.receive_from(block, phase)) for phase in range(graph.period)]
        start = block * graph.size
        self._index = torch.tensor([row - start for row in graph.exported[block]], dtype=torch.long, device=device)
        pinned = torch.device(message_device).type == "cpu" and torch.cuda.is_available()
        # Padding rows stay zero; nothing reads them.
        self._message = torch.zeros(graph.message_rows, numel, dtype=dtype, device=message_device, pin_memory=pinned)
        self._rows = self._message[: len(self._index)]

    def exchange(self, buffers: torch.Tensor, iteration: int) -> dict[int, torch.Tensor]:
        sends, receives = self._peers[self.graph.plan.phase(iteration)]
        if buffers.device == self._rows.device:
            torch.index_select(buffers, 0, self._index, out=self._rows)
        else:  # a GPU block over shared memory or gloo: its boundary rows travel through host memory
            self._rows.copy_(buffers.index_select(0, self._index))
        received = self.transport.exchange(self._message.view(-1), iteration, sends, receives, [])
        width = self.graph.message_rows
        return {c: received[c].view(width, self.numel)[: len(self.graph.exported[c])] for c in receives}

    def close(self) -> None:
        """Every send matched (synchronous: nothing is in flight), the transport's resources freed."""
        self.transport.release()


def build_block_exchange(
    graph: BlockGraph,
    block: int,
    numel: int,
    dtype: torch.dtype,
    timeout_s: float,
    board: Any = None,
    device_group: Any = None,
    device: Any = "cpu",
) -> BlockExchange:
    """The exchange over an NCCL `device_group` (GPU to GPU) when given, else over a shared-memory
    `board` (same host) when given, else over gloo point-to-point messages in the default group."""
    layout = graph.layout(numel, dtype)
    counters = CommCounters()
    if device_group is not None:
        transport: Transport = DeviceGroupTransport(device_group, graph, block, layout, counters, device)
        return BlockExchange(graph, block, numel, transport, counters, "nccl", device, device, dtype)
    if board is not None:
        transport = SharedMemoryTransport(board, graph, block, layout, counters)
        return BlockExchange(graph, block, numel, transport, counters, "shm", device, "cpu", dtype)
    transport = GlooTransport(graph, block, layout, counters, 0, timeout_s)
    return BlockExchange(graph, block, numel, transport, counters, "p2p", device, "cpu", dtype)
