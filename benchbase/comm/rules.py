"""Mixing rules: how a learner combines its parameters with what its in-neighbours sent.

Per mix, learner i sends its parameters to its out-neighbours and combines
θ_i ← c_ii θ_i + Σ_j c_ij θ_j over its in-neighbours, with the weights of the cell's `MixingPlan`
for this iteration's phase. A rule decides what to send, which messages to wait for and how to
combine them; a transport (`benchbase.comm.transports`) carries the messages.

Staleness bound K (`ConsensusParams.staleness`):
- K = 0, synchronous diffusion (`Diffusion`): every mix sends and receives this iteration's
  parameters. A complete graph with weights 1/N is one average (`CompleteAverage`).
- K > 0, bounded-staleness diffusion (`BoundedStalenessDiffusion`): a mix uses the newest message
  of each in-neighbour and waits only while it is more than K iterations old (or until that
  neighbour has finished).

Push-sum (`MixingPlan.push_sum`: directed graphs and gossip): the learner also carries a scalar
weight w (1 at the start). It sends x = (w·θ, w) scaled by the plan's column-stochastic weights,
sums what it receives, and acts with θ = x/w. Mass (Σ of every learner's x, including what is
in flight) is conserved, so θ converges to the exact average on any strongly connected graph.
- K = 0 (`PushSum`): each message is one iteration's share, as in plain mixing.
- K > 0 (`AsynchronousPushSum`): newest-message semantics would use a share twice or lose it.
  Instead every channel j→i carries the running sum of all the mass j ever sent to i (float64),
  and i adds the difference to what it consumed before. The newest message therefore carries
  every older one: nothing is lost or counted twice, however stale or reordered (robust
  push-sum, as in Hadjicostis et al.). Each out-neighbour has its own channel.

Unreliable links (`benchbase.comm.links`): with K = 0 the in-neighbours of a learner that skips
publishing know it, do not wait for it and give its weight to themselves (push-sum: the sender
keeps its share). With K > 0 neighbours simply mix with older news.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout
from benchbase.comm.links import publishes
from benchbase.comm.mixing_plan import MixingPlan
from benchbase.comm.transports import AllReduceTransport, Transport


@dataclass(frozen=True)
class PhaseWeights:
    """One learner's weights in one phase: its own, and those of its in- and out-neighbours."""

    own: float
    incoming: list[tuple[int, float]]  # (in-neighbour j, c_ij)
    outgoing: list[tuple[int, float]]  # (out-neighbour i, c_i,rank)


def phase_weights(plan: MixingPlan, rank: int) -> list[PhaseWeights]:
    """`rank`'s weights in every phase of the plan."""
    return [
        PhaseWeights(
            float(plan.weights[k][rank, rank]),
            [(j, float(plan.weights[k][rank, j])) for j in plan.in_neighbours(rank, k)],
            [(i, float(plan.weights[k][i, rank])) for i in plan.out_neighbours(rank, k)],
        )
        for k in range(plan.period)
    ]


def diffuse(params: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]) -> None:
    """params ← own_weight·params + Σ weight·message."""
    params.mul_(own_weight)
    for message, weight in incoming:
        params.add_(message, alpha=weight)


def debias(params: torch.Tensor, mass: torch.Tensor) -> float:
    """params ← θ = x/w for push-sum mass x = (w·θ, w); returns w."""
    weight = float(mass[-1])
    params.copy_(mass[:-1].div_(mass[-1]))
    return weight


class MixingRule:
    """What every rule shares: the plan's weights for this learner, link drops, the counters.

    `push_sum_weight` stays 1 for rules without push-sum. `neighbour_views` holds the newest
    in-peer parameters an asynchronous rule mixed (a free, local estimate of consensus)."""

    def __init__(
        self,
        plan: MixingPlan,
        rank: int,
        layout: MessageLayout,
        transport: Transport,
        counters: CommCounters,
        *,
        link_drop: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.plan = plan
        self.rank = rank
        self.layout = layout
        self.transport = transport
        self.counters = counters
        self.link_drop = link_drop
        self.seed = seed
        self.phases = phase_weights(plan, rank)
        self.push_sum_weight = 1.0
        self.neighbour_views: dict[int, torch.Tensor] = {}

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        """Combine `params` (flat, on the host unless a device group carries it) in place."""
        raise NotImplementedError

    def publishes(self, learner: int, iteration: int) -> bool:
        return publishes(self.seed, learner, iteration, self.link_drop)

    def final_message(self, receiver: int) -> torch.Tensor:
        """What the last message to `receiver` carries: nothing, for a plain channel."""
        return torch.zeros(self.layout.width)

    def finish(self, params: torch.Tensor | None) -> None:
        """After every in-peer finished: take in what is still in flight (nothing, by default)."""


class CompleteAverage(MixingRule):
    """A complete graph with weights 1/N: θ_i ← mean of every θ_j, as one all-reduce."""

    transport: AllReduceTransport

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        self.transport.sum_all(params)
        params.div_(self.plan.n_learners)


class SynchronousRule(MixingRule):
    """K = 0: send this iteration's message to the out-neighbours, receive every publishing
    in-neighbour's, combine. Subclasses say what is sent, where a silent link's weight goes, and
    how messages combine."""

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        phase = self.phases[self.plan.phase(iteration)]
        message = self.outgoing(params)
        sending = self.publishes(self.rank, iteration)
        if not sending:
            self.counters.publishes_skipped += 1
        live = [(j, w) for j, w in phase.incoming if self.publishes(j, iteration)]
        live_sources = {j for j, _ in live}
        own_weight = self.own_weight(phase, sending, live_sources)
        send_to = [i for i, _ in phase.outgoing] if sending else []
        silent = [j for j, _ in phase.incoming if j not in live_sources]
        received = self.transport.exchange(message, iteration, send_to, [j for j, _ in live], silent)
        self.combine(params, message, own_weight, [(received[j], w) for j, w in live])

    def outgoing(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        raise NotImplementedError

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        raise NotImplementedError


class Diffusion(SynchronousRule):
    """Synchronous diffusion: θ_i ← c_ii θ_i + Σ_j c_ij θ_j with this iteration's θ_j."""

    def outgoing(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        # A silent neighbour's weight stays with me.
        return phase.own + sum(w for j, w in phase.incoming if j not in live_sources)

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        diffuse(params, own_weight, incoming)


class PushSum(SynchronousRule):
    """Synchronous push-sum: send (w·θ, w), sum the shares received, act with θ = x/w."""

    def __init__(self, *args: Any, device: Any = "cpu", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outgoing = torch.empty(self.layout.width, dtype=self.layout.dtype, device=device)

    def outgoing(self, params: torch.Tensor) -> torch.Tensor:
        message = self._outgoing
        torch.mul(params, self.push_sum_weight, out=message[:-1])
        message[-1] = self.push_sum_weight
        return message

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        own_weight = phase.own
        if not sending:  # keep the share the out-neighbours would have had
            own_weight += sum(weight for _, weight in phase.outgoing)
        return own_weight

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        mass = message.mul(own_weight)
        for received, weight in incoming:
            mass.add_(received, alpha=weight)
        self.push_sum_weight = debias(params, mass)


class BoundedStalenessDiffusion(MixingRule):
    """Diffusion with each in-neighbour's newest parameters, at most `staleness` iterations old."""

    def __init__(self, *args: Any, staleness: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.staleness = staleness

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        phase = self.phases[self.plan.phase(iteration)]
        own_weight = phase.own
        if self.publishes(self.rank, iteration):
            self.transport.publish(params, iteration, [i for i, _ in phase.outgoing])
        else:
            self.counters.publishes_skipped += 1
        incoming = []
        for j, weight in phase.incoming:
            newest = self.transport.newest(j, iteration - self.staleness)
            if newest is None:  # a neighbour that finished without ever publishing
                own_weight += weight
                continue
            message, sent_at = newest
            self.counters.staleness_seen.append(max(0.0, iteration - sent_at))  # a neighbour may be ahead
            self.neighbour_views[j] = message
            incoming.append((message, weight))
        diffuse(params, own_weight, incoming)


class AsynchronousPushSum(MixingRule):
    """Push-sum over channels that carry running sums of the mass sent (robust to staleness)."""

    def __init__(self, *args: Any, staleness: int, host: Callable[[torch.Tensor], torch.Tensor], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.staleness = staleness
        self._host = host
        width = self.layout.width
        # What this learner has sent on each channel, and consumed from each.
        self._sent_sums = {i: torch.zeros(width, dtype=torch.float64) for i in self.plan.out_peers(self.rank)}
        self._consumed_sums = {j: torch.zeros(width, dtype=torch.float64) for j in self.plan.in_peers(self.rank)}

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        phase = self.phases[self.plan.phase(iteration)]
        mass = torch.empty(self.layout.width, dtype=torch.float64)
        mass[:-1].copy_(params).mul_(self.push_sum_weight)
        mass[-1] = self.push_sum_weight
        if self.publishes(self.rank, iteration):
            for i, weight in phase.outgoing:
                running = self._sent_sums[i].add_(mass, alpha=weight)
                self.transport.publish(running, iteration, [i])
            mass.mul_(phase.own)
        else:
            self.counters.publishes_skipped += 1  # keep the whole share
        # Freshness is required of this phase's in-neighbours; every in-peer's news is consumed.
        fresh_from = {j for j, _ in phase.incoming}
        for j in self.plan.in_peers(self.rank):
            newest = self.transport.newest(j, iteration - self.staleness if j in fresh_from else -1)
            if newest is None:
                continue
            running, sent_at = newest
            if j in fresh_from:
                self.counters.staleness_seen.append(max(0.0, iteration - sent_at))
            delta = running - self._consumed_sums[j]
            self._consumed_sums[j] = running
            if float(delta[-1]) > 0.0:
                self.neighbour_views[j] = delta
                mass.add_(delta)
        self.push_sum_weight = debias(params, mass)

    def final_message(self, receiver: int) -> torch.Tensor:
        # The marker repeats the channel's running sum so nothing is lost.
        return self._sent_sums[receiver]

    def finish(self, params: torch.Tensor | None) -> None:
        """Consume the mass still in flight into `params` (when given), so that afterwards
        Σ_i w_i equals the number of learners exactly."""
        mass = torch.zeros(self.layout.width, dtype=torch.float64)
        if params is not None:
            mass[:-1].copy_(self._host(params.detach())).mul_(self.push_sum_weight)
        mass[-1] = self.push_sum_weight
        for j in self.plan.in_peers(self.rank):
            newest = self.transport.newest(j, -1)
            if newest is not None:
                running, _ = newest
                mass.add_(running - self._consumed_sums[j])
                self._consumed_sums[j] = running
        self.push_sum_weight = float(mass[-1])
        if params is not None:
            params.copy_(mass[:-1].div_(mass[-1]))
