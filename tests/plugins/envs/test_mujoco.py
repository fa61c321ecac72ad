"""MuJoCo env families: Gymnasium-exact stepping, physics parameters applied and restored exactly,
task draws, the TaskVectorEnv contract, success and the registry."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from benchbase.api.contracts import EnvFamily, Task, params_of
from benchbase.api.registry import load_registry
from benchbase.errors import UserError
from plugins.envs.gymnasium.family import GymnasiumIdFamily
from plugins.envs.mujoco import family as mj
from plugins.envs.mujoco.physics import TORSO, PhysicsSettings, PristinePhysics, quiet_known_asset_warnings
from plugins.envs.mujoco.render import MujocoFrames

ROBOTS = [robot.key for robot in mj.ROBOTS]
VARIANTS = {
    "random-wind": ("wind_x", "wind_y"),
    "random-mass": ("mass_scale",),
    "random-mujoco": ("wind_x", "wind_y", "mass_scale"),
}


@pytest.fixture(scope="module")
def registry():
    return load_registry(only={"plugins.envs.mujoco.family"})


def family(registry, name: str) -> EnvFamily:
    return registry.get("env", name)


def long_episodes(fam: EnvFamily):
    return dataclasses.replace(params_of(fam), max_episode_steps=10_000)


def rollout(fam: EnvFamily, task: Task, steps: int = 40, env=None, seed: int = 3) -> np.ndarray:
    """Observations of one simulator on `task` under fixed moderate actions (same seeds: same start)."""
    env = env or fam.make_env(long_episodes(fam), [task], seed=0)
    observations = [env.reset(seed=seed)[0]]
    rng = np.random.default_rng(7)
    for _ in range(steps):
        result = env.step(rng.uniform(-0.5, 0.5, (1, *env.action_space.shape)))
        observations.append(result.observations[0])
    return np.array(observations)


# ---------------------------------------------------------------------------------------------
# Stepping reproduces Gymnasium's -v5 envs on the same physics


@pytest.mark.parametrize(
    "name", ["extreme-hopper", "random-mujoco-halfcheetah", "random-mujoco-hopper", "extreme-halfcheetah"]
)
def test_steps_reproduce_gymnasium_bit_for_bit(registry, name):
    fam = family(registry, name)
    tasks = fam.training_tasks(params_of(fam), 2, seed=1)
    env = fam.make_env(long_episodes(fam), tasks, seed=0)
    env.reset(seed=4)
    references = []
    for i, task in enumerate(tasks):
        with quiet_known_asset_warnings():
            reference = gym.make(fam.robot.gym_id).unwrapped
        reference.reset(seed=i)
        PristinePhysics(reference.model).apply(fam.physics(task.parameters))
        reference.set_state(env.envs[i].data.qpos.copy(), env.envs[i].data.qvel.copy())
        references.append(reference)
    active = [True, True]
    rng = np.random.default_rng(0)
    for _ in range(120):
        actions = rng.uniform(-1.3, 1.3, (2, *env.action_space.shape)).astype(np.float32)  # beyond ±1: clipped
        result = env.step(actions)
        for i in np.flatnonzero(active):
            expected, reward, terminated, _, _ = references[i].step(np.clip(actions[i], -1.0, 1.0))
            seen = result.final_observations[i] if result.terminated[i] else result.observations[i]
            np.testing.assert_array_equal(seen, expected.astype(np.float32))
            assert result.rewards[i] == np.float32(reward)
            assert bool(result.terminated[i]) == terminated
            active[i] = not terminated
    if "hopper" in name:
        assert not any(active), "random actions topple the hopper: the comparison covered terminations"


# ---------------------------------------------------------------------------------------------
# Physics parameters


def _changed(fam: EnvFamily, name: str, value: float) -> tuple[Task, Task]:
    base = fam.evaluation_tasks(params_of(fam), "D", 1, seed=0)[0]
    return base, Task("changed", {**base.parameters, name: value})


CHANGES = [
    ("random-wind-halfcheetah", "wind_x", 10.0),
    ("random-wind-hopper", "wind_x", -10.0),
    ("random-mass-halfcheetah", "mass_scale", 1.5),
    ("random-mass-hopper", "mass_scale", 0.6),
    ("default-halfcheetah", "power", 1.2),
    ("default-hopper", "power", 0.5),
    ("default-halfcheetah", "density", 1300.0),
    ("default-hopper", "density", 700.0),
    ("default-halfcheetah", "friction", 0.3),
    ("default-hopper", "friction", 1.3),
]


@pytest.mark.parametrize(("name", "parameter", "value"), CHANGES, ids=[f"{n}:{p}" for n, p, _ in CHANGES])
def test_each_parameter_changes_the_trajectory(registry, name, parameter, value):
    fam = family(registry, name)
    base, changed = _changed(fam, parameter, value)
    assert not np.allclose(rollout(fam, base), rollout(fam, changed), atol=1e-6)


@pytest.mark.parametrize("robot", ROBOTS)
def test_air_changes_the_trajectory_and_lateral_wind_exerts_no_force(registry, robot):
    still = rollout(family(registry, f"air-{robot}"), Task("air", {}))
    assert not np.allclose(still, rollout(family(registry, f"default-{robot}"), Task("D", {})), atol=1e-9)
    windy = family(registry, f"random-wind-{robot}")
    # The runners are planar in x-z: a wind along y pushes only along a constrained axis.
    np.testing.assert_array_equal(rollout(windy, Task("y", {"wind_x": 0.0, "wind_y": 15.0})), still)


def _compiled_model(gym_id: str) -> mujoco.MjModel:
    with quiet_known_asset_warnings():
        return gym.make(gym_id).unwrapped.model


def _model_fields(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every array of `model` and every number of its options, copied."""
    fields = {}
    for owner, prefix in ((model, ""), (model.opt, "opt.")):
        for name in dir(owner):
            value = None if name.startswith("_") else getattr(owner, name)
            if isinstance(value, (np.ndarray, float, int)):
                fields[prefix + name] = np.array(value)
    return fields


def _assert_same_model(model: mujoco.MjModel, reference: mujoco.MjModel) -> None:
    expected = _model_fields(reference)
    seen = _model_fields(model)
    assert len(expected) > 100 and seen.keys() == expected.keys()
    assert [k for k in expected if not np.array_equal(seen[k], expected[k], equal_nan=True)] == []


@pytest.mark.parametrize("word", ["default", "random", "extreme"])
@pytest.mark.parametrize("robot", mj.ROBOTS, ids=lambda r: r.key)
def test_packer_density_scales_the_torso_alone_and_restores_exactly(registry, robot, word):
    fam = family(registry, f"{word}-{robot.key}")
    nominal = fam.evaluation_tasks(params_of(fam), "D", 1, seed=0)[0]  # density 1000
    env = fam.make_env(params_of(fam), [nominal], seed=0)
    model, pristine = env.envs[0].model, _compiled_model(robot.gym_id)
    _assert_same_model(model, pristine)
    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, TORSO)
    others = np.arange(model.nbody) != torso
    assert torso > 0 and model.body_mass[others].any()
    env.set_task(0, Task("heavy torso", {**nominal.parameters, "density": 1500.0}))
    assert model.body_mass[torso] == pristine.body_mass[torso] * 1.5
    np.testing.assert_array_equal(model.body_inertia[torso], pristine.body_inertia[torso] * 1.5)
    np.testing.assert_array_equal(model.body_mass[others], pristine.body_mass[others])
    np.testing.assert_array_equal(model.body_inertia[others], pristine.body_inertia[others])
    env.set_task(0, nominal)
    _assert_same_model(model, pristine)


def test_a_torso_scale_needs_a_torso():
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body name="trunk"><geom size="0.1"/></body></worldbody></mujoco>'
    )
    physics = PristinePhysics(model)
    physics.apply(PhysicsSettings(mass_scale=2.0))  # every body: no torso needed
    with pytest.raises(ValueError, match="named 'torso'"):
        physics.apply(PhysicsSettings(torso_mass_scale=2.0))


@pytest.mark.parametrize("robot", mj.ROBOTS, ids=lambda r: r.key)
def test_diff_dac_mass_scales_every_body(registry, robot):
    fam = family(registry, f"random-mass-{robot.key}")
    env = fam.make_env(params_of(fam), [Task("light", {"mass_scale": 0.6})], seed=0)
    model, pristine = env.envs[0].model, _compiled_model(robot.gym_id)
    np.testing.assert_array_equal(model.body_mass, pristine.body_mass * 0.6)
    np.testing.assert_array_equal(model.body_inertia, pristine.body_inertia * 0.6)


@pytest.mark.parametrize("name", ["extreme-hopper", "random-mujoco-halfcheetah"])
def test_switching_tasks_restores_the_physics_bit_for_bit(registry, name):
    fam = family(registry, name)
    a, b = fam.training_tasks(params_of(fam), 2, seed=5)
    reused = fam.make_env(long_episodes(fam), [a], seed=0)
    rollout(fam, a, env=reused)
    reused.set_task(0, b)
    on_b = rollout(fam, b, env=reused)
    reused.set_task(0, a)
    np.testing.assert_array_equal(rollout(fam, a, env=reused), rollout(fam, a))
    np.testing.assert_array_equal(on_b, rollout(fam, b))


def test_resampling_draws_a_task_per_episode_reproducibly(registry):
    fam = family(registry, "random-mujoco-halfcheetah")
    params = dataclasses.replace(params_of(fam), resample=True, max_episode_steps=3)
    tasks = fam.training_tasks(params, 2, seed=0)

    def episodes():
        env = fam.make_env(params, tasks, seed=4)
        env.reset(seed=0)
        return [e for _ in range(9) for e in env.step(np.zeros((2, 6))).finished]

    seen = episodes()
    assert len(seen) == 6
    drawn = [tuple(e.task.parameters.values()) for e in seen]
    assert len(set(drawn)) == len(drawn) and not set(drawn) & {tuple(t.parameters.values()) for t in tasks}
    assert all(set(e.task.parameters) == {"wind_x", "wind_y", "mass_scale"} for e in seen)
    assert [e.task for e in episodes()] == [e.task for e in seen]


# ---------------------------------------------------------------------------------------------
# Task draws


@pytest.mark.parametrize("robot", mj.ROBOTS, ids=lambda r: r.key)
def test_packer_draws_are_reproducible_distinct_and_in_range(registry, robot):
    for split, word in (("D", "default"), ("R", "random"), ("E", "extreme")):
        fam = family(registry, f"{word}-{robot.key}")
        params = params_of(fam)
        tasks = fam.training_tasks(params, 32, seed=7)
        assert tasks == fam.training_tasks(params, 32, seed=7)
        assert tasks[:4] == fam.training_tasks(params, 4, seed=7)
        other_seed = fam.training_tasks(params, 32, seed=8)
        held_out = fam.evaluation_tasks(params, split, 32, seed=7)
        for r in (robot.power, mj.DENSITY, mj.FRICTION):
            values = np.array([t.parameters[r.name] for t in tasks])
            if split == "D":
                assert np.all(values == r.default)
                continue
            assert len(set(values)) == len(values)
            assert values.tolist() != [t.parameters[r.name] for t in other_seed]
            low, high = r.middle
            if split == "R":
                assert np.all((values >= low) & (values <= high))
            else:
                (low1, _), (_, high2) = r.extremes
                assert np.all(((values >= low1) & (values <= low)) | ((values >= high) & (values <= high2)))
                assert np.any(values < low) and np.any(values > high)
        if split != "D":
            assert not {tuple(t.parameters.values()) for t in held_out} & {tuple(t.parameters.values()) for t in tasks}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_diff_dac_draws_follow_the_beta_laws(registry, variant):
    fam = family(registry, f"{variant}-hopper")
    params = params_of(fam)
    tasks = fam.training_tasks(params, 400, seed=3)
    assert tasks == fam.training_tasks(params, 400, seed=3)
    assert tasks[0] != fam.training_tasks(params, 1, seed=4)[0]
    assert all(tuple(t.parameters) == VARIANTS[variant] for t in tasks)
    # Distinct learners; mass alone repeats a few values that round onto its upper bound.
    distinct = len({tuple(t.parameters.values()) for t in tasks})
    assert distinct == 400 if "wind_x" in VARIANTS[variant] else distinct > 380
    if "wind_x" in VARIANTS[variant]:
        wind = np.array([[t.parameters["wind_x"], t.parameters["wind_y"]] for t in tasks])
        assert np.all(np.abs(wind) < 15.0)
        assert np.mean(np.abs(wind) > 12.0) > 0.35  # Beta(0.4, 0.4) favours the ends (uniform: 0.2)
    if "mass_scale" in VARIANTS[variant]:
        mass = np.array([t.parameters["mass_scale"] for t in tasks])
        # Mathematically inside (0.05, 1.95); about 1 % of Beta(0.1, 0.1) draws round to exactly 1.0
        # in floating point, giving the bound itself.
        assert np.all((mass >= 0.05) & (mass <= 1.95))
        assert np.mean(np.abs(mass - 1.0) > 0.76) > 0.7  # Beta(0.1, 0.1): about 0.8 near the ends
    nominal = fam.evaluation_tasks(params, "D", 2, seed=3)
    assert all(t.parameters == {k: 1.0 if k == "mass_scale" else 0.0 for k in VARIANTS[variant]} for t in nominal)
    held_out = fam.evaluation_tasks(params, "R", 50, seed=3)
    assert held_out == fam.evaluation_tasks(params, "R", 50, seed=3)
    shared = {tuple(t.parameters.values()) for t in held_out} & {tuple(t.parameters.values()) for t in tasks}
    assert not shared if "wind_x" in VARIANTS[variant] else len(shared) <= 3  # mass: values at the bound


def test_splits_and_bad_split(registry):
    assert family(registry, "random-wind-hopper").splits == ("D", "R")
    assert family(registry, "extreme-halfcheetah").splits == ("D", "R", "E")
    air = family(registry, "air-hopper")
    assert air.splits == () and air.training_tasks(params_of(air), 2, seed=0) == [Task("air", {})] * 2
    with pytest.raises(UserError, match='evaluation split of air-hopper "D"'):
        air.evaluation_tasks(params_of(air), "D", 1, seed=0)
    fam = family(registry, "random-hopper")
    with pytest.raises(UserError, match=r"available: D, E, R\)$") as error:
        fam.evaluation_tasks(params_of(fam), "interpolation", 1, seed=0)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Contract: autoreset, truncation, final observations, raw returns, success


def test_truncation_autoreset_and_raw_returns(registry):
    fam = family(registry, "random-mass-halfcheetah")
    params = dataclasses.replace(params_of(fam), max_episode_steps=5)
    tasks = fam.training_tasks(params, 3, seed=0)
    env = fam.make_env(params, tasks, seed=0)
    obs = env.reset(seed=1)
    assert obs.shape == (3, 17) and obs.dtype == np.float32 and env.observation_space.shape == (17,)
    returns = np.zeros(3)
    for _ in range(4):
        result = env.step(np.full((3, 6), 0.5))
        returns += result.rewards
        assert not (result.truncated | result.terminated).any() and result.final_observations is None
    result = env.step(np.full((3, 6), 0.5))
    returns += result.rewards
    assert result.truncated.all() and not result.terminated.any()
    assert sorted(e.simulator for e in result.finished) == [0, 1, 2]
    for episode in result.finished:
        i = episode.simulator
        assert episode.episode_length == 5 and episode.success is None and episode.task == tasks[i]
        assert episode.episode_return == pytest.approx(returns[i], rel=1e-5)
        assert np.abs(result.final_observations[i] - result.observations[i]).max() > 0.01  # reset
    assert result.rewards.dtype == np.float32 and result.observations.flags.c_contiguous
    assert env.step(np.zeros((3, 6))).finished == []


def test_hopper_termination_reports_the_fallen_state(registry):
    fam = family(registry, "random-mujoco-hopper")
    env = fam.make_env(params_of(fam), fam.training_tasks(params_of(fam), 2, seed=0), seed=0)
    env.reset(seed=0)
    for steps in range(1, 500):  # noqa: B007 - the episode length is checked after the loop
        result = env.step(np.ones((2, 3)))  # full torque on every joint topples it
        if result.finished:
            break
    for episode in result.finished:
        i = episode.simulator
        assert result.terminated[i] and not result.truncated[i] and episode.episode_length == steps
        z, angle = result.final_observations[i][:2]
        assert z <= 0.7 or abs(angle) >= 0.2
        assert abs(result.observations[i][1]) < 0.01  # the new episode starts upright


def test_success_is_the_distance_the_torso_travelled(registry):
    fam = family(registry, "default-halfcheetah")
    params = dataclasses.replace(params_of(fam), max_episode_steps=3)
    env = fam.make_env(params, fam.training_tasks(params, 2, seed=0), seed=0)
    env.reset(seed=0)
    env.envs[0].data.qpos[0] += 20.5  # carried 20.5 m forward during the episode
    env.envs[1].data.qpos[0] += 19.5
    for _ in range(3):
        result = env.step(np.zeros((2, 6)))
    assert [e.success for e in sorted(result.finished, key=lambda e: e.simulator)] == [True, False]
    assert "20 m" in fam.success_criterion and fam.score_range is None


# ---------------------------------------------------------------------------------------------
# Registry


def test_families_and_aliases_resolve(registry):
    assert not registry.errors
    names = set(registry.names("env"))
    for robot in mj.ROBOTS:
        for word in ("default", "random", "extreme", "air", "random-wind", "random-mass", "random-mujoco"):
            assert f"{word}-{robot.key}" in names
        for alias, word in (
            ("RandomWind", "random-wind"),
            ("RandomMass", "random-mass"),
            ("RandomMuJoCo", "random-mujoco"),
            ("Air", "air"),
        ):
            resolved = registry.get("env", f"{alias}{robot.title}-v2")
            assert resolved.name == f"{word}-{robot.key}"
            low, high = resolved.score_range
            assert low < 0.2 * high and resolved.success_criterion == ""
    assert params_of(registry.get("env", "RandomMuJoCoHalfCheetah-v2")).max_episode_steps == 1000
    with pytest.raises(UserError, match="did you mean"):
        registry.get("env", "RandomWindHoper-v2")


def test_gymnasium_mujoco_ids_resolve_with_mujoco_frames(registry):
    hopper = family(registry, "Hopper-v5")  # not a registered family: Gymnasium's own id
    assert type(hopper) is GymnasiumIdFamily and hopper.frames is MujocoFrames
    assert hopper.description == "Gymnasium Hopper-v5 as a single task"
    assert family(registry, "Ant-v5").frames is MujocoFrames
    with pytest.raises(UserError):  # other Gymnasium ids are not the MuJoCo plugin's
        family(registry, "CartPole-v1")
