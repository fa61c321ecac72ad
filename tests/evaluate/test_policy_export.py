"""`bench export`: a learner's greedy policy as TorchScript, ONNX or a state dict, run without
benchbase and compared with the learner's own `act_greedy` on the same observations."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import benchbase
from benchbase.api.contracts import params_of, without_resampling
from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.errors import UserError
from benchbase.evaluate import policy as export
from benchbase.evaluate.policy import ExportRequest, export_policy, load_policy
from benchbase.grid.cell import Cell
from benchbase.learner.build import build_learner

REGISTRY = load_registry()
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
#: (algorithm entry, env): discrete and continuous actions, normalised (mixed statistics) or not.
CELLS = [
    ("diff-a2c", "random-cartpole"),
    ("diff-a2c", "random-pendulum"),
    ("diff-a2c:normaliser=off", "random-cartpole"),
    ("diff-a2c:normaliser=off", "random-pendulum"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four finished two-learner cells (2,000 env steps each), with checkpoints."""
    out = tmp_path_factory.mktemp("export") / "run"
    args = [sys.executable, "-m", "benchbase", "run", "-t", "isolated", "--learners", "2", "--envs-per-learner", "2"]
    args += ["--env-steps", "2000", "--seeds", "1", "--evaluations", "1", "--eval-episodes", "2", "--out", str(out)]
    for algorithm in dict.fromkeys(a for a, _ in CELLS):
        args += ["-a", algorithm]
    for env in dict.fromkeys(e for _, e in CELLS):
        args += ["-e", env]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def cell_of(run: Path, algorithm: str, env: str) -> tuple[str, Path]:
    """(cell id, learner 1's final checkpoint) of the cell with that algorithm entry and env."""
    normaliser = "off" if algorithm.endswith("normaliser=off") else "mixed"
    for folder in sorted((run / "checkpoints").iterdir()):
        path = max((folder / "learner-1").glob("step-*.pt"))
        config = checkpoint.verify(path)["cell_config"]
        if config["env"] == env and config["algorithm_params"].get("normaliser", "mixed") == normaliser:
            return folder.name, path
    raise AssertionError(f"no cell {algorithm} on {env} in {run}")


def learner_and_observations(path: Path) -> tuple[object, np.ndarray]:
    """The checkpoint's learner, built as bench eval builds it, and observations to act on: a
    short greedy rollout plus draws from the observation space, some far out (the clip)."""
    found = checkpoint.load(path)
    cell = Cell.from_config(found.info["cell_config"])
    family = REGISTRY.get("env", cell.env)
    params = without_resampling(params_of(family, cell.env_params))
    env = family.make_env(params, family.training_tasks(params, 4, cell.seed + 1), 7)
    learner = build_learner(REGISTRY, cell, family.make_env(params, family.training_tasks(params, 1, cell.seed), 0))
    learner.load_state_dict(found.state["learner"], mode="model")
    observations = [env.reset(seed=11)]
    for _ in range(30):
        observations.append(env.step(learner.act_greedy(observations[-1])).observations)
    env.close()
    space = env.observation_space
    space.seed(3)
    drawn = np.stack([space.sample() for _ in range(40)]).astype(observations[0].dtype)
    batch = np.concatenate([*observations, drawn, drawn * 50])
    return learner, batch


def expected_actions(learner, observations: np.ndarray) -> np.ndarray:
    return np.asarray(learner.act_greedy(observations))


def assert_same(actions: np.ndarray, expected: np.ndarray) -> None:
    assert actions.shape == expected.shape
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actions, expected)  # discrete: exactly the same actions
    else:
        np.testing.assert_allclose(actions, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 marks TorchScript deprecated
@pytest.mark.parametrize(("algorithm", "env"), CELLS)
def test_torchscript_runs_with_plain_torch_and_matches_act_greedy(
    run: Path, tmp_path: Path, algorithm: str, env: str
) -> None:
    cell_id, path = cell_of(run, algorithm, env)
    outcome = export_policy(ExportRequest(str(run), tmp_path / "policy.pt", cell=cell_id, learner=1), REGISTRY)
    assert outcome.checkpoint == path.resolve() and outcome.bytes == outcome.path.stat().st_size
    learner, observations = learner_and_observations(path)
    expected = expected_actions(learner, observations)
    assert len(np.unique(expected, axis=0)) > 1  # the comparison means something
    np.save(tmp_path / "observations.npy", observations)
    # A fresh interpreter that never imports benchbase.
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import torch
        policy = torch.jit.load({str(outcome.path)!r})
        observations = torch.from_numpy(np.load({str(tmp_path / "observations.npy")!r}))
        np.save({str(tmp_path / "actions.npy")!r}, policy(observations).numpy())
        assert not any(name.split(".")[0] in ("benchbase", "plugins") for name in sys.modules), "benchbase imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same(np.load(tmp_path / "actions.npy"), expected)
    # And the description travels with it.
    extra = {export.METADATA_FILE: ""}
    torch.jit.load(str(outcome.path), _extra_files=extra)
    description = json.loads(extra[export.METADATA_FILE])
    assert description["cell_id"] == cell_id and description["learner"] == 1
    assert description["normalise"] is (not algorithm.endswith("off"))
    assert description["env"] == env and description["algorithm"] == "diff-a2c"


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime are not installed (pip install 'benchbase[onnx]')")
@pytest.mark.parametrize(("algorithm", "env"), CELLS[:2])
def test_onnx_runs_in_onnxruntime_and_matches_act_greedy(run: Path, tmp_path: Path, algorithm: str, env: str) -> None:
    import onnxruntime

    cell_id, path = cell_of(run, algorithm, env)
    request = ExportRequest(str(run), tmp_path / "policy.onnx", cell=cell_id, learner=1, format="onnx")
    outcome = export_policy(request, REGISTRY)
    learner, observations = learner_and_observations(path)
    observations = observations.astype(np.float32)  # the ONNX graph's input type
    session = onnxruntime.InferenceSession(str(outcome.path), providers=["CPUExecutionProvider"])
    (actions,) = session.run(["actions"], {"observations": observations})
    assert_same(actions, expected_actions(learner, observations))
    assert json.loads(session.get_modelmeta().custom_metadata_map["benchbase"])["cell_id"] == cell_id


@pytest.mark.parametrize(("algorithm", "env"), CELLS[:2])
def test_state_dict_is_plain_data_and_load_policy_runs_every_format(
    run: Path, tmp_path: Path, algorithm: str, env: str
) -> None:
    cell_id, path = cell_of(run, algorithm, env)
    formats = ["torchscript", "state-dict"] + (["onnx"] if HAS_ONNX else [])
    written = {
        name: export_policy(
            ExportRequest(str(run), tmp_path / f"policy-{name}", cell=cell_id, learner=1, format=name), REGISTRY
        ).path
        for name in formats
    }
    state = torch.load(written["state-dict"], weights_only=True)
    found = checkpoint.load(path)
    statistics = found.state["learner"]["observation_statistics"]
    assert state["format"] == export.STATE_DICT_FORMAT and state["algorithm"] == "diff-a2c" and state["env"] == env
    np.testing.assert_array_equal(state["observation_mean"].numpy(), statistics["mean"])
    np.testing.assert_array_equal(state["observation_var"].numpy(), statistics["var"])
    assert state["clip"] == 10.0 and state["normalise"] is True
    assert state["action_space"]["kind"] == ("Discrete" if env == "random-cartpole" else "Box")
    learner, observations = learner_and_observations(path)
    expected = expected_actions(learner, observations)
    assert {n: v.shape for n, v in state["model_state_dict"].items()} == {
        n: v.shape for n, v in learner.model.state_dict().items()
    }
    for name, written_path in written.items():
        policy = benchbase.load_policy(written_path)  # the public API
        assert policy.format == name and policy.description["cell_id"] == cell_id
        batch = observations.astype(np.float32) if name == "onnx" else observations
        assert_same(policy(batch), expected_actions(learner, batch) if name == "onnx" else expected)
        assert_same(policy(batch[0]), expected_actions(learner, batch[:1])[0])  # one observation, one action


def test_the_default_file_name_and_cell(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cell_id, path = cell_of(run, "diff-a2c", "random-cartpole")
    outcome = export_policy(ExportRequest(str(path.parent.parent)), REGISTRY)  # a cell folder: its only cell
    assert outcome.path == Path(f"policy-{cell_id}-learner-0.pt") and outcome.learner == 0
    assert outcome.path.is_file() and outcome.probes == export.PROBES
    line = export.summary_line(outcome)
    assert line.startswith(f"torchscript: policy-{cell_id}-learner-0.pt ({outcome.bytes:,} bytes), {cell_id} learner 0")


def test_a_policy_that_disagrees_with_act_greedy_is_not_written(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell_id, _ = cell_of(run, "diff-a2c", "random-pendulum")
    original = export._policy_of
    monkeypatch.setattr(
        export, "_policy_of", lambda *args: original(*args, settings={"normalise": False, "clip": 10.0})
    )
    with pytest.raises(UserError, match="disagrees with the learner's act_greedy on [0-9]+ of 64"):
        export_policy(ExportRequest(str(run), tmp_path / "p.pt", cell=cell_id), REGISTRY)
    assert not (tmp_path / "p.pt").exists()


def test_bad_inputs_are_one_line_errors(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cell_id, path = cell_of(run, "diff-a2c", "random-cartpole")

    def error(**fields) -> str:
        fields.setdefault("out", tmp_path / "p.pt")
        with pytest.raises(UserError) as raised:
            export_policy(ExportRequest(**fields), REGISTRY)
        message = str(raised.value)
        assert "\n" not in message
        return message

    assert 'did you mean "onnx"' in error(source=str(run), cell=cell_id, format="onxx")
    assert "holds 4 cells with checkpoints: name one with --cell" in error(source=str(run))
    assert f'did you mean "{cell_id}"' in error(source=str(run), cell=cell_id[:-1] + "z")
    assert "--learner 5: " in error(source=str(run), cell=cell_id, learner=5)
    assert "learners: 0, 1" in error(source=str(run), cell=cell_id, learner=5)
    assert "--learner -1: give a learner number ≥ 0" in error(source=str(run), cell=cell_id, learner=-1)
    assert "no such file or folder" in error(source=str(tmp_path / "nothing"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "grid.json").write_text("{}")
    assert "no cell of this run has a checkpoint yet" in error(source=str(tmp_path / "empty"))
    assert "is a folder" in error(source=str(run), cell=cell_id, out=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    assert "pip install 'benchbase[onnx]'" in error(source=str(run), cell=cell_id, format="onnx")
    monkeypatch.undo()
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(UserError, match="is not a policy bench export wrote"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="no such policy file"):
        load_policy(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not a policy bench export wrote"):
        load_policy(tmp_path / "other.pt")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_module_normalises_as_the_learners_normaliser_does(dtype) -> None:
    """float64 observations (MuJoCo's) are normalised in float64 as numpy does, float32 ones in
    float32: the scripted module feeds the actor the very same inputs, so its outputs are equal to
    the last bit (an unbounded action box: the outputs are the actor's)."""
    from gymnasium import spaces

    from plugins.algorithms.common.networks import build_model
    from plugins.algorithms.common.normalisation import ObservationNormaliser

    rng = np.random.default_rng(0)
    normaliser = ObservationNormaliser((5,), "local")
    normaliser.update(rng.normal(3.0, 7.0, size=(200, 5)))
    actions = spaces.Box(-np.inf, np.inf, (7,))
    torch.manual_seed(0)
    model = build_model(spaces.Box(-np.inf, np.inf, (5,)), actions, 16)
    statistics = normaliser.stats.state_dict()
    module = export.greedy_policy(model, statistics["mean"], statistics["var"], actions, normalise=True, clip=10.0)
    with export._quiet_exporters():
        scripted = torch.jit.script(module.with_actor(torch.jit.trace(module.actor, torch.zeros(2, 5))))
    raw = (rng.normal(3.0, 7.0, size=(500, 5)) * rng.choice([1e-3, 1.0, 30.0], size=(500, 1))).astype(dtype)
    with torch.no_grad():
        expected = model.actor(torch.from_numpy(normaliser(raw))).numpy()
        np.testing.assert_array_equal(scripted(torch.from_numpy(raw)).numpy(), expected)
