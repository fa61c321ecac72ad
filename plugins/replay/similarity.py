"""What the similarity-based strategies (`attentive`, `elite`) share.

Both draw a candidate set of ⌈λ·n⌉ stored segments uniformly, score the candidates with the
learner's current network (a `Scorer`), rank them by distance and keep n. λ anneals linearly from
`lambda_start` to 1 over `anneal_samples` sample calls; at λ = 1 the candidate set is the batch, so
sampling is plain uniform (without replacement within a batch) and no features are computed.

The seed's example (capacity 1000, λ = 6, "annealing factor" α = 2) anneals λ by
(λ−1)/(α·S) per sample call, S being the learner's learning-rate schedule length in updates: λ
reaches 1 after α·S sample calls, so with α = 2 it is still halfway, (λ+1)/2, when training ends.
Here the horizon is given directly in sample calls (`anneal_samples` = α·S); the default 20000
matches α = 2 with a 10000-update schedule.

Candidates are drawn without replacement while the buffer holds at least ⌈λ·n⌉ segments; between
n and ⌈λ·n⌉ stored, every stored segment is a candidate; with fewer than n stored (possible only
with a `min_fill` below n) candidates are drawn with replacement and the n chosen repeat some.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from benchbase import ReplayParams, Scorer, Segment, UserError, lazy_import, param
from plugins.replay.uniform import MIN_FILL_HELP, RingBuffer, check_min_fill

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it

#: Keeps cosine similarity finite for all-zero feature vectors.
COSINE_EPS = 1e-8


# -- λ annealing and candidates ------------------------------------------------------------------


def annealed_lambda(start: float, anneal_samples: int, calls: int) -> float:
    """λ after `calls` sample calls: linear from `start` to 1 over `anneal_samples` calls, then 1.
    `anneal_samples` = 0 keeps λ at `start` (no annealing)."""
    if anneal_samples <= 0:
        return float(start)
    progress = min(calls / anneal_samples, 1.0)
    return float(start) - (float(start) - 1.0) * progress


def candidate_count(lam: float, count: int) -> int:
    """⌈λ·n⌉, never below n (a tolerance keeps 1.0000001·n from adding a candidate)."""
    return max(int(count), math.ceil(lam * count - 1e-9))


def draw_candidates(rng: np.random.Generator, stored: int, count: int, lam: float) -> np.ndarray:
    """Slots of the candidate set for a batch share of `count`, drawn uniformly from `stored`."""
    wanted = candidate_count(lam, count)
    if stored >= wanted:
        return rng.choice(stored, size=wanted, replace=False)
    if stored >= count:
        return rng.permutation(stored)
    return rng.integers(0, stored, size=wanted)


def unique_in_order(slots: np.ndarray) -> np.ndarray:
    """`slots` without repeats, each kept where it first occurs."""
    _, first = np.unique(slots, return_index=True)
    return slots[np.sort(first)]


def fill_positions(chosen: list[int], ranked: int, count: int) -> np.ndarray:
    """Positions (into a ranking of `ranked` unique candidates) of `count` segments: `chosen`,
    then the unchosen in rank order, then (fewer unique candidates than `count`) the ranking again."""
    positions = list(dict.fromkeys(chosen))[:count]
    if len(positions) < count:
        taken = set(positions)
        positions += [i for i in range(ranked) if i not in taken][: count - len(positions)]
    while len(positions) < count:
        positions += list(range(min(ranked, count - len(positions))))
    return np.asarray(positions, dtype=np.int64)


# -- distances ------------------------------------------------------------------------------------


def p_norm_distance(new: torch.Tensor, old: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """‖φ′ − φ‖_p over all of a segment's steps and features: [N, T, F] × [N, T, F] → [N]."""
    difference = (new - old).flatten(1).abs()
    return difference.pow(p).sum(dim=1).pow(1.0 / p)


def cosine_distance(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean over steps of 1 − cos(φ′_t, φ_t), in [0, 2]: 0 for parallel features. (The seed sorted
    the raw similarity ascending, which prefers *dissimilar* segments.)"""
    dot = (new * old).sum(dim=-1)
    norms = new.norm(dim=-1) * old.norm(dim=-1)
    return (1.0 - dot / norms.clamp_min(COSINE_EPS)).mean(dim=-1)


def kl_distance(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Σ_t KL(softmax φ′_t ‖ softmax φ_t) over a segment's steps: [N, T, F] × [N, T, F] → [N]."""
    log_new = torch.log_softmax(new, dim=-1)
    log_old = torch.log_softmax(old, dim=-1)
    return (log_new.exp() * (log_new - log_old)).sum(dim=-1).sum(dim=-1)


def distance(name: str, new: torch.Tensor, old: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Per-segment distance `name` (p-norm, cosine or kl) between [N, T, F] feature tensors."""
    new, old = new.double(), old.to(device=new.device).double()
    if name == "p-norm":
        return p_norm_distance(new, old, p)
    if name == "cosine":
        return cosine_distance(new, old)
    if name == "kl":
        return kl_distance(new, old)
    raise ValueError(f"unknown distance {name!r}")


def stacked_observations(segments: list[Segment]) -> torch.Tensor:
    """x_0 … x_{T−1} of each segment, [N, T, *obs] (the bootstrap observation x_T left out)."""
    return torch.stack([segment.observations[: segment.rewards.shape[0]] for segment in segments])


# -- parameters and the shared buffer -------------------------------------------------------------


@dataclass(frozen=True)
class SimilarityParams(ReplayParams):
    #: The strategy's name in messages (not a parameter).
    OWNER: ClassVar[str] = "replay"

    capacity: int = param(1000, "segments kept; once full, the oldest is overwritten", min=1)
    min_fill: int | None = param(None, MIN_FILL_HELP, min=1)
    lambda_start: float = param(
        6.0, "λ: candidates per sampled segment (⌈λ·n⌉ drawn, n kept) at the start; 1 = plain uniform", min=1.0
    )
    anneal_samples: int = param(
        20000,
        "sample calls over which λ anneals linearly to 1 (the seed's annealing factor α times its "
        "learning-rate schedule length); 0 keeps λ fixed",
        min=0,
    )

    def __post_init__(self) -> None:
        check_min_fill(self.OWNER, self)


P_HELP = "p of the p-norm distance (> 0; 2 = Euclidean)"


def check_p_norm(owner: str, p: float) -> None:
    """A UserError unless `p` (a `P_HELP` parameter) is a valid p of a p-norm."""
    if not p > 0:
        raise UserError(f"{owner}.p: {p:g} is not allowed; the p-norm needs p > 0")


class CandidateBuffer(RingBuffer):
    """A ring buffer sampled by ranking an annealed candidate set (subclasses score and select)."""

    checkpoint_attributes = (
        *RingBuffer.checkpoint_attributes,
        "_calls",
        "_fallbacks",
        "_distance_sum",
        "_distance_count",
    )

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params.capacity, seed, params.min_fill)
        self.params = params
        self._calls = 0
        self._fallbacks = 0
        self._distance_sum = 0.0
        self._distance_count = 0

    @property
    def current_lambda(self) -> float:
        """λ of the next sample call."""
        return annealed_lambda(self.params.lambda_start, self.params.anneal_samples, self._calls)

    def sample(self, count: int, scorer: Scorer | None) -> list[Segment]:
        self._check_sample(count)
        lam = self.current_lambda
        self._calls += 1
        if scorer is None:  # nothing to rank with: plain uniform, counted
            self._fallbacks += 1
            return self._record(draw_candidates(self.rng, self.size, count, 1.0))
        candidates = draw_candidates(self.rng, self.size, count, lam)
        if len(candidates) == count and self.size >= count:
            return self._record(candidates)  # λ·n = n: every candidate is kept, nothing to rank
        unique = unique_in_order(candidates)
        with torch.no_grad():
            distances = self.distances(unique, scorer).detach().to("cpu", torch.float64).numpy()
        order = np.argsort(distances, kind="stable")
        ranked, ranked_distances = unique[order], distances[order]
        positions = self.select(ranked, ranked_distances, count)
        self._distance_sum += float(ranked_distances[positions].sum())
        self._distance_count += len(positions)
        return self._record(ranked[positions])

    def distances(self, slots: np.ndarray, scorer: Scorer) -> torch.Tensor:
        """Distance of each slot's segment, [len(slots)]: smaller is preferred."""
        raise NotImplementedError

    def select(self, ranked: np.ndarray, distances: np.ndarray, count: int) -> np.ndarray:
        """Positions into the ranking (ascending distance) of the `count` segments to return."""
        return fill_positions(list(range(min(count, len(ranked)))), len(ranked), count)

    def segments(self, slots: np.ndarray) -> list[Segment]:
        return [self.slots[int(slot)] for slot in slots]  # type: ignore[misc]

    def statistics(self) -> dict[str, float]:
        """Besides the ring buffer's: the mean distance of the segments chosen by ranking (0 when
        none were ranked), λ for the next sample call, and sample calls without a scorer (which
        fell back to uniform sampling)."""
        stats = super().statistics()
        stats["mean_distance"] = self._distance_sum / self._distance_count if self._distance_count else 0.0
        stats["lambda"] = self.current_lambda
        stats["fallbacks"] = float(self._fallbacks)
        self._distance_sum, self._distance_count, self._fallbacks = 0.0, 0, 0
        return stats
