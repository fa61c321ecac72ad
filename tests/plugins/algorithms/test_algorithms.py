"""The shared actor-critic pieces and the A2C learner: returns, normalisation, flat parameters,
the loss, truncation bootstrapping, continuous actions and determinism.

A tiny fake `TaskVectorEnv` makes every rollout known in advance: two simulators, observations
[steps into the episode / 3, simulator / 2, global step / 10], reward 1 per step, termination
after 3 steps, and one truncation (simulator 1 at global step 2) to exercise bootstrapping.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from benchbase.api.contracts import FinishedEpisode, LearnerSpec, StepResult, Task
from benchbase.comm.flat import FlatParameters
from plugins.algorithms.common.normalisation import ObservationNormaliser, RewardScaler, RunningMeanStd
from plugins.algorithms.common.returns import discounted_returns, gae_advantages
from plugins.algorithms.diff_a2c import A2CLearner, A2CParams

# -- a deterministic fake env -------------------------------------------------------------------


def actor_parameters(model):
    """The actor tower's parameters (its trunk and its head; the critic is separate)."""
    return [*model.actor_trunk.parameters(), *model.actor_head.parameters()]


class FakeVectorEnv:
    """Two simulators; reward 1; terminated after 3 steps; simulator `truncate_env` is cut by a
    time limit at global step `truncate_at` (when that does not coincide with a termination)."""

    def __init__(self, continuous: bool = False, num_envs: int = 2, truncate_at: int = 2, truncate_env: int = 1):
        self.num_envs = num_envs
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32) if continuous else spaces.Discrete(2)
        self.truncate_at = truncate_at
        self.truncate_env = truncate_env
        self.task = Task("fake")
        self.received_actions: list[np.ndarray] = []

    def _observations(self) -> np.ndarray:
        return np.stack([[self.episode_steps[i] / 3, i / 2, self.t / 10] for i in range(self.num_envs)]).astype(
            np.float32
        )

    def reset(self, seed: int) -> np.ndarray:
        self.t = 0
        self.episode_steps = np.zeros(self.num_envs, dtype=np.int64)
        self.returns = np.zeros(self.num_envs)
        return self._observations()

    def step(self, actions: np.ndarray) -> StepResult:
        self.received_actions.append(np.array(actions))
        self.t += 1
        self.episode_steps += 1
        rewards = np.ones(self.num_envs, dtype=np.float32)
        self.returns += rewards
        terminated = self.episode_steps >= 3
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.t == self.truncate_at:
            truncated[self.truncate_env] = True
        truncated &= ~terminated
        ended = terminated | truncated
        final = self._observations()
        finished = [
            FinishedEpisode(int(i), float(self.returns[i]), int(self.episode_steps[i]), None, self.task)
            for i in np.flatnonzero(ended)
        ]
        self.episode_steps[ended] = 0
        self.returns[ended] = 0.0
        return StepResult(self._observations(), rewards, terminated, truncated, final, finished)

    def close(self) -> None:
        pass


def make_learner(
    continuous: bool = False, rank: int = 0, seed: int = 3, **overrides
) -> tuple[A2CLearner, FakeVectorEnv]:
    settings = dict(n_steps=5, gamma=0.9, hidden=8, normaliser="off", normalise_rewards=False)
    settings.update(overrides)
    env = FakeVectorEnv(continuous)
    learner = A2CLearner(A2CParams(**settings), LearnerSpec(env, rank, 4, seed, torch.device("cpu")))
    return learner, env


# -- returns ------------------------------------------------------------------------------------

# T = 4 steps, P = 2 simulators, γ = 0.5. Simulator 0's episode ends at step 1 (m_1 = 0).
REWARDS = np.array([[1, 0], [2, 0], [3, 0], [4, 1]], dtype=np.float32)
NOT_DONE = np.array([[1, 1], [0, 1], [1, 1], [1, 1]], dtype=np.float32)
VALUES = np.array([[0.5, 0], [1, 0], [1.5, 0], [2, 0]], dtype=np.float32)
BOOTSTRAP = np.array([10, 2], dtype=np.float32)
GAMMA = 0.5


def test_discounted_returns_by_hand():
    # Simulator 0: R3 = 4 + .5·10 = 9; R2 = 3 + .5·9 = 7.5; R1 = 2 (ended); R0 = 1 + .5·2 = 2.
    # Simulator 1: R3 = 1 + .5·2 = 2; R2 = 1; R1 = .5; R0 = .25.
    expected = np.array([[2, 0.25], [2, 0.5], [7.5, 1], [9, 2]], dtype=np.float32)
    np.testing.assert_allclose(discounted_returns(REWARDS, NOT_DONE, BOOTSTRAP, GAMMA), expected, rtol=1e-6)


def test_gae_by_hand():
    # δ_t = r_t + γ m_t V_{t+1} − V_t: simulator 0: δ = 1, 1, 2.5, 7; simulator 1: δ = 0, 0, 0, 2.
    # A_t = δ_t + γλ m_t A_{t+1} with γλ = .25: simulator 0: 1.25, 1, 4.25, 7;
    # simulator 1: .03125, .125, .5, 2.
    expected = np.array([[1.25, 0.03125], [1, 0.125], [4.25, 0.5], [7, 2]], dtype=np.float32)
    np.testing.assert_allclose(gae_advantages(REWARDS, VALUES, NOT_DONE, BOOTSTRAP, GAMMA, 0.5), expected, rtol=1e-6)


def test_gae_with_lambda_one_is_returns_minus_values():
    returns = discounted_returns(REWARDS, NOT_DONE, BOOTSTRAP, GAMMA)
    np.testing.assert_allclose(
        gae_advantages(REWARDS, VALUES, NOT_DONE, BOOTSTRAP, GAMMA, 1.0), returns - VALUES, rtol=1e-6
    )


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    expected = np.array([[1, 0], [1, 0], [2.5, 0], [7, 2]], dtype=np.float32)
    np.testing.assert_allclose(gae_advantages(REWARDS, VALUES, NOT_DONE, BOOTSTRAP, GAMMA, 0.0), expected, rtol=1e-6)


# -- normalisation ------------------------------------------------------------------------------


def test_running_mean_std_matches_numpy_over_the_concatenated_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (200, 1, 350, 50)]
    stats = RunningMeanStd((3,))
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, everything.var(axis=0), rtol=1e-5)
    assert stats.count == pytest.approx(len(everything))


def test_observation_normaliser_normalises_and_clips_to_ten():
    normaliser = ObservationNormaliser((2,), "local")
    rng = np.random.default_rng(1)
    normaliser.update(rng.normal([0.0, 5.0], [1.0, 0.01], size=(1000, 2)))
    mean, std = normaliser.stats.mean, np.sqrt(normaliser.stats.var + 1e-8)
    x = np.array([[0.5, 5.001]], dtype=np.float32)
    np.testing.assert_allclose(normaliser(x), (x - mean) / std, rtol=1e-4)
    clipped = normaliser(np.array([[1e6, -1e6], [-1e6, 1e6]], dtype=np.float32))
    np.testing.assert_array_equal(clipped, [[10, -10], [-10, 10]])
    disabled = ObservationNormaliser((2,), "off")
    disabled.update(np.full((10, 2), 100.0))
    np.testing.assert_array_equal(disabled(np.array([[1e6, 3.0]])), [[1e6, 3.0]])


def test_mixed_statistics_match_local_ones_on_one_learner():
    rng = np.random.default_rng(2)
    batches = [rng.normal([1.0, -3.0], [0.5, 2.0], size=(n, 2)) for n in (40, 40, 7)]
    local = ObservationNormaliser((2,), "local")
    mixed = ObservationNormaliser((2,), "mixed", mixed_values=torch.zeros(5))
    for batch in batches:
        local.update(batch)
        mixed.update(batch)
    np.testing.assert_allclose(mixed.stats.mean, local.stats.mean, rtol=1e-5)
    np.testing.assert_allclose(mixed.stats.var, local.stats.var, rtol=1e-4)
    x = rng.normal(size=(3, 2)).astype(np.float32)
    np.testing.assert_allclose(mixed(x), local(x), rtol=1e-4, atol=1e-5)


def test_a_mix_of_mixed_statistics_is_the_count_weighted_combination():
    # Two learners on tasks with different observation scales; one diffusion mix with weights ½, ½.
    rng = np.random.default_rng(3)
    data = [rng.normal(0.0, 1.0, size=(300, 2)), rng.normal(10.0, 3.0, size=(100, 2))]
    tails = [torch.zeros(5), torch.zeros(5)]
    normalisers = [ObservationNormaliser((2,), "mixed", mixed_values=tail) for tail in tails]
    for normaliser, batch in zip(normalisers, data):
        normaliser.update(batch)
    mixed = 0.5 * tails[0] + 0.5 * tails[1]
    for tail, normaliser in zip(tails, normalisers):
        tail.copy_(mixed)
        normaliser.refresh()
    pooled = np.concatenate(data)
    for normaliser in normalisers:
        np.testing.assert_allclose(normaliser.stats.mean, pooled.mean(axis=0), rtol=1e-4)
        np.testing.assert_allclose(normaliser.stats.var, pooled.var(axis=0), rtol=1e-3)
        # counts are averaged, not summed: each learner carries the network's statistics per learner
        assert normaliser.stats.count == pytest.approx(200, rel=1e-5)


def test_mixed_statistics_travel_in_the_mixed_buffer_after_the_parameters():
    learner, _ = make_learner(normaliser="mixed")
    parameters = learner.model_parameters()
    buffer = learner.parameters_buffer()
    assert buffer.numel() == parameters.numel() + 1 + 2 * 3  # 3-dimensional observations: n, Σx, Σx²
    assert parameters.data_ptr() == buffer.data_ptr()
    learner.iterate()
    assert buffer[parameters.numel()] == pytest.approx(10 + 1e-4)  # 5 steps x 2 simulators observed
    # A mix that writes other learners' statistics changes what the learner acts with.
    before = learner.obs_normaliser(np.ones((1, 3), dtype=np.float32))
    buffer[parameters.numel() :] *= 4.0  # same mean and variance, four times the count
    buffer[parameters.numel() + 1 : parameters.numel() + 4] += 40.0  # ... now mean + 1 on every dimension
    learner.collect()
    after = learner.obs_normaliser(np.ones((1, 3), dtype=np.float32))
    assert not np.allclose(before, after)
    # Checkpoints carry the model's parameters alone; the statistics go with the normaliser.
    state = learner.state_dict()
    assert state["parameters"].numel() == parameters.numel()
    restored, _ = make_learner(normaliser="mixed", seed=9)
    restored.load_state_dict(state)
    assert torch.equal(restored.parameters_buffer(), learner.parameters_buffer())


def test_a_local_checkpoint_initialises_a_mixed_learner_and_the_other_way_round():
    local, _ = make_learner(normaliser="local")
    for _ in range(3):
        local.iterate()
    mixed, _ = make_learner(normaliser="mixed", seed=8)
    mixed.load_state_dict(local.state_dict(), mode="init")
    np.testing.assert_allclose(mixed.obs_normaliser.stats.mean, local.obs_normaliser.stats.mean, rtol=1e-5)
    np.testing.assert_allclose(mixed.obs_normaliser.stats.var, local.obs_normaliser.stats.var, rtol=1e-4, atol=1e-6)
    back, _ = make_learner(normaliser="local", seed=7)
    back.load_state_dict(mixed.state_dict(), mode="model")
    np.testing.assert_allclose(back.obs_normaliser.stats.mean, local.obs_normaliser.stats.mean, rtol=1e-5)
    assert torch.equal(back.model_parameters(), local.model_parameters())


def test_reward_scaler_resets_the_discounted_return_at_episode_ends():
    scaler = RewardScaler(num_envs=2, gamma=0.5, enabled=True)
    rewards = np.array([[1, 2], [1, 2], [1, 2]], dtype=np.float32)
    ended = np.array([[False, False], [True, False], [False, False]])
    scaled = scaler.scale(rewards, ended)
    # Simulator 0: 1, 1.5 (then reset), 1; simulator 1: 2, 3, 3.5.
    returns = np.array([1, 2, 1.5, 3, 1, 3.5])
    np.testing.assert_allclose(scaler.discounted, [1.0, 3.5])
    assert scaler.stats.mean == pytest.approx(returns.mean(), rel=1e-4)
    assert scaler.stats.var == pytest.approx(returns.var(), rel=1e-4)
    np.testing.assert_allclose(scaled, rewards / np.sqrt(scaler.stats.var + 1e-8), rtol=1e-6)
    # The running return carries over between rollouts and resets where an episode ends.
    scaler.scale(np.zeros((1, 2), dtype=np.float32), np.array([[True, False]]))
    np.testing.assert_allclose(scaler.discounted, [0.0, 1.75])
    off = RewardScaler(num_envs=2, gamma=0.5, enabled=False)
    assert off.scale(rewards, ended) is rewards


# -- flat parameters ------------------------------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def test_flat_parameters_are_views_of_one_buffer():
    model = small_model()
    reference = copy.deepcopy(model)
    flat = FlatParameters(model)
    x = torch.randn(5, 3)
    assert flat.data.numel() == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(model(x), reference(x))  # values kept when re-seated
    storage = flat.data.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in model.parameters())
    flat.data.zero_()
    assert torch.equal(model(x), torch.zeros(5, 2))
    flat.data.copy_(torch.cat([p.detach().reshape(-1) for p in reference.parameters()]))
    torch.testing.assert_close(model(x), reference(x))


def test_flat_gradients_land_in_the_buffer_and_clip():
    model = small_model()
    reference = copy.deepcopy(model)
    flat = FlatParameters(model)
    x = torch.randn(5, 3)
    model(x).pow(2).sum().backward()
    reference(x).pow(2).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(flat.grad, expected)
    flat.check_views()
    # An optimiser on the single flat parameter moves the model.
    before = model(x).detach()
    torch.optim.SGD([flat.parameter], lr=0.1).step()
    assert not torch.allclose(model(x), before)

    flat.grad.copy_(torch.arange(flat.grad.numel(), dtype=torch.float32))
    norm = float(torch.linalg.vector_norm(flat.grad))
    assert flat.clip_grad_norm(2 * norm) == pytest.approx(norm)  # under the bound: unchanged
    assert float(torch.linalg.vector_norm(flat.grad)) == pytest.approx(norm)
    assert flat.clip_grad_norm(0.0) == pytest.approx(norm)  # 0 = no clipping
    assert flat.clip_grad_norm(0.5) == pytest.approx(norm)
    assert float(torch.linalg.vector_norm(flat.grad)) == pytest.approx(0.5, rel=1e-5)
    flat.zero_grad()
    assert not flat.grad.any()
    model.zero_grad()  # set_to_none: gradients leave the buffer, and the check says so
    with pytest.raises(RuntimeError, match="flat buffer"):
        flat.check_views()


@pytest.mark.parametrize("shape", [(8, 2), (16, 1, 2), (4, 3, 6), (100, 18)])
def test_categorical_actions_are_the_draws_torch_multinomial_makes(shape):
    """`distributions.sample` skips multinomial's checks of the probabilities, not its arithmetic:
    from the same random stream it draws the same actions, for any leading shape."""
    from plugins.algorithms.common import distributions

    logits = torch.randn(*shape) * 3
    torch.manual_seed(1)
    probs = torch.softmax(logits.reshape(-1, shape[-1]), dim=-1)
    expected = torch.stack([torch.multinomial(probs, 1).reshape(shape[:-1]) for _ in range(500)])
    torch.manual_seed(1)
    drawn = torch.stack([distributions.sample(logits, None) for _ in range(500)])
    assert drawn.dtype == torch.int64 and torch.equal(drawn, expected)


# -- the A2C learner --------------------------------------------------------------------------------


def test_collect_bootstraps_truncated_steps_only():
    learner, env = make_learner()
    rollout, finished = learner.collect()
    # Global steps 1..5. Simulator 0 terminates at step 3 (index 2); simulator 1 is truncated at
    # step 2 (index 1) and terminates at step 5 (index 4).
    np.testing.assert_array_equal(rollout.not_done, [[1, 1], [1, 0], [0, 1], [1, 1], [1, 0]])
    final = torch.tensor([[2 / 3, 0.5, 0.2]])  # simulator 1 when the time limit cut it
    with torch.no_grad():
        bonus = 0.9 * learner.model.value(final).item()
    expected = np.ones((5, 2), dtype=np.float32)
    expected[1, 1] += bonus
    np.testing.assert_allclose(rollout.rewards, expected, rtol=1e-6)
    assert abs(bonus) > 1e-4  # the check above would not see a missing bootstrap otherwise
    np.testing.assert_allclose(rollout.observations[0], [[0, 0, 0], [0, 0.5, 0]])
    np.testing.assert_allclose(rollout.observations[2], [[2 / 3, 0, 0.2], [0, 0.5, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(rollout.last_observations, [[2 / 3, 0, 0.5], [0, 0.5, 0.5]], rtol=1e-6)
    assert sorted((e.simulator, e.episode_length, e.episode_return) for e in finished) == [
        (0, 3, 3.0),
        (1, 2, 2.0),
        (1, 3, 3.0),
    ]


def expected_a2c_loss(model: nn.Module, rollout, params: A2CParams, continuous: bool):
    """The A2C loss from `model`'s parameters, computed independently with torch.distributions."""
    steps, envs = rollout.rewards.shape
    obs = torch.from_numpy(rollout.observations.reshape(steps * envs, -1))
    values = model.critic(obs).squeeze(-1)
    bootstrap = model.critic(torch.from_numpy(rollout.last_observations)).squeeze(-1).detach()
    rewards, not_done = torch.from_numpy(rollout.rewards), torch.from_numpy(rollout.not_done)
    v = values.detach().reshape(steps, envs)
    targets = torch.empty(steps, envs)
    if params.gae_lambda is None:
        running = bootstrap
        for t in reversed(range(steps)):
            running = rewards[t] + params.gamma * not_done[t] * running
            targets[t] = running
    else:
        running, next_value = torch.zeros(envs), bootstrap
        for t in reversed(range(steps)):
            delta = rewards[t] + params.gamma * not_done[t] * next_value - v[t]
            running = delta + params.gamma * params.gae_lambda * not_done[t] * running
            targets[t] = running + v[t]
            next_value = v[t]
    advantages = targets.reshape(-1) - values
    out = model.actor(obs)
    if continuous:
        actions = torch.from_numpy(rollout.actions.reshape(steps * envs, -1))
        distribution = torch.distributions.Normal(out, model.log_std.exp().expand_as(out))
        log_prob, entropy = distribution.log_prob(actions).sum(-1), distribution.entropy().sum(-1)
    else:
        actions = torch.from_numpy(rollout.actions.reshape(-1))
        distribution = torch.distributions.Categorical(logits=out)
        log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
    value_loss = advantages.pow(2).mean()
    policy_loss = -(advantages.detach() * log_prob).mean()
    loss = params.value_coef * value_loss + policy_loss - params.entropy_coef * entropy.mean()
    return loss, value_loss, policy_loss, entropy.mean()


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("gae_lambda", [None, 0.5], ids=["n-step", "gae"])
def test_a2c_update_minimises_the_documented_loss(continuous, gae_lambda):
    learner, _ = make_learner(continuous, gae_lambda=gae_lambda, entropy_coef=0.05)
    rollout, _ = learner.collect()
    reference = copy.deepcopy(learner.model)
    loss, value_loss, policy_loss, entropy = expected_a2c_loss(reference, rollout, learner.params, continuous)
    loss.backward()
    expected_grad = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    before = learner.parameters_buffer().clone()

    metrics = learner.update(rollout)

    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert metrics["value_loss"] == pytest.approx(value_loss.item(), rel=1e-5, abs=1e-6)
    assert metrics["policy_loss"] == pytest.approx(policy_loss.item(), rel=1e-5, abs=1e-6)
    assert metrics["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    torch.testing.assert_close(learner.flat.grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert metrics["grad_norm"] == pytest.approx(float(expected_grad.norm()), rel=1e-4)
    assert not torch.equal(learner.parameters_buffer(), before)  # the optimiser stepped the model


def test_continuous_actions_and_the_log_std_is_mixed():
    learner, env = make_learner(continuous=True)
    buffer = learner.parameters_buffer()
    log_std = learner.model.log_std
    assert log_std.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    # Mixing writes the buffer in place: the log-std moves with it (the original forgot it).
    buffer.fill_(0.25)
    assert torch.equal(log_std.detach(), torch.full_like(log_std, 0.25))
    buffer.fill_(0.0)
    output = learner.iterate()
    assert output.env_steps == 10
    assert all(np.all(np.abs(a) <= 1.0) for a in env.received_actions)  # clipped to the Box
    assert learner.model.log_std.grad is not None and learner.model.log_std.grad.abs().sum() > 0
    greedy = learner.act_greedy(np.zeros((2, 3), dtype=np.float32))
    assert greedy.shape == (2, 2)


def test_same_seed_same_parameters_after_five_iterations():
    results = []
    for _ in range(2):
        learner, _ = make_learner(normaliser="local", normalise_rewards=True, seed=11)
        for _ in range(5):
            learner.iterate()
        results.append(learner.parameters_buffer().clone())
    assert torch.equal(results[0], results[1])


def test_every_rank_starts_from_the_same_parameters_but_samples_its_own_actions():
    initial, actions = [], []
    for rank in (0, 3):
        learner, _ = make_learner(rank=rank, seed=5, n_steps=16)
        initial.append(learner.parameters_buffer().clone())
        rollout, _ = learner.collect()
        actions.append(rollout.actions.copy())
    assert torch.equal(initial[0], initial[1])
    assert not np.array_equal(actions[0], actions[1])
