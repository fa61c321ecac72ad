"""The GPU memory check on a real GPU (step 7 of benchmarks/gpu_check.sh).

`bench run` refuses, before anything runs, a cell whose learners would not fit on a GPU
(`benchbase.run.blocks.check_gpu_memory`), reading each GPU's size from `nvidia-smi`
(`benchbase.run.placement.gpu_memory`). The tests check both with sizes given; this reads them
from this machine:

1. the GPUs' sizes as `nvidia-smi` gives them, by index and by UUID in `CUDA_VISIBLE_DEVICES`,
   against the sizes CUDA reports;
2. the estimate for the cells gpu_check.sh runs, to set beside the GPU memory they used;
3. the largest block of wide CartPole learners (hidden 4096) that one GPU is said to hold
   passes, and one learner more is refused in one line.

On a single host the machine's memory check, which counts the same models, can refuse such a
cell first (here 128 GiB of memory against a GPU's 139 GiB), so `bench run` may never show this
check's message on this machine; the check is called directly.

    python benchmarks/gpu_memory.py
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from benchbase.api.registry import load_registry
from benchbase.errors import UserError
from benchbase.formatting import size
from benchbase.grid.cell import Cell
from benchbase.grid.expand import expand, in_a_block, memory_needs
from benchbase.grid.spec import make_spec
from benchbase.learner.settings import ExecutionSettings
from benchbase.run.blocks import check_gpu_memory
from benchbase.run.placement import gpu_memory


def cell_of(env: str, learners: int, **values: Any) -> Cell:
    spec = {"algorithms": ["diff-a2c"], "topologies": ["ring"], "envs": [env], "replay": ["none"], "seeds": 1}
    plan = expand(make_spec({**spec, "learners": learners, **values}, {}), load_registry())
    assert not plan.invalid, plan.invalid
    return plan.cells[0]


def main() -> int:
    registry, settings = load_registry(), ExecutionSettings(device="cuda")
    by_index = gpu_memory()
    cuda = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    print(f"nvidia-smi: {[size(gpu) for gpu in by_index]}; CUDA: {[size(gpu) for gpu in cuda]}")
    uuid, visible = torch.cuda.get_device_properties(0).uuid, os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = f"GPU-{uuid}"
    by_uuid = gpu_memory()
    if visible is None:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    print(f"CUDA_VISIBLE_DEVICES=GPU-{uuid}: {[size(gpu) for gpu in by_uuid]}")
    failed = len(by_index) != len(cuda) or by_uuid != by_index[:1]
    # nvidia-smi counts whole MiB of what the driver reserves too, CUDA what it can allocate
    failed |= any(abs(smi - total) > 0.02 * total for smi, total in zip(by_index, cuda))

    for label, cell in (
        ("ring 256x1 CartPole", cell_of("random-cartpole", 256, envs_per_learner=1)),
        (
            "ring 64x1 CartPole hidden 1024",
            cell_of("random-cartpole", 64, envs_per_learner=1, set={"diff-a2c": {"hidden": 1024}}),
        ),
        ("Pong ring 4x4", cell_of("PongNoFrameskip-v4", 4, envs_per_learner=4)),
    ):
        ((_, _, _, model),) = memory_needs([cell], registry, in_blocks=in_a_block)
        print(
            f"estimate for {label}: {cell.learner_processes} x {size(model)} = {size(cell.learner_processes * model)}"
        )

    # A cell has at most 1,024 learners, too few Nature CNNs to fill a large GPU: wide MLPs do
    wide = {"set": {"diff-a2c": {"hidden": 4096}}, "envs_per_learner": 1}
    ((_, _, _, model),) = memory_needs([cell_of("random-cartpole", 2, **wide)], registry, in_blocks=in_a_block)
    fits = min(by_index) // model
    check_gpu_memory([cell_of("random-cartpole", fits, **wide)], registry, settings)
    print(f"{fits:,} CartPole learners of hidden 4096 ({size(model)} each) in one block, {size(fits * model)}: passes")
    try:
        check_gpu_memory([cell_of("random-cartpole", fits + 1, **wide)], registry, settings)
    except UserError as error:
        print(f"{fits + 1:,}: refused: {error}")
    else:
        print(f"FAILED: {fits + 1:,} such learners in one block were not refused")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
