"""`elite`: elite sampling (the IMPALA platform seed): replay the least off-policy segments.

Each stored segment keeps φ, the behaviour network's last-hidden-layer features of its steps. At a
sample call ⌈λ·n⌉ candidates are drawn uniformly, the current network recomputes φ′ on the same
observations, and the candidates are ranked by distance(φ′, φ): a small distance means the policy
has moved little since the segment was collected ("elite"). Distances:

- ``p-norm``: ‖φ′ − φ‖_p over all steps and features (the seed's ``ln_norm``; p = 2 by default);
- ``cosine``: mean over steps of 1 − cos(φ′_t, φ_t). The seed sorted the raw cosine *similarity*
  ascending, so it preferred the most dissimilar segments, the opposite of its intent: a bug;
  here the distance is ranked, so similar segments come first;
- ``kl``: Σ_t KL(softmax φ′_t ‖ softmax φ_t).

Selection over the ranked unique candidates (n segments chosen in every case; if a rule yields
fewer, the unchosen follow in rank order):

1. the n smallest distances;
2. every k-th of the ranking (stratified by rank); k = `stride`, or with stride 0 the candidates
   per segment ⌊candidates / n⌋ (guarded to at least 1), so the strata span the whole ranking;
3. (default) least-used first: the candidates of the lowest usage count present in rank order,
   then the next count, … (the seed says "usage count 1 first"; counts here start at 0 for a
   segment never sampled, so "the lowest level present" is the same rule);
4. blocks of k consecutive ranks (k as in 2), the first n blocks, and from each the least-used
   candidate (ties go to the smaller distance).

Chosen segments' usage counts increase. λ anneals to 1 (plain uniform: every candidate is kept
and nothing is scored), see `plugins.replay.similarity`. Without a scorer a sample call falls
back to uniform sampling and is counted (`fallbacks`).

Elite insertion (optional): once the buffer is full, a new segment overwrites the most stale of
`insertion_sample` stored segments drawn uniformly, instead of the oldest. With no network at
hand when a segment arrives, *stale* is judged by use: the segment sampled most often (the one
the learner has drawn the most from), ties going to the oldest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from benchbase import Register, ReplayStrategy, Scorer, hookimpl, lazy_import, param
from plugins.replay.similarity import (
    P_HELP,
    CandidateBuffer,
    SimilarityParams,
    check_p_norm,
    distance,
    fill_positions,
    stacked_observations,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass(frozen=True)
class EliteParams(SimilarityParams):
    OWNER: ClassVar[str] = "elite"

    distance: Literal["p-norm", "cosine", "kl"] = param(
        "p-norm",
        "distance between stored features φ and recomputed φ′: p-norm of φ′−φ, cosine (1 − cos, "
        "mean over steps) or kl (Σ_t KL(softmax φ′_t ‖ softmax φ_t))",
    )
    p: float = param(2.0, P_HELP)
    selection: int = param(
        3,
        "1 = n smallest distances; 2 = every k-th of the ranking; 3 = least-used first, in rank "
        "order; 4 = the least-used of each block of k ranks",
        min=1,
        max=4,
    )
    stride: int = param(0, "k of selections 2 and 4; 0 = ⌊candidates / n⌋ (the candidates per sampled segment)", min=0)
    elite_insertion: bool = param(
        False, "once full, overwrite the most used (then oldest) of a random sample instead of the oldest"
    )
    insertion_sample: int = param(20, "stored segments drawn to choose the one to overwrite (elite insertion)", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_p_norm(self.OWNER, self.p)


class EliteBuffer(CandidateBuffer):
    def distances(self, slots: np.ndarray, scorer: Scorer) -> torch.Tensor:
        segments = self.segments(slots)
        recomputed = scorer.features(stacked_observations(segments))  # [N, T, F]
        stored = torch.stack([segment.features for segment in segments])
        return distance(self.params.distance, recomputed, stored, self.params.p)

    def _stride(self, ranked: int, count: int) -> int:
        return self.params.stride or max(1, ranked // max(count, 1))

    def select(self, ranked: np.ndarray, distances: np.ndarray, count: int) -> np.ndarray:
        total = len(ranked)
        selection = self.params.selection
        if selection == 1:
            chosen = list(range(min(count, total)))
        elif selection == 2:
            chosen = list(range(0, total, self._stride(total, count)))[:count]
        elif selection == 3:
            usage = self.usage[ranked]
            chosen = np.lexsort((np.arange(total), usage))[:count].tolist()
        elif selection == 4:
            k = self._stride(total, count)
            usage = self.usage[ranked]
            chosen = [start + int(np.argmin(usage[start : start + k])) for start in range(0, total, k)][:count]
        else:  # resolved params never get here (min=1, max=4)
            raise ValueError(f"unknown elite selection {selection}")
        return fill_positions(chosen, total, count)

    def _victim(self) -> int:
        if not self.params.elite_insertion:
            return super()._victim()
        drawn = self.rng.choice(self.capacity, size=min(self.params.insertion_sample, self.capacity), replace=False)
        # Most used first, ties to the oldest (smallest insertion number).
        return int(drawn[np.lexsort((self.inserted[drawn], -self.usage[drawn]))[0]])


class EliteReplay(ReplayStrategy):
    name = "elite"
    description = "elite sampling: of λ·n uniform candidates keep those least off-policy by feature distance"
    Params = EliteParams
    stores_segments = True

    def make_buffer(self, params: Any, seed: int) -> EliteBuffer:
        return EliteBuffer(params, seed)


@hookimpl
def register_replay_strategies(register: Register) -> None:
    register(EliteReplay())
