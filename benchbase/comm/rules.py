"""Mixing rules: how a learner combines its parameters with what its in-neighbours sent.

Per mix, learner i sends its parameters to its out-neighbours and combines
θ_i ← c_ii θ_i + Σ_j c_ij θ_j over its in-neighbours, with the weights of the cell's `MixingPlan`
for this iteration's phase. A rule decides what to send, which messages to wait for and how to
combine them; a transport (`benchbase.comm.transports`) carries the messages. Why each rule is
what it is, with measurements: docs/mixing.md.

Staleness bound K (`ConsensusParams.staleness`):
- K = 0, synchronous diffusion (`Diffusion`): every mix sends and receives this iteration's
  parameters. A complete graph with weights 1/N is one average (`CompleteAverage`).
- K > 0 with column-stochastic weights (push-sum, and Metropolis or any doubly stochastic
  diffusion): `AsynchronousPushSum` below, so that the network average is kept. A newest-message
  mix does not keep it: it reuses a stale message at every iteration, and the two ends of an edge
  mix at different times.
- K > 0 with weights that are only row-stochastic (uniform weights on an irregular graph, which
  do not keep the average even at K = 0): `BoundedStalenessDiffusion`, the newest message of each
  in-neighbour, waiting only while it is more than K iterations old (or until it finished).

Push-sum: the learner carries mass (x, w), x = w·z, w = 1 at the start (`Numerator`), and acts with
z = x/w. It gives its out-neighbours the plan's column-stochastic shares of its mass, sums what it
receives, and keeps the rest. Mass (Σ of every learner's, including what is in flight) is
conserved, so z converges to the exact average on any strongly connected graph.
- The learner's optimiser step on z goes to the numerator unscaled (GALA's Algorithm 1, SGP), so
  gossip minimises Σ f_i on any graph.
- Weight floor (`spare_share`): a learner gives away only the weight it can spare above
  `WEIGHT_FLOOR`, so a silent in-peer (late start, evaluation, checkpoint) can no longer drain
  its weight to zero and its parameters to NaN.
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


WEIGHT_FLOOR = 0.25  # a push-sum learner never gives away weight below this (docs/mixing.md)


def spare_share(weight: float, share: float, floor: float = WEIGHT_FLOOR) -> float:
    """The fraction of its mass a push-sum learner of `weight` gives away when the plan says
    `share`: all of it while the weight it keeps stays at least `floor`, else only what it can
    spare above the floor (nothing once at the floor). Weight only leaves a learner by giving,
    so its weight never falls below the floor, whatever its in-peers do."""
    if weight * (1.0 - share) >= floor:
        return share
    if weight <= floor:
        return 0.0
    return min(share, 1.0 - floor / weight)


class Numerator:
    """A push-sum learner's mass (x, w) = (w·z, w): the learner acts with z = x/w.

    The learner's optimiser steps z between mixes; the step Δ = z_now − z_handed_out goes to the
    numerator unscaled, x ← x + Δ, as in GALA's Algorithm 1 and Stochastic Gradient Push
    (x ← x − α∇f(z)). Rescaling instead (x ← w·z_now) would weight learner i's loss by w_i.
    Keeping x rather than z keeps the mass exact: with no step, x is untouched by a mix's
    hand-out, so Σ x over learners stays what it was to the rounding of the combination alone.
    """

    def __init__(self) -> None:
        self.mass: torch.Tensor | None = None
        self.restored_weight = 1.0  # a checkpoint from before the numerator was kept

    @property
    def weight(self) -> float:
        return self.restored_weight if self.mass is None else float(self.mass[-1])

    def handed_out(self, dtype: torch.dtype) -> torch.Tensor:
        """z = x/w as the learner received it (the same division, so the same bits)."""
        assert self.mass is not None
        return (self.mass[:-1] / self.mass[-1]).to(dtype)

    def with_step(self, params: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A new mass tensor (dtype `dtype`): the numerator plus the learner's step since the last
        hand-out (`params` is z_now); the first mix starts from (w·z, w), w = 1 (or the weight of a
        checkpoint that has no numerator)."""
        if self.mass is None:
            mass = torch.empty(params.numel() + 1, dtype=dtype, device=params.device)
            mass[:-1].copy_(params).mul_(self.restored_weight)
            mass[-1] = self.restored_weight
            return mass
        step = params - self.handed_out(params.dtype)  # exact for a step small against z
        mass = self.mass.to(dtype=dtype, copy=True)
        mass[:-1].add_(step)
        return mass

    def hand_out(self, mass: torch.Tensor, params: torch.Tensor) -> None:
        """Keep `mass` as the numerator; params ← z = x/w."""
        self.mass = mass
        params.copy_(self.handed_out(params.dtype))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"push_sum_weight": self.weight}
        if self.mass is not None:
            state["push_sum_mass"] = self.mass.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any], device: Any = "cpu") -> None:
        self.restored_weight = float(state["push_sum_weight"])
        mass = state.get("push_sum_mass")
        self.mass = None if mass is None else mass.to(device=device, copy=True)


class MixingRule:
    """What every rule shares: the plan's weights for this learner, link drops, the counters.

    `push_sum_weight` is 1 for rules without push-sum. `neighbour_views` holds the newest
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
        self.neighbour_views: dict[int, torch.Tensor] = {}

    @property
    def push_sum_weight(self) -> float:
        return 1.0

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

    def state_dict(self) -> dict[str, Any]:
        """What the rule carries over a resume (a communicator's checkpoint holds it)."""
        return {"push_sum_weight": 1.0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PushSumRule(MixingRule):
    """A rule that carries push-sum mass: the learner's numerator and weight, and the weight floor."""

    def __init__(self, *args: Any, device: Any = "cpu", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.numerator = Numerator()
        self.device = device

    @property
    def push_sum_weight(self) -> float:
        return self.numerator.weight

    def share_given(self, phase: PhaseWeights, weight: float) -> tuple[float, float | None]:
        """(fraction of the mass each out-neighbour's plan weight is scaled by, the weight this
        learner keeps, or None for the plan's own weight) under the weight floor."""
        share = sum(w for _, w in phase.outgoing)
        given = spare_share(weight, share)
        if given == share:
            return 1.0, None
        self.counters.publishes_limited += 1
        return given / share, 1.0 - given

    def state_dict(self) -> dict[str, Any]:
        return self.numerator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.numerator.load_state_dict(state, self.device)


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
        sending = self.publishes(self.rank, iteration)
        if not sending:
            self.counters.publishes_skipped += 1
        message = self.outgoing(params, phase, sending)
        live = [(j, w) for j, w in phase.incoming if self.publishes(j, iteration)]
        live_sources = {j for j, _ in live}
        own_weight = self.own_weight(phase, sending, live_sources)
        send_to = [i for i, _ in phase.outgoing] if sending else []
        silent = [j for j, _ in phase.incoming if j not in live_sources]
        received = self.transport.exchange(message, iteration, send_to, [j for j, _ in live], silent)
        self.combine(params, message, own_weight, [(received[j], w) for j, w in live])

    def outgoing(self, params: torch.Tensor, phase: PhaseWeights, sending: bool) -> torch.Tensor:
        raise NotImplementedError

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        raise NotImplementedError

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        raise NotImplementedError


class Diffusion(SynchronousRule):
    """Synchronous diffusion: θ_i ← c_ii θ_i + Σ_j c_ij θ_j with this iteration's θ_j."""

    def outgoing(self, params: torch.Tensor, phase: PhaseWeights, sending: bool) -> torch.Tensor:
        return params

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        # A silent neighbour's weight stays with me.
        return phase.own + sum(w for j, w in phase.incoming if j not in live_sources)

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        diffuse(params, own_weight, incoming)


class PushSum(PushSumRule, SynchronousRule):
    """Synchronous push-sum: send the mass (x, w), sum the shares received, act with z = x/w.

    The receivers scale a message by their plan weight, so a learner limited by the weight floor
    scales its message down (to zeros when it can spare nothing): every out-neighbour still gets a
    message, and nobody needs to know the sender's weight."""

    def outgoing(self, params: torch.Tensor, phase: PhaseWeights, sending: bool) -> torch.Tensor:
        self._mass = self.numerator.with_step(params, self.layout.dtype)
        self._kept: float | None = None
        if not sending:
            return self._mass  # sent to nobody
        scale, self._kept = self.share_given(phase, float(self._mass[-1]))
        return self._mass if self._kept is None else self._mass * scale

    def own_weight(self, phase: PhaseWeights, sending: bool, live_sources: set[int]) -> float:
        if not sending:  # keep the share the out-neighbours would have had
            return phase.own + sum(weight for _, weight in phase.outgoing)
        return phase.own if self._kept is None else self._kept

    def combine(
        self, params: torch.Tensor, message: torch.Tensor, own_weight: float, incoming: list[tuple[torch.Tensor, float]]
    ) -> None:
        mass = self._mass.mul_(own_weight)
        for received, weight in incoming:
            mass.add_(received, alpha=weight)
        self.numerator.hand_out(mass, params)


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


class AsynchronousPushSum(PushSumRule):
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
        mass = self.numerator.with_step(params, torch.float64)
        if self.publishes(self.rank, iteration):
            self._give(mass, phase, iteration)
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
        self.numerator.hand_out(mass, params)

    def _give(self, mass: torch.Tensor, phase: PhaseWeights, iteration: int) -> None:
        """Add this phase's shares of `mass` to the out-channels' running sums and publish them;
        `mass` keeps the rest. At the weight floor the sums are published unchanged: the
        out-neighbours get nothing, but a message as fresh as this iteration, so none waits."""
        scale, kept = self.share_given(phase, float(mass[-1]))
        for i, weight in phase.outgoing:
            running = self._sent_sums[i]
            if scale > 0.0:
                running.add_(mass, alpha=weight * scale)
            self.transport.publish(running, iteration, [i])
        mass.mul_(phase.own if kept is None else kept)

    def final_message(self, receiver: int) -> torch.Tensor:
        # The marker repeats the channel's running sum so nothing is lost.
        return self._sent_sums[receiver]

    def finish(self, params: torch.Tensor | None) -> None:
        """Consume the mass still in flight, so that afterwards Σ_i w_i equals the number of
        learners exactly; with `params`, they take the learner's last step and become x/w."""
        numerator = self.numerator
        if params is not None:
            mass = numerator.with_step(self._host(params.detach()), torch.float64)
        elif numerator.mass is not None:
            mass = numerator.mass.clone()
        else:  # never mixed: only the weight is known
            mass = torch.zeros(self.layout.width, dtype=torch.float64)
            mass[-1] = numerator.weight
        for j in self.plan.in_peers(self.rank):
            newest = self.transport.newest(j, -1)
            if newest is not None:
                running, _ = newest
                mass.add_(running - self._consumed_sums[j])
                self._consumed_sums[j] = running
        if params is not None:
            numerator.hand_out(mass, params)
        elif numerator.mass is not None:
            numerator.mass = mass
        else:
            numerator.restored_weight = float(mass[-1])
