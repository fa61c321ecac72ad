"""What the communicator counts: traffic (bytes, messages), skipped publishes, time spent mixing
and the staleness of the messages mixed. Transports and mixing rules add to one shared instance;
the communicator reports it (`statistics`) and carries it over a resume (`state_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CommCounters:
    bytes_sent: int = 0
    messages_sent: int = 0
    messages_received: int = 0  # background receivers (gloo inboxes) keep their own count
    publishes_skipped: int = 0  # publishes that sent nothing (a dropped link)
    publishes_limited: int = 0  # push-sum publishes that gave less than the plan's share (weight floor)
    wait_s: float = 0.0
    staleness_seen: list[float] = field(default_factory=list)  # iterations behind, per message mixed

    def count_sent(self, messages: int, message: torch.Tensor) -> None:
        """`messages` copies of `message` went out."""
        self.messages_sent += messages
        self.bytes_sent += messages * message.numel() * message.element_size()
