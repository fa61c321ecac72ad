"""Neighbour-only parameter exchange over torch.distributed: mixing, staleness, byte accounting.

A learner's parameters travel as one flat buffer (`benchbase.flat`). Per mix, learner i sends
it to its out-neighbours and combines θ_i ← c_ii θ_i + Σ_j c_ij θ_j over its in-neighbours,
with the weights of the cell's `MixingPlan`. Cost per learner grows with its degree, never
with N: no message goes to a non-neighbour, and the only collective is the single all-reduce
that averages a complete graph (and the periodic consensus-distance measurement).

Staleness bound K (`ConsensusParams.staleness`):
- K = 0, synchronous diffusion: every mix sends and receives this iteration's parameters.
- K > 0, bounded-staleness gossip: a receiver thread per in-peer keeps the newest message (gloo
  cannot poll a pending receive: `is_completed()` only turns true inside `wait()`). A mix uses
  the newest message of each in-neighbour and waits only while it is more than K iterations
  old. Each message carries its iteration in a trailing slot. `close()` sends a final marker
  to every out-peer and drains every in-peer, so every send is matched before shutdown.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from benchbase.shm import SharedBoard
from benchbase.topology import MixingPlan

_FINAL = -1.0  # iteration slot of the last message on a channel


class _Inbox(threading.Thread):
    """Receives one in-peer's messages in the background and keeps the newest."""

    def __init__(self, source: int, size: int, dtype: torch.dtype) -> None:
        super().__init__(name=f"inbox-from-{source}", daemon=True)
        self.source = source
        self._receiving = torch.empty(size, dtype=dtype)
        self.newest = torch.empty(size, dtype=dtype)
        self.newest_iteration = -math.inf
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
                    if iteration == _FINAL:
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

    def wait_fresh(self, min_iteration: int, timeout_s: float) -> tuple[torch.Tensor, float]:
        """The newest message once it is from iteration ≥ min_iteration (copied)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.newest_iteration < min_iteration:
                if self.error is not None:
                    raise RuntimeError(f"receiving from learner {self.source} failed: {self.error}") from self.error
                if self.finished:
                    raise RuntimeError(f"learner {self.source} stopped before iteration {min_iteration}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no message from learner {self.source} as fresh as iteration {min_iteration} "
                        f"within {timeout_s:.0f} s"
                    )
                self._changed.wait(remaining)
            return self.newest.clone(), self.newest_iteration


class Communicator:
    """Mixes one learner's flat parameter buffer with its neighbours, as the plan says."""

    def __init__(
        self,
        plan: MixingPlan,
        rank: int,
        numel: int,
        dtype: torch.dtype,
        staleness: int,
        timeout_s: float,
        board: SharedBoard | None = None,
    ) -> None:
        self.plan = plan
        self.board = board  # same-host shared memory instead of gloo messages (benchbase.shm)
        self.rank = rank
        self.numel = numel
        self.staleness = staleness
        self.timeout_s = timeout_s
        self._timeout = timedelta(seconds=timeout_s)
        self.dtype = dtype
        # Tagged messages carry their iteration in a trailing slot: keep it exact (fp16 is not).
        self.message_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.element_bytes = torch.empty((), dtype=dtype).element_size()
        self.bytes_sent = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.wait_s = 0.0
        self.staleness_seen: list[float] = []
        self.use_all_reduce = plan.is_complete and staleness == 0 and board is None
        # What carried the parameters (recorded per cell: a complete graph's all-reduce sums in
        # another order than the neighbour sum, so its numbers differ in rounding).
        self.transport = "none" if not plan.has_edges else "shm" if board else "all-reduce" if self.use_all_reduce else "p2p"
        # Per phase: (this learner's own weight, [(in-neighbour, weight)], [out-neighbours]).
        self._phases = [
            (
                float(plan.weights[k][rank, rank]),
                [(j, float(plan.weights[k][rank, j])) for j in plan.in_neighbours(rank, k)],
                plan.out_neighbours(rank, k),
            )
            for k in range(plan.period)
        ]
        self._received = {j: torch.empty(numel, dtype=dtype) for j in plan.in_peers(rank)}
        self._inboxes: dict[int, _Inbox] = {}
        self._sending: deque[tuple[dist.Work, torch.Tensor]] = deque()
        if staleness > 0 and board is None:
            for j in plan.in_peers(rank):
                inbox = _Inbox(j, numel + 1, self.message_dtype)
                inbox.start()
                self._inboxes[j] = inbox

    # -- mixing ---------------------------------------------------------------------------------

    def _host(self, params: torch.Tensor) -> torch.Tensor:
        """gloo exchanges CPU tensors: a GPU learner's buffer is staged through pinned memory."""
        if params.device.type == "cpu":
            return params
        if getattr(self, "_staging", None) is None:
            self._staging = torch.empty(params.numel(), dtype=params.dtype, pin_memory=True)
        return self._staging.copy_(params)

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        """Combine `params` (flat, written in place) with the neighbours' for this iteration."""
        if not self.plan.has_edges:
            return
        if params.device.type != "cpu":
            host = self._host(params)
            self.mix(host, iteration)
            params.copy_(host)
            return
        started = time.perf_counter()
        if self.board is not None:
            self._mix_shared(params, iteration)
        elif self.use_all_reduce:
            self._all_reduce_average(params)
        elif self.staleness == 0:
            self._mix_synchronous(params, iteration)
        else:
            self._mix_bounded_staleness(params, iteration)
        self.wait_s += time.perf_counter() - started

    def _all_reduce_average(self, params: torch.Tensor) -> None:
        n = self.plan.n_learners
        dist.all_reduce(params)
        params.div_(n)
        # What a ring all-reduce sends per learner: 2(N−1)/N of the buffer.
        self.bytes_sent += int(2 * (n - 1) / n * self.numel * self.element_bytes)
        self.messages_sent += 2 * (n - 1)
        self.messages_received += 2 * (n - 1)

    def _mix_synchronous(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, outs = self._phases[self.plan.phase(iteration)]
        works = [dist.isend(params, dst=j) for j in outs]
        works += [dist.irecv(self._received[j], src=j) for j, _ in in_weights]
        deadline = time.monotonic() + self.timeout_s  # one timeout for the whole mix
        for work in works:
            work.wait(timedelta(seconds=max(0.001, deadline - time.monotonic())))
        self._count_sent(len(outs), self.numel)
        self.messages_received += len(in_weights)
        params.mul_(own_weight)
        for j, weight in in_weights:
            params.add_(self._received[j], alpha=weight)

    def _mix_bounded_staleness(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, outs = self._phases[self.plan.phase(iteration)]
        for j in outs:
            self._send_tagged(params, float(iteration), j)
        incoming = []
        for j, weight in in_weights:
            message, sent_at = self._inboxes[j].wait_fresh(iteration - self.staleness, self.timeout_s)
            self.staleness_seen.append(max(0.0, iteration - sent_at))  # a neighbour may be ahead
            incoming.append((message[:-1].to(params.dtype), weight))
        params.mul_(own_weight)
        for message, weight in incoming:
            params.add_(message, alpha=weight)

    def _mix_shared(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, outs = self._phases[self.plan.phase(iteration)]
        self.board.publish(params, iteration)
        # Counted as the messages a network transport would send, so figures compare across transports.
        self._count_sent(len(outs), self.numel)
        for j, _ in in_weights:
            if self.staleness == 0:
                self.board.read_exact(j, iteration, self._received[j])
            else:
                sent_at = self.board.read_newest(j, iteration - self.staleness, self._received[j])
                self.staleness_seen.append(max(0, iteration - sent_at))
        self.messages_received += len(in_weights)
        params.mul_(own_weight)
        for j, weight in in_weights:
            params.add_(self._received[j], alpha=weight)

    def _send_tagged(self, params: torch.Tensor, iteration: float, destination: int) -> None:
        message = torch.empty(self.numel + 1, dtype=self.message_dtype)
        message[:-1].copy_(params)
        message[-1] = iteration
        self._sending.append((dist.isend(message, dst=destination), message))
        self._count_sent(1, self.numel + 1)
        # Bound the memory held by unfinished sends; a receiver thread drains them promptly.
        while len(self._sending) > 4 * max(1, len(self.plan.out_peers(self.rank))) + self.staleness:
            work, _ = self._sending.popleft()
            work.wait(self._timeout)

    def _count_sent(self, messages: int, numel: int) -> None:
        self.messages_sent += messages
        self.bytes_sent += messages * numel * self.element_bytes

    # -- measurement ----------------------------------------------------------------------------

    def consensus_distance(self, params: torch.Tensor) -> float:
        """sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ across all learners. A collective: every learner must
        call it at the same iteration (only used with synchronous mixing)."""
        n = self.plan.n_learners
        if n == 1:
            return 0.0
        params = self._host(params.detach())
        mean = params.clone()
        dist.all_reduce(mean)
        mean.div_(n)
        spread = torch.stack([(params - mean).pow(2).sum()]).double()
        dist.all_reduce(spread)
        return math.sqrt(float(spread) / n) / (float(mean.norm()) + 1e-12)

    def statistics(self) -> dict[str, float]:
        stats = {
            "bytes_sent": float(self.bytes_sent),
            "messages_sent": float(self.messages_sent),
            "messages_received": float(self.messages_received + sum(i.received for i in self._inboxes.values())),
            "mix_wait_s": self.wait_s,
        }
        if self.staleness_seen:
            stats["staleness_mean"] = sum(self.staleness_seen) / len(self.staleness_seen)
            stats["staleness_max"] = max(self.staleness_seen)
        return stats

    def reset_staleness(self) -> None:
        self.staleness_seen.clear()

    # -- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Match every send with a receive: final markers out, every inbox drained to its marker."""
        if self.board is not None:
            # Nothing is in flight: a neighbour that still reads our last iteration keeps its own
            # mapping of the segment after we close and unlink it.
            self.board.close()
            return
        try:
            self._send_finals_and_drain()
        finally:
            while self._sending:
                work, _ = self._sending.popleft()
                work.wait(self._timeout)

    def _send_finals_and_drain(self) -> None:
        if self.staleness > 0 and self.plan.has_edges:
            final = torch.zeros(self.numel + 1, dtype=self.message_dtype)
            for j in self.plan.out_peers(self.rank):
                marker = final.clone()
                marker[-1] = _FINAL
                self._sending.append((dist.isend(marker, dst=j), marker))
                self._count_sent(1, self.numel + 1)
            for inbox in self._inboxes.values():
                inbox.join(self.timeout_s)
                if inbox.is_alive():
                    raise TimeoutError(f"learner {inbox.source} never sent its final message")
                if inbox.error is not None:
                    raise RuntimeError(f"receiving from learner {inbox.source} failed: {inbox.error}")
