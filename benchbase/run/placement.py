"""Where a cell's learners run: its cores and GPUs, and each learner's device."""

from __future__ import annotations

import os
import subprocess
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


def gpu_memory() -> list[int]:
    """Total bytes of each GPU CUDA will see here (`CUDA_VISIBLE_DEVICES`, by index or UUID, when
    set), as `nvidia-smi` reports them: read without torch and without a CUDA context in this
    process. Empty where there is no GPU or no `nvidia-smi`."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = {}
    for line in listed.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3 and fields[2].isdigit():
            gpus[fields[0]] = gpus[fields[1]] = int(fields[2]) * 2**20
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [size for name, size in gpus.items() if name.isdigit()]
    return [gpus[name] for name in (entry.strip() for entry in visible.split(",")) if name in gpus]
