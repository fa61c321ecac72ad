"""`bench export`: one learner's greedy policy as a file that runs without benchbase, and
`benchbase.load_policy`, which runs any of those files.

The learner is rebuilt and loaded from its checkpoint exactly as `bench eval` does (its cell's
algorithm on one simulator of the cell's env, `load_state_dict(mode="model")`). The policy is
what `act_greedy` computes, in one module: the observation normalisation with the checkpoint's
statistics ((obs − mean) / sqrt(var + 1e-8), clipped to ±clip, where the learner normalises),
the model's actor, then the greedy action (argmax of the logits for discrete actions; the
Gaussian mean clipped to the action box for continuous ones). Before anything is written the
module is checked against the learner's own `act_greedy` on probe observations, and the written
file is loaded back and checked again.

Formats (`FORMATS`):

- `torchscript`: `torch.jit.load(path)(observations)` with plain torch: a float tensor batch
  [B, *obs_shape] (float64 inputs are normalised in float64, as numpy does; anything else in
  float32) -> actions [B] int64 or [B, A] float32. `benchbase.json` in the archive's extra files
  describes it (`METADATA_FILE`).
- `onnx`: input `observations` float32 [B, *obs_shape], output `actions`; the same description in
  the model's metadata (key `benchbase`). Needs `pip install 'benchbase[onnx]'`.
- `state-dict`: `torch.save` of plain data (`torch.load(path, weights_only=True)` reads it):
  `model_state_dict` (the algorithm's network, `plugins.algorithms.common.networks.build_model`),
  `observation_mean`, `observation_var`, `normalise`, `clip`, the spaces' description and the
  algorithm and env names with their parameters; `load_policy` rebuilds the network from those.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchbase.api.contracts import params_of, without_resampling
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.sources import CellCheckpoints, resolve
from benchbase.errors import UserError, unknown_name
from benchbase.grid.cell import Cell
from benchbase.learner.build import build_learner
from benchbase.results import write_atomic

FORMATS: tuple[str, ...] = ("torchscript", "onnx", "state-dict")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "state-dict": ".pt"}
#: What a state-dict file says it is (its "format" key), and its layout's version.
STATE_DICT_FORMAT = "benchbase-policy"
STATE_DICT_VERSION = 1
#: The description's name inside a TorchScript archive (`torch.jit.load(..., _extra_files=…)`).
METADATA_FILE = "benchbase.json"
ONNX_INSTALL = "pip install 'benchbase[onnx]'"
#: Probe observations the exported policy must agree with `act_greedy` on.
PROBES = 64
_VARIANCE_EPSILON = 1e-8  # as the learners' normaliser: 1 / sqrt(var + 1e-8)
_LEARNER = re.compile(r"learner-(\d+)$")


# ============================================================================================
# The policy module


class _Actor(nn.Module):
    """The model's actor as a module's forward (what tracing records)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.model.actor(observations)


class GreedyPolicy(nn.Module):
    """Normalise → actor → greedy action, as `act_greedy` computes it, in plain torch operations
    (scriptable, and exportable to ONNX). `mean`, `inv_std`: the normaliser's float32 statistics;
    `low`, `high`: the action box (empty for discrete actions)."""

    def __init__(
        self,
        actor: nn.Module,
        mean: torch.Tensor,
        inv_std: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        *,
        normalise: bool,
        clip: float,
        continuous: bool,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.normalise = normalise
        self.clip = float(clip)
        self.continuous = continuous
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", inv_std)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        # numpy normalises a float64 batch in float64 (float32 statistics promoted), others in float32.
        if observations.dtype == torch.float64:
            x = observations
        else:
            x = observations.to(torch.float32)
        if self.normalise:
            x = torch.clamp((x - self.mean.to(x.dtype)) * self.inv_std.to(x.dtype), -self.clip, self.clip)
        outputs = self.actor(x.to(torch.float32))
        if self.continuous:
            return torch.minimum(torch.maximum(outputs, self.low), self.high)
        return outputs.argmax(dim=-1)

    def with_actor(self, actor: nn.Module) -> GreedyPolicy:
        """The same policy around another actor (e.g. its traced version)."""
        return GreedyPolicy(
            actor,
            self.mean,
            self.inv_std,
            self.low,
            self.high,
            normalise=self.normalise,
            clip=self.clip,
            continuous=self.continuous,
        ).eval()


def _own_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose tensors own their memory: the learners' parameters are views of one
    flat buffer (critic and mixed statistics included), which would be saved whole."""
    copied = copy.deepcopy(model)
    for tensor in (*copied.parameters(), *copied.buffers()):
        tensor.data = tensor.data.clone()
    return copied


def greedy_policy(
    model: nn.Module, mean: np.ndarray, var: np.ndarray, action_space: Any, *, normalise: bool, clip: float
) -> GreedyPolicy:
    """`model`'s greedy policy with the normaliser's statistics computed as the normaliser computes
    them (float64, then cast to float32) and the action box's bounds in float32, as the learners clip."""
    continuous = getattr(action_space, "n", None) is None
    low = np.asarray(action_space.low if continuous else [], np.float32)
    high = np.asarray(action_space.high if continuous else [], np.float32)
    inverse = 1.0 / np.sqrt(np.asarray(var, np.float64) + _VARIANCE_EPSILON)
    return GreedyPolicy(
        _Actor(_own_copy(model)).eval(),
        torch.from_numpy(np.asarray(mean, np.float64).astype(np.float32)),
        torch.from_numpy(inverse.astype(np.float32)),
        torch.from_numpy(low.copy()),
        torch.from_numpy(high.copy()),
        normalise=normalise,
        clip=clip,
        continuous=continuous,
    ).eval()


# ============================================================================================
# bench export


@dataclass(frozen=True)
class ExportRequest:
    """What `bench export` was asked (validated by `export_policy`)."""

    source: str  # a run folder, a cell's or learner's checkpoint folder, or a step-….pt file
    out: Path | None = None  # None: ./policy-<cell>-learner-<r><suffix>
    cell: str | None = None  # None: the source's only cell
    learner: int = 0
    format: str = "torchscript"


@dataclass(frozen=True)
class ExportOutcome:
    path: Path
    format: str
    cell_id: str
    learner: int
    checkpoint: Path
    env_steps: int
    bytes: int
    probes: int  # observations on which the written file matched act_greedy


def check_format(name: str) -> str:
    """`name` if it is a format (`FORMATS`); a UserError with a close match otherwise, and for
    ONNX without its packages."""
    if name not in FORMATS:
        raise unknown_name("export format", name, FORMATS)
    if name == "onnx":
        _require_onnx(for_export=True)
    return name


def _require_onnx(*, for_export: bool) -> None:
    import importlib.util

    needed = ("onnx", "onnxruntime") if for_export else ("onnxruntime",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        what = "exporting to ONNX" if for_export else "running an ONNX policy"
        raise UserError(f"{what} needs {' and '.join(missing)}: {ONNX_INSTALL}")


def _rank(path: Path) -> int:
    found = _LEARNER.match(path.parent.name)
    return int(found.group(1)) if found else 0


def _choose_cell(cells: list[CellCheckpoints], wanted: str | None, source: str) -> CellCheckpoints:
    ids = [cell.cell_id for cell in cells]
    if wanted is None:
        if len(cells) == 1:
            return cells[0]
        shown = ", ".join(ids[:6]) + (", …" if len(ids) > 6 else "")
        raise UserError(f"{source} holds {len(cells)} cells with checkpoints: name one with --cell ({shown})")
    for cell in cells:
        if cell.cell_id == wanted:
            return cell
    raise unknown_name(f"cell (with checkpoints) in {source}", wanted, ids)


def _choose_learner(cell: CellCheckpoints, rank: int) -> tuple[Path, int]:
    """(checkpoint, env steps) of learner `rank`; a UserError naming the learners there are."""
    for path, steps in zip(cell.paths, cell.env_steps):
        if _rank(path) == rank:
            return path, steps
    have = ", ".join(str(_rank(path)) for path in cell.paths)
    why = [line for line in cell.unusable if line.startswith(f"learner-{rank}:")]
    reason = f" ({why[0]})" if why else ""
    raise UserError(f"--learner {rank}: {cell.cell_id} has no usable checkpoint for it{reason}; learners: {have}")


def _model_env(cell: Cell, registry: Any) -> Any:
    """One simulator of the cell's own env: what the learner (and so the model) is built for."""
    family = registry.get("env", cell.env)
    params = without_resampling(params_of(family, cell.env_params))
    return family.make_env(params, family.training_tasks(params, 1, cell.seed), 0)


def _space_description(space: Any) -> dict[str, Any]:
    """A space as plain data: kind, shape, dtype (and n, or low and high for an action box)."""
    size = getattr(space, "n", None)
    described: dict[str, Any] = {
        "kind": type(space).__name__,
        "shape": [int(d) for d in (getattr(space, "shape", None) or ())],
        "dtype": str(getattr(space, "dtype", "")),
    }
    if size is not None:
        described["n"] = int(size)
    return described


def _policy_of(
    learner: Any, statistics: dict[str, Any], action_space: Any, what: str, settings: dict[str, Any] | None = None
) -> GreedyPolicy:
    """The learner's greedy policy (a UserError when it has no torch model with an actor).
    `settings`: normalise and clip as saved; by default the learner's normaliser's."""
    model = getattr(learner, "model", None)
    if not isinstance(model, nn.Module) or not callable(getattr(model, "actor", None)):
        raise UserError(f"{what}: its learners have no torch model with an actor (`model.actor`): nothing to export")
    normaliser = getattr(learner, "obs_normaliser", None)
    if settings is None:
        settings = {"normalise": bool(getattr(normaliser, "enabled", False)), "clip": getattr(normaliser, "clip", 10.0)}
    return greedy_policy(
        model,
        np.asarray(statistics["mean"]),
        np.asarray(statistics["var"]),
        action_space,
        normalise=bool(settings["normalise"]),
        clip=float(settings["clip"]),
    )


def _probe_observations(env: Any, count: int, seed: int) -> np.ndarray:
    """Observations from the env's reset and drawn from its space, some scaled far out (to reach
    the normaliser's clip), in the env's own dtype."""
    space = env.observation_space
    first = np.asarray(env.reset(seed=seed))
    space.seed(seed)
    drawn = [np.asarray(space.sample(), first.dtype) for _ in range(max(count - len(first), 0))]
    probes = np.concatenate([first, np.stack(drawn)])[:count] if drawn else first[:count]
    if np.issubdtype(probes.dtype, np.floating):
        scale = np.random.default_rng(seed).choice(np.array([0.1, 1.0, 10.0, 1e3], probes.dtype), size=len(probes))
        probes = probes * scale.reshape(-1, *([1] * (probes.ndim - 1)))
    return probes


def _check(
    run: Callable[[np.ndarray], np.ndarray], probes: np.ndarray, expected: np.ndarray, continuous: bool, what: str
) -> None:
    """A UserError unless `run` gives `expected` on `probes` (exactly for discrete actions)."""
    actions = np.asarray(run(probes))
    if actions.shape == expected.shape:
        rows = (actions.reshape(len(actions), -1), expected.reshape(len(expected), -1))
        close = np.isclose(*rows, rtol=1e-5, atol=1e-6) if continuous else rows[0] == rows[1]
        differing = int(np.sum(~close.all(axis=1)))
    else:
        differing = len(expected)
    if differing:
        raise UserError(
            f"{what} disagrees with the learner's act_greedy on {differing} of {len(expected)} probe observations: "
            "its learner does not act by normalise → actor → greedy action; nothing written"
        )


def _torch_call(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    def run(observations: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(observations))).numpy()

    return run


def export_policy(request: ExportRequest, registry: Any) -> ExportOutcome:
    """Write learner `request.learner`'s greedy policy of one cell in `request.format`, checked
    against the learner's `act_greedy`; a UserError for a bad source, cell, learner or format."""
    check_format(request.format)
    if request.learner < 0:
        raise UserError(f"--learner {request.learner}: give a learner number ≥ 0")
    if request.out is not None and request.out.is_dir():
        raise UserError(f"--out {request.out} is a folder: give the file to write")
    cell_checkpoints = _choose_cell(resolve(request.source), request.cell, request.source)
    path, env_steps = _choose_learner(cell_checkpoints, request.learner)
    try:
        found = checkpoint.load_run_checkpoint(path)
    except checkpoint.CheckpointError as error:
        raise UserError(f"{request.source}: {error}") from None
    cell = Cell.from_config(found.info["cell_config"])
    out = request.out or Path(f"policy-{cell_checkpoints.cell_id}-learner-{request.learner}{SUFFIXES[request.format]}")
    what = f"{cell.algorithm} learner {request.learner} of {cell_checkpoints.cell_id}"
    description = {
        "format": request.format,
        "cell_id": cell_checkpoints.cell_id,
        "learner": request.learner,
        "checkpoint": str(path.resolve()),
        "env_steps": env_steps,
        "algorithm": cell.algorithm,
        "algorithm_params": cell.algorithm_params,
        "env": cell.env,
        "env_params": cell.env_params,
        "cell_config": found.info["cell_config"],
    }
    env = _model_env(cell, registry)
    learner = None
    try:
        learner = build_learner(registry, cell, env, world=cell.learner_processes)
        if not getattr(learner, "checkpointable", False):
            raise UserError(f"{what}: its learners cannot be checkpointed: nothing to export")
        learner.load_state_dict(found.state["learner"], mode="model")
        statistics = found.state["learner"].get("observation_statistics")
        if not isinstance(statistics, dict) or "mean" not in statistics or "var" not in statistics:
            raise UserError(f"{path}: no observation statistics (mean, var) in the learner's state: cannot export it")
        policy = _policy_of(learner, statistics, env.action_space, what)
        description.update(
            observation_space=_space_description(env.observation_space),
            action_space=_space_description(env.action_space),
            normalise=policy.normalise,
            clip=policy.clip,
        )
        probes = _probe_observations(env, PROBES, cell.seed)
        if request.format == "onnx":
            probes = probes.astype(np.float32)  # the ONNX graph takes float32
        expected = np.asarray(learner.act_greedy(probes))
        _check(_torch_call(policy), probes, expected, policy.continuous, f"the policy of {what}")
        write = {"torchscript": _write_torchscript, "onnx": _write_onnx, "state-dict": _write_state_dict}
        with torch.no_grad():
            write[request.format](policy, learner, statistics, description, probes, out)
        try:
            _check(load_policy(out), probes, expected, policy.continuous, f"the written {out}")
        except BaseException:
            out.unlink(missing_ok=True)  # a file that does not act as the learner does is not left behind
            raise
    finally:
        if learner is not None:
            learner.close()
        env.close()
    return ExportOutcome(
        out, request.format, cell_checkpoints.cell_id, request.learner, path, env_steps, out.stat().st_size, len(probes)
    )


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Without torch's deprecation notes on TorchScript and its ONNX exporter: the format is what
    was asked for, and plain `torch.jit.load` still reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def summary_line(outcome: ExportOutcome) -> str:
    """What `bench export` prints: the file, its size, and what it holds."""
    return (
        f"{outcome.format}: {outcome.path} ({outcome.bytes:,} bytes), {outcome.cell_id} learner {outcome.learner} "
        f"at {outcome.env_steps:,} env steps; the same actions as its act_greedy on {outcome.probes} observations"
    )


def _write_torchscript(
    policy: GreedyPolicy, learner: Any, statistics: dict, description: dict, probes: np.ndarray, out: Path
) -> None:
    # The actor is traced (the networks' Python is not all scriptable); the wrapper, with its
    # dtype branch, is scripted; freezing inlines the weights and drops what the actor never uses
    # (the critic).
    example = torch.from_numpy(np.ascontiguousarray(probes[:2])).to(torch.float32)
    buffer = io.BytesIO()  # the archive's folder is then "archive", not the temporary file's name
    with _quiet_exporters():
        traced = torch.jit.trace(policy.actor, example, check_trace=False)
        frozen = torch.jit.freeze(torch.jit.script(policy.with_actor(traced)))
        extra = {METADATA_FILE: json.dumps(description, sort_keys=True, default=str)}
        torch.jit.save(frozen, buffer, _extra_files=extra)
    data = buffer.getvalue()
    write_atomic(out, lambda temporary: Path(temporary).write_bytes(data))


def _write_onnx(
    policy: GreedyPolicy, learner: Any, statistics: dict, description: dict, probes: np.ndarray, out: Path
) -> None:
    import onnx

    example = (torch.from_numpy(np.ascontiguousarray(probes[:2])).to(torch.float32),)
    buffer = io.BytesIO()
    with _quiet_exporters():
        # The TorchScript-based exporter: the dynamo one needs onnxscript besides onnx.
        torch.onnx.export(
            policy,
            example,
            buffer,
            input_names=["observations"],
            output_names=["actions"],
            dynamic_axes={"observations": {0: "batch"}, "actions": {0: "batch"}},
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = "benchbase", json.dumps(description, sort_keys=True, default=str)
    data = model.SerializeToString()
    write_atomic(out, lambda temporary: Path(temporary).write_bytes(data))


def _write_state_dict(
    policy: GreedyPolicy, learner: Any, statistics: dict, description: dict, probes: np.ndarray, out: Path
) -> None:
    plain = json.loads(json.dumps(description, default=str))  # JSON-safe values only: weights_only loads them
    state = {
        **plain,
        "format": STATE_DICT_FORMAT,
        "version": STATE_DICT_VERSION,
        "model_state_dict": {name: value.detach().cpu().clone() for name, value in learner.model.state_dict().items()},
        "observation_mean": torch.from_numpy(np.asarray(statistics["mean"], np.float64).copy()),
        "observation_var": torch.from_numpy(np.asarray(statistics["var"], np.float64).copy()),
        "observation_count": float(statistics.get("count", 0.0)),
        "action_low": policy.low.clone() if policy.continuous else None,
        "action_high": policy.high.clone() if policy.continuous else None,
    }
    write_atomic(out, lambda temporary: torch.save(state, temporary))


# ============================================================================================
# load_policy


class Policy:
    """A loaded policy: `policy(observations)` -> actions, for a batch [B, *obs_shape] (or one
    observation, giving one action). `format` and `description` say what it is."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], format: str, description: dict[str, Any]) -> None:
        self._run = run
        self.format = format
        self.description = description
        shape = (description.get("observation_space") or {}).get("shape")
        self._obs_rank = len(shape) if isinstance(shape, list) else None

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        batch = np.asarray(observations)
        single = self._obs_rank is not None and batch.ndim == self._obs_rank
        actions = self._run(batch[None] if single else batch)
        return actions[0] if single else actions

    def __repr__(self) -> str:
        return f"Policy({self.format}: {self.description.get('algorithm')} on {self.description.get('env')})"


def _kind_of(path: Path) -> str:
    """torchscript, state-dict or onnx, from the file's contents."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        return "state-dict"
    with open(path, "rb") as handle:
        start = handle.read(2)
    # An ONNX model is a protobuf whose first field is ir_version (field 1, varint): byte 0x08.
    if start[:1] == b"\x08":
        return "onnx"
    raise UserError(f"{path} is not a policy bench export wrote (TorchScript, ONNX or state-dict)")


def load_policy(path: str | Path) -> Policy:
    """The policy in a file `bench export` wrote, in any of its formats, as a callable
    observations (np.ndarray batch) -> actions. TorchScript and ONNX files need only torch or
    onnxruntime; a state-dict file rebuilds the network through benchbase's plugins."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such policy file")
    kind = _kind_of(path)
    if kind == "torchscript":
        extra = {METADATA_FILE: ""}
        with _quiet_exporters():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        description = json.loads(extra[METADATA_FILE] or "{}")
        return Policy(_torch_call(module), kind, description)
    if kind == "onnx":
        _require_onnx(for_export=False)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        description = json.loads(meta.get("benchbase", "{}"))

        def run(observations: np.ndarray) -> np.ndarray:
            return session.run(["actions"], {"observations": np.asarray(observations, np.float32)})[0]

        return Policy(run, kind, description)
    return _load_state_dict(path)


def _load_state_dict(path: Path) -> Policy:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means this is not our file
        raise UserError(f"{path} cannot be loaded as a policy state-dict: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_DICT_FORMAT:
        raise UserError(f"{path} is not a policy bench export wrote (no format {STATE_DICT_FORMAT!r})")
    from benchbase.api.registry import load_registry

    registry = load_registry()
    cell = Cell.from_config(state["cell_config"])
    env = _model_env(cell, registry)
    learner = build_learner(registry, cell, env, world=cell.learner_processes)
    try:
        learner.model.load_state_dict(state["model_state_dict"])
        statistics = {"mean": state["observation_mean"].numpy(), "var": state["observation_var"].numpy()}
        settings = {"normalise": state["normalise"], "clip": state["clip"]}
        policy = _policy_of(learner, statistics, env.action_space, f"{cell.algorithm} on {cell.env}", settings)
    finally:
        learner.close()
        env.close()
    description = {key: value for key, value in state.items() if not isinstance(value, (dict, torch.Tensor))}
    description.update(
        {key: state[key] for key in ("observation_space", "action_space", "algorithm_params", "env_params")}
    )
    description["format"] = "state-dict"
    return Policy(_torch_call(policy), "state-dict", description)
