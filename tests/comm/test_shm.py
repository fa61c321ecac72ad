"""Same-host exchange through shared memory: identical mixing to gloo, bounded staleness, clean-up."""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import dist_helpers as dh
import numpy as np
import pytest
import torch

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.comm.shm import (
    MAX_SLOTS,
    SharedBoard,
    segment_name,
    synchronous_slots,
    unlink_segment,
)

N = 4
NUMEL = 500


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def plan_for(registry, name: str, n: int, **overrides: Any):
    topology = registry.get("topology", name)
    params = params_of(topology, overrides)
    return build_mixing_plan(topology, params, topology.learner_count(n, params), 0)


def leftover_segments(prefix: str) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def test_slots_cover_how_far_a_writer_can_lead_a_reader(registry) -> None:
    # Undirected: a reader is also a neighbour the writer waits for, so it leads by one iteration.
    for name in ("ring", "fully-connected", "random"):
        assert synchronous_slots(plan_for(registry, name, 6)) == 2
    # Directed, time-varying: learner r sends to r+1 (even phases) and r+2 (odd phases) but waits
    # only on r-1 or r-2: it can run further ahead of a reader.
    exponential = synchronous_slots(plan_for(registry, "exponential", 4))
    assert exponential is not None and 2 < exponential <= MAX_SLOTS
    # Too far ahead to bound with a few slots: the cell falls back to gloo messages.
    assert synchronous_slots(plan_for(registry, "exponential", 64)) is None


def test_shared_memory_mixing_equals_gloo_mixing(registry) -> None:
    plans = {name: plan_for(registry, name, N) for name in ("ring", "random", "exponential", "fully-connected")}
    prefix = f"bbtest-{secrets.token_hex(3)}"
    results = dh.run_group(dh.shared_versus_gloo_suite, N, plans, NUMEL, 30, prefix, timeout_s=90)
    for name in plans:
        for rank in range(N):
            p2p, shm = results[rank][name]["p2p"], results[rank][name]["shm"]
            if name == "fully-connected":
                # gloo averages a complete graph with one all-reduce: the same value, summed in
                # another order.
                np.testing.assert_allclose(shm, p2p, rtol=0, atol=1e-5)
            else:
                np.testing.assert_array_equal(shm, p2p)
            if name != "fully-connected":
                assert results[rank][name]["shm_bytes"] == results[rank][name]["p2p_bytes"]
    assert leftover_segments(prefix) == []


def test_bounded_staleness_through_shared_memory_with_a_straggler(registry) -> None:
    ring = plan_for(registry, "ring", N)
    prefix = f"bbtest-{secrets.token_hex(3)}"
    bound, iterations = 3, 60
    results = dh.run_group(dh.shared_staleness_suite, N, ring, NUMEL, iterations, bound, 0.01, prefix, timeout_s=90)
    for result in results:
        assert result["staleness_seen"] and max(result["staleness_seen"]) <= bound
        assert min(result["staleness_seen"]) >= 0
    # The straggler's neighbours (1 and 3) ran ahead of it by more than zero iterations at times.
    assert max(results[1]["staleness_seen"]) > 0 and max(results[3]["staleness_seen"]) > 0
    assert leftover_segments(prefix) == []


def test_a_reader_waits_for_the_exact_iteration_and_times_out_clearly() -> None:
    prefix = f"bbtest-{secrets.token_hex(3)}"
    writer = SharedBoard(prefix, 0, 8, 2, torch.float32, timeout_s=0.2)
    reader = SharedBoard(prefix, 1, 8, 2, torch.float32, timeout_s=0.2)
    reader.attach([0])
    received = torch.empty(8)
    writer.publish(torch.full((8,), 3.0), 0)
    reader.read_exact(0, 0, received)
    assert received.tolist() == [3.0] * 8
    assert reader.read_newest(0, 0, received) == 0
    with pytest.raises(TimeoutError, match="iteration 1 from learner 0"):
        reader.read_exact(0, 1, received)
    writer.publish(torch.full((8,), 4.0), 1)
    writer.publish(torch.full((8,), 5.0), 2)  # overwrites iteration 0's slot (2 slots)
    assert reader.read_newest(0, 1, received) == 2 and received[0] == 5.0
    with pytest.raises(RuntimeError, match="overwrote iteration 0"):
        reader.read_exact(0, 0, received)
    reader.close()
    writer.close()
    assert leftover_segments(prefix) == []


def test_the_launcher_removes_segments_a_crashed_learner_left() -> None:
    prefix = f"bbtest-{secrets.token_hex(3)}"
    orphan = shared_memory.SharedMemory(name=segment_name(prefix, 0), create=True, size=128)
    orphan.close()
    assert leftover_segments(prefix)
    unlink_segment(segment_name(prefix, 0))
    unlink_segment(segment_name(prefix, 0))  # already gone: no error
    assert leftover_segments(prefix) == []
