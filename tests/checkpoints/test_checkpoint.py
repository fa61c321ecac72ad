"""Checkpoint files: atomic, verified, plain data only, refused by another cell, and a bad newest
checkpoint falls back to the previous good one; what they carry restores simulators and learners
bit for bit."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from benchbase.api.contracts import LearnerSpec, params_of
from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.checkpoint import CheckpointError
from benchbase.checkpoints.resume import StopSignal, resume_point

CONFIG = {"algorithm": "diff-a2c", "seed": 0, "env_steps": 1000}


def state(value: float) -> dict:
    return {
        "model": {"weight": torch.full((3, 2), value)},
        "steps": 7,
        "rng": torch.get_rng_state(),
        "normaliser": {"mean": [0.5, 1.5], "count": 12.0},
        "name": "learner-0",
    }


def test_a_saved_checkpoint_loads_back_exactly(tmp_path: Path):
    saved = state(1.25)
    path = checkpoint.save(tmp_path, saved, env_steps=500, cell_config=CONFIG)
    loaded = checkpoint.load(path, CONFIG)
    assert loaded.env_steps == 500 and loaded.state["steps"] == 7 and loaded.state["name"] == "learner-0"
    assert torch.equal(loaded.state["model"]["weight"], saved["model"]["weight"])
    assert torch.equal(loaded.state["rng"], saved["rng"])
    assert set(loaded.info["versions"]) >= {"benchbase", "torch", "gymnasium"}
    assert loaded.info["cell_config"] == CONFIG
    assert not list(tmp_path.glob(".*.tmp"))  # nothing temporary left behind


def test_a_checkpoint_is_written_from_its_parts_as_the_bytes_they_join(tmp_path: Path):
    """The writer takes `encode_parts` (each tensor's own memory, not one joined copy of them all):
    the file, its size and its hash are `encode`'s bytes, and it loads back as saved."""
    import hashlib
    import json

    saved = state(2.5)
    parts = checkpoint.encode_parts(saved)
    assert any(isinstance(part, memoryview) for part in parts)  # the tensors' memory, not copies
    encoded = checkpoint.encode(saved)
    assert b"".join(parts) == encoded
    path = checkpoint.write_encoded(tmp_path / "parts", parts, env_steps=500, cell_config=CONFIG)
    info = json.loads(path.with_suffix(".json").read_text())
    assert path.read_bytes() == encoded
    assert info["bytes"] == len(encoded) and info["sha256"] == hashlib.sha256(encoded).hexdigest()
    assert torch.equal(checkpoint.load(path, CONFIG).state["model"]["weight"], saved["model"]["weight"])


def test_the_rows_written_so_far_load_back_as_the_same_python_values(tmp_path: Path):
    """A learner's rows travel in its checkpoints as columns of builtins, pickled together, and come
    back as lists of the same Python values (NaN, -0.0, big ints and booleans included)."""
    floats = [0.1 * k for k in range(40)] + [float("nan"), -0.0, float("inf"), 1e-310]
    ints = list(range(-20, 20)) + [2**63 - 1, -(2**63)]
    columns = {
        "value": floats,
        "env_step": ints,
        "too_big": [2**63] * 20,
        "success": [True, False] * 10,  # bools stay bools, not ints
        "metric": ["loss", "entropy"] * 10,
        "task_id": [f"R-{k}" for k in range(20)],
        "mixed": [1, 2.5, None, "x"] * 5,
        "task_params": [[0.5, 1.0]] * 20,
        "short": [1.5, 2.5],
    }
    path = checkpoint.save(tmp_path, {"loop": {"rows": {"metrics": columns}}}, env_steps=1, cell_config=CONFIG)
    loaded = checkpoint.load(path, CONFIG).state["loop"]["rows"]["metrics"]
    assert loaded.keys() == columns.keys()
    for name, column in columns.items():
        back = loaded[name]
        assert type(back) is list and len(back) == len(column), name
        for original, restored in zip(column, back):
            assert type(restored) is type(original), name
            if isinstance(original, float):
                assert np.array_equal([original], [restored], equal_nan=True), name
                assert np.signbit(original) == np.signbit(restored), name
            else:
                assert restored == original, name


def test_plain_data_beside_tensors_and_numpy_values_loads_back_as_it_was(tmp_path: Path):
    """Containers of builtins go as one pickle each; a container that also holds a tensor, a numpy
    array or a numpy scalar is split into what pickles plainly and what torch.save takes."""
    saved = {
        "loop": {"iteration": 3, "rows": {"metrics": {"value": [0.5] * 300, "metric": ["loss"] * 300}}},
        "env": {"rng": {"state": {"key": 2**100, "pos": 7}}, "obs": np.arange(6.0).reshape(2, 3)},
        "mixed": [{"weights": torch.ones(2)}, [1, 2, 3] * 100, np.float32(1.5), (np.int64(4), "x" * 600)],
        "sets": {"seen": {1, 2, 3}, "frozen": frozenset({"a"}), "raw": b"\x00" * 700},
    }
    path = checkpoint.save(tmp_path, saved, env_steps=1, cell_config=CONFIG)
    loaded = checkpoint.load(path, CONFIG).state
    assert loaded["loop"] == saved["loop"] and loaded["sets"] == saved["sets"]
    assert loaded["env"]["rng"] == saved["env"]["rng"] and np.array_equal(loaded["env"]["obs"], saved["env"]["obs"])
    weights, column, scalar, pair = loaded["mixed"]
    assert torch.equal(weights["weights"], torch.ones(2)) and column == [1, 2, 3] * 100
    assert type(scalar) is float and scalar == 1.5 and pair == (4, "x" * 600) and type(pair[0]) is int


def write_in_format(folder: Path, payload: object, version: int) -> Path:
    """`payload` as `torch.save` writes it, with a sidecar saying format `version` (1 or 2)."""
    import json

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = checkpoint.write_encoded(folder, buffer.getvalue(), env_steps=1, cell_config=CONFIG)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": version}))
    return path


class Calls:
    """What a crafted pickle would carry to run code as it is read."""

    def __reduce__(self):
        return (print, ("this must not run",))


@pytest.mark.parametrize("marker", ["__plain__", "__scalars__"])  # format 2, and format 1's columns
def test_a_column_that_would_run_code_when_read_is_refused(tmp_path: Path, marker: str):
    """The pickles of plain data are read by an unpickler that imports nothing: one naming a
    function (as a crafted file could, to run it) makes the checkpoint unusable, and nothing runs."""
    import pickle

    crafted = bytearray(pickle.dumps([Calls()] * 20))
    path = write_in_format(tmp_path, {"rows": {marker: torch.frombuffer(crafted, dtype=torch.uint8)}}, 2)
    with pytest.raises(CheckpointError, match="cannot be loaded as plain data: .*only plain values"):
        checkpoint.load(path, CONFIG)


def test_formats_1_and_2_still_load_and_an_unknown_format_is_refused(tmp_path: Path):
    """Formats 1 and 2 (`torch.save`) load as before. A format this benchbase does not know is
    refused in one line."""
    import json
    import pickle

    column = bytearray(pickle.dumps([1.5, None, "x"] * 10))
    path = write_in_format(
        tmp_path, {"rows": {"value": {"__scalars__": torch.frombuffer(column, dtype=torch.uint8)}}}, 1
    )
    assert checkpoint.load(path, CONFIG).state == {"rows": {"value": [1.5, None, "x"] * 10}}
    old = {"weights": torch.ones(3), "obs": {"__numpy__": torch.arange(4.0)}, "steps": 7}
    path = write_in_format(tmp_path / "2", old, 2)
    loaded = checkpoint.load(path, CONFIG).state
    assert torch.equal(loaded["weights"], torch.ones(3)) and loaded["steps"] == 7
    assert np.array_equal(loaded["obs"], np.arange(4.0))
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": 4}))
    with pytest.raises(CheckpointError, match="checkpoint format 4, this benchbase reads 1, 2 and 3"):
        checkpoint.load(path, CONFIG)


def crafted_checkpoint(outline: object, sections: bytes, pids: dict[str, tuple]) -> bytes:
    """A format-3 data file whose outline pickles `outline`, each string in `pids` as that persistent id."""
    import pickle
    import struct

    class Crafting(pickle.Pickler):
        def persistent_id(self, obj):
            return pids.get(obj) if isinstance(obj, str) else None

    buffer = io.BytesIO()
    Crafting(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(outline)
    head = buffer.getvalue()
    return checkpoint._MAGIC + struct.pack("<Q", len(head)) + head + sections


@pytest.mark.parametrize(
    "pid,why",
    [
        (("tensor", "Tensor", (2,), 0, 8), "dtype 'Tensor'"),
        (("tensor", "float32", (2,), 4, 8), "outside the file"),
        (("tensor", "float32", (3,), 0, 8), "8 bytes, its shape needs 12"),
        (("tensor", "float32", (-2,), 0, 8), "shape"),
        (("ndarray", "|O", (1,), 0, 8), "array of objects"),
        (("ndarray", [("a", "O")], (1,), 0, 8), "dtype"),
        (("pickle", 0, 8), "only plain values"),  # the section: a pickle naming print
        (("something", 0, 8), "shape"),
        ("not a tuple", "section named"),
    ],
)
def test_a_crafted_format_3_file_is_refused_and_runs_nothing(tmp_path: Path, pid, why: str):
    """Format 3's outline and sections are read by unpicklers that import nothing; every section it
    names is checked (kind, dtype, shape against size, inside the file) before it is read."""
    import pickle

    sections = bytes(8)
    if pid[0] == "pickle":
        sections = pickle.dumps(Calls())
        pid = ("pickle", 0, len(sections))
    data = crafted_checkpoint({"learner": "x"}, sections, {"x": pid})
    path = checkpoint.write_encoded(tmp_path, data, env_steps=1, cell_config=CONFIG)
    with pytest.raises(CheckpointError, match=f"cannot be loaded as plain data: .*{why}"):
        checkpoint.load(path, CONFIG)
    outline = crafted_checkpoint(Calls(), b"", {})  # the outline itself naming a function
    path = checkpoint.write_encoded(tmp_path / "outline", outline, env_steps=1, cell_config=CONFIG)
    with pytest.raises(CheckpointError, match="only plain values"):
        checkpoint.load(path, CONFIG)


def test_a_state_holding_anything_but_plain_data_is_refused_when_saved(tmp_path: Path):
    with pytest.raises(TypeError, match="plain data only, not a .*Calls"):
        checkpoint.save(tmp_path, {"learner": {"schedule": Calls()}}, env_steps=1, cell_config=CONFIG)
    with pytest.raises(TypeError, match="numpy array of objects"):
        checkpoint.save(tmp_path, {"obs": np.array([None, 1])}, env_steps=1, cell_config=CONFIG)


def test_a_shared_writer_takes_a_blocks_checkpoints_at_once_and_writes_them_all(tmp_path: Path, monkeypatch):
    import threading
    import time

    release = threading.Event()
    real_write = checkpoint.write_encoded

    def slow_write(folder, *args, **kwargs):
        release.wait(10)  # the writer is busy until the test lets it go
        if folder.name == "learner-1":
            raise OSError("No space left on device")
        return real_write(folder, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_encoded", slow_write)
    writer = checkpoint.BackgroundWriter(max_pending=3)
    for rank in range(3):  # three submissions while nothing has been written: none waits
        writer.submit(tmp_path / f"learner-{rank}", state(rank), env_steps=100, cell_config=CONFIG)
    assert writer._pending == 3
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writer.wait()  # the failed write's error reaches the learner; the others are written
    assert [path.parent.name for path in sorted(tmp_path.glob("learner-*/*.pt"))] == ["learner-0", "learner-2"]
    deadline = time.monotonic() + 10
    while writer._running and time.monotonic() < deadline:  # the thread ends once it finds nothing left
        time.sleep(0.01)
    assert not writer._running


def test_only_the_newest_two_are_kept(tmp_path: Path):
    for steps in (100, 200, 300):
        checkpoint.save(tmp_path, state(steps), env_steps=steps, cell_config=CONFIG)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-000000000200.pt", "step-000000000300.pt"]


def test_a_checkpoint_of_another_cell_is_refused_with_the_differences(tmp_path: Path):
    path = checkpoint.save(tmp_path, state(1.0), env_steps=100, cell_config=CONFIG)
    with pytest.raises(CheckpointError, match=r"belongs to another cell \(differs in seed\)"):
        checkpoint.load(path, {**CONFIG, "seed": 1})


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-sidecar"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path, damage: str):
    checkpoint.save(tmp_path, state(1.0), env_steps=100, cell_config=CONFIG)
    newest = checkpoint.save(tmp_path, state(2.0), env_steps=200, cell_config=CONFIG)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        newest.with_suffix(".json").unlink()
    found, skipped = checkpoint.latest_good(tmp_path, CONFIG)
    assert found is not None and found.env_steps == 100
    assert torch.equal(found.state["model"]["weight"], torch.full((3, 2), 1.0))
    expected = {"truncate": "truncated", "flip": "corrupted", "no-sidecar": "unfinished"}[damage]
    assert len(skipped) == 1 and expected in skipped[0]


def test_no_usable_checkpoint_is_none(tmp_path: Path):
    assert checkpoint.latest_good(tmp_path / "missing", CONFIG) == (None, [])


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = checkpoint.save(tmp_path, {"ok": 1}, env_steps=1, cell_config=CONFIG)
    buffer = io.BytesIO()
    torch.save({"payload": Evil()}, buffer)
    data = buffer.getvalue()
    # A file with a valid sidecar for these bytes still refuses to load them.
    import hashlib
    import json

    info = json.loads(path.with_suffix(".json").read_text())
    info.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="cannot be loaded as plain data"):
        checkpoint.load(path, CONFIG)


# -- what a checkpoint carries: simulators, learners, the stop agreement --------------------------


def _trajectory(env, steps: int, seed: int = 5) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        actions = rng.uniform(-2, 2, (env.num_envs, 1)) if env.action_space.shape else rng.integers(0, 2, env.num_envs)
        result = env.step(actions)
        out.append(
            (
                result.observations.copy(),
                result.rewards.copy(),
                result.terminated.copy(),
                [(e.simulator, e.episode_return, e.task.task_id, dict(e.task.parameters)) for e in result.finished],
            )
        )
    return out


@pytest.mark.parametrize("family_name,overrides", [("random-cartpole", {"resample": True}), ("random-pendulum", {})])
def test_a_classic_env_saved_mid_episode_continues_exactly(family_name: str, overrides: dict):
    registry = load_registry(only={"plugins.envs.classic.family"})
    family = registry.get("env", family_name)
    params = params_of(family, overrides)
    tasks = family.training_tasks(params, 4, seed=1)
    original = family.make_env(params, tasks, seed=3)
    original.reset(seed=3)
    _trajectory(original, 150)  # episodes in flight, resampled tasks, streaks
    saved = checkpoint.decode(checkpoint.encode(original.state_dict()))
    expected = _trajectory(original, 300)
    restored = family.make_env(params, tasks, seed=99)  # built differently, then loaded
    restored.load_state_dict(saved)
    for ours, theirs in zip(_trajectory(restored, 300), expected):
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
        assert np.array_equal(ours[2], theirs[2]) and ours[3] == theirs[3]


@pytest.mark.parametrize("name", ["diff-a2c", "diff-ppo", "gala-a2c"])
def test_a_learner_restored_from_its_state_continues_bit_for_bit(tmp_path: Path, name: str):
    torch.set_num_threads(1)
    registry = load_registry(
        only={
            "plugins.algorithms.diff_a2c",
            "plugins.algorithms.diff_ppo",
            "plugins.algorithms.gala",
            "plugins.envs.classic.family",
        }
    )
    algorithm, family = registry.get("algorithm", name), registry.get("env", "random-pendulum")
    env_params = params_of(family)
    overrides = (
        {"n_steps": 8, "n_epochs": 2, "minibatch_size": 16}
        if name == "diff-ppo"
        else {"lr_decay": True}
        if name == "gala-a2c"
        else {}
    )

    def make():
        env = family.make_env(env_params, family.training_tasks(env_params, 2, 0), seed=0)
        return algorithm.make_learner(
            params_of(algorithm, overrides), LearnerSpec(env, 0, 1, 0, torch.device("cpu"), env_steps_budget=4000)
        )

    learner = make()
    for _ in range(5):
        learner.iterate()
    path = checkpoint.save(tmp_path, {"learner": learner.state_dict()}, env_steps=5, cell_config=CONFIG)
    for _ in range(5):
        learner.iterate()
    expected = learner.parameters_buffer().clone()

    restored = make()
    restored.load_state_dict(checkpoint.load(path, CONFIG).state["learner"])
    for _ in range(5):
        restored.iterate()
    assert torch.equal(restored.parameters_buffer(), expected)


def test_the_first_learner_to_stop_sets_the_iteration_everyone_stops_at():
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    stop = StopSignal(signals=())
    # Synchronous learners (4 of them) may be up to 3 iterations apart: stop N past the first one.
    assert stop.stop_iteration(17, 4, store, lockstep=True) == 21
    assert stop.stop_iteration(19, 4, store, lockstep=True) == 21
    assert stop.stop_iteration(19, 4, None, lockstep=False) == 19  # alone: stop where it is


def test_a_learner_alone_resumes_from_its_newest_good_checkpoint(tmp_path: Path):
    for steps in (100, 200):
        checkpoint.save(tmp_path, state(steps), env_steps=steps, cell_config=CONFIG)
    assert resume_point(tmp_path, CONFIG, lockstep=False, world=1) == (tmp_path / "step-000000000200.pt", [])
    (tmp_path / "step-000000000200.pt").write_bytes(b"garbage")
    found, notes = resume_point(tmp_path, CONFIG, lockstep=False, world=1)
    assert found == tmp_path / "step-000000000100.pt" and "truncated" in notes[0]
    assert resume_point(tmp_path, {**CONFIG, "seed": 9}, lockstep=False, world=1)[0] is None


@pytest.mark.parametrize("strategy", ["uniform", "elite"])
def test_vtrace_with_its_replay_contents_continues_bit_for_bit(tmp_path: Path, strategy: str):
    from benchbase.api.replay import ReplayMix, batch_shares

    torch.set_num_threads(1)
    registry = load_registry(
        only={
            "plugins.algorithms.vtrace",
            "plugins.replay.uniform",
            "plugins.replay.elite",
            "plugins.envs.classic.family",
        }
    )
    algorithm, family = registry.get("algorithm", "vtrace"), registry.get("env", "random-cartpole")
    env_params = params_of(family)
    params = params_of(algorithm, {"batch_size": 4, "unroll_length": 5, "background_preparation": False})
    replay_plugin = registry.get("replay", strategy)
    replay_params = params_of(replay_plugin, {"capacity": 12})

    def make():
        env = family.make_env(env_params, family.training_tasks(env_params, 2, 0), seed=0)
        mix = ReplayMix(batch_shares([(strategy, replay_params)], 4), [replay_plugin.make_buffer(replay_params, 7)])
        return algorithm.make_learner(
            params, LearnerSpec(env, 0, 1, 0, torch.device("cpu"), replay=mix, env_steps_budget=2000)
        )

    learner = make()
    for _ in range(6):
        learner.iterate()
    path = checkpoint.save(tmp_path, {"learner": learner.state_dict(replay=True)}, env_steps=6, cell_config=CONFIG)
    for _ in range(6):
        learner.iterate()
    restored = make()
    restored.load_state_dict(checkpoint.load(path, CONFIG).state["learner"])
    assert len(restored.replay.buffers[0]) == 12  # full again, not refilling from empty
    for _ in range(6):
        restored.iterate()
    assert torch.equal(restored.parameters_buffer(), learner.parameters_buffer())
