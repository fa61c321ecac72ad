"""Checkpoint files: atomic, verified, plain data only, refused by another cell, and a bad newest
checkpoint falls back to the previous good one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from benchbase import checkpoint
from benchbase.checkpoint import CheckpointError

CONFIG = {"algorithm": "diff-a2c", "seed": 0, "env_steps": 1000}


def state(value: float) -> dict:
    return {"model": {"weight": torch.full((3, 2), value)}, "steps": 7, "rng": torch.get_rng_state(),
            "normaliser": {"mean": [0.5, 1.5], "count": 12.0}, "name": "learner-0"}


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
