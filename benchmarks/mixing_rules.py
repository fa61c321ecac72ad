"""The figures behind docs/mixing.md, in one process (`gossip_sim`): which bounded-staleness rule
keeps the network average, and what the push-sum weight floor costs in lock-step consensus.

    .venv/bin/python benchmarks/mixing_rules.py

It reuses the test suite's single-process simulator and star set-ups (tests/comm).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "comm")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from dist_helpers import initial_vector  # noqa: E402
from gossip_sim import simulate  # noqa: E402
from test_mixing_faults import Star, gossip_star, star  # noqa: E402

from benchbase.api.contracts import params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from benchbase.comm.mixing_plan import MixingPlan, build_mixing_plan  # noqa: E402
from benchbase.comm.rules import BoundedStalenessDiffusion, MixingRule  # noqa: E402


class FreshOnlyDiffusion(BoundedStalenessDiffusion):
    """The candidate not taken: each neighbour message mixed at most once; a neighbour with
    nothing new gives its weight to the learner itself."""

    def mix(self, params: torch.Tensor, iteration: int) -> None:
        used = self.__dict__.setdefault("_used", {})
        phase = self.phases[self.plan.phase(iteration)]
        own_weight = phase.own
        self.transport.publish(params, iteration, [i for i, _ in phase.outgoing])
        incoming = []
        for j, weight in phase.incoming:
            newest = self.transport.newest(j, iteration - self.staleness)
            if newest is None or used.get(j) == newest[1]:
                own_weight += weight
                continue
            used[j] = newest[1]
            incoming.append((newest[0], weight))
        params.mul_(own_weight)
        for message, weight in incoming:
            params.add_(message, alpha=weight)


def stale_star_drift() -> None:
    """4 learners on a star, hub 4× slower, K = 3, Metropolis weights, no gradients, 60 iterations."""
    plan = star(4, weights="metropolis")
    initial = [initial_vector(r, 64) for r in range(4)]
    average = torch.stack(initial).double().mean(dim=0)
    rules: dict[str, type[MixingRule] | None] = {
        "newest message (before)": BoundedStalenessDiffusion,
        "fresh messages only": FreshOnlyDiffusion,
        "running sums (chosen)": None,
    }
    print("stale diffusion, star of 4, hub 4x slower, K = 3, 60 iterations: max |mean θ − mean θ(0)|")
    for label, rule in rules.items():
        run = simulate(plan, initial, 60, 3, [4, 1, 1, 1], rule=rule)
        drift = float((torch.stack(run.params).double().mean(dim=0) - average).abs().max())
        print(f"  {label:26s} {drift:.3g}")


def lockstep_consensus_iterations(plan: MixingPlan, floor: float, iterations: int = 5000) -> int:
    """Synchronous push-sum with the floor rule: iterations until every learner is within 1e-6
    of the average of random starting vectors (float64, weights as `spare_share` gives them)."""
    n = plan.n_learners
    x = np.random.default_rng(0).normal(size=(n, 3))
    w = np.ones(n)
    target = x.mean(axis=0)
    for t in range(iterations):
        a = plan.weights[plan.phase(t)].copy()
        for j in range(n):
            share = 1.0 - a[j, j]
            given = share if w[j] * (1 - share) >= floor else max(0.0, min(share, 1 - floor / w[j]))
            if share > 0:
                a[:, j] *= given / share
                a[j, j] = 1.0 - given
        x, w = a @ x, a @ w
        if np.abs(x / w[:, None] - target).max() < 1e-6:
            return t + 1
    return -1


def floor_cost() -> None:
    registry = load_registry(only={"plugins.topologies.builtin"}, blocked=set())

    def builtin(name: str, n: int, num_peers: int | None = None) -> MixingPlan:
        topology = registry.get("topology", name)
        return build_mixing_plan(topology, params_of(topology, {}), n, 0, num_peers)

    plans = {
        "directed-ring 8": builtin("directed-ring", 8),
        "exponential 16, 1 peer": builtin("exponential", 16, 1),
        "random 8, 1 peer": builtin("random", 8, 1),
        "star 5, 1 peer": gossip_star(5),
        "star 16, 1 peer": build_mixing_plan(Star(), params_of(Star(), {}), 16, 0, num_peers=1),
    }
    floors = (0.0, 0.01, 0.1, 0.25)
    print("lock-step push-sum: iterations to agree within 1e-6, by weight floor " + " ".join(map(str, floors)))
    for label, plan in plans.items():
        print(f"  {label:24s}", [lockstep_consensus_iterations(plan, floor) for floor in floors])


if __name__ == "__main__":
    stale_star_drift()
    floor_cost()
