"""Conformance: every registered plugin of every kind keeps its contract (benchbase.api.contracts).

Parametrised over what `load_registry()` finds when this module is imported, so a new
built-in or an installed third-party plugin is checked with no change here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from benchbase.api.contracts import (
    KINDS,
    Algorithm,
    EnvFamily,
    FinishedEpisode,
    IterationOutput,
    LearnerSpec,
    ReplayStrategy,
    ResolvedNames,
    StepResult,
    Task,
    Topology,
    params_of,
    space_kind,
)
from benchbase.api.params import describe, to_dict
from benchbase.api.registry import COMPONENT_KINDS, load_registry
from benchbase.api.replay import ReplayMix, batch_shares
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.errors import UserError

REGISTRY = load_registry()

#: A Gymnasium id no plugin registers: resolved on demand as a one-task family.
RESOLVED_ENV_IDS = ("MountainCarContinuous-v0",)

COMPONENTS = [(kind, name) for kind in COMPONENT_KINDS for name in REGISTRY.names(kind)]
ALIASES = [(kind, alias, name) for kind in COMPONENT_KINDS for alias, name in sorted(REGISTRY.aliases[kind].items())]
TOPOLOGIES = REGISTRY.names("topology")
ENVS = REGISTRY.names("env") + list(RESOLVED_ENV_IDS)
ALGORITHMS = REGISTRY.names("algorithm")
REPLAYS = REGISTRY.names("replay")


def _complete_graph(n: int) -> dict[str, Any]:
    return {"matrix": json.dumps((1 - np.eye(n, dtype=int)).tolist())}


#: Topologies whose defaults cannot build (a required parameter): parameters for n learners.
TOPOLOGY_EXAMPLES: dict[str, Callable[[int], dict[str, Any]]] = {"adjacency": _complete_graph}


def component(kind: str, name: str) -> Any:
    return REGISTRY.get(kind, name)


def test_something_of_every_kind_is_registered():
    assert not REGISTRY.errors, REGISTRY.errors
    REGISTRY.check()
    for kind in KINDS:
        assert REGISTRY.names(kind), f"no {kind} registered"


# -- every component ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_component_basics(kind: str, name: str):
    comp = component(kind, name)
    assert isinstance(comp, COMPONENT_KINDS[kind])
    assert comp.name == name and name.strip() == name and name
    assert isinstance(comp.description, str) and comp.description.strip(), f"{name} has no description"
    assert "\n" not in comp.description.strip(), "the description is one line"

    params_cls = comp.Params
    assert dataclasses.is_dataclass(params_cls) and isinstance(params_cls, type)
    assert params_cls.__dataclass_params__.frozen, f"{name}.Params must be a frozen dataclass"
    for f in dataclasses.fields(params_cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert has_default, f"{name}.{f.name} has no default"
        assert str(f.metadata.get("help", "")).strip(), f"{name}.{f.name} has no help text (use param())"

    infos = describe(params_cls)
    assert [i.name for i in infos] == [f.name for f in dataclasses.fields(params_cls)]
    for info in infos:
        assert info.type and info.help

    defaults = params_of(comp)
    assert isinstance(defaults, params_cls)
    values = to_dict(defaults)
    json.dumps(values)  # cell identity hashes the resolved parameters as JSON
    # Each default written back as text (as --set would pass it) resolves to the same value.
    as_text = {key: ("none" if value is None else str(value)) for key, value in values.items()}
    assert to_dict(params_of(comp, as_text)) == values
    for f in dataclasses.fields(params_cls)[:1]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(defaults, f.name, getattr(defaults, f.name))


@pytest.mark.parametrize(("kind", "alias", "name"), ALIASES, ids=[f"{k}:{a}" for k, a, _ in ALIASES])
def test_aliases_resolve_to_the_same_component(kind: str, alias: str, name: str):
    assert alias not in REGISTRY.components[kind], f"alias {alias} shadows a component name"
    assert alias in component(kind, name).aliases
    assert REGISTRY.get(kind, alias) is REGISTRY.get(kind, name)


def test_listing_covers_every_component():
    listed = {(row["kind"], row["name"]) for row in REGISTRY.listing()}
    assert listed == set(COMPONENTS)


# -- topologies ---------------------------------------------------------------------------------


def _weight_schemes(topology: Topology) -> list[dict[str, str]]:
    """Every weights choice valid for the topology ([{}] when its Params has no `weights`)."""
    if "weights" not in {f.name for f in dataclasses.fields(topology.Params)}:
        return [{}]
    schemes = [{"weights": "uniform"}, {"weights": "push-sum"}, {"weights": "auto"}]
    return schemes + ([] if topology.directed else [{"weights": "metropolis"}])


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topology_builds_valid_mixing_plans(name: str):
    topology = component("topology", name)
    assert isinstance(topology, Topology)
    for n in range(1, 7):
        for scheme in _weight_schemes(topology):
            overrides = {**TOPOLOGY_EXAMPLES.get(name, lambda n: {})(n), **scheme}
            params = params_of(topology, overrides)
            processes = topology.learner_count(n, params)
            assert isinstance(processes, int) and 1 <= processes <= n
            for seed in (0, 1):
                plan = build_mixing_plan(topology, params, processes, seed)
                assert plan.n_learners == processes and plan.period >= 1
                again = build_mixing_plan(topology, params, processes, seed)
                assert all(np.array_equal(a, b) for a, b in zip(plan.in_adjacency, again.in_adjacency))
                for adjacency, weights in zip(plan.in_adjacency, plan.weights):
                    assert (weights >= 0).all()
                    # Plain mixing averages what a learner receives (rows); push-sum splits
                    # what a learner sends (columns).
                    axis = 0 if plan.push_sum else 1
                    np.testing.assert_allclose(weights.sum(axis=axis), 1.0, err_msg=f"{name}, n={n}: {scheme}")
                    assert not np.diag(adjacency).any()
                    if not topology.directed:
                        assert np.array_equal(adjacency, adjacency.T), f"{name} (undirected), n={n}: asymmetric"
                        if scheme.get("weights", "auto") in ("auto", "metropolis"):
                            np.testing.assert_allclose(weights, weights.T)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topology_rejects_a_cell_without_learners(name: str):
    topology = component("topology", name)
    params = params_of(topology, TOPOLOGY_EXAMPLES.get(name, lambda n: {})(2))
    with pytest.raises(UserError):
        build_mixing_plan(topology, params, 0, seed=0)


# -- env families -------------------------------------------------------------------------------


def _short_episodes(family: EnvFamily) -> dict[str, Any]:
    """A short time limit where the family has one, so episodes end within a few dozen steps."""
    names = {f.name for f in dataclasses.fields(family.Params)}
    return {"max_episode_steps": 20} if "max_episode_steps" in names else {}


@pytest.mark.parametrize("name", ENVS)
def test_env_family_tasks(name: str):
    family = component("env", name)
    assert isinstance(family, EnvFamily)
    params = params_of(family)
    for count in (1, 3):
        tasks = family.training_tasks(params, count, 7)
        assert len(tasks) == count
        assert all(isinstance(task, Task) and task.task_id for task in tasks)
        assert all(isinstance(v, float) or isinstance(v, int) for t in tasks for v in t.parameters.values())
        assert tasks == family.training_tasks(params, count, 7), "training tasks must be reproducible"
    assert isinstance(family.splits, tuple) and "train" not in family.splits
    for split in family.splits:
        held_out = family.evaluation_tasks(params, split, 2, 7)
        assert len(held_out) == 2 and all(isinstance(task, Task) for task in held_out)
        assert held_out == family.evaluation_tasks(params, split, 2, 7)
    with pytest.raises(UserError):
        family.evaluation_tasks(params, "no-such-split", 1, 0)
    assert isinstance(family.success_criterion, str)
    if family.score_range is not None:
        low, high = family.score_range
        assert low < high
    for names in family.resolved_names:  # one row of `bench plugins` each
        assert isinstance(names, ResolvedNames) and names.pattern and names.provider and names.description


def _random_actions(space: Any, count: int, steps: int, seed: int) -> list[np.ndarray]:
    space = copy.deepcopy(space)
    space.seed(seed)
    return [np.stack([space.sample() for _ in range(count)]) for _ in range(steps)]


def _rollout(family: EnvFamily, params: Any, tasks: list[Task], actions: list[np.ndarray]) -> list[StepResult]:
    env = family.make_env(params, tasks, 11)
    try:
        first = env.reset(seed=3)
        return [StepResult(first, None, None, None, None, [])] + [env.step(a) for a in actions]
    finally:
        env.close()


@pytest.mark.parametrize("name", ENVS)
def test_env_family_steps_by_the_contract(name: str):
    family = component("env", name)
    params = params_of(family, _short_episodes(family))
    tasks = family.training_tasks(params, 3, 0)
    env = family.make_env(params, tasks, 11)
    try:
        assert env.num_envs == 3
        observation_space, action_space = env.observation_space, env.action_space
        assert space_kind(action_space) in ("discrete", "continuous")
        observations = env.reset(seed=3)
    finally:
        env.close()
    obs_shape = tuple(observation_space.shape)
    assert observations.shape == (3, *obs_shape)

    actions = _random_actions(action_space, 3, 50, seed=5)
    results = _rollout(family, params, tasks, actions)
    np.testing.assert_array_equal(results[0].observations, observations)
    returns, lengths, ended = np.zeros(3), np.zeros(3, dtype=int), 0
    for result in results[1:]:
        assert isinstance(result, StepResult)
        assert result.observations.shape == (3, *obs_shape)
        assert np.isfinite(result.observations).all()
        assert result.rewards.shape == (3,) and result.rewards.dtype == np.float32
        assert result.terminated.shape == (3,) and result.terminated.dtype == np.bool_
        assert result.truncated.shape == (3,) and result.truncated.dtype == np.bool_
        done = result.terminated | result.truncated
        returns += result.rewards
        lengths += 1
        if done.any():
            assert result.final_observations is not None, "an episode ended: final observations are needed"
        if result.final_observations is not None:
            assert result.final_observations.shape == (3, *obs_shape)
            assert np.isfinite(result.final_observations[done]).all()
        assert all(isinstance(episode, FinishedEpisode) for episode in result.finished)
        assert sorted(episode.simulator for episode in result.finished) == np.flatnonzero(done).tolist()
        for episode in result.finished:
            i = episode.simulator
            assert episode.episode_length == lengths[i]
            assert math.isclose(episode.episode_return, returns[i], rel_tol=1e-5, abs_tol=1e-4)
            assert episode.success in (None, True, False)
            assert isinstance(episode.task, Task)
            if not params.resample:
                assert episode.task == tasks[i]
            returns[i], lengths[i] = 0.0, 0
            ended += 1
    if _short_episodes(family):
        assert ended >= 3, "with a 20-step limit every simulator finishes an episode in 50 steps"

    again = _rollout(family, params, tasks, actions)  # same seeds and actions: same numbers
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.observations, b.observations)
        if a.rewards is not None:
            np.testing.assert_array_equal(a.rewards, b.rewards)


# -- algorithms ---------------------------------------------------------------------------------


def _env_kinds(name: str) -> tuple[str, str]:
    family = component("env", name)
    params = params_of(family)
    env = family.make_env(params, family.training_tasks(params, 1, 0), 0)
    try:
        return space_kind(env.action_space), "image" if len(env.observation_space.shape) == 3 else "vector"
    finally:
        env.close()


def _replay_for(algorithm: Algorithm) -> Any:
    """What the core hands an off-policy learner: a ReplayMix, here of the first storing strategy,
    sized so that it can be sampled from after a rollout or two."""
    if not algorithm.uses_replay:
        return None
    for name in REPLAYS:
        strategy = component("replay", name)
        if strategy.stores_segments:
            fields = {f.name for f in dataclasses.fields(strategy.Params)}
            batch_size = params_of(algorithm).batch_size
            overrides: dict[str, Any] = {"min_fill": 1} if "min_fill" in fields else {}
            if "capacity" in fields:
                overrides["capacity"] = max(batch_size, params_of(strategy).capacity)
            params = params_of(strategy, overrides)
            return ReplayMix(batch_shares([(name, params)], batch_size), [strategy.make_buffer(params, 0)])
    pytest.skip(f"{algorithm.name} trains from replay but no replay strategy that stores segments is registered")


PAIRS = [(a, e) for a in ALGORITHMS for e in ENVS]


@pytest.mark.parametrize(("algorithm_name", "env_name"), PAIRS, ids=[f"{a}-{e}" for a, e in PAIRS])
def test_algorithm_learns_on_every_supported_family(algorithm_name: str, env_name: str):
    algorithm = component("algorithm", algorithm_name)
    assert isinstance(algorithm, Algorithm)
    assert algorithm.consensus in ("diffusion", "gossip", "none")
    action_kind, observation_kind = _env_kinds(env_name)
    if action_kind not in algorithm.action_spaces or observation_kind not in algorithm.observation_kinds:
        pytest.skip(f"{algorithm_name} does not support {action_kind} actions / {observation_kind} observations")

    torch.set_num_threads(1)
    family = component("env", env_name)
    env_params = params_of(family)
    simulators = 2
    env = family.make_env(env_params, family.training_tasks(env_params, simulators, 0), 0)
    try:
        params = params_of(algorithm)
        spec = LearnerSpec(
            env=env, rank=0, n_learners=1, seed=0, device=torch.device("cpu"), replay=_replay_for(algorithm)
        )
        learner = algorithm.make_learner(params, spec)

        buffer = learner.parameters_buffer()
        assert isinstance(buffer, torch.Tensor) and buffer.dim() == 1 and buffer.numel() > 0
        assert buffer.is_floating_point()

        for _ in range(2):
            output = learner.iterate()
            assert isinstance(output, IterationOutput)
            n_steps = getattr(params, "n_steps", None)
            if n_steps is not None:
                assert output.env_steps == n_steps * simulators
            else:
                assert output.env_steps > 0 and output.env_steps % simulators == 0
            assert all(isinstance(episode, FinishedEpisode) for episode in output.finished)
            assert output.metrics, "an iteration reports its training metrics"
            for key, value in output.metrics.items():
                assert isinstance(key, str) and isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        assert learner.parameters_buffer().data_ptr() == buffer.data_ptr(), "mixing writes one stable buffer"
        assert torch.isfinite(buffer).all()

        observations = np.stack([env.observation_space.sample() for _ in range(16)]).astype(env.observation_space.dtype)
        before = np.array(learner.act_greedy(observations), copy=True)
        assert len(before) == 16
        for action in before:
            assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype)), action
        assert np.array_equal(before, learner.act_greedy(observations)), "greedy actions are deterministic"

        modules = [m for m in vars(learner).values() if isinstance(m, torch.nn.Module)]
        snapshot = [p.detach().clone() for m in modules for p in m.parameters()]
        generator = torch.Generator().manual_seed(0)
        buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype) * 3)
        after = learner.act_greedy(observations)
        parameters = [p for m in modules for p in m.parameters()]
        model_changed = any(not torch.equal(old, new.detach()) for old, new in zip(snapshot, parameters))
        assert model_changed or not np.array_equal(before, after), "writing the buffer must write the model"
        for action in after:
            assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype)), action
    finally:
        env.close()


# -- replay strategies --------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPLAYS)
def test_replay_strategy_makes_a_buffer(name: str):
    strategy = component("replay", name)
    assert isinstance(strategy, ReplayStrategy)
    params = params_of(strategy)
    buffer = strategy.make_buffer(params, 0)
    if strategy.stores_segments:
        assert buffer is not None, f"{name} stores segments, so it needs a buffer"
    strategy.make_buffer(params, 1)  # any seed
