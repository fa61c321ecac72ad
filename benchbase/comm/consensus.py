"""How far the learners' parameters are from agreeing.

- `consensus_distance`: sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ across all learners, as a collective
  (synchronous mixing, or once every learner has finished).
- `neighbour_distance`: the same spread measured locally against the in-peers' parameters a
  learner last mixed (asynchronous gossip: free, no collective).
- `ConsensusSnapshots`: asynchronous runs hand learner 0 a copy of every learner's parameters at
  each metric iteration; it computes the exact spread once all copies of an iteration are in, and
  nobody waits for anybody.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

SNAPSHOT_TAG = 7  # gloo tag of consensus snapshots, apart from parameter messages (tag 0)
SNAPSHOT_COORDINATES = 1 << 16  # larger models are measured on a fixed subset of coordinates
CONSENSUS_SCRATCH = 1 << 22  # values (16 MiB of float32) a buffer for measuring consensus holds at most


def consensus_distance(params: torch.Tensor, n_learners: int) -> float:
    """sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ of host `params`. A collective: every learner must call it
    at the same point. Measured a slice of at most CONSENSUS_SCRATCH values at a time (an
    all-reduce each; every learner's model has the same size, so the same slices), through two
    buffers of that size: the mean and the deviations of the whole model at once were three more
    copies of it (docs/scaling.md). A model that fits one slice is measured in one pass, as before."""
    flat = params.reshape(-1)
    numel = flat.numel()
    size = max(1, min(numel, CONSENSUS_SCRATCH))
    mean_buffer, deviations = flat.new_empty(size), flat.new_empty(size)
    spread, mean_squares = 0.0, 0.0
    for start in range(0, numel, size):
        part = flat[start : start + size]
        mean = mean_buffer[: part.numel()].copy_(part)
        dist.all_reduce(mean)
        mean.div_(n_learners)
        spread += float(torch.sub(part, mean, out=deviations[: part.numel()]).square_().sum().double())
        mean_squares += float(mean.norm()) ** 2  # exact: a float32's square fits a float64
    total = torch.tensor([spread], dtype=torch.float64)
    dist.all_reduce(total)
    return math.sqrt(float(total) / n_learners) / (math.sqrt(mean_squares) + 1e-12)


def neighbour_distance(params: torch.Tensor, views: dict[int, torch.Tensor], push_sum: bool) -> float:
    """sqrt(mean_j ‖θ_i − θ_j‖²) / ‖θ_i‖ over the (non-empty) in-peer `views`; push-sum views are
    mass (w·θ, w). Views may carry mixed values after the parameters: only the first
    `params.numel()` are compared."""
    own = params.double()
    n = own.numel()
    total = 0.0
    for view in views.values():
        theirs = view[:n] / view[-1] if push_sum else view[:n].double()
        total += float((own - theirs).pow(2).sum())
    return math.sqrt(total / len(views)) / (float(own.norm()) + 1e-12)


class SnapshotCollector:
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
        self._threads = [
            threading.Thread(target=self._receive, args=(j,), daemon=True, name=f"snapshots-from-{j}")
            for j in range(1, n_learners)
        ]
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


class ConsensusSnapshots:
    """One learner's part in the asynchronous measurement (`active` only for asynchronous runs
    of several learners): learner 0 collects, every other learner sends."""

    def __init__(self, n_learners: int, rank: int, numel: int, seed: int, staleness: int, timeout_s: float) -> None:
        self.active = staleness > 0 and n_learners > 1
        self.timeout_s = timeout_s
        self._timeout = timedelta(seconds=timeout_s)
        self._index = None
        if self.active and numel > SNAPSHOT_COORDINATES:
            generator = torch.Generator().manual_seed(seed)
            self._index = torch.randperm(numel, generator=generator)[:SNAPSHOT_COORDINATES].sort().values
        self._size = min(numel, SNAPSHOT_COORDINATES)
        self._sends: deque[tuple[dist.Work, torch.Tensor]] = deque()
        self.collector = SnapshotCollector(n_learners, self._size) if self.active and rank == 0 else None

    def take(self, params: torch.Tensor, iteration: int) -> None:
        """Hand host `params` at `iteration` to learner 0 (or, on learner 0, to its collector)."""
        values = params.float()
        if self._index is not None:
            values = values[self._index]
        if self.collector is not None:
            self.collector.add(values, iteration)
            return
        message = torch.empty(self._size + 1, dtype=torch.float32)
        message[:-1].copy_(values)
        message[-1] = iteration
        self._sends.append((dist.isend(message, dst=0, tag=SNAPSHOT_TAG), message))
        while len(self._sends) > 8:
            work, _ = self._sends.popleft()
            work.wait(self._timeout)

    def finish(self) -> dict[int, float] | None:
        """Learner 0: wait for every learner's last snapshot; the consensus distance by iteration.
        Other learners: send the end marker and wait until every snapshot went out (None)."""
        if self.collector is not None:
            return self.collector.join(self.timeout_s)
        marker = torch.zeros(self._size + 1, dtype=torch.float32)
        marker[-1] = -1
        self._sends.append((dist.isend(marker, dst=0, tag=SNAPSHOT_TAG), marker))
        while self._sends:
            work, _ = self._sends.popleft()
            work.wait(self._timeout)
        return None

    def state_dict(self) -> dict:
        """Learner 0 of an asynchronous run: the consensus distances measured so far."""
        if self.collector is None:
            return {}
        return {"consensus": {str(k): v for k, v in self.collector.distances.items()}}

    def load_state_dict(self, state: dict) -> None:
        if self.collector is not None:
            self.collector.distances.update({int(k): float(v) for k, v in state.get("consensus", {}).items()})
