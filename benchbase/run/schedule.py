"""Which cells run now (`bench run --jobs K`): up to K at once, on cores (and GPUs) of their own.
Unset, K is as many cells as the machine has cores, no more than the grid has cells and no more
than fit in memory side by side (`cells_at_once`).

A cell asks for one core per learner process, or for every core when it has more learners than
the machine has cores (it then runs alone, its learners pinned round-robin as before). A cell is
started only when its cores are free, so cells side by side never oversubscribe the machine;
with CUDA, GPUs are handed out the same way (one per learner where there are enough).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from benchbase.run.placement import Placement


def cells_at_once(cells: Sequence[Any], registry: Any, in_blocks: Callable[[Any], bool] | None = None) -> int:
    """`--jobs` unset: one cell per core, at most the grid's cells and at most as many of its
    largest cells as fit in memory side by side (docs/running.md; `in_blocks`: whether a cell's
    learners run in blocks, as `memory_needs` asks)."""
    from benchbase.grid.expand import cells_that_fit

    at_most = min(len(os.sched_getaffinity(0)), len(cells))
    return cells_that_fit(cells, registry, at_most, in_blocks=in_blocks)


def visible_gpus(device: str) -> list[int]:
    """The GPU indices cells may be given (none for CPU runs or without CUDA)."""
    if device == "cpu":
        return []
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class Allocator:
    """Hands out disjoint sets of cores and GPUs and takes them back."""

    def __init__(self, cores: list[int] | None = None, gpus: list[int] | None = None) -> None:
        self.cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
        self.gpus = list(gpus or [])
        self._busy_cores: set[int] = set()
        self._busy_gpus: set[int] = set()

    def take(self, learners: int) -> Placement | None:
        """Cores (and GPUs) for a cell of `learners` processes, or None until enough are free."""
        free_cores = [core for core in self.cores if core not in self._busy_cores]
        wanted = min(learners, len(self.cores))
        if len(free_cores) < wanted:
            return None
        gpus: list[int] = []
        if self.gpus:
            free_gpus = [gpu for gpu in self.gpus if gpu not in self._busy_gpus]
            wanted_gpus = min(learners, len(self.gpus))
            if len(free_gpus) < wanted_gpus:
                return None
            gpus = free_gpus[:wanted_gpus]
        cores = free_cores[:wanted]
        self._busy_cores.update(cores)
        self._busy_gpus.update(gpus)
        return Placement(tuple(cores), tuple(gpus))

    def release(self, placement: Placement) -> None:
        self._busy_cores.difference_update(placement.cores)
        self._busy_gpus.difference_update(placement.gpus)
