"""V-trace targets: on-policy they are n-step returns; on random inputs they equal the defining
sum evaluated directly; LASER's mask cuts the trace at the masked step."""

from __future__ import annotations

import torch

from plugins.algorithms.common.returns import vtrace_targets

T, B = 6, 3


def random_segment(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    log_ratios = torch.randn(T, B, generator=generator, dtype=torch.float64) * 0.7
    not_done = (torch.rand(T, B, generator=generator) > 0.2).double()
    discounts = 0.9 * not_done
    rewards = torch.randn(T, B, generator=generator, dtype=torch.float64)
    values = torch.randn(T, B, generator=generator, dtype=torch.float64)
    bootstrap = torch.randn(B, generator=generator, dtype=torch.float64)
    return log_ratios, discounts, rewards, values, bootstrap


def direct_targets(log_ratios, discounts, rewards, values, bootstrap, rho_bar, c_bar, pg_rho_bar, relevant=None):
    """The defining sums, one element at a time, without any recursion."""
    ratio = log_ratios.exp()
    keep = torch.ones_like(ratio) if relevant is None else relevant.double()
    rho = ratio.clamp(max=rho_bar) * keep
    c = ratio.clamp(max=c_bar) * keep
    pg_rho = ratio.clamp(max=pg_rho_bar) * keep
    next_value = lambda t, b: values[t + 1, b] if t + 1 < T else bootstrap[b]  # noqa: E731
    v = torch.empty(T, B, dtype=torch.float64)
    for b in range(B):
        for s in range(T):
            total = values[s, b].item()
            for t in range(s, T):
                trace = 1.0
                for u in range(s, t):
                    trace *= discounts[u, b].item() * c[u, b].item()
                delta = rho[t, b].item() * (
                    rewards[t, b].item() + discounts[t, b].item() * next_value(t, b) - values[t, b].item()
                )
                total += trace * delta
            v[s, b] = total
    advantages = torch.empty(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            next_v = v[t + 1, b] if t + 1 < T else bootstrap[b]
            advantages[t, b] = pg_rho[t, b] * (rewards[t, b] + discounts[t, b] * next_v - values[t, b])
    return v, advantages


def test_on_policy_targets_are_n_step_bootstrapped_returns():
    _, discounts, rewards, values, bootstrap = random_segment()
    targets = vtrace_targets(torch.zeros(T, B, dtype=torch.float64), discounts, rewards, values, bootstrap)
    expected = torch.empty(T, B, dtype=torch.float64)
    running = bootstrap.clone()
    for t in range(T - 1, -1, -1):
        running = rewards[t] + discounts[t] * running
        expected[t] = running
    torch.testing.assert_close(targets.values, expected)


def test_targets_match_the_defining_sum_on_random_inputs():
    for seed, (rho_bar, c_bar, pg_rho_bar) in enumerate([(1.0, 1.0, 1.0), (2.0, 0.5, 1.5), (0.7, 1.3, 100.0)]):
        segment = random_segment(seed)
        targets = vtrace_targets(*segment, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar)
        values, advantages = direct_targets(*segment, rho_bar, c_bar, pg_rho_bar)
        torch.testing.assert_close(targets.values, values)
        torch.testing.assert_close(targets.pg_advantages, advantages)


def test_laser_mask_cuts_the_trace_at_the_masked_step():
    log_ratios, discounts, rewards, values, bootstrap = random_segment(3)
    discounts = torch.full_like(discounts, 0.9)  # no terminations: only the mask can cut
    relevant = torch.ones(T, B, dtype=torch.bool)
    relevant[3, 0] = False
    masked = vtrace_targets(log_ratios, discounts, rewards, values, bootstrap, relevant=relevant)
    direct, _ = direct_targets(log_ratios, discounts, rewards, values, bootstrap, 1.0, 1.0, 1.0, relevant)
    torch.testing.assert_close(masked.values, direct)
    # The masked step is its own value and contributes nothing to earlier targets…
    assert masked.values[3, 0] == values[3, 0]
    assert masked.pg_advantages[3, 0] == 0
    # …so targets before it equal those of the segment cut after step 2 and bootstrapped with V(x_3).
    cut = vtrace_targets(log_ratios[:3, :1], discounts[:3, :1], rewards[:3, :1], values[:3, :1], values[3, :1])
    torch.testing.assert_close(masked.values[:3, :1], cut.values)
    # Other segments of the batch are untouched.
    unmasked = vtrace_targets(log_ratios, discounts, rewards, values, bootstrap)
    torch.testing.assert_close(masked.values[:, 1:], unmasked.values[:, 1:])
    # Steps after the masked one see nothing of it.
    torch.testing.assert_close(masked.values[4:, 0], unmasked.values[4:, 0])
