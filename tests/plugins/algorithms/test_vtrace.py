"""V-trace learner: the loss on hand batches (on-policy it is A2C's, CLEAR's terms vanish when π = μ,
LASER masks far-off steps), the learner's mechanics on the tiny fake env (both action kinds, a
queue that trains on every segment exactly once, behaviour refresh, background preparation), and
determinism.

The replay buffers here are small in-test implementations of the `SegmentBuffer` protocol (a FIFO
queue, a uniform ring buffer and one that ranks with the scorer), so these tests do not depend on
the replay strategy plugins.
"""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from bench_helpers import bench_run, cells_solving
from test_algorithms import FakeVectorEnv, actor_parameters

from benchbase.api.contracts import LearnerSpec
from benchbase.api.replay import ReplayMix, ReplayParams, Segment, batch_shares
from plugins.algorithms.common.distributions import kl_divergence
from plugins.algorithms.vtrace import VTraceLearner, VTraceParams, vtrace_losses

# -- test buffers -------------------------------------------------------------------------------


class QueueBuffer:
    """FIFO of `capacity` segments; sampling removes them (each segment is used at most once)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Segment] = []
        self.dropped = 0

    def add(self, segment: Segment) -> None:
        self.items.append(segment)
        if len(self.items) > self.capacity:
            self.items.pop(0)
            self.dropped += 1

    def can_sample(self, count: int) -> bool:
        return len(self.items) >= count

    def sample(self, count, scorer):
        taken, self.items = self.items[:count], self.items[count:]
        return taken

    def statistics(self):
        return {"size": float(len(self.items))}


class UniformBuffer:
    """Ring buffer sampled uniformly with replacement once `threshold` segments are stored."""

    def __init__(self, capacity: int, threshold: int, seed: int) -> None:
        self.capacity = capacity
        self.threshold = threshold
        self.items: list[Segment] = []
        self.next = 0
        self.rng = np.random.default_rng(seed)

    def add(self, segment: Segment) -> None:
        if len(self.items) < self.capacity:
            self.items.append(segment)
        else:
            self.items[self.next] = segment
        self.next = (self.next + 1) % self.capacity

    def can_sample(self, count: int) -> bool:
        return len(self.items) >= max(count, self.threshold)

    def sample(self, count, scorer):
        return [self.items[i] for i in self.rng.integers(len(self.items), size=count)]

    def statistics(self):
        return {"size": float(len(self.items))}


class NearestBuffer(UniformBuffer):
    """Like attentive replay: of 3·count uniform candidates keep the `count` whose features under
    the scorer are nearest to `scorer.recent_feature()` (so the scorer decides the batch)."""

    def sample(self, count, scorer):
        candidates = super().sample(3 * count, scorer)
        observations = torch.stack([s.observations[:-1] for s in candidates])
        features = scorer.features(observations)  # [N, T, F]
        assert features.shape[:2] == observations.shape[:2]
        distance = (features - scorer.recent_feature()).norm(dim=-1).mean(-1)
        self.last_distance = float(distance.min())
        return [candidates[i] for i in torch.argsort(distance, stable=True)[:count].tolist()]

    def statistics(self):
        return {"size": float(len(self.items)), "distance": getattr(self, "last_distance", 0.0)}


def mix_of(batch: int, *parts: tuple[str, object]) -> ReplayMix:
    """Equal shares of a batch of `batch` segments for each buffer."""
    share = batch // len(parts)
    specs = [(name, ReplayParams(capacity=buffer.capacity, ratio=1 / len(parts))) for name, buffer in parts]
    mix = batch_shares(specs, batch)
    assert all(part.share == share for part in mix)
    return ReplayMix(mix, [buffer for _, buffer in parts])


SETTINGS = dict(
    unroll_length=4,
    batch_size=2,
    gamma=0.9,
    hidden=8,
    normaliser="off",
    normalise_rewards=False,
    background_preparation=False,
)


def make_learner(
    continuous: bool = False,
    seed: int = 3,
    mix: ReplayMix | None = None,
    budget: int = 0,
    num_envs: int = 2,
    **overrides,
) -> VTraceLearner:
    settings = dict(SETTINGS)
    settings.update(overrides)
    params = VTraceParams(**settings)
    if mix is None:
        mix = mix_of(params.batch_size, ("queue", QueueBuffer(params.batch_size)))
    env = FakeVectorEnv(continuous, num_envs=num_envs)
    spec = LearnerSpec(env, 0, 1, seed, torch.device("cpu"), replay=mix, env_steps_budget=budget)
    return VTraceLearner(params, spec)


# -- the loss on hand batches ---------------------------------------------------------------------

T, B, A = 5, 3, 2


def hand_batch(seed: int = 0, continuous: bool = False):
    g = torch.Generator().manual_seed(seed)
    actor_out = torch.randn(T, B, A, generator=g, dtype=torch.float64)
    values = torch.randn(T + 1, B, generator=g, dtype=torch.float64)
    rewards = torch.randn(T, B, generator=g, dtype=torch.float64)
    discounts = 0.9 * (torch.rand(T, B, generator=g) > 0.25).double()
    if continuous:
        actions = torch.randn(T, B, A, generator=g, dtype=torch.float64)
        log_std = torch.tensor([0.1, -0.3], dtype=torch.float64)
    else:
        actions = torch.randint(A, (T, B), generator=g)
        log_std = None
    return actor_out, log_std, values, actions, rewards, discounts


def params(**overrides) -> VTraceParams:
    base = dict(clear_policy_cloning=False, clear_value_cloning=False, laser=False, entropy_coef=0.01, value_coef=0.5)
    base.update(overrides)
    return VTraceParams(**base)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_on_policy_loss_is_a2c_with_n_step_returns(continuous):
    actor_out, log_std, values, actions, rewards, discounts = hand_batch(continuous=continuous)
    actor_out.requires_grad_()
    values.requires_grad_()
    behaviour_log_std = None if log_std is None else log_std.expand(B, A)
    losses = vtrace_losses(
        actor_out,
        log_std,
        values,
        actions,
        rewards,
        discounts,
        actor_out.detach().clone(),
        behaviour_log_std,
        values.detach().clone(),
        params(),
    )

    # A2C by hand, with torch.distributions: R_t = r_t + γ_t R_{t+1}, R_T = V(x_T).
    returns = torch.empty(T, B, dtype=torch.float64)
    running = values[-1].detach()
    for t in reversed(range(T)):
        running = rewards[t] + discounts[t] * running
        returns[t] = running
    advantages = returns - values[:-1]
    if continuous:
        dist = torch.distributions.Normal(actor_out, log_std.exp().expand_as(actor_out))
        log_prob, entropy = dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
    else:
        dist = torch.distributions.Categorical(logits=actor_out)
        log_prob, entropy = dist.log_prob(actions), dist.entropy()
    policy_loss = -(advantages.detach() * log_prob).mean()
    value_loss = advantages.pow(2).mean()
    expected = policy_loss + 0.5 * value_loss - 0.01 * entropy.mean()

    torch.testing.assert_close(losses.policy_loss, policy_loss)
    torch.testing.assert_close(losses.value_loss, value_loss)
    torch.testing.assert_close(losses.entropy, entropy.mean())
    torch.testing.assert_close(losses.loss, expected)
    assert losses.importance_ratio == pytest.approx(1.0)
    assert losses.clipped_rho_fraction == 0.0 and losses.clipped_c_fraction == 0.0
    assert losses.laser_mask_rate == 0.0
    # The gradients match too (the targets carry none).
    grads = torch.autograd.grad(losses.loss, [actor_out, values])
    expected_grads = torch.autograd.grad(expected, [actor_out, values])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_sum_reduction_is_mean_times_steps():
    actor_out, log_std, values, actions, rewards, discounts = hand_batch(seed=2)
    behaviour = actor_out + 0.3
    mean = vtrace_losses(
        actor_out,
        None,
        values,
        actions,
        rewards,
        discounts,
        behaviour,
        None,
        values + 0.1,
        params(clear_policy_cloning=True, clear_value_cloning=True, laser=True),
    )
    summed = vtrace_losses(
        actor_out,
        None,
        values,
        actions,
        rewards,
        discounts,
        behaviour,
        None,
        values + 0.1,
        params(clear_policy_cloning=True, clear_value_cloning=True, laser=True, reduction="sum"),
    )
    torch.testing.assert_close(summed.loss, mean.loss * T * B)
    torch.testing.assert_close(summed.policy_cloning, mean.policy_cloning * T * B)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_clear_terms_vanish_when_pi_is_mu_and_toggle(continuous):
    actor_out, log_std, values, actions, rewards, discounts = hand_batch(seed=1, continuous=continuous)
    behaviour_log_std = None if log_std is None else log_std.expand(B, A)
    on = params(clear_policy_cloning=True, clear_value_cloning=True)
    same = vtrace_losses(
        actor_out,
        log_std,
        values,
        actions,
        rewards,
        discounts,
        actor_out.clone(),
        behaviour_log_std,
        values.clone(),
        on,
    )
    assert same.policy_cloning.item() == pytest.approx(0.0, abs=1e-12)
    assert same.value_cloning.item() == pytest.approx(0.0, abs=1e-12)

    # π ≠ μ and V ≠ V^μ: each switch adds exactly its weighted term.
    behaviour, behaviour_values = actor_out + 0.5, values - 0.7
    if behaviour_log_std is not None:
        behaviour_log_std = behaviour_log_std + 0.2

    def total(**switches):
        return vtrace_losses(
            actor_out,
            log_std,
            values,
            actions,
            rewards,
            discounts,
            behaviour,
            behaviour_log_std,
            behaviour_values,
            params(**switches),
        )

    none, both = total(), total(clear_policy_cloning=True, clear_value_cloning=True)
    policy_only = total(clear_policy_cloning=True)
    value_only = total(clear_value_cloning=True, value_cloning_weight=0.25)
    expected_kl = kl_divergence(behaviour, behaviour_log_std, actor_out, log_std).mean()
    assert none.policy_cloning.item() == pytest.approx(expected_kl.item())
    assert none.value_cloning.item() == pytest.approx(0.49)  # (V − V^μ)² = 0.7² at every step
    assert policy_only.loss.item() == pytest.approx(none.loss.item() + 0.01 * expected_kl.item())
    assert value_only.loss.item() == pytest.approx(none.loss.item() + 0.25 * 0.49)
    assert both.loss.item() == pytest.approx(none.loss.item() + 0.01 * expected_kl.item() + 0.005 * 0.49)


def test_kl_divergence_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    p, q = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    )
    torch.testing.assert_close(kl_divergence(p, None, q, None), expected)
    p_std, q_std = torch.tensor([0.2, -0.1]), torch.randn(3, 2, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(p, p_std.exp().expand_as(p)), torch.distributions.Normal(q, q_std.exp().expand_as(q))
    ).sum(-1)
    torch.testing.assert_close(kl_divergence(p, p_std, q, q_std), expected)


def test_laser_masks_nothing_on_policy_and_far_steps_off_policy():
    actor_out, _, values, actions, rewards, discounts = hand_batch(seed=3)
    laser = params(laser=True, laser_threshold=0.3)
    same = vtrace_losses(actor_out, None, values, actions, rewards, discounts, actor_out.clone(), None, values, laser)
    assert same.laser_mask_rate == 0.0

    # μ far from π on the first two steps of every segment: exactly those are masked.
    behaviour = actor_out.clone()
    behaviour[:2, :, 0] += 10.0
    far = vtrace_losses(actor_out, None, values, actions, rewards, discounts, behaviour, None, values, laser)
    assert float(far.laser_mask_rate) == pytest.approx(2 / T)
    # Masked steps leave the policy and value terms: the same loss with the mask from the start
    # equals the losses of the unmasked steps only (and the trace is cut, so the targets of the
    # remaining steps look only at later steps, which the mask does not touch).
    unmasked = vtrace_losses(
        actor_out[2:],
        None,
        values[2:],
        actions[2:],
        rewards[2:],
        discounts[2:],
        behaviour[2:],
        None,
        values[2:],
        params(reduction="sum"),
    )
    far_sum = vtrace_losses(
        actor_out,
        None,
        values,
        actions,
        rewards,
        discounts,
        behaviour,
        None,
        values,
        params(laser=True, reduction="sum"),
    )
    torch.testing.assert_close(far_sum.policy_loss, unmasked.policy_loss)
    torch.testing.assert_close(far_sum.value_loss, unmasked.value_loss)
    # Off, nothing is masked.
    off = vtrace_losses(actor_out, None, values, actions, rewards, discounts, behaviour, None, values, params())
    assert off.laser_mask_rate == 0.0
    assert off.policy_loss.item() != pytest.approx(far.policy_loss.item())


def test_importance_ratios_are_clipped_by_their_own_thresholds():
    actor_out, _, values, actions, rewards, discounts = hand_batch(seed=4)
    behaviour = actor_out.clone()
    behaviour[..., 1] -= 3.0  # μ rarely takes action 1: where it was taken, π/μ is large
    taken_one = (actions == 1).double().mean().item()
    losses = vtrace_losses(
        actor_out, None, values, actions, rewards, discounts, behaviour, None, values, params(rho_bar=1.0, c_bar=1e9)
    )
    assert float(losses.clipped_rho_fraction) == pytest.approx(taken_one)
    assert losses.clipped_c_fraction == 0.0
    assert losses.importance_ratio > 1.0


# -- the learner on the fake env ------------------------------------------------------------------


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_iterate_updates_every_tower_and_reports_finite_metrics(continuous):
    queue, uniform = QueueBuffer(2), UniformBuffer(50, threshold=4, seed=0)
    learner = make_learner(continuous, batch_size=4, mix=mix_of(4, ("queue", queue), ("uniform", uniform)), laser=True)
    before = learner.parameters_buffer().clone()
    actor_before = [p.detach().clone() for p in actor_parameters(learner.model)]
    critic_before = [p.detach().clone() for p in learner.model.critic.parameters()]

    first = learner.iterate()  # two segments stored; uniform needs 4 before it can answer
    assert first.env_steps == 8
    assert first.metrics["updated"] == 0.0 and "loss" not in first.metrics
    assert torch.equal(learner.parameters_buffer(), before)

    output = learner.iterate()
    assert output.metrics["updated"] == 1.0 and output.metrics["updates"] == 1.0
    assert not torch.equal(learner.parameters_buffer(), before)
    assert any(not torch.equal(p, q) for p, q in zip(actor_parameters(learner.model), actor_before))
    assert any(not torch.equal(p, q) for p, q in zip(learner.model.critic.parameters(), critic_before))
    expected = {
        "loss",
        "policy_loss",
        "value_loss",
        "entropy",
        "policy_cloning_loss",
        "value_cloning_loss",
        "importance_ratio",
        "clipped_rho_fraction",
        "clipped_c_fraction",
        "laser_mask_rate",
        "grad_norm",
        "lr",
        "updated",
        "updates",
        "replay_share_queue",
        "replay_share_uniform",
        "replay_queue_size",
        "replay_uniform_size",
    }
    assert set(output.metrics) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in output.metrics.values())
    assert output.metrics["replay_share_queue"] == 0.5 and output.metrics["replay_share_uniform"] == 0.5
    if continuous:
        assert learner.model.log_std.grad.abs().sum() > 0
        assert learner.act_greedy(np.zeros((2, 3), dtype=np.float32)).shape == (2, 2)
        segment = learner.collect_segments()[0][0]
        assert segment.behaviour_log_std is not None and segment.actions.shape == (4, 2)
    else:
        assert learner.act_greedy(np.zeros((2, 3), dtype=np.float32)).shape == (2,)


def test_segments_hold_what_the_behaviour_network_computed():
    learner = make_learner(gamma=0.5)
    segments, _ = learner.collect_segments()
    assert len(segments) == 2
    behaviour = learner.behaviour
    for segment in segments:
        assert segment.observations.shape == (5, 3) and segment.features.shape == (4, 8)
        with torch.no_grad():
            torch.testing.assert_close(segment.features, behaviour.features(segment.observations[:-1]))
            torch.testing.assert_close(segment.behaviour_logits, behaviour.actor(segment.observations[:-1]))
            torch.testing.assert_close(segment.behaviour_values, behaviour.value(segment.observations))
    # Fake env: terminated after 3 steps (discount 0 at step 2); simulator 1 is also cut by a time
    # limit at global step 2 (t = 1): discount 0 there and γ·V^μ(x_final) folded into its reward.
    torch.testing.assert_close(segments[0].discounts, torch.tensor([0.5, 0.5, 0.0, 0.5]))
    torch.testing.assert_close(segments[1].discounts, torch.tensor([0.5, 0.0, 0.5, 0.5]))
    assert segments[0].rewards.tolist() == [1.0, 1.0, 1.0, 1.0]
    final = torch.tensor([[2 / 3, 0.5, 0.2]])
    with torch.no_grad():
        bonus = 0.5 * behaviour.value(final).item()
    assert segments[1].rewards[1].item() == pytest.approx(1.0 + bonus)


def _recorded(add, added: list, segment):
    """The replay mix's `add`, remembering every segment it was given."""
    added.append(segment)
    return add(segment)


def test_a_queue_trains_on_every_segment_exactly_once(monkeypatch):
    seen: list[Segment] = []  # the segments themselves: their ids stay unique while referenced
    original = VTraceLearner.update

    def recording(self, batch):
        seen.extend(batch.segments)
        return original(self, batch)

    monkeypatch.setattr(VTraceLearner, "update", recording)
    for background in (False, True):
        seen.clear()
        queue = QueueBuffer(4)
        learner = make_learner(
            batch_size=4, num_envs=4, mix=mix_of(4, ("queue", queue)), background_preparation=background
        )
        added: list[Segment] = []
        learner.replay.add = partial(_recorded, learner.replay.add, added)
        for _ in range(6):
            learner.iterate()
        learner.close()
        # Background: the last iteration's batch is still waiting in the preparer.
        trained = added if not background else added[:-4]
        assert [id(s) for s in seen] == [id(s) for s in trained] and queue.dropped == 0
        assert len({id(s) for s in seen}) == len(seen) == 4 * (6 if not background else 5)


def test_behaviour_network_lags_by_behaviour_refresh_updates():
    for refresh in (1, 3):
        learner = make_learner(behaviour_refresh=refresh, lr=0.01)
        snapshots = [learner.parameters_buffer().clone()]  # π after k updates (no mixing here)
        for k in range(7):
            learner.iterate()  # the copy happens before collecting: μ is π after ⌊k/r⌋·r updates
            expected = snapshots[(k // refresh) * refresh]
            assert torch.equal(learner.behaviour_flat.data, expected), (refresh, k)
            snapshots.append(learner.parameters_buffer().clone())
        assert not torch.equal(snapshots[0], snapshots[-1])


def test_behaviour_refresh_picks_up_mixed_parameters():
    learner = make_learner()
    learner.iterate()
    learner.parameters_buffer().mul_(0.5)  # what the core's mixing does, in place
    mixed = learner.parameters_buffer().clone()
    learner.iterate()
    assert torch.equal(learner.behaviour_flat.data, mixed)


def test_lr_decays_polynomially_to_lr_end_over_the_budget():
    learner = make_learner(lr=0.01, lr_end=0.001, budget=80)  # 8 env steps per iteration: 10 iterations
    lrs = [learner.iterate().metrics["lr"] for _ in range(11)]
    expected = [(0.01 - 0.001) * (1 - k / 10) ** 2 + 0.001 for k in range(10)] + [0.001]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    flat = make_learner(lr=0.01, budget=80, lr_decay=False)
    assert {flat.iterate().metrics["lr"] for _ in range(3)} == {0.01}


def test_learners_start_from_the_same_parameters_whatever_their_rank():
    a = make_learner(seed=5)
    env = FakeVectorEnv(False)
    spec = LearnerSpec(env, 3, 4, 5, torch.device("cpu"), replay=mix_of(2, ("queue", QueueBuffer(2))))
    b = VTraceLearner(VTraceParams(**SETTINGS), spec)
    assert torch.equal(a.parameters_buffer(), b.parameters_buffer())
    assert torch.equal(b.behaviour_flat.data, b.parameters_buffer())


def run_learner(seed: int, background: bool, continuous: bool = False, iterations: int = 6) -> torch.Tensor:
    mix = mix_of(4, ("queue", QueueBuffer(2)), ("nearest", NearestBuffer(20, threshold=4, seed=seed)))
    learner = make_learner(
        continuous,
        seed=seed,
        batch_size=4,
        mix=mix,
        background_preparation=background,
        normaliser="local",
        normalise_rewards=True,
        laser=True,
        lr=0.01,
    )
    for _ in range(iterations):
        metrics = learner.iterate().metrics
    learner.close()
    assert metrics["updated"] == 1.0
    return learner.parameters_buffer().clone()


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_same_seed_same_parameters(background):
    first = run_learner(11, background)
    assert torch.equal(first, run_learner(11, background))
    assert not torch.equal(first, run_learner(12, background))
    assert torch.equal(run_learner(11, background, continuous=True), run_learner(11, background, continuous=True))


def test_background_scorer_is_a_snapshot_taken_before_the_update(monkeypatch):
    # The preparer's scorer must not see the update that runs while it samples.
    scorers = []
    learner = make_learner(
        batch_size=2,
        mix=mix_of(2, ("nearest", NearestBuffer(20, threshold=2, seed=0))),
        background_preparation=True,
        lr=0.05,
    )
    request = learner.preparer.request

    def recording(scorer):
        obs = torch.zeros(1, 1, 3)
        scorers.append((scorer, scorer.features(obs).clone(), learner.model.features(obs).detach().clone()))
        request(scorer)

    learner.preparer.request = recording
    for _ in range(4):
        learner.iterate()
    learner.close()
    assert learner.updates == 3
    for _, at_request, live_at_request in scorers:
        torch.testing.assert_close(at_request, live_at_request)
    # After the updates the live network moved; the scorer handed out last still answers as before.
    scorer, at_request, _ = scorers[-1]
    obs = torch.zeros(1, 1, 3)
    assert not torch.equal(learner.model.features(obs).detach(), at_request)
    torch.testing.assert_close(scorer.features(obs), at_request)


def test_recent_feature_is_that_of_the_last_state_seen():
    learner = make_learner()
    segments, _ = learner.collect_segments()
    scorer = learner.scorer()
    with torch.no_grad():
        expected = learner.model.features(segments[-1].observations[-1])
    torch.testing.assert_close(scorer.recent_feature(), expected)
    features = scorer.features(torch.stack([s.observations for s in segments]))
    assert features.shape == (2, 5, 8)


def test_without_a_replay_mix_the_learner_refuses():
    spec = LearnerSpec(FakeVectorEnv(False), 0, 1, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="replay"):
        VTraceLearner(VTraceParams(**SETTINGS), spec)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_segment_bytes_is_what_a_segment_takes(continuous):
    from plugins.algorithms.vtrace import VTrace

    learner = make_learner(continuous)
    segment = learner.collect_segments()[0][0]
    env = learner.env
    assert VTrace().segment_bytes(learner.params, env.observation_space, env.action_space) == segment.nbytes()


# -- through the CLI, with the replay strategy plugins ----------------------------------------------


def test_one_vtrace_learner_with_queue_and_uniform_solves_cartpole_within_200k_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bench_run(
        out,
        "-a",
        "vtrace",
        "-t",
        "isolated",
        "-e",
        "CartPole-v1",
        "--learners",
        "1",
        "--envs-per-learner",
        "8",
        "--env-steps",
        "200000",
        "--seeds",
        "3",
        "--evaluations",
        "2",
        "--eval-episodes",
        "5",
        "--jobs",  # the three seeds' cells side by side on the two cores: the same results, sooner
        "2",
        "-r",
        "queue:capacity=8,ratio=0.5+uniform:capacity=1000,ratio=0.5",
    )
    solved, final_returns = cells_solving(out, 475, max_env_steps=200_000 + 8 * 20)
    assert solved >= 2, final_returns


def test_two_learner_ring_with_elite_replay_reports_replay_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchbase",
            "run",
            "-a",
            "vtrace:batch_size=4",
            "-t",
            "ring",
            "-e",
            "CartPole-v1",
            "--learners",
            "2",
            "--envs-per-learner",
            "2",
            "--env-steps",
            "4000",
            "--seeds",
            "1",
            "--evaluations",
            "1",
            "--eval-episodes",
            "1",
            "-r",
            "queue:capacity=2,ratio=0.5+elite:capacity=50,ratio=0.5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (cell,) = pq.read_table(out / "cells.parquet").to_pylist()
    assert cell["status"] == "completed" and cell["learners"] == 2
    rows = ds.dataset(out / "metrics").to_table().to_pylist()
    names = {row["metric"] for row in rows}
    assert {
        "loss",
        "importance_ratio",
        "clipped_rho_fraction",
        "laser_mask_rate",
        "replay_share_queue",
        "replay_share_elite",
        "updates",
        "consensus_distance",
    } <= names
    assert any(name.startswith("replay_elite_") for name in names)
    assert {row["learner"] for row in rows} == {0, 1}
    updates = [row["value"] for row in rows if row["metric"] == "updates"]
    assert max(updates) > 0
