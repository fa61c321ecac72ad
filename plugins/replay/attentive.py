"""`attentive`: Attentive Experience Replay (Sun et al., AAAI 2020), adapted to segments.

At each sample call, ⌈λ·n⌉ stored segments are drawn uniformly; the current network recomputes
their features, and the n whose feature is closest to the feature of the most recent state the
learner saw (`Scorer.recent_feature()`) are kept: replay attends to experience like what the
agent meets now. A segment's feature is the *mean* over its T steps of φ′(x_t) (x_T, the bootstrap
observation, left out): the segment as a whole, not one state of it, should resemble the present.
λ anneals linearly to 1 (plain uniform), see `plugins.replay.similarity`. Without a scorer a
sample call falls back to uniform sampling and is counted (`fallbacks`).
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
    stacked_observations,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it


@dataclass(frozen=True)
class AttentiveParams(SimilarityParams):
    OWNER: ClassVar[str] = "attentive"

    distance: Literal["p-norm", "cosine"] = param(
        "p-norm", "distance between a segment's mean feature and the recent state's: p-norm or cosine (1 − cos)"
    )
    p: float = param(2.0, P_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_p_norm(self.OWNER, self.p)


class AttentiveBuffer(CandidateBuffer):
    def distances(self, slots: np.ndarray, scorer: Scorer) -> torch.Tensor:
        features = scorer.features(stacked_observations(self.segments(slots)))  # [N, T, F]
        mean = features.mean(dim=1, keepdim=True)  # [N, 1, F]
        recent = scorer.recent_feature()  # [F]; several recent states [K, F] are averaged
        query = recent.reshape(-1, recent.shape[-1]).mean(dim=0).to(mean.device).expand_as(mean)
        return distance(self.params.distance, mean, query, self.params.p)


class AttentiveReplay(ReplayStrategy):
    name = "attentive"
    description = "attentive experience replay: of λ·n uniform candidates keep the n most like the current state"
    Params = AttentiveParams
    stores_segments = True

    def make_buffer(self, params: Any, seed: int) -> AttentiveBuffer:
        return AttentiveBuffer(params, seed)


@hookimpl
def register_replay_strategies(register: Register) -> None:
    register(AttentiveReplay())
