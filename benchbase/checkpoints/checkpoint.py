"""Checkpoint files: written atomically, verified before loading, loaded without unpickling code.

A checkpoint is `<name>.pt`, plain data (tensors, numpy arrays and scalars, numbers, strings,
lists, tuples, sets, dicts), plus `<name>.json` beside it, written after the data and holding its
SHA-256, size, env steps, the cell config and the package versions. Loading checks, in order: the
sidecar exists and parses, the data file has the recorded size and digest (a truncated or
corrupted file is caught here, not half-loaded), the cell config matches the cell asking for it,
and then the data is read by unpicklers that refuse every global (a class or function, which is
how a pickle runs code). `latest_good` walks a learner's checkpoints newest first and falls back
to an older one when the newest is bad, saying why.

The data file (format 3): a magic line, the length of a pickle of builtins, that pickle, then raw
sections. The pickle stands for the state with each tensor, numpy array or scalar, and each
container of eight or more builtins-only items, replaced by a persistent id naming its section
(kind, dtype and shape, offset and size), so pickling calls back into Python once per object of the
state's outline, not once per value of the rows it carries. Formats 1 and 2 (`torch.save`, read
with `torch.load(weights_only=True)`) still load.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import math
import pickle
import struct
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

FORMAT_VERSION = 3
# Formats 1 and 2 are `torch.save` files (format 1 pickled only long lists of scalars, one byte
# tensor each); they load through `torch.load(weights_only=True)`.
READABLE_FORMATS = (1, 2, 3)
_MAGIC = b"benchbase checkpoint 3\n"
_SECTION_FROM = 8  # containers of at least this many items are tried as a section of their own
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


# Formats 1 and 2 (`torch.save`) marked what `torch.load(weights_only=True)` does not take: a numpy
# array as a tensor under _NUMPY, a container of builtins as its pickle in a byte tensor under
# _PLAIN_PICKLED (format 1: one long column of scalars under _SCALARS_PICKLED). `from_plain` turns
# them back; `_BuiltinsOnly` reads the pickles without importing anything.
_NUMPY = "__numpy__"
_PLAIN_PICKLED = "__plain__"
_SCALARS_PICKLED = "__scalars__"


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


def from_plain(value: Any) -> Any:
    """A format-1 or -2 state as `torch.load` gives it, its marked arrays and pickles turned back."""
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
    return write_encoded(folder, encode_parts(state), env_steps=env_steps, cell_config=cell_config, keep=keep)


def encode(state: dict[str, Any]) -> bytes:
    """`state` as a checkpoint's data file holds it (format 3)."""
    return b"".join(encode_parts(state))


def encode_parts(state: dict[str, Any]) -> list[bytes | memoryview]:
    """`encode`'s bytes as the parts they are joined from: the header and outline, then each
    section. A tensor's or array's section is its own memory, not a copy, so `state` must not
    change until the parts are written; joining them would be one more copy of every tensor in
    the checkpoint, at the moment a learner's memory peaks (docs/scaling.md)."""
    outline = io.BytesIO()
    pickler = _SectionPickler(outline)
    pickler.dump(state)
    head = outline.getvalue()
    return [_MAGIC + struct.pack("<Q", len(head)), head, *pickler.sections]


_WRITTEN_AS_IS = frozenset({str, int, float, bool, type(None), bytes})


class _SectionPickler(pickle.Pickler):
    """Pickles a state's outline; its arrays and long containers of builtins go to `sections`."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.sections: list[bytes | memoryview] = []
        self.size = 0

    def _section(self, data: bytes | memoryview) -> tuple[int, int]:
        offset, length = self.size, len(data) if isinstance(data, bytes) else data.nbytes
        self.sections.append(data)
        self.size += length
        return offset, length

    def persistent_id(self, obj: Any) -> tuple | None:
        kind = type(obj)
        if kind in _WRITTEN_AS_IS:  # most of an outline: asked first, since the pickler asks about every object
            return None
        if kind is dict or kind is list or kind is tuple:
            if len(obj) >= _SECTION_FROM:
                pickled = _pickled_if_plain(obj)
                if pickled is not None:
                    return ("pickle", *self._section(pickled))
            return None
        if isinstance(obj, torch.Tensor):
            tensor = obj.detach().to("cpu").contiguous()
            data = tensor.reshape(-1).view(torch.uint8).numpy().data
            return ("tensor", str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), *self._section(data))
        if isinstance(obj, (np.ndarray, np.generic)):
            array = np.asarray(obj, order="C")
            if array.dtype.hasobject:
                raise TypeError("a checkpoint holds plain data only, not a numpy array of objects")
            kind_name = "ndarray" if isinstance(obj, np.ndarray) else "scalar"
            return (kind_name, array.dtype.str, array.shape, *self._section(array.reshape(-1).view(np.uint8).data))
        return None

    def reducer_override(self, obj: Any) -> Any:
        # Asked only about what the pickler does not write itself: anything but plain builtins.
        raise TypeError(f"a checkpoint holds plain data only, not a {type(obj).__module__}.{type(obj).__qualname__}")


class _SectionUnpickler(_BuiltinsOnly):
    """Reads a format-3 outline: builtins only, each persistent id checked and read from `sections`."""

    def __init__(self, outline: memoryview, sections: memoryview) -> None:
        super().__init__(io.BytesIO(outline))
        self.sections = sections

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) not in (3, 5) or not isinstance(pid[0], str):
            raise pickle.UnpicklingError(f"a checkpoint section named {pid!r}")
        offset, length = pid[-2:]
        if not (type(offset) is int and type(length) is int and 0 <= offset <= offset + length <= len(self.sections)):
            raise pickle.UnpicklingError(f"a checkpoint section outside the file: {pid!r}")
        data = self.sections[offset : offset + length]
        if pid[0] == "pickle" and len(pid) == 3:
            return _BuiltinsOnly(io.BytesIO(data)).load()
        kind, dtype_name, shape = pid[:3]
        if not (isinstance(shape, tuple) and all(type(size) is int and size >= 0 for size in shape)):
            raise pickle.UnpicklingError(f"a checkpoint array of shape {shape!r}")
        if type(dtype_name) is not str:  # a name, never a description numpy would build a dtype from
            raise pickle.UnpicklingError(f"a checkpoint array of dtype {dtype_name!r}")
        if kind == "tensor":
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype):
                raise pickle.UnpicklingError(f"a checkpoint tensor of dtype {dtype_name!r}")
            _check_size(pid, length, math.prod(shape) * torch.empty((), dtype=dtype).element_size())
            if length == 0:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
        if kind in ("ndarray", "scalar"):
            try:
                dtype = np.dtype(dtype_name)
            except TypeError:
                raise pickle.UnpicklingError(f"a checkpoint array of dtype {dtype_name!r}") from None
            if dtype.hasobject:
                raise pickle.UnpicklingError("a checkpoint array of objects")
            _check_size(pid, length, math.prod(shape) * dtype.itemsize)
            array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            return array if kind == "ndarray" else array.item()  # numpy scalars come back as Python's, as before
        raise pickle.UnpicklingError(f"a checkpoint section of kind {kind!r}")


def _check_size(pid: tuple, length: int, expected: int) -> None:
    if length != expected:
        raise pickle.UnpicklingError(f"a checkpoint section of {length} bytes, its shape needs {expected}: {pid!r}")


def decode(data: bytes) -> Any:
    """The state in a format-3 data file (`encode`)."""
    start = len(_MAGIC) + 8
    if not data.startswith(_MAGIC) or len(data) < start:
        raise pickle.UnpicklingError("not a format-3 checkpoint (no magic line)")
    (length,) = struct.unpack_from("<Q", data, len(_MAGIC))
    view = memoryview(data)
    if start + length > len(data):
        raise pickle.UnpicklingError("a checkpoint whose outline runs past its end")
    return _SectionUnpickler(view[start : start + length], view[start + length :]).load()


def write_encoded(
    folder: Path | str,
    data: bytes | list[bytes | memoryview],
    *,
    env_steps: int,
    cell_config: dict[str, Any],
    keep: int | None = KEEP,
) -> Path:
    """Write `encode`'s `data` (or `encode_parts`'s parts, in order) as the checkpoint at
    `env_steps` in `folder`, then its sidecar; keep the newest `keep` (None: all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(env_steps)
    data_path, info_path = folder / f"{name}.pt", folder / f"{name}.json"
    parts = [data] if isinstance(data, bytes) else data
    digest = hashlib.sha256()

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            for part in parts:  # hashed as written: the bytes are read once, not joined
                handle.write(part)
                digest.update(part)

    write_atomic(data_path, write)
    info = {
        "format": FORMAT_VERSION,
        "env_steps": env_steps,
        "bytes": sum(memoryview(part).nbytes for part in parts),
        "sha256": digest.hexdigest(),
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
        if info["format"] == 3:
            state = decode(data)
        else:
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
            f"{', '.join(map(str, READABLE_FORMATS[:-1]))} and {READABLE_FORMATS[-1]}"
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
        data = encode_parts(state)
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
