"""Atari env families: preprocessing, episodic life, raw scores, task draws, backends, registry."""

from __future__ import annotations

import numpy as np
import pytest

from benchbase.api.contracts import EnvFamily, Renderable, Task, params_of
from benchbase.api.registry import load_registry
from benchbase.errors import UserError
from plugins.envs.atari.games import game_info

ENV_PLUGINS = {"plugins.envs.atari.family", "plugins.envs.gymnasium.family"}
FIRE = 1  # in the minimal action sets of Pong, Breakout and SpaceInvaders


@pytest.fixture(scope="module")
def registry():
    return load_registry(only=ENV_PLUGINS)


def _env(
    registry, name: str, overrides: dict | None = None, count: int = 1, seed: int = 0, tasks: list[Task] | None = None
):
    family: EnvFamily = registry.get("env", name)
    params = params_of(family, overrides or {})
    return family.make_env(params, tasks or family.training_tasks(params, count, seed), seed)


def _run(env, actions, seed: int = 0):
    observations = [env.reset(seed=seed)]
    results = [env.step(a) for a in actions]
    return observations + [r.observations for r in results], results


# ---------------------------------------------------------------------------------------------
# Registry


def test_noframeskip_and_v5_ids_resolve_to_the_atari_family(registry):
    assert not registry.errors
    pong = registry.get("env", "PongNoFrameskip-v4")
    assert type(pong).__module__ == "plugins.envs.atari.family"  # not gymnasium_ids' generic family
    assert pong.score_range == (-20.7, 14.6) and pong.splits == ()
    assert params_of(pong).repeat_action_probability == 0.0
    assert params_of(registry.get("env", "ALE/Breakout-v5")).repeat_action_probability == 0.25
    assert registry.get("env", "SpaceInvadersNoFrameskip-v4").score_range == (148.0, 1668.7)
    assert type(registry.get("env", "CartPole-v1")).__module__ == "plugins.envs.gymnasium.family"
    assert {"atari-games", "atari-modes"} <= set(registry.names("env"))
    with pytest.raises(UserError):
        registry.get("env", "NoSuchGameNoFrameskip-v4")


def test_other_ale_ids_are_generic_gymnasium_families_drawn_from_the_screen(registry):
    family = registry.get("env", "Pong-v4")  # no preprocessing for these ids: the generic family
    assert type(family).__module__ == "plugins.envs.gymnasium.family" and family.name == "Pong-v4"
    env = _env(registry, "Pong-v4")
    try:
        env.reset(seed=0)
        assert isinstance(env, Renderable)
        frame = env.render(0)
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and frame.any()
    finally:
        env.close()


def test_the_games_family_declares_the_ids_resolved_on_demand(registry):
    (names,) = registry.resolved_names()
    assert names.pattern == "<Game>NoFrameskip-v4, ALE/<Game>-v5" and names.provider == "ale-py"
    assert names in registry.get("env", "atari-games").resolved_names


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_observations_are_stacks_of_84x84_grayscale_frames(registry):
    env = _env(registry, "PongNoFrameskip-v4", count=2)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    assert env.action_space.n == len(game_info("pong").minimal_actions) == 6
    observations, results = _run(env, [np.array([FIRE, 2])] * 3)
    first = observations[0]
    assert first.shape == (2, 4, 84, 84) and first.dtype == np.uint8
    assert not first[:, :3].any() and first[:, 3].any()  # zero-filled after a reset, newest last
    for before, after in zip(observations, observations[1:]):
        np.testing.assert_array_equal(after[:, :3], before[:, 1:])  # the stack shifts by one frame
    assert all(r.rewards.dtype == np.float32 for r in results)
    env.close()


def test_scores_are_raw_while_training_rewards_are_clipped(registry):
    # SpaceInvaders pays 5 to 30 points per invader: the raw score exceeds the clipped sum.
    steps = 100
    overrides = {"max_episode_steps": steps, "backend": "python"}
    clipped = _env(registry, "SpaceInvadersNoFrameskip-v4", overrides)
    raw = _env(registry, "SpaceInvadersNoFrameskip-v4", {**overrides, "clip_rewards": False})
    _, clipped_results = _run(clipped, [np.array([FIRE])] * steps)
    _, raw_results = _run(raw, [np.array([FIRE])] * steps)
    clipped_rewards = np.array([r.rewards[0] for r in clipped_results])
    raw_rewards = np.array([r.rewards[0] for r in raw_results])
    assert set(np.unique(clipped_rewards)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(clipped_rewards, np.sign(raw_rewards))
    (episode,) = clipped_results[-1].finished  # the time limit ends the game
    assert clipped_results[-1].truncated[0] and episode.episode_length == steps
    assert episode.episode_return == raw_rewards.sum() > clipped_rewards.sum()
    assert [e.episode_return for e in raw_results[-1].finished] == [episode.episode_return]


def test_a_lost_life_terminates_without_ending_the_game(registry):
    # Breakout with FIRE only: the paddle never moves, so each of the 5 lives is lost quickly.
    env = _env(registry, "BreakoutNoFrameskip-v4", {"backend": "python"})
    previous = env.reset(seed=0)
    terminations, steps = 0, 0
    while True:
        result = env.step(np.array([FIRE]))
        steps += 1
        if result.terminated[0] and not result.finished:
            terminations += 1
            # The game goes on: the next observation continues the stack, and is the final one.
            np.testing.assert_array_equal(result.observations[0, :3], previous[0, 1:])
            np.testing.assert_array_equal(result.final_observations[0], result.observations[0])
        if result.finished:
            break
        assert steps < 2_000
        previous = result.observations
    (episode,) = result.finished
    assert terminations == 4 and result.terminated[0]  # 4 lost lives, then the real game over
    assert episode.episode_length == steps and not result.observations[0, :3].any()  # a new game

    whole_games = _env(registry, "BreakoutNoFrameskip-v4", {"backend": "python", "episodic_life": False})
    _, results = _run(whole_games, [np.array([FIRE])] * steps)
    assert [i for i, r in enumerate(results) if r.terminated[0]] == [steps - 1]


def test_the_same_seed_gives_the_same_observations(registry):
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 18, 2) for _ in range(40)]
    first, _ = _run(_env(registry, "atari-games", {"games": "Breakout,Pong"}, count=2, seed=3), actions, seed=5)
    env = _env(registry, "atari-games", {"games": "Breakout,Pong"}, count=2, seed=3)
    again, _ = _run(env, actions, seed=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    repeated, _ = _run(env, actions, seed=5)  # reset(seed) on a used env starts over
    for a, b in zip(first, repeated):
        np.testing.assert_array_equal(a, b)
    other, _ = _run(env, actions, seed=6)  # other no-op starts
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_native_and_python_backends_agree(registry):
    # Without random no-op starts both backends emulate the same frames; the final observation
    # of a real game over may differ (never bootstrapped from), everything else is identical.
    overrides = {"noop_max": 0, "max_episode_steps": 150}
    native = _env(registry, "BreakoutNoFrameskip-v4", {**overrides, "backend": "native"}, count=2)
    python = _env(registry, "BreakoutNoFrameskip-v4", {**overrides, "backend": "python"}, count=2)
    assert type(native).__name__ == "NativeAtariVectorEnv" and type(python).__name__ == "PythonAtariVectorEnv"
    rng = np.random.default_rng(1)
    actions = [rng.integers(0, 4, 2) for _ in range(400)]
    native_observations, native_results = _run(native, actions)
    python_observations, python_results = _run(python, actions)
    for a, b in zip(native_observations, python_observations):
        np.testing.assert_array_equal(a, b)
    lives_lost = 0
    for a, b in zip(native_results, python_results):
        for field in ("rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert [(e.simulator, e.episode_return, e.episode_length) for e in a.finished] == [
            (e.simulator, e.episode_return, e.episode_length) for e in b.finished
        ]
        assert (a.final_observations is None) == (b.final_observations is None)
        continuing = (a.terminated | a.truncated) & ~np.isin([0, 1], [e.simulator for e in a.finished])
        if continuing.any():
            np.testing.assert_array_equal(a.final_observations[continuing], b.final_observations[continuing])
            lives_lost += int(continuing.sum())
    assert lives_lost > 0 and sum(len(r.finished) for r in native_results) > 2
    native.close()


# ---------------------------------------------------------------------------------------------
# Families


def test_game_set_gives_learner_k_game_k_mod_n(registry):
    family = registry.get("env", "atari-games")
    params = params_of(family, {"games": "Pong, breakout,space_invaders"})
    tasks = family.training_tasks(params, 5, seed=0)
    assert [t.task_id for t in tasks] == ["Pong", "Breakout", "SpaceInvaders", "Pong", "Breakout"]
    assert tasks == family.training_tasks(params, 5, seed=9)
    assert all(isinstance(v, float) for t in tasks for v in t.parameters.values())
    mixed = family.make_env(params, tasks[:3], 0)
    assert type(mixed).__name__ == "PythonAtariVectorEnv" and mixed.action_space.n == 18
    assert type(family.make_env(params, [tasks[1]] * 2, 0)).__name__ == "PythonAtariVectorEnv"
    # With cores of its own, a learner whose simulators all play one game runs them natively.
    threaded = params_of(family, {"games": "Pong,Breakout", "native_threads": 2})
    one_game = family.make_env(threaded, [tasks[1]] * 2, 0)
    assert type(one_game).__name__ == "NativeAtariVectorEnv" and one_game.action_space.n == 18
    one_game.close()


def test_modes_family_holds_out_modes_it_does_not_train_on(registry):
    family = registry.get("env", "atari-modes")
    assert family.splits == ("held-out",)
    params = params_of(family)  # SpaceInvaders: modes 0-15, difficulties 0-1
    tasks = family.training_tasks(params, 30, seed=0)
    assert tasks == family.training_tasks(params, 30, seed=0)
    assert tasks[:4] == family.training_tasks(params, 4, seed=0)
    assert tasks != family.training_tasks(params, 30, seed=1)  # seeds vary who trains on what
    variants = lambda ts: {(t.parameters["mode"], t.parameters["difficulty"]) for t in ts}  # noqa: E731
    trained = variants(tasks)
    assert trained == {(float(m), 0.0) for m in range(16) if m not in (1, 5, 9, 13)}  # 12 variants, all used
    held_out = family.evaluation_tasks(params, "held-out", 20, seed=0)
    assert held_out == family.evaluation_tasks(params, "held-out", 20, seed=7)
    assert not variants(held_out) & trained and len(variants(held_out)) == 20
    assert [t.task_id for t in held_out[:4]] == [f"SpaceInvaders-m{m}-d0" for m in (1, 5, 9, 13)]
    chosen = params_of(family, {"game": "Breakout", "train_modes": "0,4", "train_difficulties": "0,1"})
    assert variants(family.training_tasks(chosen, 8, seed=0)) == {(m, d) for m in (0.0, 4.0) for d in (0.0, 1.0)}
    # Modes change the game: the same actions from the same start give other frames.
    same_start = params_of(family, {"noop_max": 0})
    env = family.make_env(same_start, [tasks[0], held_out[0]], 0)
    observations, _ = _run(env, [np.array([FIRE, FIRE])] * 30)
    assert observations[-1].shape == (2, 4, 84, 84)
    assert not np.array_equal(observations[-1][0], observations[-1][1])


def test_resampling_draws_a_training_variant_at_every_game(registry):
    family = registry.get("env", "atari-modes")
    params = params_of(family, {"resample": True, "max_episode_steps": 3, "noop_max": 0})
    env = family.make_env(params, family.training_tasks(params, 1, 0), 0)
    _, results = _run(env, [np.array([0])] * 30)
    played = [e.task.task_id for r in results for e in r.finished]
    assert len(played) == 10 and len(set(played)) > 1
    assert set(played) <= {t.task_id for t in family.variants(params)[0]}


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("atari-games", {"games": "Pong,Breakuot"}, 'did you mean "Breakout"'),
        ("atari-games", {"games": " , "}, "games is empty"),
        ("atari-modes", {"game": "SpaceInvader"}, 'did you mean "SpaceInvaders"'),
        ("atari-modes", {"train_modes": "0,99"}, "has no mode 99"),
        ("atari-modes", {"train_modes": "zero"}, "comma-separated integers"),
        ("atari-modes", {"train_difficulties": "3"}, "has no difficulty 3"),
        ("atari-modes", {"game": "Seaquest", "train_difficulties": "0,1"}, "none is left for the held-out split"),
    ],
)
def test_bad_params_are_one_line_user_errors(registry, name, overrides, message):
    family = registry.get("env", name)
    with pytest.raises(UserError, match=message) as error:
        family.training_tasks(params_of(family, overrides), 2, 0)
    assert "\n" not in str(error.value)


def test_native_backend_refuses_what_it_cannot_run(registry):
    family = registry.get("env", "atari-games")
    params = params_of(family, {"backend": "native"})
    with pytest.raises(UserError, match="backend=native"):
        family.make_env(params, family.training_tasks(params, 2, 0), 0)
    with pytest.raises(UserError, match="evaluation split"):
        family.evaluation_tasks(params, "held-out", 1, 0)
