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
  old (or until that neighbour has finished). Each message carries its iteration in a trailing
  slot. `close()` sends a final marker to every out-peer and drains every in-peer, so every
  send is matched before shutdown.

Push-sum (`MixingPlan.push_sum`: directed graphs and gossip): the learner also carries a scalar
weight w (1 at the start). It sends x = (w·θ, w) scaled by the plan's column-stochastic weights,
sums what it receives, and acts with θ = x/w. Mass (Σ of every learner's x, including what is
in flight) is conserved, so θ converges to the exact average on any strongly connected graph.
- K = 0: each message is one iteration's share, as in plain mixing.
- K > 0: newest-message semantics would use a share twice or lose it. Instead every channel
  j→i carries the running sum of all the mass j ever sent to i (float64), and i adds the
  difference to what it consumed before. The newest message therefore carries every older one:
  nothing is lost or counted twice, however stale or reordered (robust push-sum, as in
  Hadjicostis et al.). Each out-neighbour has its own channel.

Unreliable links (`ConsensusParams.link_drop` = p): at each iteration a learner skips publishing
with probability p. The draw is a hash of (cell seed, learner, iteration), so with K = 0 its
in-neighbours know it skipped, do not wait for it and give its weight to themselves (push-sum:
the sender keeps its share). With K > 0 neighbours simply mix with older news.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from benchbase.comm.mixing_plan import MixingPlan
from benchbase.comm.shm import SharedBoard

_FINAL = -1.0  # iteration slot of the last message on a channel
_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def publishes(seed: int, learner: int, iteration: int, link_drop: float) -> bool:
    """Whether `learner` publishes at `iteration` (every learner can evaluate it for any other)."""
    if link_drop <= 0.0:
        return True
    draw = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ learner) ^ iteration)
    return draw / 2.0**64 >= link_drop


@dataclass(frozen=True)
class MessageLayout:
    """What one message holds: `width` elements of `dtype`; `channels` outboxes per sender."""

    width: int
    dtype: torch.dtype
    running_sums: bool  # asynchronous push-sum: channels carry cumulative mass

    def channels(self, plan: MixingPlan, sender: int) -> int:
        return max(1, len(plan.out_peers(sender))) if self.running_sums else 1

    def channel(self, plan: MixingPlan, sender: int, receiver: int) -> int:
        return plan.out_peers(sender).index(receiver) if self.running_sums else 0


def message_layout(plan: MixingPlan, numel: int, dtype: torch.dtype, staleness: int) -> MessageLayout:
    """The layout of the messages a cell exchanges (the shared-memory board is sized by it)."""
    if plan.push_sum and staleness > 0:
        return MessageLayout(numel + 1, torch.float64, True)  # cumulative sums need float64
    if plan.push_sum:
        return MessageLayout(numel + 1, torch.float64 if dtype == torch.float64 else torch.float32, False)
    return MessageLayout(numel, dtype, False)


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
                    if iteration == _FINAL:
                        # A running-sum channel's marker carries the final sum; a plain one's is empty.
                        if self.running_sums:
                            self._receiving, self.newest = self.newest, self._receiving
                        if self.newest_iteration == -math.inf:
                            self.newest_iteration = _FINAL
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
            if self.newest_iteration == -math.inf or self.newest_iteration == _FINAL:
                return None
            return self.newest.clone(), self.newest_iteration


SNAPSHOT_TAG = 7  # gloo tag of consensus snapshots, apart from parameter messages (tag 0)
SNAPSHOT_COORDINATES = 1 << 16  # larger models are measured on a fixed subset of coordinates


class _SnapshotCollector:
    """Learner 0's side of the asynchronous consensus measurement: every learner sends it a copy
    of its parameters at each metric iteration; once all N copies of an iteration are in, the
    spread is computed and the sums are dropped. Runs receiver threads so nobody waits."""

    def __init__(self, n_learners: int, size: int) -> None:
        self.n_learners = n_learners
        self.size = size
        self._pending: dict[int, list] = {}  # iteration -> [Σθ (float64), Σ‖θ‖², count]
        self.distances: dict[int, float] = {}
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._receive, args=(j,), daemon=True, name=f"snapshots-from-{j}")
                         for j in range(1, n_learners)]
        for thread in self._threads:
            thread.start()

    def add(self, snapshot: torch.Tensor, iteration: int) -> None:
        values = snapshot.double()
        with self._lock:
            entry = self._pending.setdefault(iteration, [torch.zeros(self.size, dtype=torch.float64), 0.0, 0])
            entry[0].add_(values)
            entry[1] += float(values.pow(2).sum())
            entry[2] += 1
            if entry[2] == self.n_learners:
                mean = entry[0] / self.n_learners
                spread = max(0.0, entry[1] / self.n_learners - float(mean.pow(2).sum()))
                self.distances[iteration] = math.sqrt(spread) / (float(mean.norm()) + 1e-12)
                del self._pending[iteration]

    def _receive(self, source: int) -> None:
        buffer = torch.empty(self.size + 1, dtype=torch.float32)
        try:
            while True:
                dist.irecv(buffer, src=source, tag=SNAPSHOT_TAG).wait()
                iteration = int(buffer[-1])
                if iteration < 0:
                    return
                self.add(buffer[:-1], iteration)
        except BaseException as error:  # reported by join()
            self.errors.append(error)

    def join(self, timeout_s: float) -> dict[int, float]:
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                raise TimeoutError("a learner never sent its last consensus snapshot")
        if self.errors:
            raise RuntimeError(f"receiving consensus snapshots failed: {self.errors[0]}")
        return dict(sorted(self.distances.items()))


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
        *,
        link_drop: float = 0.0,
        seed: int = 0,
        device_group: Any = None,
        device: Any = "cpu",
    ) -> None:
        self.plan = plan
        self.board = board  # same-host shared memory instead of gloo messages (benchbase.shm)
        # An NCCL group over the learners' own GPUs (synchronous mixing only): parameters then
        # travel GPU to GPU, never through host memory.
        self.device_group = device_group
        self.rank = rank
        self.numel = numel
        self.staleness = staleness
        self.link_drop = link_drop
        self.seed = seed
        self.timeout_s = timeout_s
        self._timeout = timedelta(seconds=timeout_s)
        self.dtype = dtype
        self.layout = message_layout(plan, numel, dtype, staleness)
        self.push_sum = plan.push_sum
        self.push_sum_weight = 1.0
        # Plain tagged messages carry their iteration in a trailing slot: keep it exact.
        self.message_dtype = torch.float64 if dtype == torch.float64 or self.layout.running_sums else torch.float32
        self.bytes_sent = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.publishes_skipped = 0
        self.wait_s = 0.0
        self.staleness_seen: list[float] = []
        self.use_all_reduce = (
            plan.is_complete and staleness == 0 and board is None and not plan.push_sum and link_drop == 0
        )
        # What carried the parameters (recorded per cell: a complete graph's all-reduce sums in
        # another order than the neighbour sum, so its numbers differ in rounding).
        self.transport = ("none" if not plan.has_edges else "shm" if board else
                          "all-reduce" if self.use_all_reduce else "p2p")
        if device_group is not None and plan.has_edges:
            self.transport = "nccl-all-reduce" if self.use_all_reduce else "nccl"
        # Per phase: (this learner's own weight, [(in-neighbour, weight)], [(out-neighbour, weight)]).
        self._phases = [
            (
                float(plan.weights[k][rank, rank]),
                [(j, float(plan.weights[k][rank, j])) for j in plan.in_neighbours(rank, k)],
                [(i, float(plan.weights[k][i, rank])) for i in plan.out_neighbours(rank, k)],
            )
            for k in range(plan.period)
        ]
        width = self.layout.width
        buffers = device if device_group is not None else "cpu"
        self._outgoing = torch.empty(width, dtype=self.layout.dtype, device=buffers)
        self._received = {j: torch.empty(width, dtype=self.layout.dtype, device=buffers) for j in plan.in_peers(rank)}
        # Asynchronous push-sum: what this learner has sent on each channel, and consumed from each.
        self._sent_sums = {i: torch.zeros(width, dtype=torch.float64) for i in plan.out_peers(rank)}
        self._consumed_sums = {j: torch.zeros(width, dtype=torch.float64) for j in plan.in_peers(rank)}
        self._neighbour_views: dict[int, torch.Tensor] = {}
        self._last_read: dict[int, int] = {}
        self._inboxes: dict[int, _Inbox] = {}
        self._sending: deque[tuple[dist.Work, torch.Tensor]] = deque()
        # Asynchronous runs measure consensus through snapshots sent to learner 0 (no collective).
        self._snapshot_index = None
        if numel > SNAPSHOT_COORDINATES:
            generator = torch.Generator().manual_seed(seed)
            self._snapshot_index = torch.randperm(numel, generator=generator)[:SNAPSHOT_COORDINATES].sort().values
        self._snapshot_size = min(numel, SNAPSHOT_COORDINATES)
        self._snapshot_sends: deque[tuple[dist.Work, torch.Tensor]] = deque()
        self._collector = (_SnapshotCollector(plan.n_learners, self._snapshot_size)
                           if staleness > 0 and rank == 0 and plan.n_learners > 1 else None)
        if staleness > 0 and board is None:
            for j in plan.in_peers(rank):
                inbox = _Inbox(j, width + 1, self.message_dtype, starts_empty=self.layout.running_sums)
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
        if params.device.type != "cpu" and self.device_group is None:
            host = self._host(params)
            self.mix(host, iteration)
            params.copy_(host)
            return
        started = time.perf_counter()
        if self.use_all_reduce:
            self._all_reduce_average(params)
        elif self.layout.running_sums:
            self._mix_push_sum_async(params, iteration)
        elif self.staleness == 0:
            self._mix_synchronous(params, iteration)
        else:
            self._mix_bounded_staleness(params, iteration)
        self.wait_s += time.perf_counter() - started

    def _publishes(self, learner: int, iteration: int) -> bool:
        return publishes(self.seed, learner, iteration, self.link_drop)

    def _all_reduce_average(self, params: torch.Tensor) -> None:
        n = self.plan.n_learners
        dist.all_reduce(params, group=self.device_group)
        params.div_(n)
        # What a ring all-reduce sends per learner: 2(N−1)/N of the buffer.
        self.bytes_sent += int(2 * (n - 1) / n * self.numel * params.element_size())
        self.messages_sent += 2 * (n - 1)
        self.messages_received += 2 * (n - 1)

    def _outgoing_message(self, params: torch.Tensor) -> torch.Tensor:
        """Plain mixing sends θ; push-sum sends (w·θ, w)."""
        if not self.push_sum:
            return params
        message = self._outgoing
        torch.mul(params, self.push_sum_weight, out=message[:-1])
        message[-1] = self.push_sum_weight
        return message

    def _combine(self, params: torch.Tensor, own: torch.Tensor, own_weight: float,
                 incoming: list[tuple[torch.Tensor, float]]) -> None:
        """params ← own_weight·own + Σ weight·message (push-sum: then divide by the new w)."""
        if not self.push_sum:
            params.mul_(own_weight)
            for message, weight in incoming:
                params.add_(message, alpha=weight)
            return
        mass = own.mul(own_weight)
        for message, weight in incoming:
            mass.add_(message, alpha=weight)
        self.push_sum_weight = float(mass[-1])
        params.copy_(mass[:-1].div_(mass[-1]))

    def _mix_synchronous(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, out_weights = self._phases[self.plan.phase(iteration)]
        message = self._outgoing_message(params)
        sending = self._publishes(self.rank, iteration)
        if not sending:
            self.publishes_skipped += 1
            if self.push_sum:  # keep the share the out-neighbours would have had
                own_weight += sum(weight for _, weight in out_weights)
        live = [(j, w) for j, w in in_weights if self._publishes(j, iteration)]
        live_sources = {j for j, _ in live}
        if not self.push_sum:  # plain mixing: a silent neighbour's weight stays with me
            own_weight += sum(w for j, w in in_weights if j not in live_sources)
        if self.board is not None:
            # The slot doubles as the synchronisation point, so it is written even when skipped
            # (never read then, nor counted): a writer never laps a reader that skipped it.
            self.board.publish(message, iteration)
            if sending:
                self._count_sent(len(out_weights), message)
            for j, _ in in_weights:
                if j in live_sources:
                    self.board.read_exact(j, iteration, self._received[j])
                else:
                    self.board.wait_exact(j, iteration)
        elif self.device_group is not None:
            # NCCL pairs sends with receives only when they are posted together.
            operations = [dist.P2POp(dist.isend, message, i, self.device_group) for i, _ in out_weights] if sending else []
            operations += [dist.P2POp(dist.irecv, self._received[j], j, self.device_group) for j, _ in live]
            for work in dist.batch_isend_irecv(operations) if operations else []:
                work.wait()
            if sending:
                self._count_sent(len(out_weights), message)
        else:
            works = [dist.isend(message, dst=i) for i, _ in out_weights] if sending else []
            works += [dist.irecv(self._received[j], src=j) for j, _ in live]
            deadline = time.monotonic() + self.timeout_s  # one timeout for the whole mix
            for work in works:
                work.wait(timedelta(seconds=max(0.001, deadline - time.monotonic())))
            if sending:
                self._count_sent(len(out_weights), message)
        self.messages_received += len(live)
        self._combine(params, message, own_weight, [(self._received[j], w) for j, w in live])

    def _mix_bounded_staleness(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, out_weights = self._phases[self.plan.phase(iteration)]
        if self._publishes(self.rank, iteration):
            if self.board is not None:
                self.board.publish(params, iteration)
                self._count_sent(len(out_weights), params)
            else:
                for i, _ in out_weights:
                    self._send_tagged(params, float(iteration), i)
        else:
            self.publishes_skipped += 1
        incoming = []
        for j, weight in in_weights:
            newest = self._newest(j, iteration - self.staleness)
            if newest is None:  # a neighbour that finished without ever publishing
                own_weight += weight
                continue
            message, sent_at = newest
            self.staleness_seen.append(max(0.0, iteration - sent_at))  # a neighbour may be ahead
            self._neighbour_views[j] = message
            incoming.append((message, weight))
        self._combine(params, params, own_weight, incoming)

    def _mix_push_sum_async(self, params: torch.Tensor, iteration: int) -> None:
        own_weight, in_weights, out_weights = self._phases[self.plan.phase(iteration)]
        mass = torch.empty(self.numel + 1, dtype=torch.float64)
        mass[:-1].copy_(params).mul_(self.push_sum_weight)
        mass[-1] = self.push_sum_weight
        if self._publishes(self.rank, iteration):
            for i, weight in out_weights:
                running = self._sent_sums[i].add_(mass, alpha=weight)
                if self.board is not None:
                    self.board.publish(running, iteration, self.layout.channel(self.plan, self.rank, i))
                    self._count_sent(1, running)
                else:
                    self._send_tagged(running, float(iteration), i)
            mass.mul_(own_weight)
        else:
            self.publishes_skipped += 1  # keep the whole share
        # Freshness is required of this phase's in-neighbours; every in-peer's news is consumed.
        fresh_from = {j for j, _ in in_weights}
        for j in self.plan.in_peers(self.rank):
            newest = self._newest(j, iteration - self.staleness if j in fresh_from else -1)
            if newest is None:
                continue
            running, sent_at = newest
            if j in fresh_from:
                self.staleness_seen.append(max(0.0, iteration - sent_at))
            delta = running - self._consumed_sums[j]
            self._consumed_sums[j] = running
            if float(delta[-1]) > 0.0:
                self._neighbour_views[j] = delta
                mass.add_(delta)
        self.push_sum_weight = float(mass[-1])
        params.copy_(mass[:-1].div_(mass[-1]))

    def _newest(self, peer: int, min_iteration: int) -> tuple[torch.Tensor, float] | None:
        """The peer's newest message to this learner once fresh enough (or the peer finished)."""
        if self.board is None:
            found = self._inboxes[peer].wait_fresh(min_iteration, self.timeout_s)
            if found is None:
                return None
            message, sent_at = found
            return message[:-1].to(self.layout.dtype), sent_at
        into = self._received[peer]
        channel = self.layout.channel(self.plan, peer, self.rank)
        sent_at = self.board.read_newest(peer, min_iteration, into, channel)
        if sent_at is None:
            return None
        if sent_at != self._last_read.get(peer):  # count each message once, however often read
            self._last_read[peer] = sent_at
            self.messages_received += 1
        return into.clone(), float(sent_at)

    def _send_tagged(self, content: torch.Tensor, iteration: float, destination: int) -> None:
        message = torch.empty(content.numel() + 1, dtype=self.message_dtype)
        message[:-1].copy_(content)
        message[-1] = iteration
        self._sending.append((dist.isend(message, dst=destination), message))
        self._count_sent(1, message)
        # Bound the memory held by unfinished sends; a receiver thread drains them promptly.
        while len(self._sending) > 4 * max(1, len(self.plan.out_peers(self.rank))) + min(self.staleness, 64):
            work, _ = self._sending.popleft()
            work.wait(self._timeout)

    def _count_sent(self, messages: int, message: torch.Tensor) -> None:
        self.messages_sent += messages
        self.bytes_sent += messages * message.numel() * message.element_size()

    # -- measurement ----------------------------------------------------------------------------

    def consensus_distance(self, params: torch.Tensor) -> float:
        """sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ across all learners. A collective: every learner must
        call it at the same point (synchronous mixing, or after every learner finished)."""
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

    def neighbour_distance(self, params: torch.Tensor) -> float | None:
        """sqrt(mean_j ‖θ_i − θ_j‖²) / ‖θ_i‖ over the in-peers' latest parameters this learner
        mixed: a local, free estimate of consensus for asynchronous gossip (no collective)."""
        if not self._neighbour_views:
            return None
        own = self._host(params.detach()).double()
        total = 0.0
        for view in self._neighbour_views.values():
            theirs = view[:-1] / view[-1] if self.push_sum else view.double()
            total += float((own - theirs).pow(2).sum())
        return math.sqrt(total / len(self._neighbour_views)) / (float(own.norm()) + 1e-12)

    def snapshot(self, params: torch.Tensor, iteration: int) -> None:
        """Asynchronous runs: hand this learner's parameters at `iteration` to learner 0, which
        computes the consensus distance once every learner's copy of that iteration is in.
        Every learner must call it at the same iterations; nobody waits for anybody."""
        if self.staleness == 0 or self.plan.n_learners == 1:
            return
        values = self._host(params.detach()).float()
        if self._snapshot_index is not None:
            values = values[self._snapshot_index]
        if self._collector is not None:
            self._collector.add(values, iteration)
            return
        message = torch.empty(self._snapshot_size + 1, dtype=torch.float32)
        message[:-1].copy_(values)
        message[-1] = iteration
        self._snapshot_sends.append((dist.isend(message, dst=0, tag=SNAPSHOT_TAG), message))
        while len(self._snapshot_sends) > 8:
            work, _ = self._snapshot_sends.popleft()
            work.wait(self._timeout)

    def consensus_snapshots(self) -> dict[int, float]:
        """Learner 0 after close(): consensus distance by iteration (empty elsewhere)."""
        return self._consensus or {}

    def statistics(self) -> dict[str, float]:
        stats = {
            "bytes_sent": float(self.bytes_sent),
            "messages_sent": float(self.messages_sent),
            "messages_received": float(self.messages_received + sum(i.received for i in self._inboxes.values())),
            "publishes_skipped": float(self.publishes_skipped),
            "mix_wait_s": self.wait_s,
        }
        if self.push_sum:
            stats["push_sum_weight"] = self.push_sum_weight
        if self.staleness_seen:
            stats["staleness_mean"] = sum(self.staleness_seen) / len(self.staleness_seen)
            stats["staleness_max"] = max(self.staleness_seen)
        return stats

    def reset_staleness(self) -> None:
        self.staleness_seen.clear()

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What carries over a resume: the push-sum weight, the counters, and (learner 0 of an
        asynchronous run) the consensus distances measured so far. Asynchronous push-sum's running
        sums start again from zero on every channel, so mass that was in flight is lost."""
        state = {
            "push_sum_weight": self.push_sum_weight,
            "bytes_sent": self.bytes_sent,
            "messages_sent": self.messages_sent,
            "messages_received": int(self.statistics()["messages_received"]),
            "publishes_skipped": self.publishes_skipped,
            "wait_s": self.wait_s,
        }
        if self._collector is not None:
            state["consensus"] = {str(k): v for k, v in self._collector.distances.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.push_sum_weight = float(state["push_sum_weight"])
        self.bytes_sent = int(state["bytes_sent"])
        self.messages_sent = int(state["messages_sent"])
        self.messages_received = int(state["messages_received"])
        self.publishes_skipped = int(state["publishes_skipped"])
        self.wait_s = float(state["wait_s"])
        if self._collector is not None:
            self._collector.distances.update({int(k): float(v) for k, v in state.get("consensus", {}).items()})

    # -- shutdown -------------------------------------------------------------------------------

    def close(self, params: torch.Tensor | None = None) -> None:
        """Match every send with a receive: final markers out, every inbox drained to its marker.
        Asynchronous push-sum also consumes the mass still in flight into `params` (when given),
        so that afterwards Σ_i w_i equals the number of learners exactly."""
        self._consensus = None
        if self.staleness > 0 and self.plan.n_learners > 1:
            self._finish_snapshots()
        if self.board is not None:
            self.board.finish()
            try:
                if self.layout.running_sums:
                    for j in self.plan.in_peers(self.rank):
                        self.board.wait_finished(j)
                    self._consume_remaining(params)
            finally:
                # Nothing is in flight: a neighbour that still reads our last iteration keeps its
                # own mapping of the segment after we close and unlink it.
                self.board.close()
            return
        try:
            self._send_finals_and_drain()
            if self.layout.running_sums:
                self._consume_remaining(params)
        finally:
            while self._sending:
                work, _ = self._sending.popleft()
                work.wait(self._timeout)

    def _finish_snapshots(self) -> None:
        if self._collector is not None:
            self._consensus = self._collector.join(self.timeout_s)
            return
        marker = torch.zeros(self._snapshot_size + 1, dtype=torch.float32)
        marker[-1] = -1
        self._snapshot_sends.append((dist.isend(marker, dst=0, tag=SNAPSHOT_TAG), marker))
        while self._snapshot_sends:
            work, _ = self._snapshot_sends.popleft()
            work.wait(self._timeout)

    def _consume_remaining(self, params: torch.Tensor | None) -> None:
        mass = torch.zeros(self.numel + 1, dtype=torch.float64)
        if params is not None:
            mass[:-1].copy_(self._host(params.detach())).mul_(self.push_sum_weight)
        mass[-1] = self.push_sum_weight
        for j in self.plan.in_peers(self.rank):
            newest = self._newest(j, -1)
            if newest is not None:
                running, _ = newest
                mass.add_(running - self._consumed_sums[j])
                self._consumed_sums[j] = running
        self.push_sum_weight = float(mass[-1])
        if params is not None:
            params.copy_(mass[:-1].div_(mass[-1]))

    def _send_finals_and_drain(self) -> None:
        if self.staleness > 0 and self.plan.has_edges:
            for i in self.plan.out_peers(self.rank):
                # The marker repeats the channel's running sum (push-sum) so nothing is lost.
                content = self._sent_sums[i] if self.layout.running_sums else torch.zeros(self.layout.width)
                self._send_tagged(content, _FINAL, i)
            for inbox in self._inboxes.values():
                inbox.join(self.timeout_s)
                if inbox.is_alive():
                    raise TimeoutError(f"learner {inbox.source} never sent its final message")
                if inbox.error is not None:
                    raise RuntimeError(f"receiving from learner {inbox.source} failed: {inbox.error}")
