"""Checkpoint files: written atomically, verified before loading, loaded without unpickling code.

A checkpoint is `<name>.pt` (`torch.save` of plain data: tensors, numbers, strings, lists, dicts)
plus `<name>.json` beside it, written after the data and holding its SHA-256, size, env steps,
the cell config and the package versions. Loading checks, in order: the sidecar exists and parses,
the data file has the recorded size and digest (a truncated or corrupted file is caught here, not
half-loaded), the cell config matches the cell asking for it, and then `torch.load(...,
weights_only=True)`, which refuses anything but plain data. `latest_good` walks a learner's
checkpoints newest first and falls back to an older one when the newest is bad, saying why.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchbase.results import write_atomic

FORMAT_VERSION = 1
KEEP = 2  # checkpoints kept per learner: the newest and one to fall back to


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, corrupted, truncated or from another cell."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    env_steps: int
    state: dict[str, Any]
    info: dict[str, Any]


def _versions() -> dict[str, str]:
    found = {}
    for package in ("benchbase", "torch", "gymnasium", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def checkpoint_name(env_steps: int) -> str:
    return f"step-{env_steps:012d}"


def save(folder: Path | str, state: dict[str, Any], *, env_steps: int, cell_config: dict[str, Any]) -> Path:
    """Write `state` as the checkpoint at `env_steps` in `folder`; keep the newest `KEEP`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    name = checkpoint_name(env_steps)
    data_path, info_path = folder / f"{name}.pt", folder / f"{name}.json"
    write_atomic(data_path, lambda temporary: Path(temporary).write_bytes(data))
    info = {
        "format": FORMAT_VERSION,
        "env_steps": env_steps,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "cell_config": cell_config,
        "versions": _versions(),
    }
    # The sidecar goes last: a checkpoint without one was never finished and is ignored.
    write_atomic(info_path, lambda temporary: Path(temporary).write_text(json.dumps(info, sort_keys=True, default=str)))
    for old in sorted(folder.glob("step-*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt").unlink(missing_ok=True)
    return data_path


def load(path: Path | str, cell_config: dict[str, Any] | None = None) -> Checkpoint:
    """Verify and load one checkpoint (`.pt` path); CheckpointError with the reason otherwise."""
    data_path = Path(path)
    info_path = data_path.with_suffix(".json")
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{data_path.name}: no {info_path.name} beside it (an unfinished checkpoint)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{info_path.name} is unreadable: {error}") from None
    if info.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{data_path.name}: checkpoint format {info.get('format')}, this benchbase reads {FORMAT_VERSION}")
    try:
        data = data_path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{data_path.name} is unreadable: {error}") from None
    if len(data) != info.get("bytes"):
        raise CheckpointError(f"{data_path.name} is truncated: {len(data):,} bytes of {info.get('bytes'):,}")
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{data_path.name} is corrupted: its SHA-256 does not match the one recorded")
    if cell_config is not None and info.get("cell_config") != json.loads(json.dumps(cell_config, default=str)):
        differing = sorted(
            key for key in set(cell_config) | set(info.get("cell_config") or {})
            if (info.get("cell_config") or {}).get(key) != json.loads(json.dumps(cell_config.get(key), default=str))
        )
        raise CheckpointError(
            f"{data_path.name} belongs to another cell (differs in {', '.join(differing)}): refusing to load it"
        )
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means this file is unusable
        raise CheckpointError(f"{data_path.name} cannot be loaded as plain data: {error}") from None
    return Checkpoint(path=data_path, env_steps=int(info["env_steps"]), state=state, info=info)


def latest_good(folder: Path | str, cell_config: dict[str, Any] | None = None) -> tuple[Checkpoint | None, list[str]]:
    """The newest usable checkpoint in `folder` (or None), and why newer ones were skipped."""
    folder = Path(folder)
    skipped: list[str] = []
    candidates = sorted(folder.glob("step-*.pt"), reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            return load(path, cell_config), skipped
        except CheckpointError as error:
            skipped.append(str(error))
    return None, skipped

