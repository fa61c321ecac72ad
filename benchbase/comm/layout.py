"""What one message between two learners holds, so that senders, receivers and the shared-memory
board (sized by it before the communicator exists) agree on its width and element type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchbase.comm.mixing_plan import MixingPlan

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MessageLayout:
    """What one message holds: `width` elements of `dtype`; `channels` outboxes per sender."""

    width: int
    dtype: torch.dtype
    running_sums: bool  # asynchronous mixing of column-stochastic weights: channels carry cumulative mass

    def channels(self, plan: MixingPlan, sender: int) -> int:
        return max(1, len(plan.out_peers(sender))) if self.running_sums else 1

    def channel(self, plan: MixingPlan, sender: int, receiver: int) -> int:
        return plan.out_peers(sender).index(receiver) if self.running_sums else 0


def message_layout(plan: MixingPlan, numel: int, dtype: torch.dtype, staleness: int) -> MessageLayout:
    """The layout of the messages a cell exchanges (the shared-memory board is sized by it)."""
    import torch  # here, not above: checking a grid's layout (`BlockGraph`) must not load torch

    if staleness > 0 and plan.has_edges and plan.column_stochastic:
        return MessageLayout(numel + 1, torch.float64, True)  # cumulative sums need float64
    if plan.push_sum:
        return MessageLayout(numel + 1, torch.float64 if dtype == torch.float64 else torch.float32, False)
    return MessageLayout(numel, dtype, False)
