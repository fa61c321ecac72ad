"""A cell's graph seen between learner blocks, and which graphs a block can mix.

A cell of N learners runs as N/K processes of K consecutive learners. `BlockGraph` says, phase by
phase, which rows each block reads from which other block (`benchbase.comm.block_exchange`
carries them); `block_mixing_refusal` says which mixing a block cannot do. Neither needs torch, so
`bench run` checks a grid's process layout before anything loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchbase.comm.layout import MessageLayout
from benchbase.comm.mixing_plan import MixingPlan

if TYPE_CHECKING:
    import torch


def block_mixing_refusal(plan: MixingPlan, staleness: int, link_drop: float) -> str | None:
    """Why a cell with this plan cannot mix inside a block; None when it can."""
    if staleness > 0:
        return "asynchronous mixing (staleness > 0) runs one learner per process"
    if link_drop > 0:
        return "dropped links (link_drop > 0) run one learner per process"
    if plan.push_sum:
        return "push-sum mixing runs one learner per process"
    return None


class BlockGraph:
    """The cell's graph between blocks of `size` consecutive learners: block b holds learners
    b·size … b·size + size − 1. A block reads from another when one of its learners has an
    in-neighbour there. Its `in_peers`, `out_peers` and `period` read as a mixing plan's do, so
    the shared-memory board's slot count (`benchbase.comm.shm.synchronous_slots`) applies."""

    def __init__(self, plan: MixingPlan, size: int) -> None:
        n = plan.n_learners
        if size < 1 or n % size:
            raise ValueError(f"blocks of {size} do not divide a plan of {n} learners")
        self.plan, self.size, self.blocks, self.period = plan, size, n // size, plan.period
        # reads[phase][b][c]: the learners of block c (c ≠ b) that block b's learners read in that phase.
        self.reads: list[list[dict[int, list[int]]]] = []
        for phase in range(plan.period):
            adjacency = plan.in_adjacency[phase]
            per_block = []
            for b in range(self.blocks):
                rows = adjacency[b * size : (b + 1) * size].any(axis=0).nonzero()[0].tolist()
                read: dict[int, list[int]] = {}
                for j in rows:
                    if j // size != b:
                        read.setdefault(j // size, []).append(j)
                per_block.append(read)
            self.reads.append(per_block)
        # Block c's boundary rows: those some other block reads in some phase, in order.
        exported: list[set[int]] = [set() for _ in range(self.blocks)]
        for per_block in self.reads:
            for read in per_block:
                for c, rows in read.items():
                    exported[c].update(rows)
        self.exported = [sorted(rows) for rows in exported]

    @property
    def n_learners(self) -> int:
        """The number of blocks: the nodes of this graph, as `synchronous_slots` counts them."""
        return self.blocks

    def in_peers(self, block: int) -> list[int]:
        """Every block `block` ever reads from, sorted."""
        return sorted({c for per_block in self.reads for c in per_block[block]})

    def out_peers(self, block: int) -> list[int]:
        """Every block that ever reads from `block`, sorted."""
        return sorted({b for per_block in self.reads for b in range(self.blocks) if block in per_block[b]})

    def receive_from(self, block: int, phase: int) -> list[int]:
        return sorted(self.reads[phase][block])

    def send_to(self, block: int, phase: int) -> list[int]:
        return [b for b in range(self.blocks) if block in self.reads[phase][b]]

    @property
    def message_rows(self) -> int:
        """Rows in one message: the largest boundary (smaller ones are padded)."""
        return max(len(rows) for rows in self.exported)

    def layout(self, numel: int, dtype: torch.dtype) -> MessageLayout:
        return MessageLayout(self.message_rows * numel, dtype, False)
