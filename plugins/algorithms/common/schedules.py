"""Hyperparameter schedules over a learner's budget (learning rates, PPO's clip range)."""

from __future__ import annotations


def remaining_fraction(done: float, total: float) -> float:
    """1 − done/total, floored at 0: 1 at the start of a budget, 0 at its end; 1 without a budget
    (`total` ≤ 0)."""
    if total <= 0:
        return 1.0
    return max(0.0, 1.0 - done / total)


def anneal(start: float, remaining: float, *, end: float = 0.0, power: int = 1) -> float:
    """(start − end)·remaining^power + end: `start` when `remaining` is 1, `end` when it is 0;
    linear by default, polynomial with `power`."""
    return (start - end) * remaining**power + end
