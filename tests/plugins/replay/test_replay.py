"""Replay strategies: queue, uniform, attentive, elite (plugins/replay), on small synthetic segments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from benchbase.api.contracts import params_of
from benchbase.api.registry import load_registry
from benchbase.api.replay import ReplayMix, Segment, batch_shares
from benchbase.errors import UserError
from plugins.replay.similarity import (
    annealed_lambda,
    cosine_distance,
    distance,
    draw_candidates,
    fill_positions,
    kl_distance,
    p_norm_distance,
)

REGISTRY = load_registry()
STORING = ("queue", "uniform", "attentive", "elite")
T, D = 2, 3  # steps per segment, observation size = feature size (the fake scorer is linear)


def segment(index: int, observation=None, features=None) -> Segment:
    """Segment `index` (its task_id), constant observations and stored features φ unless given."""
    obs = torch.zeros(D) if observation is None else torch.as_tensor(observation, dtype=torch.float32)
    phi = torch.zeros(D) if features is None else torch.as_tensor(features, dtype=torch.float32)
    return Segment(
        observations=obs.expand(T + 1, D).clone(),
        actions=torch.zeros(T, dtype=torch.int64),
        rewards=torch.zeros(T),
        discounts=torch.full((T,), 0.99),
        behaviour_logits=torch.zeros(T, 2),
        behaviour_values=torch.zeros(T + 1),
        features=phi.expand(T, D).clone(),
        task_id=str(index),
    )


class FakeScorer:
    """φ′(x) = x·W (identity unless given); the recent state's feature is fixed."""

    def __init__(self, recent=None, weight=None) -> None:
        self.weight = torch.eye(D) if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.recent = torch.zeros(D) if recent is None else torch.as_tensor(recent, dtype=torch.float32)
        self.calls = 0

    def features(self, observations: torch.Tensor) -> torch.Tensor:
        assert observations.dim() == 3 and observations.shape[1] == T  # x_T left out
        self.calls += 1
        return observations @ self.weight

    def recent_feature(self) -> torch.Tensor:
        return self.recent @ self.weight


def buffer_of(name: str, seed: int = 0, **overrides):
    strategy = REGISTRY.get("replay", name)
    return strategy.make_buffer(params_of(strategy, overrides), seed)


def ids(segments) -> list[int]:
    return [int(s.task_id) for s in segments]


def ranked_elite(count: int = 40, **overrides):
    """An elite buffer holding `count` segments whose distance grows with their index (φ = 0.1·i,
    φ′ = 0), with every stored segment a candidate and λ fixed."""
    settings = {"capacity": count, "min_fill": 1, "lambda_start": 10.0, "anneal_samples": 0, **overrides}
    buffer = buffer_of("elite", **settings)
    for i in range(count):
        buffer.add(segment(i, features=[0.1 * i] * D))
    return buffer


# -- the registry and parameters ------------------------------------------------------------------


def test_registry_lists_the_four_strategies_with_their_parameters():
    assert not REGISTRY.errors, REGISTRY.errors
    rows = {row["name"]: row for row in REGISTRY.listing() if row["kind"] == "replay"}
    assert set(STORING) <= set(rows)
    parameters = {name: {p["name"]: p["default"] for p in rows[name]["parameters"]} for name in STORING}
    assert parameters["queue"] == {"capacity": None, "ratio": 1.0}  # None: its share of each batch
    assert parameters["uniform"] == {"capacity": 1000, "ratio": 1.0, "min_fill": None}
    assert parameters["attentive"]["capacity"] == 1000 and parameters["attentive"]["lambda_start"] == 6.0
    assert {"distance", "p", "anneal_samples", "min_fill"} <= set(parameters["attentive"])
    assert parameters["elite"]["selection"] == 3 and parameters["elite"]["distance"] == "p-norm"
    assert parameters["elite"]["p"] == 2.0 and parameters["elite"]["elite_insertion"] is False
    assert {"stride", "insertion_sample", "lambda_start", "anneal_samples"} <= set(parameters["elite"])
    for name in STORING:
        strategy = REGISTRY.get("replay", name)
        assert strategy.stores_segments and strategy.description
    assert REGISTRY.get("replay", "standard") is REGISTRY.get("replay", "uniform")


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("elite", {"distance": "cosin"}, "elite.distance: 'cosin' is not allowed (choose from p-norm, cosine, kl)"),
        ("attentive", {"distance": "kl"}, "attentive.distance: 'kl' is not allowed (choose from p-norm, cosine)"),
        ("elite", {"selection": "5"}, "elite.selection: 5 is above the maximum 4"),
        ("elite", {"selection": 0}, "elite.selection: 0 is below the minimum 1"),
        ("elite", {"p": "0"}, "elite.p: 0 is not allowed; the p-norm needs p > 0"),
        ("attentive", {"p": -1}, "attentive.p: -1 is not allowed; the p-norm needs p > 0"),
        ("elite", {"lambda_start": 0.5}, "elite.lambda_start: 0.5 is below the minimum 1.0"),
        ("uniform", {"capacity": 10, "min_fill": 11}, "uniform.min_fill: 11 is above the capacity 10"),
        ("elite", {"capacity": 10, "min_fill": 11}, "elite.min_fill: 11 is above the capacity 10"),
        ("queue", {"capacity": 0}, "queue.capacity: 0 is below the minimum 1"),
        ("elite", {"stride": -1}, "elite.stride: -1 is below the minimum 0"),
        ("elite", {"elite_insertion": "maybe"}, "elite.elite_insertion: expected true or false"),
    ],
)
def test_bad_parameters_give_one_line_errors(name: str, overrides: dict, message: str):
    with pytest.raises(UserError) as error:
        params_of(REGISTRY.get("replay", name), overrides)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text


def test_parameters_from_text():
    text = {"distance": "kl", "selection": "2", "stride": "3", "elite_insertion": "true", "min_fill": "none"}
    params = params_of(REGISTRY.get("replay", "elite"), text)
    resolved = (params.distance, params.selection, params.stride, params.elite_insertion, params.min_fill)
    assert resolved == ("kl", 2, 3, True, None)


# -- queue ------------------------------------------------------------------------------------------


def test_queue_uses_every_segment_exactly_once():
    queue = buffer_of("queue", capacity=4)
    assert not queue.can_sample(1)
    seen = []
    for i in range(12):
        queue.add(segment(i))
        if i % 2 == 1:
            assert queue.can_sample(2) and not queue.can_sample(3)
            seen += ids(queue.sample(2, None))
            assert not queue.can_sample(1)
    assert seen == list(range(12))
    statistics = queue.statistics()
    assert statistics == {"sampled": 12.0, "mean_usage": 1.0, "dropped": 0.0, "stored": 0.0}
    assert queue.statistics()["sampled"] == 0.0  # since the last call


def test_an_unset_queue_capacity_follows_its_batch_share():
    """vtrace's defaults (batch 16) with `-r queue` work: the queue holds its share, here all 16."""
    queue = REGISTRY.get("replay", "queue")
    (alone,) = batch_shares([("queue", params_of(queue, {}))], 16)
    assert alone.share == 16 and alone.params.capacity == 16
    halves = batch_shares([("queue", params_of(queue, {"ratio": 0.25})), ("uniform", {"ratio": 0.75})], 16)
    assert halves[0].params.capacity == 4
    explicit = batch_shares([("queue", params_of(queue, {"capacity": 9}))], 8)
    assert explicit[0].params.capacity == 9
    with pytest.raises(UserError, match="smaller than its batch share of 16"):
        batch_shares([("queue", params_of(queue, {"capacity": 2}))], 16)


def test_full_queue_drops_the_oldest_and_counts_it():
    queue = buffer_of("queue", capacity=1)
    for i in range(5):
        queue.add(segment(i))
        assert len(queue) == 1
    assert ids(queue.sample(1, None)) == [4]
    assert queue.statistics()["dropped"] == 4.0
    with pytest.raises(ValueError):
        queue.sample(1, None)


# -- uniform ----------------------------------------------------------------------------------------


def test_uniform_fill_threshold():
    buffer = buffer_of("uniform", capacity=100)  # max(0.2·100, 10·n)
    for i in range(49):
        buffer.add(segment(i))
    assert buffer.can_sample(2) and not buffer.can_sample(5)  # 20 vs 50
    buffer.add(segment(49))
    assert buffer.can_sample(5) and not buffer.can_sample(6)
    small = buffer_of("uniform", capacity=8)  # capped at capacity
    for i in range(8):
        assert not small.can_sample(4)
        small.add(segment(i))
    assert small.can_sample(4)
    chosen = buffer_of("uniform", capacity=8, min_fill=3)
    for i in range(3):
        assert not chosen.can_sample(4)
        chosen.add(segment(i))
    assert chosen.can_sample(4) and len(chosen.sample(4, None)) == 4  # with replacement


def test_uniform_samples_uniformly():
    buffer = buffer_of("uniform", seed=3, capacity=20)
    for i in range(30):  # the first 10 are overwritten
        buffer.add(segment(i))
    counts = np.zeros(30, dtype=int)
    for _ in range(1000):
        for i in ids(buffer.sample(8, None)):
            counts[i] += 1
    assert counts[:10].sum() == 0
    result = scipy_stats.chisquare(counts[10:])
    assert result.pvalue > 0.01, counts
    statistics = buffer.statistics()
    assert statistics["sampled"] == 8000 and statistics["stored"] == 20
    assert statistics["mean_usage"] > 100  # every segment is drawn about 400 times


# -- distances --------------------------------------------------------------------------------------


def test_p_norm_distance():
    new = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    old = torch.zeros(1, 2, 2)
    assert p_norm_distance(new, old).item() == pytest.approx(5.0)
    assert p_norm_distance(new, old, p=1).item() == pytest.approx(7.0)
    assert p_norm_distance(new, old, p=3).item() == pytest.approx((27 + 64) ** (1 / 3))
    assert p_norm_distance(old, old).item() == 0.0


def test_cosine_distance():
    old = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])
    new = torch.tensor([[[5.0, 0.0]], [[0.0, 2.0]], [[-1.0, 0.0]], [[1.0, 0.0]]])
    np.testing.assert_allclose(cosine_distance(new, old).numpy(), [0.0, 1.0, 2.0, 1 - 1 / math.sqrt(2)], atol=1e-6)
    two_steps = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    along_x = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert cosine_distance(two_steps, along_x).item() == pytest.approx(0.5)  # mean over steps
    assert cosine_distance(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)).isfinite().all()


def test_kl_distance():
    new = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
    old = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    softmax = lambda x: np.exp(x) / np.exp(x).sum()  # noqa: E731
    expected = sum(scipy_stats.entropy(softmax(new[0, t].numpy()), softmax(old[0, t].numpy())) for t in range(2))
    assert kl_distance(new, old).item() == pytest.approx(expected, rel=1e-5)
    assert kl_distance(old, old).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_distance(old + 5.0, old).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores shifts
    with pytest.raises(ValueError):
        distance("cosin", new, old)


def test_cosine_prefers_similar_segments():
    """Segment 0: φ parallel to φ′ but ten times longer; segment 1: φ orthogonal to φ′ and close in
    norm. Cosine distance ranks the parallel one first (raw similarity, the seed's bug, would not);
    the p-norm ranks the other first."""
    chosen = {}
    for metric in ("cosine", "p-norm"):
        buffer = buffer_of(
            "elite", capacity=2, min_fill=1, lambda_start=2.0, anneal_samples=0, selection=1, distance=metric
        )
        buffer.add(segment(0, observation=[1.0, 0.0, 0.0], features=[10.0, 0.0, 0.0]))
        buffer.add(segment(1, observation=[1.0, 0.0, 0.0], features=[0.0, 1.0, 0.0]))
        chosen[metric] = ids(buffer.sample(1, FakeScorer()))
    assert chosen == {"cosine": [0], "p-norm": [1]}


# -- elite selections -----------------------------------------------------------------------------


def test_elite_selection_1_returns_the_smallest_distances():
    buffer = ranked_elite(selection=1)
    scorer = FakeScorer()
    for _ in range(3):  # usage does not matter to selection 1
        assert sorted(ids(buffer.sample(4, scorer))) == [0, 1, 2, 3]
    statistics = buffer.statistics()
    expected = np.mean([math.sqrt(T * D) * 0.1 * i for i in range(4)])
    assert statistics["mean_distance"] == pytest.approx(expected)
    assert statistics["mean_usage"] == pytest.approx(2.0)  # uses 1, 2 and 3
    assert statistics["lambda"] == 10.0 and statistics["fallbacks"] == 0.0


def test_elite_selection_1_from_a_random_candidate_set():
    buffer = buffer_of("elite", seed=5, capacity=100, min_fill=1, lambda_start=3.0, anneal_samples=0, selection=1)
    for i in range(100):
        buffer.add(segment(i, features=[0.01 * i] * D))
    drawn = draw_candidates(np.random.default_rng(5), 100, 5, 3.0)  # the buffer's first draw
    assert len(set(drawn.tolist())) == 15
    assert sorted(ids(buffer.sample(5, FakeScorer()))) == sorted(drawn.tolist())[:5]


def test_elite_selection_3_prefers_the_least_used():
    buffer = ranked_elite()  # selection 3 is the default
    scorer = FakeScorer()
    batches = [sorted(ids(buffer.sample(4, scorer))) for _ in range(10)]
    assert batches == [list(range(4 * k, 4 * k + 4)) for k in range(10)]  # each level of use in rank order
    assert (buffer.usage == 1).all()
    assert sorted(ids(buffer.sample(4, scorer))) == [0, 1, 2, 3]  # all used once: the ranking again
    # Lowest level present first: with 0-3 used twice and the rest once, 4-7 come next.
    assert sorted(ids(buffer.sample(4, scorer))) == [4, 5, 6, 7]


def test_elite_selection_2_takes_every_kth_of_the_ranking():
    scorer = FakeScorer()
    automatic = ranked_elite(selection=2)  # k = 40 candidates / 4 = 10
    assert ids(automatic.sample(4, scorer)) == [0, 10, 20, 30]
    fixed = ranked_elite(selection=2, stride=3)
    assert ids(fixed.sample(4, scorer)) == [0, 3, 6, 9]
    wide = ranked_elite(selection=2, stride=25)  # 0 and 25, then the best unchosen
    assert ids(wide.sample(4, scorer)) == [0, 25, 1, 2]
    few = ranked_elite(count=3, selection=2, stride=0)  # 3 candidates for 4: k guarded to 1, one repeats
    assert ids(few.sample(4, scorer)) == [0, 1, 2, 0]


def test_elite_selection_4_takes_the_least_used_of_each_block():
    scorer = FakeScorer()
    buffer = ranked_elite(selection=4)  # blocks of 10 ranks
    assert ids(buffer.sample(4, scorer)) == [0, 10, 20, 30]  # ties: the smaller distance
    assert ids(buffer.sample(4, scorer)) == [1, 11, 21, 31]
    buffer.usage[:] = 0
    buffer.usage[np.arange(40) % 10 < 5] = 3  # ranks 0-4 of each block used 3 times
    buffer.usage[[17, 18]] = 0
    buffer.usage[15] = 1
    assert ids(buffer.sample(4, scorer)) == [5, 16, 25, 35]
    small = ranked_elite(selection=4, stride=2)
    assert ids(small.sample(4, scorer)) == [0, 2, 4, 6]


def test_chosen_segments_usage_counts_increase():
    buffer = ranked_elite(selection=1)
    buffer.sample(4, FakeScorer())
    assert buffer.usage[:4].tolist() == [1, 1, 1, 1] and buffer.usage[4:].sum() == 0


def test_fill_positions():
    assert fill_positions([3, 1], 5, 4).tolist() == [3, 1, 0, 2]
    assert fill_positions([1], 2, 5).tolist() == [1, 0, 0, 1, 0]
    assert fill_positions([], 0, 0).tolist() == []


# -- attentive --------------------------------------------------------------------------------------


def test_attentive_picks_the_segments_closest_to_the_recent_state():
    buffer = buffer_of("attentive", capacity=30, min_fill=1, lambda_start=10.0, anneal_samples=0)
    for i in range(30):
        buffer.add(segment(i, observation=[float(i), 0.0, 1.0]))
    scorer = FakeScorer(recent=[12.2, 0.0, 1.0])
    assert sorted(ids(buffer.sample(3, scorer))) == [11, 12, 13]
    assert buffer.statistics()["mean_distance"] == pytest.approx((1.2 + 0.2 + 0.8) / 3)
    cosine = buffer_of("attentive", capacity=3, min_fill=1, lambda_start=3.0, anneal_samples=0, distance="cosine")
    for i, direction in enumerate(([1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0])):
        cosine.add(segment(i, observation=direction))
    assert ids(cosine.sample(1, FakeScorer(recent=[0.0, 1.0, 0.0]))) == [1]


def test_attentive_feature_is_the_mean_over_steps():
    buffer = buffer_of("attentive", capacity=2, min_fill=1, lambda_start=2.0, anneal_samples=0)
    moving = segment(0)
    moving.observations = torch.tensor([[0.0] * D, [2.0] * D, [100.0] * D])  # mean of x_0, x_1 is 1; x_T ignored
    buffer.add(moving)
    buffer.add(segment(1, observation=[1.5] * D))
    assert ids(buffer.sample(1, FakeScorer(recent=[1.0] * D))) == [0]


@pytest.mark.parametrize("name", ["attentive", "elite"])
def test_without_a_scorer_similarity_strategies_fall_back_to_uniform(name: str):
    buffer = buffer_of(name, capacity=10, min_fill=1)
    for i in range(10):
        buffer.add(segment(i))
    assert len(buffer.sample(4, None)) == 4
    assert len(buffer.sample(4, None)) == 4
    statistics = buffer.statistics()
    assert statistics["fallbacks"] == 2.0 and statistics["sampled"] == 8.0
    assert buffer.statistics()["fallbacks"] == 0.0


# -- λ annealing ------------------------------------------------------------------------------------


def test_lambda_anneals_linearly_to_one():
    assert [annealed_lambda(6.0, 10, calls) for calls in (0, 5, 10, 11, 1000)] == [6.0, 3.5, 1.0, 1.0, 1.0]
    assert annealed_lambda(6.0, 0, 1000) == 6.0  # 0: no annealing


@pytest.mark.parametrize("name", ["attentive", "elite"])
def test_lambda_annealing_reaches_plain_uniform_sampling(name: str):
    """Segment 0 is by far the most similar (φ′ = φ, and closest to the recent state): chosen
    whenever it is a candidate while λ > 1, drawn as often as any other once λ = 1."""
    overrides = {"capacity": 30, "min_fill": 1, "lambda_start": 6.0, "anneal_samples": 50}
    if name == "elite":
        overrides["selection"] = 1
    buffer = buffer_of(name, seed=1, **overrides)
    for i in range(30):
        buffer.add(segment(i, observation=[float(i)] * D, features=[0.0 if i == 0 else 50.0] * D))
    scorer = FakeScorer(recent=[0.0] * D)
    lambdas, early = [], np.zeros(30, dtype=int)
    for _ in range(50):
        lambdas.append(buffer.statistics()["lambda"])
        for i in ids(buffer.sample(2, scorer)):
            early[i] += 1
    assert lambdas[0] == 6.0 and lambdas[1] == pytest.approx(5.9) and lambdas[25] == pytest.approx(3.5)
    assert buffer.statistics()["lambda"] == 1.0
    assert early[0] > 3 * 50 * 2 / 30  # favoured while λ > 1: over three times its uniform share
    scored = scorer.calls
    late = np.zeros(30, dtype=int)
    for _ in range(3000):
        for i in ids(buffer.sample(2, scorer)):
            late[i] += 1
    assert scorer.calls == scored  # plain uniform: no features computed
    assert scipy_stats.chisquare(late).pvalue > 0.01, late
    assert buffer.statistics()["lambda"] == 1.0


# -- every strategy: bounded, deterministic, correct while filling -------------------------------


@pytest.mark.parametrize("name", STORING)
def test_capacity_is_never_exceeded(name: str):
    overrides = {"capacity": 7} | ({} if name == "queue" else {"min_fill": 2})
    variants = [overrides] + ([overrides | {"elite_insertion": True, "insertion_sample": 3}] if name == "elite" else [])
    for settings in variants:
        buffer = buffer_of(name, **settings)
        scorer = FakeScorer()
        for i in range(40):
            buffer.add(segment(i, observation=[float(i % 5)] * D))
            assert len(buffer) <= 7
            if buffer.can_sample(2):
                batch = buffer.sample(2, scorer)
                assert len(batch) == 2
        assert len(buffer) <= 7
        if name != "queue":
            stored = [s for s in buffer.slots if s is not None]
            assert len(stored) == 7 and len({s.task_id for s in stored}) == 7
            assert int(max(ids(stored))) == 39  # the newest is kept


@pytest.mark.parametrize("name", STORING)
def test_same_seed_same_samples(name: str):
    def run(seed: int) -> list[list[int]]:
        buffer = buffer_of(name, seed=seed, **({"capacity": 3} if name == "queue" else {"capacity": 20, "min_fill": 4}))
        scorer = FakeScorer(recent=[1.0, 2.0, 3.0])
        drawn = []
        for i in range(60):
            buffer.add(segment(i, observation=[float(i % 7), 1.0, 0.0], features=[float(i % 5)] * D))
            if buffer.can_sample(3):
                drawn.append(ids(buffer.sample(3, scorer)))
        return drawn

    first = run(11)
    assert first and first == run(11)
    if name != "queue":
        assert first != run(12)


def test_elite_insertion_overwrites_the_most_used():
    buffer = buffer_of("elite", seed=0, capacity=5, min_fill=1, elite_insertion=True, insertion_sample=5)
    for i in range(5):
        buffer.add(segment(i))
    buffer.usage[:] = [1, 4, 2, 4, 0]  # slots 1 and 3 most used; 1 is older
    buffer.add(segment(5))
    assert ids(buffer.slots) == [0, 5, 2, 3, 4]
    assert buffer.usage[1] == 0
    buffer.add(segment(6))
    assert ids(buffer.slots) == [0, 5, 2, 6, 4]
    plain = buffer_of("elite", capacity=5, min_fill=1)
    for i in range(7):
        plain.add(segment(i))
    assert ids(plain.slots) == [5, 6, 2, 3, 4]  # without elite insertion: the oldest


def test_a_mix_of_queue_and_elite():
    parts = [
        (name, params_of(REGISTRY.get("replay", name), overrides))
        for name, overrides in (("queue", {"ratio": 0.5, "capacity": 2}), ("elite", {"ratio": 0.5, "capacity": 50}))
    ]
    buffers = [REGISTRY.get("replay", name).make_buffer(params, 0) for name, params in parts]
    mix = ReplayMix(batch_shares(parts, 4), buffers)
    scorer = FakeScorer()
    batches = 0
    for i in range(40):
        mix.add(segment(i, features=[float(i)] * D))
        if i % 2 == 1 and mix.can_sample():
            batch, taken = mix.sample(scorer)
            assert taken == {"queue": 2, "elite": 2} and ids(batch)[:2] == [i - 1, i]
            batches += 1
    assert batches == 11  # elite waits for max(0.2·50, 10·2) = 20 segments: from i = 19 on
    statistics = mix.statistics()
    assert statistics["replay_queue_sampled"] == 22 and statistics["replay_elite_sampled"] == 22
    assert statistics["replay_elite_lambda"] < 6.0
