"""Checkpoint files: written atomically, verified before loading, loaded without unpickling code.

A checkpoint is `<name>.pt` (`torch.save` of plain data: tensors, numbers, strings, lists, dicts)
plus `<name>.json` beside it, written after the data and holding its SHA-256, size, env steps,
the cell config and the package versions. Loading checks, in order: the sidecar exists and parses,
the data file has the recorded size and digest (a truncated or corrupted file is caught here, not
half-loaded), the cell config matches the cell asking for it, and then `torch.load(...,
weights_only=True)`, which refuses anything but plain data (containers of builtins inside travel
as pickles, read back by an unpickler that refuses every global). `latest_good` walks a learner's
checkpoints newest first and falls back to an older one when the newest is bad, saying why.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchbase.results import write_atomic

FORMAT_VERSION = 2
# Format 1 pickled only long lists of scalars, one byte tensor each; it reads the same way.
READABLE_FORMATS = (1, 2)
KEEP = 2  # checkpoints kept per learner: the newest and one to fall back to


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, corrupted, truncated or from another cell."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    env_steps: int
    state: dict[str, Any]
    info: dict[str, Any]


@functools.cache  # reading package metadata took most of a small checkpoint's write
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


def steps_of(path: Path) -> int:
    """The env steps in a checkpoint file's name (`step-000000001280.pt` -> 1280)."""
    return int(path.stem.split("-", 1)[1])


_NUMPY = "__numpy__"
# Plain data (dicts, lists, tuples, strings, numbers, booleans and None, at any depth: the rows a
# learner has written so far, the loop's counters) travels as one pickle of builtins in a byte
# tensor. `torch.save` calls back into Python for each object it pickles and stores each tensor as
# a record of its own, so the rows as one tensor per column took most of a checkpoint's encoding
# (docs/scaling.md). `_BuiltinsOnly` reads them back without importing anything.
_PLAIN_PICKLED = "__plain__"
_SCALARS_PICKLED = "__scalars__"  # format 1: one long column of scalars per byte tensor
_INLINE_BYTES = 512  # plain data smaller than this pickled stays inline: a record costs more


class _BuiltinsOnly(pickle.Unpickler):
    """Unpickles lists, strings, numbers, booleans and None, and refuses anything that would need
    a global (a class or function), which is how a pickle runs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a checkpoint's plain data names {module}.{name}: only plain values are read")


class _NotPlain(Exception):
    pass


class _PlainOnlyPickler(pickle.Pickler):
    """Pickles builtins only. The C pickler writes exact dicts, lists, tuples, sets, strings,
    bytes, numbers, booleans and None itself and asks `reducer_override` about anything else (a
    tensor, a numpy scalar, a subclass of a builtin), which refuses it."""

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


def _pickled_if_plain(value: Any) -> bytes | None:
    """`value` pickled when it holds builtins only; None when it holds anything else."""
    buffer = io.BytesIO()
    try:
        _PlainOnlyPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except _NotPlain:
        return None
    return buffer.getvalue()


def to_plain(value: Any) -> Any:
    """`value` with numpy arrays and scalars turned into tensors (marked, so `from_plain` turns
    them back), each container of builtins only into one byte tensor of its pickle (marked) and
    tuples kept: what `torch.load(weights_only=True)` accepts."""
    if isinstance(value, (dict, list, tuple)):
        pickled = _pickled_if_plain(value)
        if pickled is not None:
            if len(pickled) < _INLINE_BYTES:
                return value
            return {_PLAIN_PICKLED: torch.frombuffer(bytearray(pickled), dtype=torch.uint8)}
    if isinstance(value, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [to_plain(item) for item in value]
        return converted if isinstance(value, list) else tuple(converted)
    return value


def from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _NUMPY in value:
            return value[_NUMPY].numpy()
        if len(value) == 1 and (_PLAIN_PICKLED in value or _SCALARS_PICKLED in value):
            pickled = next(iter(value.values()))
            return _BuiltinsOnly(io.BytesIO(pickled.numpy().tobytes())).load()
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(from_plain(item) for item in value)
    return value


def save(
    folder: Path | str, state: dict[str, Any], *, env_steps: int, cell_config: dict[str, Any], keep: int | None = KEEP
) -> Path:
    """Write `state` as the checkpoint at `env_steps` in `folder`; keep the newest `keep` (None: all)."""
    return write_encoded(folder, encode(state), env_steps=env_steps, cell_config=cell_config, keep=keep)


def encode(state: dict[str, Any]) -> bytes:
    """`state` as a checkpoint's data file holds it."""
    buffer = io.BytesIO()
    torch.save(to_plain(state), buffer)
    return buffer.getvalue()


def write_encoded(
    folder: Path | str, data: bytes, *, env_steps: int, cell_config: dict[str, Any], keep: int | None = KEEP
) -> Path:
    """Write `encode`'s `data` as the checkpoint at `env_steps` in `folder`, then its sidecar; keep
    the newest `keep` (None: all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
    if keep is not None:
        prune(folder, keep)
    return data_path


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints in `folder`."""
    sidecars = sorted(folder.glob("step-*.json"))
    for old in sidecars[: max(0, len(sidecars) - keep)]:
        old.unlink(missing_ok=True)  # the sidecar first: a data file without one is ignored
        old.with_suffix(".pt").unlink(missing_ok=True)


def load(path: Path | str, cell_config: dict[str, Any] | None = None) -> Checkpoint:
    """Verify and load one checkpoint (`.pt` path); CheckpointError with the reason otherwise.
    The file is read and hashed once: the bytes checked are the bytes loaded."""
    data_path = Path(path)
    info = _read_info(data_path)
    try:
        data = data_path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{data_path.name} is unreadable: {error}") from None
    _check_data(data_path, len(data), hashlib.sha256(data).hexdigest(), info)
    _check_cell(data_path, info, cell_config)
    try:
        state = from_plain(torch.load(io.BytesIO(data), weights_only=True))
    except Exception as error:  # noqa: BLE001 - any failure means this file is unusable
        raise CheckpointError(f"{data_path.name} cannot be loaded as plain data: {error}") from None
    return Checkpoint(path=data_path, env_steps=int(info["env_steps"]), state=state, info=info)


#: The parts of every checkpoint `bench run` writes (`benchbase.learner.loop.checkpoint_state`).
RUN_STATE_PARTS = ("learner", "comm", "loop")


def load_run_checkpoint(path: Path | str, cell_config: dict[str, Any] | None = None) -> Checkpoint:
    """`load`, and a CheckpointError unless the state has the parts `bench run` writes (the learner's
    with its flat `parameters`): a forged or foreign file whose sidecar matches is refused here, in
    one line, rather than failing deep inside a learner."""
    found = load(path, cell_config)
    state = found.state
    missing = [part for part in RUN_STATE_PARTS if not isinstance(state, dict) or not isinstance(state.get(part), dict)]
    if not missing and not isinstance(state["learner"].get("parameters"), torch.Tensor):
        missing = ["learner parameters"]
    if missing:
        raise CheckpointError(
            f"{found.path} is not a checkpoint bench run wrote (no {', '.join(missing)}), "
            "though its sidecar matches: delete it and its .json"
        )
    return found


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


def good_checkpoints(
    folder: Path | str, cell_config: dict[str, Any] | None = None
) -> tuple[dict[int, Path], list[str]]:
    """Every checkpoint in `folder` that verifies, by env steps, and why the others were skipped.
    Verifying reads each file once (size, digest); nothing is unpickled here."""
    folder = Path(folder)
    good: dict[int, Path] = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("step-*.pt"), reverse=True) if folder.is_dir() else []:
        try:
            verify(path, cell_config)
            good[steps_of(path)] = path
        except CheckpointError as error:
            skipped.append(str(error))
    return good, skipped


def verify(path: Path, cell_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of a checkpoint whose data file is intact; CheckpointError otherwise."""
    data_path = Path(path)
    info = _read_info(data_path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(data_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    except OSError as error:
        raise CheckpointError(f"{data_path.name} is unreadable: {error}") from None
    _check_data(data_path, size, digest.hexdigest(), info)
    _check_cell(data_path, info, cell_config)
    return info


def _read_info(data_path: Path) -> dict[str, Any]:
    info_path = data_path.with_suffix(".json")
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{data_path.name}: no {info_path.name} beside it (an unfinished checkpoint)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{info_path.name} is unreadable: {error}") from None
    if info.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{data_path.name}: checkpoint format {info.get('format')}, this benchbase reads "
            f"{' and '.join(map(str, READABLE_FORMATS))}"
        )
    return info


def _check_data(data_path: Path, size: int, digest: str, info: dict[str, Any]) -> None:
    if size != info.get("bytes"):
        raise CheckpointError(f"{data_path.name} is truncated: {size:,} bytes of {info.get('bytes'):,}")
    if digest != info.get("sha256"):
        raise CheckpointError(f"{data_path.name} is corrupted: its SHA-256 does not match the one recorded")


def _check_cell(data_path: Path, info: dict[str, Any], cell_config: dict[str, Any] | None) -> None:
    if cell_config is None or info.get("cell_config") == json.loads(json.dumps(cell_config, default=str)):
        return
    recorded = info.get("cell_config") or {}
    differing = sorted(
        key
        for key in set(cell_config) | set(recorded)
        if recorded.get(key) != json.loads(json.dumps(cell_config.get(key), default=str))
    )
    raise CheckpointError(
        f"{data_path.name} belongs to another cell (differs in {', '.join(differing)}): refusing to load it"
    )


class BackgroundWriter:
    """Writes checkpoints on a thread, so a learner pays only for copying and encoding its state,
    not for hashing and writing it (its neighbours would wait for that too). Encoding stays with
    the learner: on the thread its Python work held the interpreter lock against the learner's,
    which lost more time than encoding takes (docs/scaling.md).

    At most `max_pending` writes wait or run at a time: a learner's own writer holds one (a new
    checkpoint first waits for the previous); a learner block's learners share one writer that
    holds one per learner, so a block hands over all its checkpoints without waiting. Writes run
    in order on one thread, started when there is work and ended when there is none (starting a
    thread per write cost a block 1 s per 200k steps on 2 cores)."""

    def __init__(self, max_pending: int = 1) -> None:
        self.max_pending = max_pending
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._pending = 0
        self._changed = threading.Condition()
        self._running = False
        self._error: BaseException | None = None
        self.write_s = 0.0  # time spent on the thread (benchmarks/cnn_learner.py reports it)

    def submit(
        self,
        folder: Path,
        state: dict[str, Any],
        *,
        env_steps: int,
        cell_config: dict[str, Any],
        keep: int | None = KEEP,
    ) -> float:
        """Encode `state` now and queue its write; the seconds encoding took."""
        started = time.perf_counter()
        data = encode(state)
        encoding_s = time.perf_counter() - started
        with self._changed:
            while self._pending >= self.max_pending:
                self._changed.wait()
            self._raise_error()
            self._jobs.append(
                functools.partial(write_encoded, folder, data, env_steps=env_steps, cell_config=cell_config, keep=keep)
            )
            self._pending += 1
            if not self._running:
                self._running = True
                threading.Thread(target=self._write_all, name="checkpoint-writer", daemon=True).start()
        return encoding_s

    def _write_all(self) -> None:
        while True:
            with self._changed:
                if not self._jobs:
                    self._running = False
                    return
                job = self._jobs.popleft()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                job()
            except BaseException as failed:  # noqa: BLE001 - raised in the learner by wait()
                error = failed
            with self._changed:
                self._error = self._error or error
                self.write_s += time.perf_counter() - started
                self._pending -= 1
                self._changed.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def raise_failed(self) -> None:
        """Re-raise the error of a write that has already failed (without waiting for one in flight):
        a learner whose disk filled stops at once, not one checkpoint interval later, when its
        neighbours may have replaced the checkpoints they share with it."""
        if self._error is None:  # read without the lock (every learner asks at every iteration): a
            return  # write failing meanwhile is raised at the next call
        with self._changed:
            self._raise_error()

    def wait(self) -> None:
        """Block until every pending write is on disk; re-raise a write's error in the caller."""
        with self._changed:
            while self._pending:
                self._changed.wait()
            self._raise_error()
