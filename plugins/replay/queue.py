"""`queue`: a small FIFO whose sampling removes what it returns, so each segment is used once.

By default it holds exactly its share of each batch, so every segment is used once and none
waits: IMPALA's on-policy stream mixed into a replay batch. Adding to a full queue drops the oldest
segment; `statistics()` counts those drops (a queue that drops segments is being filled faster than
the learner drains it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from benchbase import Register, ReplayParams, ReplayStrategy, Scorer, Segment, hookimpl, param


@dataclass(frozen=True)
class QueueParams(ReplayParams):
    capacity: int | None = param(
        None,
        "segments kept; adding to a full queue drops the oldest (default: the queue's share of each batch)",
        min=1,
    )


class QueueBuffer:
    """FIFO of at most `capacity` segments; `sample(n)` removes and returns the n oldest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._items: deque[Segment] = deque()
        self._dropped = 0
        self._sampled = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, segment: Segment) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._dropped += 1
        self._items.append(segment)

    def can_sample(self, count: int) -> bool:
        return count <= len(self._items)

    def sample(self, count: int, scorer: Scorer | None = None) -> list[Segment]:
        if count > len(self._items):
            raise ValueError(f"queue holds {len(self._items)} segments, {count} were asked for (check can_sample)")
        taken = [self._items.popleft() for _ in range(count)]
        self._sampled += count
        return taken

    def state_dict(self) -> dict[str, Any]:
        items = [segment.to_dict() for segment in self._items]
        return {"items": items, "dropped": self._dropped, "sampled": self._sampled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._items = deque(Segment.from_dict(values) for values in state["items"])
        self._dropped, self._sampled = int(state["dropped"]), int(state["sampled"])

    def statistics(self) -> dict[str, float]:
        """Since the last call: segments sampled, their mean usage (always 1: each is used once),
        segments dropped unused because the queue was full; and how many are stored now."""
        stats = {
            "sampled": float(self._sampled),
            "mean_usage": 1.0 if self._sampled else 0.0,
            "dropped": float(self._dropped),
            "stored": float(len(self._items)),
        }
        self._sampled = self._dropped = 0
        return stats


class QueueReplay(ReplayStrategy):
    name = "queue"
    description = "FIFO of a few segments, each used exactly once (IMPALA's on-policy stream)"
    Params = QueueParams
    stores_segments = True

    def make_buffer(self, params: Any, seed: int) -> QueueBuffer:
        # An unset capacity is filled with the queue's batch share when the mix is built
        # (benchbase.api.replay.batch_shares); a queue built on its own holds one segment.
        return QueueBuffer(params.capacity or 1)  # no randomness: the seed changes nothing


@hookimpl
def register_replay_strategies(register: Register) -> None:
    register(QueueReplay())
