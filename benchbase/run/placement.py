"""Where a cell's learners run: its cores and GPUs, and each learner's device."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Where a cell's learners run: the cores (and GPUs) it was given; empty = all of them."""

    cores: tuple[int, ...] = ()
    gpus: tuple[int, ...] = ()


def device_for(rank: int, requested: str, gpus: tuple[int, ...] = ()) -> str:
    """'cpu', or the cell's GPUs (default: every visible one) round-robin when CUDA is asked for
    (or 'auto' finds it)."""
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        visible = gpus or tuple(range(torch.cuda.device_count()))
        return f"cuda:{visible[rank % len(visible)]}"
    return "cpu"
