"""Replay for off-policy learners: segments, the buffer contract, and batches mixed by ratio.

A *segment* is one simulator's T-step trajectory with what the behaviour policy computed while
acting (its logits, values and features). Replay strategies (plugins of kind `replay`) build a
`SegmentBuffer`; a `ReplayMix` holds one buffer per strategy of the cell's mix (e.g.
`queue:capacity=1,ratio=0.5+elite:capacity=1000,ratio=0.5`), offers every new segment to each of
them, and assembles a batch of B segments with B·ratio_k from strategy k.

Similarity-based strategies (attentive, elite) rank candidates with the *current* network: the
learner hands them a `Scorer` when it samples. `BatchPreparer` draws the next batch in a
background thread while the learner trains on the current one, so distance computations overlap
with learning (the seed's "caching"); its scorer is a snapshot of the network one update old.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from benchbase.api.lazy import lazy_import
from benchbase.api.params import param
from benchbase.errors import UserError

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: the replay plugins register without it


@dataclass
class Segment:
    """One simulator's T steps. Observations are as the policy saw them (normalised)."""

    observations: torch.Tensor  # [T+1, *obs]: x_0 … x_T (x_T bootstraps); frames as uint8
    actions: torch.Tensor  # [T] int64, or [T, act_dim] float32
    rewards: torch.Tensor  # [T] float32 (scaled for training; a time-limit bootstrap included)
    discounts: torch.Tensor  # [T] float32: γ, or 0 where the episode terminated at t
    behaviour_logits: torch.Tensor  # [T, A]: logits (discrete) or Gaussian means (continuous)
    behaviour_values: torch.Tensor  # [T+1]: V^μ(x_t), for CLEAR's value cloning
    features: torch.Tensor  # [T, F]: φ_t, the policy network's last hidden layer while acting
    behaviour_log_std: torch.Tensor | None = None  # [act_dim] (continuous actions)
    task_id: str = ""

    def nbytes(self) -> int:
        return sum(
            getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (tensors are shared, not copied: segments never change)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Segment:
        return cls(**values)


class Scorer(Protocol):
    """What similarity-based strategies need from the learner's current network."""

    def features(self, observations: torch.Tensor) -> torch.Tensor:
        """φ′ of observations [N, T, *obs] → [N, T, F] (no gradients)."""
        ...

    def recent_feature(self) -> torch.Tensor:
        """φ′ of the most recent state the learner saw, [F] (attentive replay's query)."""
        ...


class SegmentBuffer(Protocol):
    """What a replay strategy's `make_buffer` returns. Deterministic given its seed."""

    capacity: int

    def add(self, segment: Segment) -> None: ...

    def can_sample(self, count: int) -> bool:
        """Whether `sample(count)` can be answered now (queue: enough items; uniform: filled enough)."""
        ...

    def sample(self, count: int, scorer: Scorer | None) -> list[Segment]: ...

    def statistics(self) -> dict[str, float]:
        """Since the last call: e.g. usage counts, mean distance of sampled segments."""
        ...


@dataclass(frozen=True)
class ReplayParams:
    """Base of every storing strategy's parameters: its size and its share of each batch."""

    capacity: int = param(1000, "segments kept (the memory this takes is reported before the run)", min=1)
    ratio: float = param(
        1.0, "share of each training batch drawn from this strategy (shares sum to 1)", min=0.0, max=1.0
    )


@dataclass(frozen=True)
class MixPart:
    name: str
    params: Any
    share: int  # segments per batch


def batch_shares(parts: Sequence[tuple[str, Any]], batch_size: int, owner: str = "replay") -> list[MixPart]:
    """Whole-number shares of a batch of `batch_size` segments, or a one-line UserError. A strategy
    whose capacity is left unset (None) gets its share as its capacity."""
    ratios = [float(_field(params, "ratio", 1.0)) for _, params in parts]
    total = sum(ratios)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        listed = " + ".join(f"{name} {ratio:g}" for (name, _), ratio in zip(parts, ratios))
        raise UserError(f"{owner}: the ratios must sum to 1, got {listed} = {total:g}")
    mix = []
    for (name, params), ratio in zip(parts, ratios):
        share = ratio * batch_size
        if not math.isclose(share, round(share), abs_tol=1e-9):
            raise UserError(
                f"{owner}: {name}'s ratio {ratio:g} of a batch of {batch_size} segments is {share:g}, not a "
                f"whole number; choose ratios that are multiples of 1/{batch_size}"
            )
        capacity = _field(params, "capacity", None)
        if capacity is None and _has_field(params, "capacity"):
            params = _with_field(params, "capacity", int(round(share)))
        elif capacity is not None and capacity < round(share):
            raise UserError(
                f"{owner}: {name}.capacity={capacity} is smaller than its batch share of {round(share)} segments"
            )
        mix.append(MixPart(name, params, int(round(share))))
    return mix


def _has_field(params: Any, key: str) -> bool:
    if isinstance(params, dict):
        return key in params
    return dataclasses.is_dataclass(params) and any(f.name == key for f in dataclasses.fields(params))


def _with_field(params: Any, key: str, value: Any) -> Any:
    if isinstance(params, dict):
        return {**params, key: value}
    return dataclasses.replace(params, **{key: value})


def _field(params: Any, key: str, default: Any) -> Any:
    """A parameter from a params dataclass or from its dict form (a cell's config)."""
    if isinstance(params, dict):
        return params.get(key, default)
    return getattr(params, key, default)


class ReplayMix:
    """One buffer per strategy of the mix; every new segment goes to each of them."""

    def __init__(self, parts: Sequence[MixPart], buffers: Sequence[SegmentBuffer]) -> None:
        self.parts = list(parts)
        self.buffers = list(buffers)
        self.batch_size = sum(part.share for part in self.parts)

    def add(self, segment: Segment) -> None:
        for buffer in self.buffers:
            buffer.add(segment)

    def can_sample(self) -> bool:
        return all(buffer.can_sample(part.share) for part, buffer in zip(self.parts, self.buffers) if part.share)

    def sample(self, scorer: Scorer | None) -> tuple[list[Segment], dict[str, int]]:
        """A batch: each strategy's share, in mix order; and how many came from each."""
        batch: list[Segment] = []
        taken: dict[str, int] = {}
        for part, buffer in zip(self.parts, self.buffers):
            if part.share:
                segments = buffer.sample(part.share, scorer)
                batch += segments
                taken[part.name] = len(segments)
        return batch, taken

    def statistics(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        for part, buffer in zip(self.parts, self.buffers):
            for key, value in buffer.statistics().items():
                stats[f"replay_{part.name}_{key}"] = float(value)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Every buffer's contents (`bench run --checkpoint-replay`); a buffer that cannot save
        itself is stored as None and starts empty on resume."""
        return {"buffers": [buffer.state_dict() if hasattr(buffer, "state_dict") else None for buffer in self.buffers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for buffer, saved in zip(self.buffers, state["buffers"]):
            if saved is not None:
                buffer.load_state_dict(saved)


class BatchPreparer:
    """Draws the next batch in a background thread while the learner trains on the current one.

    `request(scorer)` starts preparing a batch with that scorer (a snapshot of the network);
    `take()` waits for it. Buffers are guarded by one lock shared with the learner's `add`.
    """

    def __init__(self, mix: ReplayMix, lock: threading.Lock) -> None:
        self.mix = mix
        self.lock = lock
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="replay-batches", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            scorer = self._requests.get()
            if scorer is _STOP:
                return
            try:
                with self.lock:
                    result: Any = self.mix.sample(scorer)
            except BaseException as error:  # handed to the learner's thread by take()
                result = error
            self._results.put(result)

    def request(self, scorer: Scorer | None) -> None:
        self._requests.put(scorer)

    def take(self, timeout_s: float = 300.0) -> tuple[list[Segment], dict[str, int]]:
        result = self._results.get(timeout=timeout_s)
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._requests.put(_STOP)
        self._thread.join(timeout=10)


_STOP = object()


def memory_estimate(segment_bytes: int, parts: Sequence[MixPart]) -> int:
    """At most this many bytes when every buffer of the mix is full (buffers share the segments
    they have in common, so this is an upper bound)."""
    return segment_bytes * sum(_field(part.params, "capacity", 0) for part in parts)
