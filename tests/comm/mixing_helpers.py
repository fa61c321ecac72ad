"""Children for the mixing-fault tests (`test_mixing_faults.py`), run by `dist_helpers.run_group`
in real gloo processes: a learner whose in-peer is silent for long, and bounded-staleness
diffusion with a slow hub. Each reports plain data only."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from dist_helpers import PG_TIMEOUT_S, initial_vector

from benchbase.comm.communicator import Communicator

GO_TAG = 99  # "go on" messages between the test's learners, apart from the parameters (tag 0)


def step_of(rank: int, numel: int) -> torch.Tensor:
    """Learner `rank`'s update before each mix: small, different per learner and coordinate."""
    return torch.linspace(-1e-3, 1e-3, numel) * (rank + 1)


def silent_in_peer_suite(
    rank: int, world: int, plan: Any, numel: int, staleness: int, silent_mixes: int, tail_mixes: int
) -> dict[str, Any]:
    """Asynchronous push-sum on a directed ring whose last learner starts late and later pauses:
    learner 0 (whose in-peer it is) mixes `silent_mixes` times before it says go, again while
    the last learner is away, then `tail_mixes` more; the last learner mixes `tail_mixes` times
    after each go. Every learner steps its parameters before each mix."""
    comm = Communicator(plan, rank, numel, torch.float32, staleness=staleness, timeout_s=PG_TIMEOUT_S)
    params = initial_vector(rank, numel)
    step = step_of(rank, numel)
    late = world - 1
    lowest, finite, steps, mixes = 1.0, True, torch.zeros(numel, dtype=torch.float64), 0
    sends = []

    def mix() -> None:
        nonlocal lowest, finite, mixes
        before = params.clone()
        params.add_(step)
        steps.add_(params.double() - before.double())
        comm.mix(params, mixes)
        mixes += 1
        lowest = min(lowest, comm.push_sum_weight)
        finite = finite and bool(torch.isfinite(params).all())

    dist.barrier()
    if rank == late:
        for _ in range(2):  # a late start, then a pause (an evaluation, a checkpoint, descheduled)
            dist.recv(torch.zeros(1), src=0, tag=GO_TAG)
            for _ in range(tail_mixes):
                mix()
    elif rank == 0:
        for _ in range(2):
            for _ in range(silent_mixes):
                mix()
            sends.append(dist.isend(torch.ones(1), dst=late, tag=GO_TAG))
        for _ in range(tail_mixes):
            mix()
    else:
        for _ in range(2 * silent_mixes + tail_mixes):
            mix()
    weight_before_close = comm.push_sum_weight
    comm.close(params)
    for work in sends:
        work.wait()
    return {
        "lowest_weight": lowest,
        "weight_before_close": weight_before_close,
        "finite": finite and bool(torch.isfinite(params).all()),
        "weight": comm.push_sum_weight,
        "mass": (params.double() * comm.push_sum_weight).numpy(),
        "steps": steps.numpy(),
        "stats": comm.statistics(),
    }


def slow_hub_suite(
    rank: int, world: int, plan: Any, numel: int, staleness: int, iterations: int, leaf_sleep_s: float
) -> dict[str, Any]:
    """Bounded-staleness diffusion on a star whose hub (learner 0) computes 4× longer than the
    leaves; no learning. The parameters and weight after close."""
    comm = Communicator(plan, rank, numel, torch.float32, staleness=staleness, timeout_s=PG_TIMEOUT_S)
    params = initial_vector(rank, numel)
    dist.barrier()
    for iteration in range(iterations):
        time.sleep(leaf_sleep_s * (4 if rank == 0 else 1))
        comm.mix(params, iteration)
    before_close = params.numpy().copy()
    comm.close(params)
    return {
        "before_close": before_close,
        "final": params.numpy().copy(),
        "weight": comm.push_sum_weight,
        "staleness_max": comm.statistics().get("staleness_max", 0.0),
    }
