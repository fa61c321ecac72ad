"""Grid specs and typed parameters: parsing (CLI and TOML), expansion into cells, cell identity,
compatibility checks, and the coercion of user text into typed plugin parameters."""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import textwrap
import uuid
from typing import Any, Literal

import pytest

from benchbase.api.params import coerce, describe, param, resolve
from benchbase.api.registry import BUILTIN_PLUGINS, load_registry
from benchbase.errors import UserError
from benchbase.grid.cell import Cell, straggler_factor, variant
from benchbase.grid.expand import expand
from benchbase.grid.spec import (
    AxisEntry,
    GridSpec,
    default_grid,
    load_grid_file,
    make_spec,
    parse_axis_entry,
    parse_replay_entry,
    parse_set,
    split_top_level,
)

FAKES = """
    import dataclasses

    from benchbase.api.contracts import Algorithm, ReplayStrategy
    from benchbase.api.replay import ReplayParams
    from benchbase.api.hookspecs import hookimpl


    class FakeReplay(ReplayStrategy):
        name = "fake-replay"
        description = "stores segments (for the grid's compatibility checks only)"
        Params = ReplayParams

        def make_buffer(self, params, seed):
            return []


    class OtherReplay(FakeReplay):
        name = "other-replay"


    class DiscreteOnly(Algorithm):
        name = "discrete-only"
        description = "an on-policy algorithm for discrete actions only"
        action_spaces = frozenset({"discrete"})


    class FakeOffPolicy(Algorithm):
        name = "fake-off-policy"
        description = "trains from replay"
        uses_replay = True

        @dataclasses.dataclass(frozen=True)
        class Params:
            batch_size: int = 4


    @hookimpl
    def register_replay_strategies(register):
        register(FakeReplay())
        register(OtherReplay())


    @hookimpl
    def register_algorithms(register):
        register(DiscreteOnly())
        register(FakeOffPolicy())
"""


@pytest.fixture(scope="module")
def registry():
    """The built-in plugins only (whatever is installed or set in the caller's shell)."""
    return load_registry(only=set(BUILTIN_PLUGINS), blocked=set(), extra=())


@pytest.fixture(scope="module")
def fake_registry(tmp_path_factory):
    """Built-ins plus a throwaway module with a segment-storing replay and two fake algorithms."""
    folder = tmp_path_factory.mktemp("fake_plugins")
    module = f"grid_fakes_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(textwrap.dedent(FAKES))
    sys.path.insert(0, str(folder))
    try:
        registry = load_registry(only={*BUILTIN_PLUGINS, module}, blocked=set(), extra=[module])
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)
    assert not registry.errors, registry.errors
    return registry


def cli(*, a=("diff-a2c",), t=("ring",), e=("CartPole-v1",), r=(), sets=(), **scalars: Any) -> dict[str, Any]:
    """Command-line values as `bench run` builds them."""
    return {
        "algorithms": [parse_axis_entry(x, "--algorithm") for x in a],
        "topologies": [parse_axis_entry(x, "--topology") for x in t],
        "envs": [parse_axis_entry(x, "--env") for x in e],
        "replay": [parse_replay_entry(x, "--replay") for x in r],
        "set_items": [parse_set(x) for x in sets],
        "learners": 2,
        "envs_per_learner": 2,
        "env_steps": 1000,
        "evaluations": 1,
        "eval_episodes": 1,
        **scalars,
    }


def plan(registry, file_values: dict[str, Any] | None = None, **kwargs: Any):
    return expand(make_spec(file_values or {}, cli(**kwargs)), registry)


def only_cell(registry, **kwargs: Any) -> Cell:
    (cell,) = plan(registry, seeds=1, **kwargs).cells
    return cell


# -- axis entries and --set -----------------------------------------------------------------------


def test_parse_axis_entry_plain_and_with_parameters():
    assert parse_axis_entry("ring", "-t") == AxisEntry("ring", ())
    assert parse_axis_entry("  ring ", "-t") == AxisEntry("ring", ())
    assert parse_axis_entry("random:p=0.3", "-t") == AxisEntry("random", (("p", "0.3"),))
    assert parse_axis_entry("random: p = 0.3 , graph_seed=4", "-t") == AxisEntry(
        "random", (("p", "0.3"), ("graph_seed", "4"))
    )
    entry = parse_axis_entry("adjacency:matrix=[[0,1],[1,0]],weights=uniform", "-t")
    assert entry == AxisEntry("adjacency", (("matrix", "[[0,1],[1,0]]"), ("weights", "uniform")))
    assert str(entry) == "adjacency:matrix=[[0,1],[1,0]],weights=uniform"
    assert parse_axis_entry(str(entry), "-t") == entry
    assert parse_axis_entry("adjacency:matrix=/tmp/a=b.txt", "-t").overrides == (("matrix", "/tmp/a=b.txt"),)
    assert parse_axis_entry("random:", "-t") == AxisEntry("random", ())


def test_split_top_level_respects_brackets_and_quotes():
    assert split_top_level("a=[1,2],b=(3,4),c={5,6}", ",") == ["a=[1,2]", "b=(3,4)", "c={5,6}"]
    assert split_top_level("a='x,y',b=\"1,2\"", ",") == ["a='x,y'", 'b="1,2"']
    assert split_top_level("", ",") == [""]


@pytest.mark.parametrize(
    "text", ["", "   ", ":p=0.3", "random:p", "random:=0.3", "random:p=0.3,", "random:p=0.3,,q=1", "random:p=1,q"]
)
def test_parse_axis_entry_rejects_malformed_entries(text: str):
    with pytest.raises(UserError, match="--topology"):
        parse_axis_entry(text, "--topology")


def test_parse_set_forms():
    assert parse_set("diff-a2c.lr=0.001") == ("diff-a2c", "lr", "0.001")
    assert parse_set(" diff-a2c.lr = 1e-3 ") == ("diff-a2c", "lr", "1e-3")
    assert parse_set("adjacency.matrix=[[0,1],[1,0]]") == ("adjacency", "matrix", "[[0,1],[1,0]]")
    assert parse_set("adjacency.matrix=a=b") == ("adjacency", "matrix", "a=b")  # only the first '=' splits
    assert parse_set("random.graph_seed=") == ("random", "graph_seed", "")
    assert parse_set("my.plugin.key=1") == ("my.plugin", "key", "1")  # the last '.' before '=' splits


@pytest.mark.parametrize("text", ["diff-a2c.lr", "lr=0.001", ".lr=0.001", "diff-a2c.=0.001", "=1", "", "diff-a2c"])
def test_parse_set_rejects_malformed_items(text: str):
    with pytest.raises(UserError, match="PLUGIN.KEY=VALUE"):
        parse_set(text)


def test_set_is_typed(registry):
    cell = only_cell(
        registry,
        sets=["diff-a2c.lr=0.001", "diff-a2c.n_steps=7", "diff-a2c.normalise_rewards=off", "diff-a2c.gae_lambda=0.95"],
    )
    assert cell.algorithm_params["lr"] == 0.001 and type(cell.algorithm_params["lr"]) is float
    assert cell.algorithm_params["n_steps"] == 7 and type(cell.algorithm_params["n_steps"]) is int
    assert cell.algorithm_params["normalise_rewards"] is False
    assert cell.algorithm_params["gae_lambda"] == 0.95
    back = only_cell(registry, sets=["diff-a2c.gae_lambda=none"])
    assert back.algorithm_params["gae_lambda"] is None


def test_set_with_a_bad_value_names_the_parameter(registry):
    with pytest.raises(UserError, match=r"diff-a2c\.lr.*'fast'"):
        plan(registry, sets=["diff-a2c.lr=fast"])
    with pytest.raises(UserError, match=r"diff-a2c\.n_steps.*below the minimum"):
        plan(registry, sets=["diff-a2c.n_steps=0"])
    with pytest.raises(UserError, match=r"ring\.weights.*metropolis, uniform"):
        plan(registry, sets=["ring.weights=average"])


def test_set_with_an_unknown_key_suggests_a_close_match(registry):
    with pytest.raises(UserError, match=r'unknown parameter of diff-a2c "lrr"; did you mean "lr"\?'):
        plan(registry, sets=["diff-a2c.lrr=0.1"])


def test_set_with_an_unknown_plugin(registry):
    with pytest.raises(UserError, match=r'unknown plugin "diff-a2d"; did you mean "diff-a2c"'):
        plan(registry, sets=["diff-a2d.lr=0.1"])
    with pytest.raises(UserError, match=r'unknown plugin "zzz"'):
        plan(registry, sets=["zzz.lr=0.1"])


def test_set_applies_to_any_kind_and_entry_parameters_win(registry):
    cell = only_cell(
        registry,
        t=["random:p=0.3"],
        e=["random-cartpole"],
        sets=["random.p=0.9", "random.graph_seed=5", "random-cartpole.max_episode_steps=50"],
    )
    assert cell.topology_params == {"weights": "auto", "p": 0.3, "graph_seed": 5}
    assert cell.env_params["max_episode_steps"] == 50
    # --set applies only where the plugin appears: other axis entries keep their defaults.
    cells = plan(registry, t=["ring", "random"], sets=["random.p=0.9"], seeds=1).cells
    assert [c.topology_params for c in cells] == [
        {"weights": "auto"},
        {"weights": "auto", "p": 0.9, "graph_seed": None},
    ]


def test_unknown_axis_names_are_user_errors(registry):
    with pytest.raises(UserError, match=r'unknown topology "rnig"; did you mean "ring"'):
        plan(registry, t=["rnig"])
    with pytest.raises(UserError, match=r'unknown algorithm "diff-a2"'):
        plan(registry, a=["diff-a2"])
    with pytest.raises(UserError, match=r'unknown env family "CartPol-v1"; did you mean "CartPole-v1"'):
        plan(registry, e=["CartPol-v1"])
    with pytest.raises(UserError, match=r'unknown replay strategy "unifrm"'):
        plan(registry, r=["unifrm"])
    with pytest.raises(UserError, match=r'unknown parameter of random "q"'):
        plan(registry, t=["random:q=0.3"])


def test_axis_entries_through_an_alias_resolve_to_the_canonical_name(registry):
    assert only_cell(registry, t=["complete"]).topology == "fully-connected"
    with pytest.raises(UserError, match="same cell twice"):
        plan(registry, t=["complete", "fully-connected"])


@pytest.mark.parametrize(("entry", "target"), [("complete", "fully-connected"), ("fully-connected", "complete")])
def test_set_reaches_an_entry_named_by_alias(registry, entry: str, target: str):
    cell = only_cell(registry, t=[entry], sets=[f"{target}.weights=uniform"])
    assert cell.topology_params["weights"] == "uniform"


# -- make_spec and expand -----------------------------------------------------------------------


def test_expand_is_the_cross_product_in_order(registry):
    result = plan(registry, t=["ring", "fully-connected", "isolated"], e=["CartPole-v1", "random-cartpole"], seeds=2)
    assert not result.invalid
    got = [(c.algorithm, c.topology, c.env, c.replay, c.seed) for c in result.cells]
    expected = list(
        itertools.product(
            ["diff-a2c"], ["ring", "fully-connected", "isolated"], ["CartPole-v1", "random-cartpole"], ["none"], [0, 1]
        )
    )
    assert got == expected
    cell = result.cells[0]
    assert (cell.learners, cell.learner_processes, cell.envs_per_learner) == (2, 2, 2)
    assert (cell.env_steps, cell.evaluations, cell.eval_episodes) == (1000, 1, 1)


def test_seeds_as_count_or_list(registry):
    assert make_spec({}, cli(seeds=3)).seeds == [0, 1, 2]
    assert make_spec({"seeds": [5, 2, 5]}, cli()).seeds == [2, 5]
    assert [c.seed for c in plan(registry, {"seeds": [7, 3]}).cells] == [3, 7]
    assert make_spec({}, cli()).seeds == [0]  # one seed unless told


@pytest.mark.parametrize("seeds", [0, -1, [], [-1], [1.5], "3", True, [True]])
def test_bad_seeds(seeds: Any):
    with pytest.raises(UserError, match="seeds"):
        make_spec({"seeds": seeds}, cli())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("learners", 0),
        ("envs_per_learner", 0),
        ("env_steps", 0),
        ("evaluations", -1),
        ("eval_episodes", 0),
        ("learners", True),
        ("learners", 2.0),
        ("env_steps", "1000"),
    ],
)
def test_bad_shared_settings(key: str, value: Any):
    with pytest.raises(UserError, match=key.replace("_", "-")):
        make_spec({key: value}, {k: v for k, v in cli().items() if k != key})


@pytest.mark.parametrize(("learners", "episodes"), [(1, 100), (3, 34), (4, 25), (16, 7)])
def test_eval_episodes_default_to_100_per_cell_and_split(learners: int, episodes: int):
    values = {k: v for k, v in cli(learners=learners).items() if k not in ("eval_episodes", "evaluations")}
    spec = make_spec({}, values)
    assert (spec.eval_episodes, spec.evaluations) == (episodes, 10)
    assert spec.to_dict()["eval_episodes"] == episodes  # grid.json records the value the cells ran with
    grid_file = {"algorithms": ["diff-a2c"], "topologies": ["ring"], "envs": ["CartPole-v1"], "learners": learners}
    assert make_spec(grid_file, {}).eval_episodes == episodes  # from a grid file too


def test_an_axis_without_entries_is_an_error():
    with pytest.raises(UserError, match="no algorithms"):
        make_spec({}, cli(a=()))
    with pytest.raises(UserError, match="no topologies"):
        make_spec({}, cli(t=()))


def test_command_line_wins_axis_by_axis():
    file_values = {
        "algorithms": ["diff-a2c"],
        "topologies": ["ring", "isolated"],
        "envs": ["random-cartpole"],
        "learners": 8,
        "set": {"diff-a2c": {"lr": 0.5, "gamma": 0.9}},
    }
    spec = make_spec(file_values, {"topologies": [AxisEntry("random")], "set_items": [("diff-a2c", "lr", "0.1")]})
    assert [str(e) for e in spec.topologies] == ["random"]
    assert [str(e) for e in spec.envs] == ["random-cartpole"]
    assert [str(e) for e in spec.replay] == ["none"]  # the default replay axis
    assert spec.learners == 8
    assert spec.overrides == {"diff-a2c": {"lr": "0.1", "gamma": 0.9}}


def test_cell_ids_are_stable(registry):
    first = plan(registry, t=["ring", "random:p=0.7"], seeds=2).cells
    second = plan(registry, t=["ring", "random:p=0.7"], seeds=2).cells
    assert [c.cell_id for c in first] == [c.cell_id for c in second]
    assert len({c.cell_id for c in first}) == 4
    for cell in first:
        assert len(cell.cell_id) == 12 and int(cell.cell_id, 16) >= 0
        assert Cell.from_config(cell.config()).cell_id == cell.cell_id
    # Naming a default explicitly resolves to the same config, hence the same cell.
    assert only_cell(registry, sets=["diff-a2c.lr=0.0007"]).cell_id == only_cell(registry).cell_id
    assert only_cell(registry, t=["ring:weights=auto"]).cell_id == only_cell(registry).cell_id


@pytest.mark.parametrize(
    "change",
    [
        {"sets": ["diff-a2c.lr=0.001"]},
        {"sets": ["ring.weights=uniform"]},
        {"t": ["ring:weights=uniform"]},
        {"sets": ["CartPole-v1.max_episode_steps=100"]},
        {"e": ["CartPole-v1:resample=true"]},
        {"t": ["fully-connected"]},
        {"e": ["random-cartpole"]},
        {"learners": 3},
        {"envs_per_learner": 3},
        {"env_steps": 2000},
        {"evaluations": 2},
        {"eval_episodes": 2},
    ],
)
def test_any_change_changes_the_cell_id(registry, change: dict[str, Any]):
    assert only_cell(registry, **change).cell_id != only_cell(registry).cell_id


def test_another_seed_is_another_cell(registry):
    zero, one = plan(registry, seeds=2).cells
    assert zero.cell_id != one.cell_id


def test_invalid_combinations_are_listed_not_run(fake_registry):
    result = plan(
        fake_registry,
        a=["diff-a2c", "discrete-only"],
        e=["CartPole-v1", "Pendulum-v1"],
        r=["none", "fake-replay"],
        seeds=2,
    )
    valid = sorted({(c.algorithm, c.env, c.replay) for c in result.cells})
    assert valid == [
        ("diff-a2c", "CartPole-v1", "none"),
        ("diff-a2c", "Pendulum-v1", "none"),
        ("discrete-only", "CartPole-v1", "none"),
    ]
    assert len(result.cells) == 6
    reasons = dict(result.invalid)
    assert len(reasons) == 5
    assert "on-policy" in reasons["diff-a2c · ring · CartPole-v1 · fake-replay"]
    assert "replay none" in reasons["discrete-only · ring · CartPole-v1 · fake-replay"]
    assert "continuous actions" in reasons["discrete-only · ring · Pendulum-v1 · none"]
    assert "Pendulum-v1" in reasons["discrete-only · ring · Pendulum-v1 · none"]


def test_an_off_policy_algorithm_needs_a_replay_strategy(fake_registry):
    result = plan(fake_registry, a=["fake-off-policy"], r=["none", "fake-replay"])
    assert [(c.algorithm, c.replay) for c in result.cells] == [("fake-off-policy", "fake-replay")]
    ((combination, reason),) = result.invalid
    assert combination == "fake-off-policy · ring · CartPole-v1 · none"
    assert "other than none" in reason


def test_replay_mixes_by_ratio_from_the_command_line_and_toml(fake_registry):
    mix = "fake-replay:capacity=2,ratio=0.5+other-replay:capacity=1e+3,ratio=0.5"
    (cell,) = plan(fake_registry, a=["fake-off-policy"], r=[mix]).cells
    assert cell.replay == "fake-replay+other-replay"
    assert cell.replay_params == {
        "fake-replay": {"capacity": 2, "ratio": 0.5},
        "other-replay": {"capacity": 1000, "ratio": 0.5},
    }
    from_toml = make_spec(
        {
            "algorithms": ["fake-off-policy"],
            "topologies": ["ring"],
            "envs": ["CartPole-v1"],
            "replay": [[{"name": "fake-replay", "capacity": 2, "ratio": 0.5}, "other-replay:capacity=1000,ratio=0.5"]],
        },
        {},
    )
    toml_cell = expand(from_toml, fake_registry).cells[0]
    assert (toml_cell.replay, toml_cell.replay_params) == (cell.replay, cell.replay_params)
    assert "fake-replay.capacity=2" in variant(cell, fake_registry)


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        (
            "fake-replay:ratio=0.5+other-replay:ratio=0.25",
            "the ratios must sum to 1, got fake-replay 0.5 + other-replay 0.25 = 0.75",
        ),
        (
            "fake-replay:ratio=0.3+other-replay:ratio=0.7",
            "ratio 0.3 of a batch of 4 segments is 1.2, not a whole number",
        ),
        (
            "fake-replay:capacity=1,ratio=0.5+other-replay:ratio=0.5",
            "fake-replay.capacity=1 is smaller than its batch share of 2",
        ),
        ("fake-replay+fake-replay", "names each strategy once"),
        ("fake-replay:ratio=0.5+none", "none stores nothing"),
        ("fake-replay+uniformm", 'unknown replay strategy "uniformm"'),
    ],
)
def test_bad_replay_mixes_are_one_line_errors(fake_registry, mix, message):
    with pytest.raises(UserError, match=re.escape(message)):
        plan(fake_registry, a=["fake-off-policy"], r=[mix])


def test_a_grid_with_only_invalid_cells_has_no_cells(fake_registry):
    result = plan(fake_registry, a=["discrete-only"], e=["Pendulum-v1"])
    assert result.cells == [] and len(result.invalid) == 1


def test_centralised_runs_one_process_with_every_simulator(registry):
    cell = only_cell(registry, t=["centralised"], learners=4, envs_per_learner=3)
    assert (cell.learners, cell.learner_processes, cell.envs_per_learner) == (4, 1, 12)
    assert only_cell(registry, t=["centralized"], learners=4, envs_per_learner=3).cell_id == cell.cell_id


def test_topology_data_is_checked_before_anything_runs(registry):
    cell = only_cell(registry, t=["adjacency:matrix=[[0,1],[1,0]],weights=uniform"])
    assert cell.topology == "adjacency"
    assert cell.topology_params == {"weights": "uniform", "matrix": "[[0,1],[1,0]]"}
    with pytest.raises(UserError, match="3 learners"):
        plan(registry, t=["adjacency:matrix=[[0,1],[1,0]]"], learners=3)
    with pytest.raises(UserError, match="exponential is directed"):
        plan(registry, t=["exponential:weights=metropolis"])


# -- grid files ---------------------------------------------------------------------------------


VALID_GRID = """
    algorithms = ["diff-a2c"]
    topologies = ["ring", "random:p=0.8", { name = "adjacency", matrix = "[[0,1],[1,0]]", weights = "uniform" }]
    envs = "CartPole-v1"
    seeds = [0, 4]
    learners = 2
    envs_per_learner = 2
    env_steps = 500
    evaluations = 0
    eval_episodes = 1

    [set.diff-a2c]
    lr = 0.001
    n_steps = 4
    normalise_rewards = false

    [set.random]
    graph_seed = 3
"""


def test_load_a_valid_grid_file(tmp_path, registry):
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(VALID_GRID))
    values = load_grid_file(path)
    spec = make_spec(values, {})
    assert isinstance(spec, GridSpec)
    assert [str(e) for e in spec.topologies] == [
        "ring",
        "random:p=0.8",
        "adjacency:matrix=[[0,1],[1,0]],weights=uniform",
    ]
    assert spec.seeds == [0, 4] and spec.evaluations == 0
    cells = expand(spec, registry).cells
    assert [(c.topology, c.seed) for c in cells] == [
        ("ring", 0),
        ("ring", 4),
        ("random", 0),
        ("random", 4),
        ("adjacency", 0),
        ("adjacency", 4),
    ]
    for cell in cells:
        assert cell.algorithm_params["lr"] == 0.001 and cell.algorithm_params["n_steps"] == 4
        assert cell.algorithm_params["normalise_rewards"] is False
        assert (cell.env, cell.env_steps, cell.envs_per_learner) == ("CartPole-v1", 500, 2)
    assert cells[2].topology_params == {"weights": "auto", "p": 0.8, "graph_seed": 3}
    assert cells[4].topology_params == {"weights": "uniform", "matrix": "[[0,1],[1,0]]"}
    # The command line overrides the file, --set included.
    again = make_spec(values, cli(t=["isolated"], sets=["diff-a2c.lr=0.002"]))
    (cell, _) = expand(again, registry).cells[:2]
    assert cell.topology == "isolated" and cell.algorithm_params["lr"] == 0.002
    assert cell.algorithm_params["n_steps"] == 4


def test_grid_file_with_an_unknown_key(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('algorithms = ["diff-a2c"]\ntopology = ["ring"]\n')
    with pytest.raises(UserError, match=r"unknown key 'topology'; did you mean 'topologies'\?"):
        load_grid_file(path)


def test_grid_file_with_bad_values(tmp_path, registry):
    path = tmp_path / "grid.toml"
    path.write_text('algorithms = ["diff-a2c"]\ntopologies = [{ p = 0.3 }]\nenvs = ["CartPole-v1"]\n')
    with pytest.raises(UserError, match="topologies"):
        make_spec(load_grid_file(path), {})
    path.write_text(
        'algorithms = ["diff-a2c"]\ntopologies = ["ring"]\nenvs = ["CartPole-v1"]\n[set.diff-a2c]\nlr = "fast"\n'
    )
    with pytest.raises(UserError, match=r"diff-a2c\.lr"):
        expand(make_spec(load_grid_file(path), {}), registry)
    path.write_text(
        'algorithms = ["diff-a2c"]\ntopologies = ["ring"]\nenvs = ["CartPole-v1"]\nset = { diff-a2c = 1 }\n'
    )
    with pytest.raises(UserError, match="set.diff-a2c"):
        make_spec(load_grid_file(path), {})


def test_invalid_toml(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('algorithms = ["diff-a2c"\n')
    with pytest.raises(UserError, match="not valid TOML"):
        load_grid_file(path)


def test_missing_grid_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_grid_file(tmp_path / "nowhere.toml")


def test_default_grid_expands_to_twelve_cells(registry):
    values = default_grid()
    assert set(values) <= {
        "algorithms",
        "topologies",
        "envs",
        "replay",
        "seeds",
        "learners",
        "envs_per_learner",
        "env_steps",
        "evaluations",
        "eval_episodes",
        "set",
    }
    result = expand(make_spec(values, {}), registry)
    assert not result.invalid
    assert len(result.cells) == 12
    assert sorted({c.algorithm for c in result.cells}) == ["diff-a2c", "diff-ppo", "gala-a2c"]
    assert sorted({c.topology for c in result.cells}) == ["isolated", "ring"]
    assert sorted({c.seed for c in result.cells}) == [0, 1]


# -- typed parameters ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    flag: bool = param(False, "a switch")
    count: int = param(3, "a count", min=1, max=10)
    rate: float = param(0.5, "a rate", min=0.0, max=1.0)
    mode: Literal["fast", "slow"] = param("fast", "a choice")
    level: Literal[1, 2, 3] = param(1, "a numeric choice")
    limit: int | None = param(None, "an optional count", min=0)
    label: str = param("x", "a text")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("Yes", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("NO", False),
        ("0", False),
        ("off", False),
    ],
)
def test_coerce_bool(value: Any, expected: bool):
    assert coerce(value, bool, "x.flag") is expected


@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), ("3", 3), ("1_000", 1000), ("1e3", 1000), (4.0, 4), ("-2", -2)]
)
def test_coerce_int(value: Any, expected: int):
    result = coerce(value, int, "x.count")
    assert result == expected and type(result) is int


@pytest.mark.parametrize(("value", "expected"), [(0.25, 0.25), (2, 2.0), ("1e-3", 0.001), ("-1.5", -1.5)])
def test_coerce_float(value: Any, expected: float):
    result = coerce(value, float, "x.rate")
    assert result == expected and type(result) is float


@pytest.mark.parametrize(
    ("value", "tp", "message"),
    [
        ("maybe", bool, "true or false"),
        (1, bool, "true or false"),
        ("3.5", int, "integer"),
        (True, int, "integer"),
        ("three", int, "integer"),
        (2.5, int, "integer"),
        ("fast", float, "number"),
        (True, float, "number"),
        (None, float, "number"),
        (5, str, "text"),
    ],
)
def test_coerce_errors_name_the_parameter(value: Any, tp: Any, message: str):
    with pytest.raises(UserError, match=rf"^x\.p: .*{message}"):
        coerce(value, tp, "x.p")


def test_coerce_literal_and_optional():
    mode = Literal["fast", "slow"]
    assert coerce("slow", mode, "x.mode") == "slow"
    with pytest.raises(UserError, match=r"x\.mode: 'medium' is not allowed \(choose from fast, slow\)"):
        coerce("medium", mode, "x.mode")
    assert coerce("2", Literal[1, 2, 3], "x.level") == 2 and coerce(3, Literal[1, 2, 3], "x.level") == 3
    with pytest.raises(UserError, match="choose from 1, 2, 3"):
        coerce("4", Literal[1, 2, 3], "x.level")
    for none in (None, "none", "None", "null", ""):
        assert coerce(none, int | None, "x.limit") is None
    assert coerce("5", int | None, "x.limit") == 5
    with pytest.raises(UserError, match="integer"):
        coerce("five", int | None, "x.limit")


@pytest.mark.parametrize("value", ["nan", "inf", float("nan")])
def test_non_finite_numbers_are_rejected(value: Any):
    @dataclasses.dataclass(frozen=True)
    class Rate:
        lr: float = param(1e-3, "a learning rate", min=0.0)

    with pytest.raises(UserError, match=r"example\.lr"):
        resolve(Rate, {"lr": value}, "example")


def test_resolve_applies_bounds_and_names_the_owner():
    assert resolve(Example, {}, "example") == Example()
    resolved = resolve(Example, {"flag": "yes", "count": "10", "rate": "0", "mode": "slow", "limit": "7"}, "example")
    assert resolved == Example(flag=True, count=10, rate=0.0, mode="slow", limit=7)
    with pytest.raises(UserError, match=r"example\.count: 0 is below the minimum 1"):
        resolve(Example, {"count": 0}, "example")
    with pytest.raises(UserError, match=r"example\.count: 11 is above the maximum 10"):
        resolve(Example, {"count": "11"}, "example")
    with pytest.raises(UserError, match=r"example\.rate: 1\.5 is above the maximum 1\.0"):
        resolve(Example, {"rate": 1.5}, "example")
    with pytest.raises(UserError, match=r"example\.limit: -1 is below the minimum 0"):
        resolve(Example, {"limit": -1}, "example")
    assert resolve(Example, {"limit": "none"}, "example").limit is None  # bounds skip None
    with pytest.raises(UserError, match=r'unknown parameter of example "cuont"; did you mean "count"\?'):
        resolve(Example, {"cuont": 1}, "example")


def test_post_init_checks_are_user_errors(registry):
    with pytest.raises(UserError, match=r"random\.p"):
        plan(registry, t=["random:p=0"])


def test_describe_names_types_defaults_and_help():
    rows = {row.name: row for row in describe(Example)}
    assert rows["flag"].type == "bool" and rows["flag"].default is False and rows["flag"].help == "a switch"
    assert rows["mode"].type == "fast|slow"
    assert rows["limit"].type == "int or none" and rows["limit"].default is None
    assert list(rows) == ["flag", "count", "rate", "mode", "level", "limit", "label"]


def test_resampling_is_turned_off_whatever_a_family_params_derive_from():
    from benchbase.api.contracts import EnvFamilyParams, without_resampling
    from benchbase.api.params import NoParams

    assert without_resampling(EnvFamilyParams(resample=True)).resample is False
    plain = NoParams()  # a third-party family need not derive from EnvFamilyParams
    assert without_resampling(plain) is plain


def test_a_quoted_value_keeps_its_commas_and_loses_its_quotes():
    entry = parse_axis_entry('atari-games:games="Pong,Breakout",max_episode_steps=400', "--env")
    assert entry.overrides == (("games", "Pong,Breakout"), ("max_episode_steps", "400"))
    assert parse_axis_entry("x:name='a,b'", "--env").overrides == (("name", "a,b"),)


# -- checks before anything runs: spaces, sizes, memory ------------------------------------------


def test_observation_kinds_name_what_algorithms_declare():
    import numpy as np
    from gymnasium import spaces

    from benchbase.grid.expand import observation_kind

    found = [
        observation_kind(space)
        for space in (
            spaces.Box(-1, 1, (4,)),
            spaces.Box(0, 255, (84, 84, 4), np.uint8),
            spaces.Box(-1, 1, (3, 3)),
            spaces.Discrete(16),
            spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11))),
            spaces.Dict({"x": spaces.Discrete(2)}),
        )
    ]
    assert found == ["vector", "image", "2-D box", "discrete", "tuple", "dict"]


def test_memory_is_checked_against_the_machine(registry):
    from benchbase.grid.expand import check_memory, in_a_block

    cells = plan(registry, a=("vtrace",), r=("uniform:capacity=1000",), seeds=2).cells
    check_memory(cells, registry, cells_at_once=1, available=2**40, in_blocks=in_a_block)  # a terabyte: fits
    with pytest.raises(
        UserError,
        match=r"needs about [\d.]+ MiB \(2 learners × [\d.]+ MiB replay when full \+ 0.2 MiB model\), more than this "
        r"machine's 1.0 MiB",
    ):
        check_memory(cells, registry, cells_at_once=1, available=2**20, in_blocks=in_a_block)


def test_a_learner_in_a_process_of_its_own_is_counted_with_more_copies_than_in_a_block(registry):
    """Its periodic checkpoint copies its whole model and optimiser state at once and its messages
    wait in shared memory, so the memory check counts PROCESS_MODEL_COPIES of its parameters where
    a block's learner counts MODEL_COPIES; `bench run` asks each cell's layout (`runs_in_blocks`)."""
    from benchbase.grid.expand import MODEL_COPIES, PROCESS_MODEL_COPIES, check_memory, memory_needs
    from benchbase.learner.settings import ExecutionSettings
    from benchbase.run.blocks import runs_in_blocks

    cells = plan(registry, a=("diff-a2c",), t=("ring",), e=("random-cartpole",), seeds=1).cells
    in_a_block = runs_in_blocks(registry, ExecutionSettings())
    one_per_process = runs_in_blocks(registry, ExecutionSettings(learners_per_process=1))
    assert in_a_block(cells[0]) and not one_per_process(cells[0])
    assert not in_a_block(plan(registry, a=("gala-a2c",), t=("ring",), e=("random-cartpole",), seeds=1).cells[0])
    ((block_need, _, _, block_model),) = memory_needs(cells, registry, in_a_block)
    ((process_need, _, _, process_model),) = memory_needs(cells, registry, one_per_process)
    assert process_model * MODEL_COPIES == block_model * PROCESS_MODEL_COPIES and process_need > block_need
    assert memory_needs(cells, registry) == memory_needs(cells, registry, one_per_process)  # unless told otherwise
    check_memory(cells, registry, cells_at_once=1, available=block_need, in_blocks=in_a_block)
    with pytest.raises(UserError, match="memory: diff-a2c · none · random-cartpole needs about"):
        check_memory(cells, registry, cells_at_once=1, available=block_need, in_blocks=one_per_process)


def test_the_estimates_build_one_simulator_per_env_whatever_asks(registry, monkeypatch):
    """The replay and memory estimates (and the GPU check) all read every cell's spaces: one
    simulator is built per env and parameters, not one per question."""
    from benchbase.grid import expand as expand_module

    monkeypatch.setattr(expand_module, "_spaces_of_env", {})
    family = registry.get("env", "CartPole-v1")
    built = []
    make_env = family.make_env
    monkeypatch.setattr(family, "make_env", lambda *args: built.append(args) or make_env(*args))
    cells = plan(registry, a=("vtrace",), r=("uniform:capacity=1000",), e=("CartPole-v1",), seeds=2).cells
    built.clear()  # expanding the grid probes its spaces its own way
    expand_module.replay_memory(cells, registry)
    expand_module.memory_needs(cells, registry)
    expand_module.check_memory(cells, registry, cells_at_once=1, available=2**40)
    assert len(built) == 1


def test_a_connected_topology_needs_two_learners_and_isolated_does_not(registry):
    with pytest.raises(UserError, match="topology ring needs at least 2 learners and the cell has 1"):
        plan(registry, learners=1)
    assert len(plan(registry, t=("isolated",), learners=1).cells) == 1


def test_the_grid_size_is_checked_before_seeds_are_listed():
    with pytest.raises(UserError, match=r"1,000,000,000 cells .* at most 10,000"):
        make_spec({}, cli(seeds=10**9))
    with pytest.raises(UserError, match="learners per cell; at most 1,024"):
        make_spec({}, cli(learners=10**5))


def test_a_straggler_is_part_of_the_cell_and_of_its_id_only_when_set(registry):
    def cells(**values: Any) -> list[Cell]:
        base = {"algorithms": ["gala-a2c"], "topologies": ["directed-ring"], "envs": ["CartPole-v1"], "learners": 3}
        return expand(make_spec({**base, **values}, {}), registry).cells

    (plain,) = cells()
    (slowed,) = cells(straggler="2:3.0")
    assert "straggler" not in plain.config()  # cells without one keep the ids they always had
    assert slowed.straggler == "2:3" and slowed.config()["straggler"] == "2:3"
    assert slowed.cell_id != plain.cell_id
    assert (straggler_factor(slowed, 2), straggler_factor(slowed, 0), straggler_factor(plain, 2)) == (3.0, 1.0, 1.0)
    for bad in ("3:2", "x", "0:0.5", "-1:2"):  # rank 3 of 3 learners; no form; a speed-up; a negative rank
        with pytest.raises(UserError, match="straggler"):
            cells(straggler=bad)
