"""Unreliable links (`ConsensusParams.link_drop` = p): at each iteration a learner skips publishing
with probability p. The draw is a hash of (cell seed, learner, iteration), so every learner can
tell whether any other published at any iteration without a message saying so."""

from __future__ import annotations

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
