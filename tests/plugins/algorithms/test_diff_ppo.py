"""Diff-PPO: the clipped objective by hand, the update's mechanics on a tiny fake env, annealing,
determinism, learning CartPole, and a ring cell through the CLI.

The fake env (`test_algorithms.FakeVectorEnv`) has two simulators, reward 1 per step,
termination after 3 steps and one truncation, so every rollout is known in advance.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from bench_helpers import bench_run, cells_solving
from test_algorithms import FakeVectorEnv, actor_parameters, expected_a2c_loss

import plugins.algorithms.diff_ppo as diff_ppo
from benchbase.api.contracts import LearnerSpec
from plugins.algorithms.diff_ppo import PPOLearner, PPOParams, ppo_losses

#: What a Diff-PPO learner reports after each update (its block's learners too).
PPO_METRICS = {
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "grad_norm",
    "explained_variance",
    "lr",
    "clip_range",
}


def make_learner(continuous: bool = False, seed: int = 3, budget: int = 0, **overrides) -> PPOLearner:
    settings = dict(
        n_steps=5,
        n_epochs=3,
        minibatch_size=4,
        gamma=0.9,
        gae_lambda=0.8,
        hidden=8,
        normaliser="off",
        normalise_rewards=False,
    )
    settings.update(overrides)
    spec = LearnerSpec(FakeVectorEnv(continuous), 0, 1, seed, torch.device("cpu"), env_steps_budget=budget)
    return PPOLearner(PPOParams(**settings), spec)


# -- the loss -----------------------------------------------------------------------------------

# Five samples: ratios ρ and advantages A chosen to hit every branch of min(ρA, clip(ρ)A), ε = 0.2.
RATIOS = [0.5, 1.0, 1.5, 1.1, 0.7]
ADVANTAGES = [1.0, -2.0, 2.0, -1.0, -1.0]
VALUES = [1.0, 2.0, 3.0, 4.0, 5.0]
OLD_VALUES = [1.0, 3.0, 3.0, 4.0, 5.0]
RETURNS = [1.0] * 5


def hand_losses(clip_value_loss: bool, log_prob: torch.Tensor | None = None):
    old_log_prob = torch.zeros(5)
    if log_prob is None:
        log_prob = torch.log(torch.tensor(RATIOS))
    return ppo_losses(
        log_prob,
        old_log_prob,
        torch.tensor(ADVANTAGES),
        torch.tensor(VALUES),
        torch.tensor(OLD_VALUES),
        torch.tensor(RETURNS),
        torch.full((5,), 0.5),
        clip_range=0.2,
        clip_value_loss=clip_value_loss,
        value_coef=0.5,
        entropy_coef=0.01,
    )


def test_clipped_objective_equals_the_hand_computation():
    # min(ρA, clip(ρ, .8, 1.2)A) per sample:
    #   ρ=.5, A=1:   min(.5, .8) = .5        (below the range, but the unclipped term is lower)
    #   ρ=1,  A=-2:  -2
    #   ρ=1.5, A=2:  min(3, 2.4) = 2.4       (clipped: no incentive to push ρ further)
    #   ρ=1.1, A=-1: -1.1                    (inside the range)
    #   ρ=.7, A=-1:  min(-.7, -.8) = -.8     (clipped)
    # policy loss = -mean = -(.5 - 2 + 2.4 - 1.1 - .8) / 5 = .2
    # value loss = mean((V - R)²) = (0 + 1 + 4 + 9 + 16) / 5 = 6
    # loss = .2 + .5·6 - .01·.5 = 3.195; clip fraction = 3/5 (ρ = .5, 1.5, .7 leave [.8, 1.2])
    losses = hand_losses(clip_value_loss=False)
    assert losses.policy_loss.item() == pytest.approx(0.2, abs=1e-6)
    assert losses.value_loss.item() == pytest.approx(6.0)
    assert losses.entropy.item() == pytest.approx(0.5)
    assert losses.loss.item() == pytest.approx(3.195, abs=1e-6)
    assert losses.clip_fraction.item() == pytest.approx(0.6)
    approx_kl = sum((r - 1) - math.log(r) for r in RATIOS) / 5
    assert losses.approx_kl.item() == pytest.approx(approx_kl, rel=1e-5)


def test_clipped_samples_get_no_policy_gradient():
    log_prob = torch.log(torch.tensor(RATIOS)).requires_grad_()
    hand_losses(clip_value_loss=False, log_prob=log_prob).policy_loss.backward()
    # d(−ρA/5)/d log π = −ρA/5 on the unclipped branch, 0 where the clipped term is the minimum.
    np.testing.assert_allclose(log_prob.grad.numpy(), [-0.1, 0.4, 0.0, 0.22, 0.0], atol=1e-6)


def test_clipped_value_loss_takes_the_worse_of_the_two_errors():
    # Sample 2 moved from 3 to 2 (towards R = 1): clipped to 3 − .2 = 2.8, error 1.8² = 3.24 > 1.
    losses = hand_losses(clip_value_loss=True)
    assert losses.value_loss.item() == pytest.approx((0 + 3.24 + 4 + 9 + 16) / 5, rel=1e-6)


# -- the update -----------------------------------------------------------------------------------


def record_losses(monkeypatch) -> list[dict]:
    """Wrap `ppo_losses` so a test sees every minibatch's inputs and outputs."""
    calls: list[dict] = []

    def recording(log_prob, old_log_prob, advantages, *args, **kwargs):
        losses = ppo_losses(log_prob, old_log_prob, advantages, *args, **kwargs)
        calls.append(
            {
                "log_prob": log_prob.detach().clone(),
                "old_log_prob": old_log_prob.clone(),
                "advantages": advantages.clone(),
                "clip_fraction": losses.clip_fraction.item(),
                "approx_kl": losses.approx_kl.item(),
                "clip_range": kwargs["clip_range"],
            }
        )
        return losses

    monkeypatch.setattr(diff_ppo, "ppo_losses", recording)
    return calls


def test_first_minibatch_is_on_policy_and_later_ones_are_not(monkeypatch):
    calls = record_losses(monkeypatch)
    learner = make_learner()
    learner.iterate()
    # 10 samples in minibatches of 4: 4, 4, 2 per epoch, three epochs.
    assert [len(call["log_prob"]) for call in calls] == [4, 4, 2] * 3
    first = calls[0]
    torch.testing.assert_close(first["log_prob"], first["old_log_prob"])  # ρ = 1
    assert first["clip_fraction"] == 0.0 and first["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    # Normalised per minibatch: zero mean, unit std.
    assert first["advantages"].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert first["advantages"].std().item() == pytest.approx(1.0, abs=1e-4)
    # The old log-probabilities stay fixed while the policy moves: ρ ≠ 1 in the last epoch.
    assert not torch.allclose(calls[-1]["log_prob"], calls[-1]["old_log_prob"])


def test_one_epoch_one_minibatch_follows_the_policy_gradient():
    # At ρ = 1, with raw advantages, PPO's gradient is A2C's with GAE(λ) targets: check it against
    # the independent A2C reference (torch.distributions, returns by hand).
    learner = make_learner(
        n_epochs=1, minibatch_size=64, normalise_advantages=False, max_grad_norm=0.0, entropy_coef=0.05
    )
    rollout, _ = learner.collect()
    reference = copy.deepcopy(learner.model)
    a2c_loss, value_loss, _, entropy = expected_a2c_loss(reference, rollout, learner.params, continuous=False)
    a2c_loss.backward()
    expected_grad = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])

    metrics = learner.update(rollout)

    torch.testing.assert_close(learner.flat.grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert metrics["value_loss"] == pytest.approx(value_loss.item(), rel=1e-5)
    assert metrics["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(float(expected_grad.norm()), rel=1e-4)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_update_moves_every_tower_and_reports_float_metrics(continuous):
    learner = make_learner(continuous, normaliser="local", normalise_rewards=True)
    before = learner.parameters_buffer().clone()
    actor_before = [p.detach().clone() for p in actor_parameters(learner.model)]
    critic_before = [p.detach().clone() for p in learner.model.critic.parameters()]
    output = learner.iterate()
    assert output.env_steps == 10
    assert not torch.equal(learner.parameters_buffer(), before)
    assert any(not torch.equal(p, q) for p, q in zip(actor_parameters(learner.model), actor_before))
    assert any(not torch.equal(p, q) for p, q in zip(learner.model.critic.parameters(), critic_before))
    if continuous:
        assert learner.model.log_std.grad.abs().sum() > 0
        assert learner.act_greedy(np.zeros((2, 3), dtype=np.float32)).shape == (2, 2)
    assert set(output.metrics) == PPO_METRICS
    assert all(isinstance(value, float) and math.isfinite(value) for value in output.metrics.values())


def test_same_seed_same_parameters_after_two_iterations():
    results = []
    for _ in range(2):
        learner = make_learner(seed=11, normaliser="local", normalise_rewards=True)
        for _ in range(2):
            learner.iterate()
        results.append(learner.parameters_buffer().clone())
    assert torch.equal(results[0], results[1])
    other = make_learner(seed=12, normaliser="local", normalise_rewards=True)
    other.iterate()
    other.iterate()
    assert not torch.equal(results[0], other.parameters_buffer())


def test_lr_and_clip_range_anneal_linearly_to_zero_at_the_budget():
    # Each iteration is 5 steps × 2 simulators; a budget of 100 steps is 10 updates.
    learner = make_learner(lr=0.01, clip_range=0.3, budget=100)
    lrs, clips = [], []
    for _ in range(10):
        metrics = learner.iterate().metrics
        lrs.append(metrics["lr"])
        clips.append(metrics["clip_range"])
        assert learner.optimizer.param_groups[0]["lr"] == metrics["lr"]
    np.testing.assert_allclose(lrs, [0.01 * (1 - k / 10) for k in range(10)], rtol=1e-12)
    np.testing.assert_allclose(clips, [0.3 * (1 - k / 10) for k in range(10)], rtol=1e-12)
    # Past the budget the schedule stays at 0: the update no longer moves the parameters.
    before = learner.parameters_buffer().clone()
    assert learner.iterate().metrics["lr"] == 0.0
    assert torch.equal(learner.parameters_buffer(), before)


def test_without_a_budget_or_with_annealing_off_nothing_anneals():
    for learner in (make_learner(lr=0.01), make_learner(lr=0.01, budget=20, anneal_lr=False, anneal_clip_range=False)):
        for _ in range(3):
            metrics = learner.iterate().metrics
        assert metrics["lr"] == 0.01 and metrics["clip_range"] == 0.2


# -- through the CLI --------------------------------------------------------------------------------


def test_one_diff_ppo_learner_solves_cartpole_within_100k_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bench_run(
        out,
        "-a",
        "diff-ppo",
        "-t",
        "isolated",
        "-e",
        "CartPole-v1",
        "--learners",
        "1",
        "--envs-per-learner",
        "8",
        "--env-steps",
        "100000",
        "--seeds",
        "3",
        "--evaluations",
        "2",
        "--eval-episodes",
        "5",
        "--jobs",  # the three seeds' cells side by side on the two cores: the same results, sooner
        "2",
    )
    solved, final_returns = cells_solving(out, 475, max_env_steps=100_000 + 8 * 32)
    assert solved >= 2, final_returns


def test_two_learner_ring_cell_completes_and_reports_consensus(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchbase",
            "run",
            "-a",
            "diff-ppo:n_epochs=2",
            "-t",
            "ring",
            "-e",
            "CartPole-v1",
            "--learners",
            "2",
            "--envs-per-learner",
            "2",
            "--env-steps",
            "2560",
            "--seeds",
            "1",
            "--evaluations",
            "1",
            "--eval-episodes",
            "1",
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
    metrics = ds.dataset(out / "metrics").to_table().to_pylist()
    names = {row["metric"] for row in metrics}
    assert {"loss", "approx_kl", "clip_fraction", "lr", "consensus_distance"} <= names
    assert {row["learner"] for row in metrics} == {0, 1}
    distances = [row["value"] for row in metrics if row["metric"] == "consensus_distance"]
    # Two learners on a ring mix with weights ½, ½ after every rollout: they agree exactly.
    assert distances and all(0.0 <= d < 1e-4 for d in distances)
