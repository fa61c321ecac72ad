"""Same-host parameter exchange through shared memory.

When every learner of a cell runs on this machine, each learner publishes its flat parameter
buffer into a shared-memory segment of its own and its in-neighbours read it there; the process
group stays for the rendezvous and the consensus-distance collective. Why: with more learners
than cores (4 on 2 here), a gloo exchange costs a chain of sleeps and wake-ups (the transport's
thread, then the learner) that took 1.7 ms per ring mix even for tiny messages, so a 4-learner
ring ran no faster than one learner. Here a waiting learner yields its core to the learner it
shares it with instead of sleeping: the same mix takes about 40 µs. The topology, the mixing
weights and the neighbour-only pattern are unchanged: a learner reads only its in-neighbours.

Layout of a segment: a header block, then `channels` × `slots` slots of one message each. Each
slot's int64 header holds the iteration it contains (−1 while it is being written: a seqlock);
one more header word says the writer has finished (it will publish nothing more). A writer can
run ahead of a reader by a bounded number of iterations (the number of slots is chosen so that a
synchronous reader's slot is never overwritten before it was read); an asynchronous reader takes
the newest consistent slot. A segment has one channel that every out-neighbour reads, except for
asynchronous mixing over running sums (push-sum, and diffusion with column-stochastic weights),
where each out-neighbour has a channel of its own (`benchbase.comm.rules`).
"""

from __future__ import annotations

import os
import shutil
import time
from multiprocessing import resource_tracker, shared_memory
from typing import TYPE_CHECKING

import numpy as np

from benchbase.api.lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # `bench run` counts a grid's message slots before it loads torch

_WRITING = -1
_EMPTY = -2
MAX_SLOTS = 8
_SPIN_BEFORE_SLEEP_S = 0.005  # yield for this long, then sleep briefly (a straggler is slow)


def segment_name(prefix: str, rank: int) -> str:
    return f"{prefix}-{rank}"


def _header_bytes(channels: int, slots: int) -> int:
    """Slot headers plus the finished word, rounded up to whole cache lines."""
    return -(-8 * (channels * slots + 1) // 64) * 64


def segment_bytes(numel: int, slots: int, dtype: torch.dtype, channels: int = 1) -> int:
    return _header_bytes(channels, slots) + channels * slots * numel * torch.empty((), dtype=dtype).element_size()


def shared_memory_room(required_bytes: int) -> bool:
    """Is there room in /dev/shm (tmpfs: writing past its size kills the process with SIGBUS)?"""
    try:
        return shutil.disk_usage("/dev/shm").free > 2 * required_bytes
    except OSError:
        return False


def unlink_segment(name: str) -> None:
    """Remove a segment if it still exists (the launcher's clean-up after a crashed learner)."""
    try:
        segment = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    segment.close()
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


class _Segment:
    """Typed views of one learner's segment: headers[channel, slot], data[channel, slot]."""

    def __init__(
        self, segment: shared_memory.SharedMemory, numel: int, slots: int, dtype: torch.dtype, channels: int
    ) -> None:
        self.segment = segment
        self.slots = slots
        words = np.ndarray((channels * slots + 1,), dtype=np.int64, buffer=segment.buf, offset=0)
        self.headers = words[:-1].reshape(channels, slots)
        self.finished = words[-1:]
        self.data = torch.frombuffer(
            segment.buf, dtype=dtype, count=channels * slots * numel, offset=_header_bytes(channels, slots)
        ).view(channels, slots, numel)

    def close(self) -> None:
        # Views must go before the mapping can close.
        del self.headers
        del self.finished
        del self.data
        self.segment.close()


class SharedBoard:
    """This learner's outbox and its in-peers' outboxes."""

    def __init__(
        self, prefix: str, rank: int, numel: int, slots: int, dtype: torch.dtype, timeout_s: float, channels: int = 1
    ) -> None:
        if not 2 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 2..{MAX_SLOTS}, got {slots}")
        self.prefix, self.rank, self.numel, self.slots, self.dtype = prefix, rank, numel, slots, dtype
        self.timeout_s = timeout_s
        segment = shared_memory.SharedMemory(
            name=segment_name(prefix, rank), create=True, size=segment_bytes(numel, slots, dtype, channels)
        )
        self.own = _Segment(segment, numel, slots, dtype, channels)
        self.own.headers[:] = _EMPTY
        self.own.finished[0] = 0
        self.peers: dict[int, _Segment] = {}

    def attach(self, peers: list[int], channels: dict[int, int] | None = None, own_tracker: bool = False) -> None:
        """Open the in-peers' segments (after every learner created its own: a barrier);
        `channels[peer]` is how many channels that peer's segment has (default 1)."""
        for peer in peers:
            # Learners forked from one forkserver share its resource tracker, which holds one
            # registration per name: the owner's unlink() removes it, so attaching needs no care.
            # A learner with a tracker of its own (torchrun starts each one) must drop the
            # registration attaching made, or its tracker "cleans up" a segment already gone.
            segment = shared_memory.SharedMemory(name=segment_name(self.prefix, peer))
            if own_tracker:
                resource_tracker.unregister(segment._name, "shared_memory")
            count = (channels or {}).get(peer, 1)
            self.peers[peer] = _Segment(segment, self.numel, self.slots, self.dtype, count)

    def publish(self, message: torch.Tensor, iteration: int, channel: int = 0) -> None:
        slot = iteration % self.slots
        headers = self.own.headers[channel]
        headers[slot] = _WRITING
        self.own.data[channel, slot].copy_(message)
        headers[slot] = iteration

    def finish(self) -> None:
        """Tell readers this learner will publish nothing more."""
        self.own.finished[0] = 1

    def wait_exact(self, peer: int, iteration: int, channel: int = 0) -> None:
        """Wait until the peer has published `iteration` (without reading it)."""
        headers = self.peers[peer].headers[channel]
        slot = iteration % self.slots
        self._wait(lambda: headers[slot] >= iteration, peer, iteration)

    def read_exact(self, peer: int, iteration: int, into: torch.Tensor, channel: int = 0) -> None:
        """Copy the peer's message of exactly `iteration` into `into` (waits for it)."""
        segment = self.peers[peer]
        slot = iteration % self.slots
        headers = segment.headers[channel]
        self._wait(lambda: headers[slot] >= iteration, peer, iteration)
        into.copy_(segment.data[channel, slot])
        if headers[slot] != iteration:
            raise RuntimeError(
                f"learner {peer} overwrote iteration {iteration} before learner {self.rank} read it "
                f"({self.slots} slots are too few for this topology)"
            )

    def read_newest(self, peer: int, min_iteration: int, into: torch.Tensor, channel: int = 0) -> int | None:
        """Copy the peer's newest message once it is from iteration ≥ min_iteration, or the newest
        there is once the peer has finished; returns its iteration (None: it never published).
        A negative `min_iteration` (the common starting point) never waits."""
        segment = self.peers[peer]
        headers = segment.headers[channel]
        finished = segment.finished
        if min_iteration >= 0:
            self._wait(lambda: int(headers.max()) >= min_iteration or finished[0] == 1, peer, min_iteration)
        while True:
            slot = int(np.argmax(headers))
            iteration = int(headers[slot])
            if iteration < 0:
                return None
            into.copy_(segment.data[channel, slot])
            if headers[slot] == iteration:  # not overwritten while copying
                return iteration

    def wait_finished(self, peer: int) -> None:
        finished = self.peers[peer].finished
        self._wait(lambda: finished[0] == 1, peer, -1)

    def _wait(self, ready, peer: int, iteration: int) -> None:
        if ready():
            return
        started = time.monotonic()
        while not ready():
            waited = time.monotonic() - started
            if waited < _SPIN_BEFORE_SLEEP_S:
                os.sched_yield()  # let the learner sharing this core run; no wake-up needed
            elif waited < self.timeout_s:
                time.sleep(0.0002)
            else:
                what = "final message" if iteration < 0 else f"parameters of iteration {iteration}"
                raise TimeoutError(f"learner {self.rank}: no {what} from learner {peer} within {self.timeout_s:.0f} s")

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()
        self.peers.clear()
        segment = self.own.segment
        self.own.close()
        try:
            segment.unlink()
        except FileNotFoundError:
            pass


def message_slots(plan, staleness: int) -> int | None:
    """Slots each message of a segment needs for learners exchanging over `plan` (a learner's
    peers, or a `BlockGraph`'s blocks) with this staleness: two for asynchronous learners (each
    reads the newest), `synchronous_slots` for synchronous ones; None: more than a segment holds."""
    return synchronous_slots(plan) if staleness == 0 else 2


def synchronous_slots(plan) -> int | None:
    """Slots a segment needs so that no synchronous reader's iteration is overwritten first, or
    None when that is more than MAX_SLOTS (then the cell uses gloo point-to-point).

    Learner i at iteration t waits for its in-neighbours' iteration t, so it can lead a reader j
    (one of its out-peers) by at most the length of the chain of waits from i back to j, times
    the period of a time-varying graph (a phase may not wait on every neighbour). For an
    undirected static graph that is one iteration: two slots.
    """
    n = plan.n_learners
    waits_on = [set(plan.in_peers(i)) for i in range(n)]
    most = 1
    for i in range(n):
        distance = {i: 0}
        frontier = [i]
        while frontier:
            following = []
            for x in frontier:
                for y in waits_on[x]:
                    if y not in distance:
                        distance[y] = distance[x] + 1
                        following.append(y)
            frontier = following
        for j in plan.out_peers(i):
            if j not in distance:
                return None
            most = max(most, distance[j] * plan.period)
    slots = most + 1
    return slots if slots <= MAX_SLOTS else None
