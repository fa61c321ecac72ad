"""`uniform` (the original's "standard" replay): a ring buffer sampled uniformly with replacement.

`RingBuffer` is the storage the similarity-based strategies (`attentive`, `elite`) share: a fixed
number of slots, a per-slot usage count (how often the segment in it was sampled) and insertion
order, and the fill threshold below which the buffer does not answer `sample` yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase import Register, ReplayParams, ReplayStrategy, Scorer, Segment, UserError, hookimpl, param

MIN_FILL_HELP = (
    "segments stored before sampling starts; none = the original's max(0.2·capacity, 10·n) for a "
    "share of n segments per batch, capped at capacity"
)


def fill_threshold(capacity: int, count: int, min_fill: int | None) -> int:
    """Segments a buffer must hold before it samples `count` at a time (at least 1, at most capacity)."""
    if min_fill is not None:
        return max(1, min(int(min_fill), capacity))
    return max(1, min(capacity, max(math.ceil(0.2 * capacity), 10 * int(count))))


def check_min_fill(owner: str, params: Any) -> None:
    if params.min_fill is not None and params.min_fill > params.capacity:
        raise UserError(
            f"{owner}.min_fill: {params.min_fill} is above the capacity {params.capacity}; "
            "the buffer could never sample"
        )


@dataclass(frozen=True)
class UniformParams(ReplayParams):
    capacity: int = param(1000, "segments kept; once full, the oldest is overwritten", min=1)
    min_fill: int | None = param(None, MIN_FILL_HELP, min=1)

    def __post_init__(self) -> None:
        check_min_fill("uniform", self)


class RingBuffer:
    """`capacity` slots filled in order, then overwritten oldest first; usage counts per slot.

    Subclasses implement `sample` with `_record(slots)` for the chosen slots, and may change
    which slot a new segment overwrites once full (`_victim`).
    """

    def __init__(self, capacity: int, seed: int, min_fill: int | None = None) -> None:
        self.capacity = int(capacity)
        self.min_fill = min_fill
        self.rng = np.random.default_rng(seed)
        self.slots: list[Segment | None] = [None] * self.capacity
        self.usage = np.zeros(self.capacity, dtype=np.int64)  # times the slot's segment was sampled
        self.inserted = np.zeros(self.capacity, dtype=np.int64)  # insertion number (age)
        self.size = 0
        self._added = 0
        self._sampled = 0
        self._usage_sum = 0

    def __len__(self) -> int:
        return self.size

    def add(self, segment: Segment) -> None:
        if self.size < self.capacity:
            slot = self.size
            self.size += 1
        else:
            slot = self._victim()
        self.slots[slot] = segment
        self.usage[slot] = 0
        self.inserted[slot] = self._added
        self._added += 1

    #: Counters a checkpoint carries besides the slots (subclasses add theirs).
    checkpoint_attributes: tuple[str, ...] = ("size", "_added", "_sampled", "_usage_sum")

    def state_dict(self) -> dict[str, Any]:
        return {
            "slots": [None if segment is None else segment.to_dict() for segment in self.slots],
            "usage": self.usage.copy(),
            "inserted": self.inserted.copy(),
            "rng": self.rng.bit_generator.state,
            "attributes": {name: getattr(self, name) for name in self.checkpoint_attributes},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slots = [None if values is None else Segment.from_dict(values) for values in state["slots"]]
        self.usage[...] = state["usage"]
        self.inserted[...] = state["inserted"]
        self.rng.bit_generator.state = state["rng"]
        for name, value in state["attributes"].items():
            setattr(self, name, value)

    def _victim(self) -> int:
        """The slot a new segment overwrites in a full buffer: the oldest (a ring)."""
        return self._added % self.capacity

    def fill_threshold(self, count: int) -> int:
        return fill_threshold(self.capacity, count, self.min_fill)

    def can_sample(self, count: int) -> bool:
        return self.size >= self.fill_threshold(count)

    def _check_sample(self, count: int) -> None:
        if self.size == 0:
            raise ValueError("the replay buffer is empty (check can_sample)")
        if count < 0:
            raise ValueError(f"cannot sample {count} segments")

    def _record(self, slots: np.ndarray) -> list[Segment]:
        """Count one use of each chosen slot (repeats count twice) and return their segments."""
        slots = np.asarray(slots, dtype=np.int64)
        np.add.at(self.usage, slots, 1)
        self._sampled += len(slots)
        self._usage_sum += int(self.usage[slots].sum())
        return [self.slots[int(slot)] for slot in slots]  # type: ignore[misc]

    def statistics(self) -> dict[str, float]:
        """Since the last call: segments sampled and their mean usage count (counting this use:
        1 = seen for the first time; 0 when nothing was sampled); and how many are stored now."""
        stats = {
            "sampled": float(self._sampled),
            "mean_usage": self._usage_sum / self._sampled if self._sampled else 0.0,
            "stored": float(self.size),
        }
        self._sampled = self._usage_sum = 0
        return stats


class UniformBuffer(RingBuffer):
    def sample(self, count: int, scorer: Scorer | None = None) -> list[Segment]:
        self._check_sample(count)
        return self._record(self.rng.integers(0, self.size, size=count))


class UniformReplay(ReplayStrategy):
    name = "uniform"
    aliases = ("standard",)
    description = "ring buffer sampled uniformly with replacement once filled enough (the original's standard replay)"
    Params = UniformParams
    stores_segments = True

    def make_buffer(self, params: Any, seed: int) -> UniformBuffer:
        return UniformBuffer(params.capacity, seed, params.min_fill)


@hookimpl
def register_replay_strategies(register: Register) -> None:
    register(UniformReplay())
