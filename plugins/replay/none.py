"""`none`: no replay. On-policy algorithms learn from each rollout once and store nothing."""

from __future__ import annotations

from typing import Any

from benchbase import Register, ReplayStrategy, hookimpl


class NoReplay(ReplayStrategy):
    name = "none"
    description = "no replay buffer: on-policy learning from each fresh rollout"
    stores_segments = False

    def make_buffer(self, params: Any, seed: int) -> None:
        return None


@hookimpl
def register_replay_strategies(register: Register) -> None:
    register(NoReplay())
