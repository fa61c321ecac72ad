"""Neighbour-only parameter exchange: one learner's communicator, composed of a transport and a
mixing rule.

A learner's parameters travel as one flat buffer (`benchbase.comm.flat`). The communicator picks
what carries the messages (`benchbase.comm.transports`: shared memory, gloo point-to-point, an
NCCL group, or one all-reduce for a complete graph) and how they are combined
(`benchbase.comm.rules`: synchronous diffusion, push-sum, and asynchronous mixing over
running sums), then times the mixes, measures consensus (`benchbase.comm.consensus`), reports
statistics and carries its state (the push-sum numerator included) over a resume. Cost per
learner grows with its degree, never with N: no message goes to a non-neighbour, and the only
collective is the single all-reduce that averages a complete graph (and the periodic
consensus-distance measurement).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchbase.comm.consensus import ConsensusSnapshots, consensus_distance, neighbour_distance
from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout, message_layout
from benchbase.comm.mixing_plan import MixingPlan
from benchbase.comm.rules import (
    AsynchronousPushSum,
    BoundedStalenessDiffusion,
    CompleteAverage,
    Diffusion,
    MixingRule,
    PushSum,
    PushSumRule,
)
from benchbase.comm.shm import SharedBoard
from benchbase.comm.transports import (
    AllReduceTransport,
    DeviceGroupTransport,
    GlooTransport,
    HostStaging,
    SharedMemoryTransport,
    Transport,
)

__all__ = ["Communicator", "MessageLayout", "message_layout", "transport_name"]


def transport_name(plan: MixingPlan, board: SharedBoard | None, device_group: Any, use_all_reduce: bool) -> str:
    """What carries the parameters (recorded per cell: a complete graph's all-reduce sums in
    another order than the neighbour sum, so its numbers differ in rounding)."""
    if not plan.has_edges:
        return "none"
    if device_group is not None:
        return "nccl-all-reduce" if use_all_reduce else "nccl"
    if board is not None:
        return "shm"
    return "all-reduce" if use_all_reduce else "p2p"


class Communicator:
    """Mixes one learner's flat parameter buffer with its neighbours, as the plan says."""

    def __init__(
        self,
        plan: MixingPlan,
        rank: int,
        numel: int,
        dtype: torch.dtype,
        staleness: int,
        timeout_s: float,
        board: SharedBoard | None = None,
        *,
        link_drop: float = 0.0,
        seed: int = 0,
        device_group: Any = None,
        device: Any = "cpu",
        parameter_numel: int | None = None,
    ) -> None:
        """`numel` values are mixed; the first `parameter_numel` (default all) are the model's
        parameters, on which consensus is measured."""
        self.plan, self.rank, self.numel, self.dtype = plan, rank, numel, dtype
        self.staleness, self.timeout_s, self.link_drop, self.seed = staleness, timeout_s, link_drop, seed
        self.board = board  # same-host shared memory instead of gloo messages (benchbase.comm.shm)
        # An NCCL group over the learners' own GPUs (synchronous mixing only): parameters then
        # travel GPU to GPU, never through host memory.
        self.device_group = device_group
        self.layout = message_layout(plan, numel, dtype, staleness)
        # The learner carries push-sum mass: a push-sum plan, or asynchronous mixing over running sums.
        self.push_sum = plan.push_sum or self.layout.running_sums
        self.use_all_reduce = (
            plan.is_complete and staleness == 0 and board is None and not self.push_sum and link_drop == 0
        )
        self.transport = transport_name(plan, board, device_group, self.use_all_reduce)
        self.counters = CommCounters()
        self._host = HostStaging()
        self._snapshots = ConsensusSnapshots(
            plan.n_learners, rank, numel if parameter_numel is None else parameter_numel, seed, staleness, timeout_s
        )
        self._consensus: dict[int, float] | None = None
        buffers = device if device_group is not None else "cpu"
        self._carrier = self._build_transport(buffers)
        self._rule = self._build_rule(buffers)

    def _build_transport(self, buffers: Any) -> Transport:
        if self.use_all_reduce:
            return AllReduceTransport(self.device_group, self.plan.n_learners, self.numel, self.counters)
        if self.board is not None:
            return SharedMemoryTransport(self.board, self.plan, self.rank, self.layout, self.counters, buffers)
        if self.device_group is not None and self.staleness == 0:
            return DeviceGroupTransport(self.device_group, self.plan, self.rank, self.layout, self.counters, buffers)
        return GlooTransport(self.plan, self.rank, self.layout, self.counters, self.staleness, self.timeout_s)

    def _build_rule(self, buffers: Any) -> MixingRule:
        args = (self.plan, self.rank, self.layout, self._carrier, self.counters)
        links = {"link_drop": self.link_drop, "seed": self.seed}
        if self.use_all_reduce:
            return CompleteAverage(*args, **links)
        if self.layout.running_sums:
            return AsynchronousPushSum(*args, staleness=self.staleness, host=self._host, **links)
        if self.staleness > 0:  # weights that are not column-stochastic: no mass to keep
            return BoundedStalenessDiffusion(*args, staleness=self.staleness, **links)
        if self.push_sum:
            return PushSum(*args, device=buffers, **links)
        return Diffusion(*args, **links)

    # -- mixing ---------------------------------------------------------------------------------

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        """Combine `params` (flat, written in place) with the neighbours' for this iteration."""
        if not self.plan.has_edges:
            return
        if params.device.type != "cpu" and self.device_group is None:
            host = self._host(params)
            self.mix(host, iteration)
            params.copy_(host)
            return
        started = time.perf_counter()
        self._rule.mix(params, iteration)
        self.counters.wait_s += time.perf_counter() - started

    @property
    def push_sum_weight(self) -> float:
        return self._rule.push_sum_weight

    @property
    def bytes_sent(self) -> int:
        return self.counters.bytes_sent

    @property
    def messages_sent(self) -> int:
        return self.counters.messages_sent

    @property
    def messages_received(self) -> int:
        """Counted as messages are mixed; `statistics` adds those background receivers took in."""
        return self.counters.messages_received

    @property
    def staleness_seen(self) -> list[float]:
        return self.counters.staleness_seen

    # -- measurement ----------------------------------------------------------------------------

    def consensus_distance(self, params: torch.Tensor) -> float:
        """sqrt(mean_i ‖θ_i − θ̄‖²) / ‖θ̄‖ across all learners. A collective: every learner must
        call it at the same point (synchronous mixing, or after every learner finished)."""
        n = self.plan.n_learners
        if n == 1:
            return 0.0
        return consensus_distance(self._host(params.detach()), n)

    def neighbour_distance(self, params: torch.Tensor) -> float | None:
        """sqrt(mean_j ‖θ_i − θ_j‖²) / ‖θ_i‖ over the in-peers' latest parameters this learner
        mixed: a local, free estimate of consensus for asynchronous gossip (no collective)."""
        views = self._rule.neighbour_views
        if not views:
            return None
        return neighbour_distance(self._host(params.detach()), views, self.push_sum)

    def snapshot(self, params: torch.Tensor, iteration: int) -> None:
        """Asynchronous runs: hand this learner's parameters at `iteration` to learner 0, which
        computes the consensus distance once every learner's copy of that iteration is in.
        Every learner must call it at the same iterations; nobody waits for anybody."""
        if not self._snapshots.active:
            return
        self._snapshots.take(self._host(params.detach()), iteration)

    def consensus_snapshots(self) -> dict[int, float]:
        """Learner 0 after close(): consensus distance by iteration (empty elsewhere)."""
        return self._consensus or {}

    def statistics(self) -> dict[str, float]:
        counters = self.counters
        stats = {
            "bytes_sent": float(counters.bytes_sent),
            "messages_sent": float(counters.messages_sent),
            "messages_received": float(counters.messages_received + self._carrier.received_in_background()),
            "publishes_skipped": float(counters.publishes_skipped),
            "mix_wait_s": counters.wait_s,
        }
        if isinstance(self._rule, PushSumRule):
            stats["push_sum_weight"] = self._rule.push_sum_weight
            stats["publishes_limited"] = float(counters.publishes_limited)
        if counters.staleness_seen:
            stats["staleness_mean"] = sum(counters.staleness_seen) / len(counters.staleness_seen)
            stats["staleness_max"] = max(counters.staleness_seen)
        return stats

    def reset_staleness(self) -> None:
        self.counters.staleness_seen.clear()

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What carries over a resume: the push-sum weight and numerator (`push_sum_mass`: the
        learner's parameters are its de-biased copy), the counters, and (learner 0 of an
        asynchronous run) the consensus distances measured so far. Asynchronous push-sum's running
        sums start again from zero on every channel, so mass that was in flight is lost."""
        counters = self.counters
        state = {
            **self._rule.state_dict(),
            "bytes_sent": counters.bytes_sent,
            "messages_sent": counters.messages_sent,
            "messages_received": int(self.statistics()["messages_received"]),
            "publishes_skipped": counters.publishes_skipped,
            "publishes_limited": counters.publishes_limited,
            "wait_s": counters.wait_s,
        }
        state.update(self._snapshots.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self._rule.load_state_dict(state)
        counters = self.counters
        counters.bytes_sent = int(state["bytes_sent"])
        counters.messages_sent = int(state["messages_sent"])
        counters.messages_received = int(state["messages_received"])
        counters.publishes_skipped = int(state["publishes_skipped"])
        counters.publishes_limited = int(state.get("publishes_limited", 0))  # older checkpoints lack it
        counters.wait_s = float(state["wait_s"])
        self._snapshots.load_state_dict(state)

    # -- shutdown -------------------------------------------------------------------------------

    def close(self, params: torch.Tensor | None = None) -> None:
        """Match every send with a receive: final markers out, every in-peer drained to its marker.
        Asynchronous push-sum also consumes the mass still in flight into `params` (when given),
        so that afterwards Σ_i w_i equals the number of learners exactly."""
        self._consensus = None
        if self._snapshots.active:
            self._consensus = self._snapshots.finish()
        try:
            self._carrier.finish(self._rule.final_message)
            self._rule.finish(params)
        finally:
            self._carrier.release()
