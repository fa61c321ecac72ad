"""Mixing in one process: the communicator's own mixing rules (`benchbase.comm.rules`) over an
in-memory transport, asynchronously on a simulated clock (`simulate`) or in lock-step (`lockstep`).

Each learner computes for `durations[r]` ticks, then mixes; it mixes iteration t only once every
in-neighbour of t's phase has published iteration t − K or finished (the wait the gloo and
shared-memory transports do), and not while `active(r, tick)` says it is away (a late start, an
evaluation, a checkpoint, a descheduled process). A mix sees every message published before it,
so a run is deterministic. After the last iteration every learner sends its final markers and
then takes in what is still in flight, as `Communicator.close` does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchbase.comm.counters import CommCounters
from benchbase.comm.layout import MessageLayout, message_layout
from benchbase.comm.mixing_plan import MixingPlan
from benchbase.comm.rules import AsynchronousPushSum, BoundedStalenessDiffusion, MixingRule, PushSum
from benchbase.comm.transports import HostStaging, Transport


class Network:
    """Every channel's newest message, and who has finished."""

    def __init__(self) -> None:
        self.newest: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (sender, receiver) -> message
        self.finished: set[int] = set()

    def fresh(self, sender: int, receiver: int, min_iteration: int) -> bool:
        found = self.newest.get((sender, receiver))
        fresh = found is not None and found[1] >= min_iteration
        return fresh or min_iteration < 0 or sender in self.finished


class SimulatedTransport(Transport):
    def __init__(self, network: Network, plan: MixingPlan, rank: int, layout: MessageLayout, counters: CommCounters):
        self.network, self.plan, self.rank, self.layout, self.counters = network, plan, rank, layout, counters

    def publish(self, content: torch.Tensor, iteration: int, send_to: list[int]) -> None:
        for i in send_to:
            self.network.newest[(self.rank, i)] = (content.clone(), iteration)
            self.counters.count_sent(1, content)

    def newest(self, peer: int, min_iteration: int) -> tuple[torch.Tensor, float] | None:
        assert self.network.fresh(peer, self.rank, min_iteration), "the scheduler let a mix wait"
        found = self.network.newest.get((peer, self.rank))
        return None if found is None else (found[0].clone(), float(found[1]))

    def finish(self, final_message: Callable[[int], torch.Tensor]) -> None:
        if self.layout.running_sums:  # the marker carries the channel's final running sum
            for i in self.plan.out_peers(self.rank):
                previous = self.network.newest.get((self.rank, i), (None, -1))[1]
                self.network.newest[(self.rank, i)] = (final_message(i).clone(), previous)
        self.network.finished.add(self.rank)


def make_rule(
    rule: type[MixingRule] | None, plan: MixingPlan, rank: int, numel: int, staleness: int, network: Network
) -> MixingRule:
    """One learner's rule over `network`; None: the rule the communicator picks for K > 0 (running
    sums where the message layout has them, else newest-message diffusion)."""
    layout = message_layout(plan, numel, torch.float32, staleness)
    if rule is None:
        rule = AsynchronousPushSum if layout.running_sums else BoundedStalenessDiffusion
    elif not issubclass(rule, AsynchronousPushSum):  # a newest-message rule sends plain parameters
        layout = MessageLayout(numel, torch.float32, False)
    counters = CommCounters()
    transport = SimulatedTransport(network, plan, rank, layout, counters)
    args = (plan, rank, layout, transport, counters)
    if issubclass(rule, AsynchronousPushSum):
        return rule(*args, staleness=staleness, host=HostStaging())
    return rule(*args, staleness=staleness)


@dataclass
class Run:
    """What a simulated run leaves: parameters and weights after close, and their history."""

    params: list[torch.Tensor]
    rules: list[MixingRule]
    min_weight: list[float]  # the lowest push-sum weight each learner held after a mix
    finite: bool  # every parameter finite after every mix
    steps: list[torch.Tensor]  # the sum of the steps each learner took
    history: list[list[torch.Tensor]] = field(default_factory=list)  # parameters after each tick


def simulate(
    plan: MixingPlan,
    initial: list[torch.Tensor],
    iterations: int,
    staleness: int,
    durations: list[int],
    rule: type[MixingRule] | None = None,
    active: Callable[[int, int], bool] = lambda rank, tick: True,
    step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    close: bool = True,
    keep_history: bool = False,
) -> Run:
    """Run every learner for `iterations` mixes; `step(rank, params)` is a learner's update (the
    change it makes to its parameters before each mix), none by default."""
    n = plan.n_learners
    network = Network()
    rules = [make_rule(rule, plan, r, len(initial[r]), staleness, network) for r in range(n)]
    params = [x.clone() for x in initial]
    steps = [torch.zeros_like(x, dtype=torch.float64) for x in initial]
    done = [0] * n
    busy_until = list(durations)
    min_weight = [1.0] * n
    finite = True
    history = []
    tick = 0
    while min(done) < iterations:
        for r in range(n):
            if done[r] == iterations or busy_until[r] > tick or not active(r, tick):
                continue
            t = done[r]
            if not all(network.fresh(j, r, t - staleness) for j in plan.in_neighbours(r, t)):
                continue
            if step is not None:
                change = step(r, params[r])
                before = params[r].clone()
                params[r].add_(change)
                steps[r].add_(params[r].double() - before.double())
            rules[r].mix(params[r], t)
            min_weight[r] = min(min_weight[r], rules[r].push_sum_weight)
            finite = finite and bool(torch.isfinite(params[r]).all())
            done[r] += 1
            busy_until[r] = tick + durations[r]
            if done[r] == iterations:
                rules[r].transport.finish(rules[r].final_message)
        if keep_history:
            history.append([x.clone() for x in params])
        tick += 1
    if close:
        for r in range(n):
            rules[r].finish(params[r])
    return Run(params, rules, min_weight, finite, steps, history)


# -- synchronous rules: one thread per learner, a barrier per exchange ---------------------------


class LockstepTransport(Transport):
    """Synchronous exchanges between threads: everyone posts, waits, then reads its in-peers'."""

    def __init__(self, board: dict, barrier: threading.Barrier, rank: int, counters: CommCounters) -> None:
        self.board, self.barrier, self.rank, self.counters = board, barrier, rank, counters

    def exchange(
        self, message: torch.Tensor, iteration: int, send_to: list[int], receive_from: list[int], silent: list[int]
    ) -> dict[int, torch.Tensor]:
        self.board[(self.rank, iteration)] = message.clone()
        self.barrier.wait()
        received = {j: self.board[(j, iteration)] for j in receive_from}
        self.barrier.wait()  # everyone has read this iteration before anything is dropped
        self.board.pop((self.rank, iteration - 1), None)
        self.counters.count_sent(len(send_to), message)
        return received


def lockstep(
    plan: MixingPlan,
    params: list[torch.Tensor],
    iterations: range,
    step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    states: list[dict[str, Any]] | None = None,
    rule: type[MixingRule] = PushSum,
) -> tuple[list[MixingRule], list[list[torch.Tensor]]]:
    """Synchronous mixing of `params` (in place) over `iterations`, each learner in a thread;
    `states` are rule states to start from (a resume). The rules, and every learner's parameters
    after each mix."""
    n = plan.n_learners
    board: dict = {}
    barrier = threading.Barrier(n)
    rules = []
    for r in range(n):
        layout = message_layout(plan, params[r].numel(), params[r].dtype, 0)
        counters = CommCounters()
        rules.append(rule(plan, r, layout, LockstepTransport(board, barrier, r, counters), counters))
        if states is not None:
            rules[r].load_state_dict(states[r])
    trace: list[list[torch.Tensor]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def learner(r: int) -> None:
        try:
            for t in iterations:
                if step is not None:
                    params[r].add_(step(r, params[r]))
                rules[r].mix(params[r], t)
                trace[r].append(params[r].clone())
        except BaseException as error:  # reported below; the others must not wait for it
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=learner, args=(r,)) for r in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return rules, trace
