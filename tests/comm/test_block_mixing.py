"""Mixing inside a learner block (one product with the mixing matrix) against the diffusion rule
the processes apply message by message, on ring, exponential and random graphs."""

from __future__ import annotations

import math
import uuid

import pytest
import torch

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.comm.block import BlockMixer
from benchbase.comm.block_graph import block_mixing_refusal
from benchbase.comm.mixing_plan import MixingPlan, build_mixing_plan
from benchbase.comm.rules import diffuse, phase_weights

NUMEL, PARAMETERS = 40, 32  # 8 mixed values after the parameters (e.g. normaliser statistics)


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.topologies.builtin"}, blocked=set())


def plan_for(registry, name: str, n: int, seed: int = 0, **overrides):
    topology = registry.get("topology", name)
    params = params_of(topology, overrides)
    return build_mixing_plan(topology, params, topology.learner_count(n, params), seed)


def mixes_as_diffusion(plan, buffers: torch.Tensor, mixer: BlockMixer) -> None:
    """`mixer` mixes `buffers` as each learner's Diffusion rule would, over two periods and one more mix."""
    n = len(buffers)
    expected = buffers.clone()
    weights = [phase_weights(plan, rank) for rank in range(n)]
    for iteration in range(2 * plan.period + 1):
        before = expected.clone()
        for rank in range(n):  # what each learner's Diffusion rule does with this iteration's messages
            phase = weights[rank][plan.phase(iteration)]
            diffuse(expected[rank], phase.own, [(before[j], w) for j, w in phase.incoming])
        mixer.mix(iteration)
        torch.testing.assert_close(buffers, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name,n,overrides,way",
    [
        ("ring", 5, {}, "product"),
        ("exponential", 8, {}, "product"),
        ("random", 7, {"p": 0.4}, "product"),
        ("fully-connected", 4, {}, "product"),
        ("fully-connected", 16, {}, "product"),
        # sparse enough that the block sums its rows shifted (a pattern of cyclic shifts) or gathered
        ("ring", 16, {}, "shifts"),
        ("ring", 40, {}, "shifts"),
        ("exponential", 96, {}, "shifts"),
        ("random", 160, {"p": 0.04}, "gathers"),
    ],
)
def test_a_block_mixes_as_every_learner_diffusing_its_neighbours(registry, name, n, overrides, way):
    plan = plan_for(registry, name, n, seed=3, **overrides)
    buffers = torch.randn(n, NUMEL)
    mixer = BlockMixer(plan, buffers, PARAMETERS)
    ways = {
        "shifts" if shifts is not None else "gathers" if slots is not None else "product"
        for shifts, slots in zip(mixer._own_shifts, mixer._own_neighbours)
    }
    assert ways == {way}
    mixes_as_diffusion(plan, buffers, mixer)
    sent = [sum(len(plan.out_neighbours(rank, plan.phase(i))) for i in range(2 * plan.period + 1)) for rank in range(n)]
    assert [counters.bytes_sent for counters in mixer.counters] == [count * NUMEL * 4 for count in sent]
    assert [mixer.member(rank).statistics()["messages_sent"] for rank in range(n)] == sent


def test_a_pattern_of_shifts_without_the_rows_own_weights_mixes_as_diffusion():
    """Shifted rows where no learner keeps a weight on itself (the first shift is not 0): every row
    is written by the first shift, then added to."""
    import numpy as np

    learners = 16
    weights = np.zeros((learners, learners), dtype=np.float32)
    for row in range(learners):
        weights[row, (row + 1) % learners], weights[row, (row + 3) % learners] = 0.25, 0.75
    plan = MixingPlan(learners, True, (weights != 0,), (weights,))
    buffers = torch.randn(learners, NUMEL)
    mixer = BlockMixer(plan, buffers, PARAMETERS)
    assert [offset for offset, _ in mixer._own_shifts[0]] == [1, 3]
    mixer._mixed = torch.full_like(buffers, float("nan"))  # what a piece adds to must have been written
    mixes_as_diffusion(plan, buffers, mixer)


def test_consensus_is_measured_on_the_parameters_as_between_processes(registry):
    plan = plan_for(registry, "ring", 4)
    buffers = torch.randn(4, NUMEL)
    mixer = BlockMixer(plan, buffers, PARAMETERS)
    params = buffers[:, :PARAMETERS].double()
    mean = params.mean(0)
    expected = math.sqrt(float((params - mean).pow(2).sum()) / 4) / float(mean.norm())
    assert mixer.member(2).consensus_distance(buffers[2]) == pytest.approx(expected, rel=1e-5)
    mixer.mix(0)
    assert mixer.consensus_distance() < expected  # mixing brings them closer


def test_consensus_measured_a_slice_of_columns_at_a_time_is_the_whole_measurement(registry, monkeypatch):
    """Its work buffer is bounded (CONSENSUS_SCRATCH values), not another copy of every
    parameter; slices of columns give the same figure as one pass (within rounding)."""
    from benchbase.comm import block

    plan = plan_for(registry, "ring", 4)
    buffers = torch.randn(4, NUMEL)
    whole = BlockMixer(plan, buffers, PARAMETERS).consensus_distance()
    monkeypatch.setattr(block, "CONSENSUS_SCRATCH", 4 * 7)  # 7 columns a slice: the last one shorter
    sliced = BlockMixer(plan, buffers, PARAMETERS)
    assert sliced.consensus_distance() == pytest.approx(whole, rel=1e-6)
    _, slices = sliced._consensus_slices
    assert [tuple(work.shape) for _, _, work in slices] == [(4, 7)] * 4 + [(4, PARAMETERS % 7)]
    assert len({work.untyped_storage().data_ptr() for _, _, work in slices}) == 1  # one buffer of 4 x 7


def test_isolated_learners_do_not_mix(registry):
    plan = plan_for(registry, "isolated", 3)
    buffers = torch.randn(3, NUMEL)
    before = buffers.clone()
    mixer = BlockMixer(plan, buffers, PARAMETERS)
    mixer.mix(0)
    assert torch.equal(buffers, before) and mixer.member(0).bytes_sent == 0


def test_what_a_block_cannot_mix_is_refused_with_the_reason(registry):
    ring = plan_for(registry, "ring", 4)
    assert block_mixing_refusal(ring, 0, 0.0) is None
    assert "staleness" in block_mixing_refusal(ring, 2, 0.0)
    assert "link_drop" in block_mixing_refusal(ring, 0, 0.1)
    directed = plan_for(registry, "directed-ring", 4)
    if directed.push_sum:
        assert "push-sum" in block_mixing_refusal(directed, 0, 0.0)


@pytest.mark.parametrize("transport", ["shm", "p2p"])
@pytest.mark.parametrize(
    "name,n,blocks,overrides",
    [("ring", 6, 3, {}), ("exponential", 8, 2, {}), ("random", 8, 4, {"p": 0.4}), ("isolated", 4, 2, {})],
)
def test_blocks_in_several_processes_mix_as_one_block_of_the_whole_cell(
    registry, name, n, blocks, overrides, transport
):
    """K = N / blocks learners per process, each process receiving the rows its learners read
    from the others (shared memory or gloo messages between real processes): every process ends
    with its rows of what one block of the whole cell computes, and the same consensus and
    message counts."""
    from dist_helpers import block_mixing_suite, run_group

    plan = plan_for(registry, name, n, seed=3, **overrides)
    buffers = torch.randn(n, NUMEL)
    steps = 2 * plan.period + 1
    prefix = f"bbt-blk-{uuid.uuid4().hex[:8]}"
    results = run_group(block_mixing_suite, blocks, plan, buffers.numpy(), steps, transport, prefix)
    whole = BlockMixer(plan, buffers, PARAMETERS)
    for iteration in range(steps):
        whole.mix(iteration)
    size = n // blocks
    for rank, result in enumerate(results):
        rows = slice(rank * size, (rank + 1) * size)
        torch.testing.assert_close(torch.from_numpy(result["rows"]), buffers[rows], rtol=1e-5, atol=1e-6)
        assert result["consensus"] == pytest.approx(whole.consensus_distance(), rel=1e-5)
        assert result["bytes"] == [counters.bytes_sent for counters in whole.counters[rows]]
        assert result["transport"] == (f"block/{transport}" if plan.has_edges else "none")


def test_blocks_exchange_only_the_rows_other_blocks_read(registry):
    """A ring of 12 as 3 blocks of 4: block b reads one row from each neighbouring block (its
    first learner's left neighbour, its last learner's right one) and sends its own first and last
    rows, never the whole block nor every block's rows."""
    from dist_helpers import block_mixing_suite, run_group

    from benchbase.comm.block_graph import BlockGraph

    plan = plan_for(registry, "ring", 12)
    graph = BlockGraph(plan, 4)
    assert graph.exported == [[0, 3], [4, 7], [8, 11]]
    assert graph.reads[0][1] == {0: [3], 2: [8]}
    assert [graph.in_peers(b) for b in range(3)] == [[1, 2], [0, 2], [0, 1]]
    steps = 5
    results = run_group(block_mixing_suite, 3, plan, torch.randn(12, NUMEL).numpy(), steps, "p2p")
    # Per iteration, one message of 2 rows to each of 2 neighbouring blocks.
    assert [result["exchanged_bytes"] for result in results] == [steps * 2 * 2 * NUMEL * 4] * 3


def test_a_time_varying_graph_between_blocks_reads_phase_by_phase(registry):
    """The time-varying exponential graph on 8 learners in 2 blocks of 4: each phase reads only that
    phase's in-neighbours from the other block; a block's message holds the rows any phase reads."""
    from benchbase.comm.block_graph import BlockGraph

    plan = plan_for(registry, "exponential", 8)
    graph = BlockGraph(plan, 4)
    assert graph.period == plan.period > 1
    for phase in range(plan.period):
        for b in range(2):
            expected: dict[int, list[int]] = {}
            for i in range(4 * b, 4 * b + 4):
                for j in plan.in_neighbours(i, phase):
                    if j // 4 != b:
                        expected.setdefault(j // 4, []).append(j)
            assert graph.reads[phase][b] == {c: sorted(set(rows)) for c, rows in expected.items()}
    for c in range(2):
        read = {j for per_block in graph.reads for b, rows in enumerate(per_block) if b != c for j in rows.get(c, [])}
        assert graph.exported[c] == sorted(read)
