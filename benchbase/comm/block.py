"""Mixing inside learner blocks: a process hosts K consecutive learners of a cell, their
buffers the rows of one [K, numel] tensor, and the cell mixes by one product with the mixing
matrix, X ← W X (on a sparse graph, as a weighted sum of each row's neighbour rows, shifted or gathered).

With every learner of the cell in one process the product is local. With blocks in several
processes (K < N), each block receives only the rows its learners read from other blocks (its
learners' in-neighbours there: one row from each neighbouring block on a ring), over shared
memory, gloo or NCCL (`benchbase.comm.block_exchange`), and forms its rows of the product from
its own rows and those: X_b ← W_bb X_b + Σ_c W_bc X_c. The whole cell's rows are all-gathered
only to measure consensus. Without edges nothing is exchanged.

Synchronous diffusion only (staleness 0, no dropped links, a plan without push-sum): that is
the rule `benchbase.comm.rules.Diffusion` applies message by message between processes, so a
block mixes what the processes would (the product sums in another order, so the figures differ
in rounding). Each learner keeps the counters the core records as if its messages had travelled
(bytes and messages sent to its out-neighbours, received from its in-neighbours), so
`bytes_sent_per_learner` compares across layouts; `mix_wait_s` is the learner's share of the
mixing time.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from benchbase.comm.block_exchange import BlockExchange
from benchbase.comm.consensus import CONSENSUS_SCRATCH
from benchbase.comm.counters import CommCounters
from benchbase.comm.mixing_plan import MixingPlan

BLOCK_TRANSPORT = "block"


SHIFTS_FROM = 16  # blocks of fewer rows mix by one product (benchmarks/block_mixing.py)


def _shifts(weights: np.ndarray, like: torch.Tensor) -> list[tuple[int, torch.Tensor]] | None:
    """A block's own weights W_bb [K, K] as D cyclic shifts, when each of its non-zero weights sits at
    one of D offsets (j − i) mod K and every row has one at each (a ring; a phase of the exponential
    graph): W_bb X = Σ_c w_c ⊙ X[(i + c) mod K], each shift two slices of the rows, nothing gathered.
    [(c, each row's weight at offset c [K, 1])], offsets ascending; None on a GPU, below
    SHIFTS_FROM rows, where 4·D > K, or where the pattern is not one of shifts (the measurements
    behind these bounds: docs/scaling.md, `benchmarks/block_mixing.py`)."""
    learners = len(weights)
    if like.device.type != "cpu" or learners < SHIFTS_FROM:
        return None
    rows, columns = np.nonzero(weights)
    offsets = np.unique((columns - rows) % learners)
    if len(offsets) == 0 or 4 * len(offsets) > learners or len(offsets) * learners != len(rows):
        return None  # each non-zero weight is one (row, offset) pair: D·K of them means every row has all D
    index = np.arange(learners)
    return [(int(c), torch.tensor(weights[index, (index + c) % learners][:, None], dtype=like.dtype)) for c in offsets]


ShiftPiece = tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]


def _shifted_pieces(
    shifts: list[tuple[int, torch.Tensor]], rows: torch.Tensor, mixed: torch.Tensor
) -> list[ShiftPiece]:
    """`_shifts` as slices (rows of `mixed`, the rows they read, their weights, whether the piece
    writes its rows or adds to them): row i reads row i + c, so rows c… go against the first K − c
    and, wrapping around, rows … c − 1 against the last c. The first shift writes every row."""
    learners = len(rows)
    pieces = []
    for index, (offset, weights) in enumerate(shifts):
        pieces.append((mixed[: learners - offset], rows[offset:], weights[: learners - offset], index == 0))
        if offset:
            pieces.append((mixed[learners - offset :], rows[:offset], weights[learners - offset :], index == 0))
    return pieces


def _neighbour_slots(weights: np.ndarray, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """A block's own weights W_bb [K, K] as D slots (D: the most non-zero weights in a row) for
    rows like `like`: slot d holds each row's d-th neighbour [K] and its weight [K, 1] (a row with
    fewer: itself, weight 0), so W_bb X = Σ_d w_d ⊙ X[j_d], D passes over the rows instead of K.
    None where one matrix product is faster or not measured slower: on a GPU, and on a CPU unless
    10·D ≤ K (`benchmarks/block_mixing.py`: a ring of 256, 7.5 ms for the product and 0.9 ms for
    the slots; of 32, 185 and 94 µs; of 16, the product's 67 µs about what slots take). A pattern
    of cyclic shifts (`_shifts`) takes neither."""
    present = weights != 0
    slots = int(present.sum(axis=1).max())
    if like.device.type != "cpu" or slots == 0 or 10 * slots > len(weights):
        return None
    order = np.argsort(~present, axis=1, kind="stable")[:, :slots]  # each row's neighbours first
    columns = np.where(np.take_along_axis(present, order, 1), order, np.arange(len(weights))[:, None])
    values = np.take_along_axis(weights, columns, 1) * np.take_along_axis(present, order, 1)
    return [
        (torch.from_numpy(columns[:, d].copy()), torch.tensor(values[:, d : d + 1], dtype=like.dtype))
        for d in range(slots)
    ]


class BlockMixer:
    """The mixing of learners `first_rank` … `first_rank + K − 1` of a cell, whose buffers are the
    rows of `buffers` [K, numel]: X ← W(iteration) X, in place. With K < N and edges, `exchange`
    brings the rows read from other blocks, and every process of the cell's group calls `mix` at
    every iteration."""

    def __init__(
        self,
        plan: MixingPlan,
        buffers: torch.Tensor,
        parameter_numel: int,
        first_rank: int = 0,
        exchange: BlockExchange | None = None,
    ) -> None:
        learners = buffers.shape[0]
        if plan.n_learners % learners or first_rank % learners or first_rank + learners > plan.n_learners:
            raise ValueError(
                f"learners {first_rank}-{first_rank + learners - 1} are not a block of a plan of {plan.n_learners}"
            )
        self.distributed = learners < plan.n_learners
        if self.distributed and plan.has_edges and exchange is None:
            raise ValueError("blocks in several processes mix through a BlockExchange")
        self.plan, self.buffers, self.parameter_numel, self.exchange = plan, buffers, parameter_numel, exchange
        self.rows = slice(first_rank, first_rank + learners)
        self.counters = [CommCounters() for _ in range(learners)]
        self._message_bytes = buffers.shape[1] * buffers.element_size()
        self._consensus: float | None = None
        as_tensor = lambda array: torch.tensor(array, dtype=buffers.dtype, device=buffers.device)  # noqa: E731
        # Per phase: the weights on the block's own rows and, by block read, on the rows it sends.
        self._own_weights = [as_tensor(w[self.rows, self.rows]) for w in plan.weights]
        self._own_shifts = [_shifts(w[self.rows, self.rows], buffers) for w in plan.weights]
        self._own_neighbours = [
            None if shifts is not None else _neighbour_slots(w[self.rows, self.rows], buffers)
            for w, shifts in zip(plan.weights, self._own_shifts)
        ]
        self._mixed: torch.Tensor | None = None  # the product's rows, for shifts and gathers
        self._gathered: torch.Tensor | None = None  # one gathered neighbour row each, for gathers
        self._shift_pieces: list[list[ShiftPiece] | None] = [None] * plan.period
        # consensus_distance's buffers (`_slices_for_consensus`), built at its first call
        self._consensus_slices: tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]] | None = None
        self._incoming: list[list[tuple[int, torch.Tensor]]] = [[] for _ in plan.weights]
        if exchange is not None:
            graph, block = exchange.graph, first_rank // learners
            for phase, w in enumerate(plan.weights):
                for c in graph.receive_from(block, phase):
                    self._incoming[phase].append((c, as_tensor(w[self.rows][:, graph.exported[c]])))
        # Every block's rows, all-gathered to measure consensus (K < N); else the buffers themselves.
        self._cell = buffers if not self.distributed else buffers.new_zeros((plan.n_learners, buffers.shape[1]))
        self._cell_stale = self.distributed  # other blocks' rows not gathered since they changed
        self._host_cell: torch.Tensor | None = None  # GPU blocks gather through host memory
        # Per phase, each learner's (out-degree, in-degree): the messages it would send and receive.
        self._degrees = [
            [
                (len(plan.out_neighbours(rank, phase)), len(plan.in_neighbours(rank, phase)))
                for rank in range(first_rank, first_rank + learners)
            ]
            for phase in range(plan.period)
        ]

    @property
    def transport(self) -> str:
        """What carried the parameters, as the cells table records it."""
        if not self.plan.has_edges:
            return "none"
        return BLOCK_TRANSPORT if self.exchange is None else f"{BLOCK_TRANSPORT}/{self.exchange.name}"

    def mix(self, iteration: int) -> None:
        self._consensus = None
        if not self.plan.has_edges:
            self._cell_stale = self.distributed  # gathered when consensus is next measured
            return
        started = time.perf_counter()
        phase = self.plan.phase(iteration)
        received = self.exchange.exchange(self.buffers, iteration) if self.exchange is not None else {}
        mixed = self._own_product(phase)
        for block, weights in self._incoming[phase]:
            mixed.addmm_(weights, received[block].to(self.buffers.device, non_blocking=True))
        self.buffers.copy_(mixed)
        self._cell_stale = self.distributed
        share = (time.perf_counter() - started) / len(self.buffers)
        for counters, (sent, received_count) in zip(self.counters, self._degrees[phase]):
            counters.bytes_sent += sent * self._message_bytes
            counters.messages_sent += sent
            counters.messages_received += received_count
            counters.wait_s += share

    def _own_product(self, phase: int) -> torch.Tensor:
        """W_bb X_b: one matrix product, or on a sparse graph a weighted sum of shifted or gathered rows."""
        shifts, slots = self._own_shifts[phase], self._own_neighbours[phase]
        if shifts is None and slots is None:
            return self._own_weights[phase] @ self.buffers
        if self._mixed is None:
            self._mixed = torch.empty_like(self.buffers)
        mixed = self._mixed
        if shifts is not None:
            pieces = self._shift_pieces[phase]
            if pieces is None:  # views of the rows and the scratch, kept: slicing at every mix cost 10 µs
                pieces = self._shift_pieces[phase] = _shifted_pieces(shifts, self.buffers, mixed)
            for out, source, weight, writes in pieces:
                if writes:
                    torch.mul(source, weight, out=out)
                else:
                    out.addcmul_(source, weight)
            return mixed
        if self._gathered is None:
            self._gathered = torch.empty_like(self.buffers)
        gathered = self._gathered
        (first_columns, first_weights), *rest = slots
        torch.index_select(self.buffers, 0, first_columns, out=mixed).mul_(first_weights)
        for columns, weights in rest:
            mixed.addcmul_(torch.index_select(self.buffers, 0, columns, out=gathered), weights)
        return mixed

    def _gather(self) -> None:
        blocks = self.plan.n_learners // len(self.buffers)
        if self.buffers.device.type == "cpu":
            dist.all_gather(list(self._cell.chunk(blocks)), self.buffers)
            return
        # The cell's group is gloo, which gathers host tensors: GPU rows travel through host memory.
        if self._host_cell is None:
            self._host_cell = torch.empty(self._cell.shape, dtype=self._cell.dtype, pin_memory=True)
        dist.all_gather(list(self._host_cell.chunk(blocks)), self.buffers.cpu())
        self._cell.copy_(self._host_cell)

    def _slices_for_consensus(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """The mean's buffer and, per slice of columns, (the cell's parameters there, the mean
        there, the work buffer's columns). The work buffer is kept: a fresh [N, numel] temporary
        each time cost a 256-learner block 10 ms a measurement in its process (0.7 ms in a loop
        that reuses the memory). It is bounded (CONSENSUS_SCRATCH values), a slice of columns at a
        time, not another copy of every parameter; small models are one slice, as before."""
        params = self._cell[:, : self.parameter_numel]
        n, numel = params.shape
        columns = min(numel, max(1, CONSENSUS_SCRATCH // n))
        mean, work = params.new_empty(numel), params.new_empty((n, columns))
        slices = []
        for start in range(0, numel, columns):
            part = params[:, start : start + columns]
            slices.append((part, mean[start : start + columns], work[:, : part.shape[1]]))
        return mean, slices

    def consensus_distance(self) -> float:
        """sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ over the model parameters of the whole cell, as
        `benchbase.comm.consensus.consensus_distance` measures it between processes."""
        if self._consensus is None:
            if self._cell_stale:  # every block measures at the same iterations: a collective
                self._gather()
                self._cell_stale = False
            n = self.plan.n_learners
            if self._consensus_slices is None:
                self._consensus_slices = self._slices_for_consensus()
            mean, slices = self._consensus_slices
            torch.sum(self._cell[:, : self.parameter_numel], 0, out=mean).div_(n)
            spread = 0.0
            for part, mean_part, deviations in slices:
                spread += float(torch.sub(part, mean_part, out=deviations).square_().sum(1).double().sum())
            self._consensus = 0.0 if n == 1 else math.sqrt(spread / n) / (float(mean.norm()) + 1e-12)
        return self._consensus

    def close(self) -> None:
        """Free what the exchange holds (shared-memory segments)."""
        if self.exchange is not None:
            self.exchange.close()

    def member(self, rank: int) -> BlockMemberComm:
        """Learner `rank`'s side (a rank of the cell, in this block)."""
        return BlockMemberComm(self, rank)


class BlockMemberComm:
    """One learner's side of a block's mixing, with the methods the learner loop calls on a
    `benchbase.comm.Communicator` (the block mixes once for all of them: `mix` does nothing)."""

    def __init__(self, mixer: BlockMixer, rank: int) -> None:
        self.mixer, self.rank = mixer, rank
        self.counters = mixer.counters[rank - mixer.rows.start]
        # What carried the parameters, as the cells table records it: nothing, without edges.
        self.transport = mixer.transport

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        """Nothing: the block mixes every learner at once (`BlockMixer.mix`)."""

    @property
    def bytes_sent(self) -> int:
        return self.counters.bytes_sent

    def consensus_distance(self, params: torch.Tensor) -> float:
        return self.mixer.consensus_distance()

    def consensus_snapshots(self) -> dict[int, float]:
        return {}

    def statistics(self) -> dict[str, float]:
        counters = self.counters
        return {
            "bytes_sent": float(counters.bytes_sent),
            "messages_sent": float(counters.messages_sent),
            "messages_received": float(counters.messages_received),
            "publishes_skipped": 0.0,
            "mix_wait_s": counters.wait_s,
        }

    def reset_staleness(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "push_sum_weight": 1.0,  # what a process's diffusion rule saves: either layout resumes the other's
            "bytes_sent": counters.bytes_sent,
            "messages_sent": counters.messages_sent,
            "messages_received": counters.messages_received,
            "publishes_skipped": 0,
            "publishes_limited": 0,
            "wait_s": counters.wait_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = self.counters
        counters.bytes_sent = int(state["bytes_sent"])
        counters.messages_sent = int(state["messages_sent"])
        counters.messages_received = int(state["messages_received"])
        counters.wait_s = float(state["wait_s"])

    def close(self, params: torch.Tensor | None = None) -> None:
        pass
