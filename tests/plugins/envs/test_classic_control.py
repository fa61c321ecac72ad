"""Classic-control env families: Gymnasium-exact physics, task draws, autoreset, success."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest

from benchbase.api.contracts import EnvFamily, Task, params_of
from benchbase.api.registry import load_registry
from benchbase.errors import UserError
from plugins.envs.classic import family as cc
from plugins.envs.classic.vector import EpisodeEnds
from plugins.envs.gymnasium.vector import GymnasiumTaskVectorEnv

ENV_PLUGINS = {"plugins.envs.classic.family", "plugins.envs.gymnasium.family"}


@pytest.fixture(scope="module")
def registry():
    return load_registry(only=ENV_PLUGINS)


def family(registry, name: str) -> EnvFamily:
    return registry.get("env", name)


# ---------------------------------------------------------------------------------------------
# Gymnasium equivalence


def _set_cartpole(env, p):
    env.force_mag, env.length, env.masspole = p["force_mag"], p["length"], p["masspole"]
    env.total_mass = env.masspole + env.masscart  # derived in Gymnasium's __init__
    env.polemass_length = env.masspole * env.length


def _set_mountaincar(env, p):
    env.force, env.gravity = p["force"], p["gravity"]


def _set_acrobot(env, p):
    env.LINK_LENGTH_1 = env.LINK_LENGTH_2 = p["link_length"]
    env.LINK_MASS_1 = env.LINK_MASS_2 = p["link_mass"]
    env.LINK_MOI = p["link_moi"]


def _set_pendulum(env, p):
    env.l, env.m = p["length"], p["mass"]


def _policy(key, obs, rng):
    """Policies that keep episodes going long enough to exercise termination and clipping."""
    n = len(obs)
    if key == "cartpole":
        return np.where(rng.random(n) < 0.25, rng.integers(0, 2, n), (obs[:, 3] > 0).astype(np.int64))
    if key == "mountaincar":  # pump energy: push along the velocity
        return np.where(rng.random(n) < 0.1, 1, np.where(obs[:, 1] >= 0, 2, 0))
    if key == "acrobot":  # pump: torque against the first joint's velocity swings the tip up
        return np.where(rng.random(n) < 0.2, rng.integers(0, 3, n), np.where(obs[:, 4] >= 0, 0, 2))
    return rng.uniform(-3.0, 3.0, size=(n, 1)).astype(np.float32)  # beyond ±2: tests clipping


CASES = {
    "cartpole": ("CartPole-v1", _set_cartpole, 200),
    "mountaincar": ("MountainCar-v0", _set_mountaincar, 200),
    "acrobot": ("Acrobot-v1", _set_acrobot, 200),
    "pendulum": ("Pendulum-v1", _set_pendulum, 150),
}


@pytest.mark.parametrize("key", list(CASES))
def test_vectorised_env_reproduces_gymnasium(registry, key):
    gym_id, set_parameters, steps = CASES[key]
    fam = family(registry, f"extreme-{key}")
    tasks = fam.training_tasks(params_of(fam), 2, seed=3) + family(registry, f"random-{key}").training_tasks(
        params_of(fam), 2, seed=3
    )
    params = dataclasses.replace(params_of(fam), max_episode_steps=10_000)
    env = fam.make_env(params, tasks, seed=11)
    env.reset(seed=5)
    references = []
    for i, task in enumerate(tasks):
        reference = gym.make(gym_id).unwrapped
        reference.reset(seed=i)
        set_parameters(reference, task.parameters)
        reference.state = env.dynamics.state[:, i].copy()  # same initial state
        references.append(reference)
    obs = env.dynamics.observe()
    active = np.ones(len(tasks), dtype=bool)
    rng = np.random.default_rng(0)
    terminations = 0
    for _ in range(steps):
        actions = _policy(key, obs, rng)
        result = env.step(actions)
        for i in np.flatnonzero(active):
            action = actions[i] if key == "pendulum" else int(actions[i])
            expected, reward, terminated, _, _ = references[i].step(action)
            seen = result.final_observations[i] if result.terminated[i] else result.observations[i]
            np.testing.assert_allclose(seen, expected, atol=1e-5, rtol=0)
            assert result.rewards[i] == pytest.approx(reward, rel=1e-6, abs=1e-6)
            assert bool(result.terminated[i]) == terminated
            if terminated:
                active[i] = False
                terminations += 1
        obs = result.observations
    if key != "pendulum":
        assert terminations > 0  # the comparison covered episode ends


@pytest.mark.parametrize("key", list(CASES))
def test_each_parameter_changes_the_trajectory(registry, key):
    fam = family(registry, f"default-{key}")
    default = fam.training_tasks(params_of(fam), 1, seed=0)[0]
    tasks = [default] + [
        Task(f"changed-{name}", {**default.parameters, name: value * 1.3}) for name, value in default.parameters.items()
    ]
    env = fam.make_env(params_of(fam), tasks, seed=0)
    env.dynamics.state[:] = env.dynamics.state[:, :1]  # every simulator starts in one state
    env.dynamics.state[:, :] += 0.05  # off any equilibrium
    action = {"cartpole": 1, "mountaincar": 2, "acrobot": 2}.get(key)
    actions = np.full((len(tasks), 1), 1.0, np.float32) if action is None else np.full(len(tasks), action)
    for _ in range(5):
        result = env.step(actions)
    obs = result.observations
    for k in range(1, len(tasks)):
        assert not np.allclose(obs[k], obs[0], atol=1e-7), tasks[k].task_id


# ---------------------------------------------------------------------------------------------
# Task draws


@pytest.mark.parametrize("base", cc.BASE_ENVS, ids=lambda b: b.key)
def test_task_draws_are_reproducible_distinct_and_in_range(registry, base):
    for split, word in (("D", "default"), ("R", "random"), ("E", "extreme")):
        fam = family(registry, f"{word}-{base.key}")
        params = params_of(fam)
        tasks = fam.training_tasks(params, 16, seed=7)
        assert tasks == fam.training_tasks(params, 16, seed=7)
        assert tasks[:4] == fam.training_tasks(params, 4, seed=7)  # learner k's task ignores count
        assert [t.task_id for t in tasks[:2]] == [f"{split}-0", f"{split}-1"]
        held_out = fam.evaluation_tasks(params, "E", 16, seed=7)
        other_seed = fam.training_tasks(params, 16, seed=8)
        for r in base.ranges:
            values = np.array([t.parameters[r.name] for t in tasks])
            if split == "D":
                assert np.all(values == r.default)
                continue
            assert len(set(values)) == len(values)  # distinct across learners
            assert values.tolist() != [t.parameters[r.name] for t in other_seed]
            low, high = r.middle
            if split == "R":
                assert np.all((values >= low) & (values <= high))
            else:
                (low1, high1), (low2, high2) = r.extremes
                assert np.all(((values >= low1) & (values <= low)) | ((values >= high) & (values <= high2)))
                assert np.any(values < low) and np.any(values > high)  # both sides get drawn
        held = {tuple(t.parameters.values()) for t in held_out}
        assert not held & {tuple(t.parameters.values()) for t in fam.training_tasks(params, 16, seed=7)}


def test_extreme_sides_are_drawn_in_proportion_to_their_length():
    r = cc.CARTPOLE.ranges[0]  # [1, 5] ∪ [15, 20]: the left side has 4/9 of the mass
    rng = np.random.default_rng(0)
    values = np.array([r.sample("E", rng) for _ in range(4000)])
    assert np.mean(values < 10) == pytest.approx(4 / 9, abs=0.03)


def test_evaluation_splits(registry):
    fam = family(registry, "random-pendulum")
    params = params_of(fam)
    d = fam.evaluation_tasks(params, "D", 3, seed=1)
    assert [t.parameters for t in d] == [{"length": 1.0, "mass": 1.0}] * 3
    assert fam.evaluation_tasks(params, "R", 3, seed=1) == fam.evaluation_tasks(params, "R", 3, seed=1)
    with pytest.raises(UserError, match="evaluation split"):
        fam.evaluation_tasks(params, "X", 3, seed=1)
    with pytest.raises(UserError):
        single = family(registry, "CartPole-v1")
        single.evaluation_tasks(params_of(single), "D", 1, 0)


# ---------------------------------------------------------------------------------------------
# Registry


def test_families_aliases_and_gymnasium_ids_resolve(registry):
    assert not registry.errors
    names = set(registry.names("env"))
    for base in cc.BASE_ENVS:
        assert {f"default-{base.key}", f"random-{base.key}", f"extreme-{base.key}", base.gym_id} <= names
    assert registry.get("env", "RandomExtremeAcrobot-v1").name == "extreme-acrobot"
    assert registry.get("env", "RandomNormalAcrobot-v1").name == "random-acrobot"
    assert params_of(registry.get("env", "extreme-acrobot")).success_steps == 80
    assert params_of(registry.get("env", "extreme-cartpole")).max_episode_steps == 200
    assert params_of(registry.get("env", "CartPole-v1")).max_episode_steps == 500
    # A registered name is served by the fast simulators, not by gymnasium_ids.
    assert type(registry.get("env", "CartPole-v1")).__module__ == "plugins.envs.classic.family"
    other = registry.get("env", "MountainCarContinuous-v0")
    assert other.name == "MountainCarContinuous-v0" and other.splits == ()
    with pytest.raises(UserError, match="did you mean"):
        registry.get("env", "CartPole-v9")


def test_arbitrary_gymnasium_id_runs_through_the_adapter(registry):
    fam = registry.get("env", "MountainCarContinuous-v0")
    tasks = fam.training_tasks(params_of(fam), 2, seed=0)
    assert tasks == [Task("MountainCarContinuous-v0", {})] * 2
    env = fam.make_env(params_of(fam), tasks, seed=0)
    obs = env.reset(seed=0)
    assert obs.shape == (2, 2)
    result = env.step(np.array([5.0, -5.0]))  # flat and out of bounds: reshaped and clipped
    assert result.rewards.dtype == np.float32 and result.finished == []
    env.close()


def test_missing_dependency_is_a_user_error(registry):
    try:
        import Box2D  # noqa: F401

        pytest.skip("Box2D is installed")
    except ImportError:
        pass
    fam = registry.get("env", "LunarLander-v3")
    with pytest.raises(UserError, match="LunarLander-v3"):
        fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 1, seed=0), seed=0)


# ---------------------------------------------------------------------------------------------
# Episodes: autoreset, truncation, success, resampling


@pytest.mark.parametrize("key", list(CASES))
def test_initial_states_follow_gymnasium(registry, key):
    fam = family(registry, f"random-{key}")
    env = fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 64, seed=0), seed=0)
    obs = env.reset(seed=1)
    state = env.dynamics.state
    assert obs.dtype == np.float32 and obs.shape == (64, *env.observation_space.shape)
    assert all(env.observation_space.contains(o) for o in obs)
    if key == "cartpole":
        assert np.all(np.abs(state) <= 0.05)
    elif key == "mountaincar":
        assert np.all((state[0] >= -0.6) & (state[0] <= -0.4)) and np.all(state[1] == 0)
    elif key == "acrobot":
        assert np.all(np.abs(state) <= 0.1) and np.all(state == state.astype(np.float32))
    else:
        assert np.all(np.abs(state[0]) <= math.pi) and np.all(np.abs(state[1]) <= 1.0)
    assert np.ptp(state[0]) > 0  # simulators start in different states


def test_autoreset_reports_final_observations_and_raw_returns(registry):
    fam = family(registry, "CartPole-v1")
    env = fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 3, seed=0), seed=0)
    env.reset(seed=1)
    finished, steps = [], 0
    while not finished:  # always pushing right topples the pole within a few dozen steps
        result = env.step(np.ones(3, dtype=np.int64))
        finished, steps = result.finished, steps + 1
    ended = result.terminated
    assert result.final_observations is not None
    for episode in finished:
        i = episode.simulator
        assert ended[i] and not result.truncated[i]
        assert episode.episode_length == steps and episode.episode_return == float(steps)
        assert episode.success is False and episode.task == Task("CartPole-v1", {})
        x, _, theta, _ = result.final_observations[i]
        assert abs(x) > 2.4 or abs(theta) > 12 * 2 * math.pi / 360
        assert np.all(np.abs(result.observations[i]) <= 0.05)  # already reset
    assert result.observations.dtype == np.float32 and result.observations.flags.c_contiguous


def test_gymnasium_adapter_autoreset_matches_contract():
    tasks = [Task("CartPole-v1")] * 2
    env = GymnasiumTaskVectorEnv([lambda: gym.make("CartPole-v1")] * 2, tasks, lambda r, n, t: r >= 475)
    env.reset(seed=0)
    returns = np.zeros(2)
    while True:
        result = env.step(np.array([1, 1]))
        returns += result.rewards
        if result.finished:
            break
    for episode in result.finished:
        i = episode.simulator
        assert episode.episode_return == returns[i] == episode.episode_length
        assert episode.success is False and episode.task == tasks[i]
        assert abs(result.final_observations[i][2]) > 0.2 or abs(result.final_observations[i][0]) > 2.4
        assert np.all(np.abs(result.observations[i]) <= 0.05)
    env.close()


def test_gymnasium_ids_no_plugin_draws_cannot_render(registry):
    fam = family(registry, "MountainCarContinuous-v0")  # resolved on demand by the generic family
    env = fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 1, seed=0), seed=0)
    env.reset(seed=0)
    with pytest.raises(UserError, match=r"^MountainCarContinuous-v0 cannot render here"):
        env.render(0)
    env.close()


def test_families_are_instances_of_one_class_per_kind(registry):
    packer = [family(registry, f"{split}-{base.key}") for base in cc.BASE_ENVS for split in ("default", "random")]
    assert {type(f) for f in packer} == {cc.PackerFamily}
    assert family(registry, "RandomExtremeAcrobot-v1").name == "extreme-acrobot"
    assert type(family(registry, "Pendulum-v1")) is cc.GymnasiumDefaultFamily


def test_truncation_at_the_time_limit(registry):
    fam = family(registry, "random-pendulum")
    params = dataclasses.replace(params_of(fam), max_episode_steps=5)
    env = fam.make_env(params, fam.training_tasks(params, 2, seed=0), seed=0)
    env.reset(seed=0)
    for _ in range(4):
        result = env.step(np.zeros((2, 1), np.float32))
        assert not result.truncated.any() and result.finished == []
    result = env.step(np.zeros((2, 1), np.float32))
    assert result.truncated.all() and not result.terminated.any()
    assert [e.episode_length for e in result.finished] == [5, 5]
    assert all(e.success is False for e in result.finished)  # 5 steps can't hold 100 upright


def test_pendulum_success_needs_the_last_100_steps_upright(registry):
    fam = family(registry, "default-pendulum")
    env = fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 2, seed=0), seed=0)
    env.reset(seed=0)
    env.dynamics.state[:] = [[0.0, math.pi], [0.0, 0.0]]  # balanced upright / hanging down
    for _ in range(200):
        result = env.step(np.zeros((2, 1), np.float32))
    assert result.truncated.all()
    assert [e.success for e in sorted(result.finished, key=lambda e: e.simulator)] == [True, False]
    assert Task in {type(e.task) for e in result.finished}


def _ends(lengths, terminated, streak=None, returns=None):
    lengths = np.array(lengths)
    return EpisodeEnds(
        np.zeros(len(lengths)) if returns is None else np.array(returns, float),
        lengths,
        np.array(terminated),
        None if streak is None else np.array(streak),
    )


def test_success_rules_on_constructed_episodes():
    assert cc.cartpole_success(_ends([194, 195, 200], [True, True, False])).tolist() == [False, True, True]
    assert cc.mountaincar_success(_ends([110, 111, 50], [True, True, False])).tolist() == [True, False, False]
    rule = cc.acrobot_success(80)
    assert rule(_ends([80, 81, 30], [True, True, False])).tolist() == [True, False, False]
    assert cc.pendulum_success(_ends([200, 200], [False, False], streak=[100, 99])).tolist() == [True, False]
    at_least = cc.return_threshold(-100.0)
    assert at_least(_ends([1, 1], [True, True], returns=[-100, -101])).tolist() == [True, False]


def test_acrobot_success_limit_is_a_parameter(registry):
    fam = family(registry, "extreme-acrobot")
    params = dataclasses.replace(params_of(fam), success_steps=90)
    env = fam.make_env(params, fam.training_tasks(params, 1, seed=0), seed=0)
    assert env._success(_ends([85], [True])).tolist() == [True]


def test_resample_draws_a_task_per_episode_and_fixed_tasks_stay(registry):
    fam = family(registry, "random-cartpole")
    params = dataclasses.replace(params_of(fam), resample=True, max_episode_steps=3)
    tasks = fam.training_tasks(params, 1, seed=0) * 2
    env = fam.make_env(params, tasks, seed=4)
    env.reset(seed=0)
    seen = []
    for _ in range(9):
        seen += env.step(np.zeros(2, dtype=np.int64)).finished
    assert len(seen) >= 6
    drawn = [tuple(e.task.parameters.values()) for e in seen]
    assert len(set(drawn)) == len(drawn)  # a new task for every episode, per simulator
    for episode in seen:
        for r in cc.CARTPOLE.ranges:
            assert r.middle[0] <= episode.task.parameters[r.name] <= r.middle[1]
    # The same seeds replay the same draws; resample=False keeps the given tasks.
    again = fam.make_env(params, tasks, seed=4)
    again.reset(seed=0)
    replay = []
    for _ in range(9):
        replay += again.step(np.zeros(2, dtype=np.int64)).finished
    assert [e.task for e in replay] == [e.task for e in seen]
    fixed = fam.make_env(dataclasses.replace(params, resample=False), tasks, seed=4)
    fixed.reset(seed=0)
    for _ in range(9):
        for episode in fixed.step(np.zeros(2, dtype=np.int64)).finished:
            assert episode.task == tasks[0]


def test_same_seed_same_numbers(registry):
    fam = family(registry, "extreme-acrobot")
    params = params_of(fam)
    tasks = fam.training_tasks(params, 3, seed=2)
    runs = []
    for _ in range(2):
        env = fam.make_env(params, tasks, seed=9)
        obs = [env.reset(seed=3)]
        for t in range(20):
            obs.append(env.step(np.full(3, t % 3)).observations)
        runs.append(np.stack(obs))
    np.testing.assert_array_equal(runs[0], runs[1])
    env = fam.make_env(params, tasks, seed=9)
    assert not np.array_equal(env.reset(seed=4), runs[0][0])
