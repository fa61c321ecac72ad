"""`bench eval`: run saved models on any split of any env family, outside the training run.

A source (checkpoint file, learner folder, cell checkpoint folder or run folder; see
`benchbase.checkpoints.sources`) names learners' checkpoints. Each learner's model (parameters and
observation-normalisation statistics) is loaded into a learner built like the cell's, and run for
N episodes per split, greedily or sampling from its policy, on its own env family or another one
with the same observation and action spaces. Tasks and seeds are made as the run's `Evaluator`
makes them, so by default the final checkpoint reproduces the run's final evaluation.

Rows go to `<out>/evaluations.parquet` (`EVALS_SCHEMA`: the training evaluations' schema, its
training-only columns null) and `<out>/eval.json` (what was asked, which checkpoints), both
written atomically once everything has run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from benchbase.api.contracts import FinishedEpisode, TaskVectorEnv, params_of, without_resampling
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.sources import resolve
from benchbase.errors import UserError, unknown_name
from benchbase.evaluate import video
from benchbase.evaluate.summary import summarise
from benchbase.grid.cell import Cell
from benchbase.grid.spec import parse_axis_entry
from benchbase.learner.build import build_learner, simulator_tasks
from benchbase.learner.episodes import run_episodes
from benchbase.learner.evaluation import episodes_per_process
from benchbase.results import EVALUATIONS_SCHEMA, SCHEMA_VERSION, RowBuffer, write_json, write_table

#: The run's evaluation schema (`EVALUATIONS_SCHEMA`: one for evaluations/ and evals/), filled in
#: its `bench eval` columns; `benchbase.table` says which wrote a file.
EVALS_SCHEMA = EVALUATIONS_SCHEMA.with_metadata(
    {"benchbase.table": "evals", "benchbase.schema_version": str(SCHEMA_VERSION)}
)


@dataclass(frozen=True)
class EvalRequest:
    """What `bench eval` was asked (validated by `evaluate`)."""

    source: str
    env: str | None = None  # FAMILY[:key=value,…]; None: each cell's own family and parameters
    splits: tuple[str, ...] = ()  # empty: train and every split of the family
    episodes: int | None = None  # per split and learner; None: as many as the run's own evaluations
    stochastic: bool = False
    learner: int | None = None
    seed: int | None = None  # None: the run's own evaluation seeds
    out: Path | None = None
    video: Path | None = None


@dataclass
class EvalOutcome:
    out: Path
    table: pa.Table
    summary: list[dict[str, Any]]  # `eval_summary.summarise`
    video: Path | None = None
    video_frames: int = 0
    notes: list[str] = field(default_factory=list)


def _rank_of(path: Path) -> int:
    name = path.parent.name
    return int(name.split("-", 1)[1]) if name.startswith("learner-") and name[8:].isdigit() else 0


def _describe(space: Any) -> str:
    """Box(4,), Discrete(2)."""
    size = getattr(space, "n", None)
    return (
        f"{type(space).__name__}({size})"
        if size is not None
        else f"{type(space).__name__}{getattr(space, 'shape', '')}"
    )


def _check_spaces(model_env: TaskVectorEnv, target_env: TaskVectorEnv, cell: Cell, target: str) -> None:
    """A UserError unless the model's env and the target env look alike to the model."""
    pairs = (
        (model_env.observation_space, target_env.observation_space),
        (model_env.action_space, target_env.action_space),
    )
    if all(
        type(a) is type(b) and a.shape == b.shape and getattr(a, "n", None) == getattr(b, "n", None) for a, b in pairs
    ):
        return
    raise UserError(
        f"--env {target}: observations {_describe(target_env.observation_space)} and actions "
        f"{_describe(target_env.action_space)} differ from the model's ({cell.env}: "
        f"{_describe(model_env.observation_space)}, {_describe(model_env.action_space)})"
    )


def _target(request: EvalRequest, cell: Cell, registry: Any) -> tuple[Any, Any]:
    """(family, parameters) to evaluate on: the cell's own, or --env's (starting from the cell's
    parameters when it names the cell's family)."""
    own = registry.get("env", cell.env)
    if request.env is None:
        return own, without_resampling(params_of(own, cell.env_params))
    entry = parse_axis_entry(request.env, "--env")
    family = registry.get("env", entry.name)
    values = dict(cell.env_params) if family.name == own.name else {}
    values.update(dict(entry.overrides))
    return family, without_resampling(params_of(family, values))


def _splits(request: EvalRequest, family: Any) -> list[str]:
    allowed = ["train", *family.splits]
    for split in request.splits:
        if split not in allowed:
            raise unknown_name(f"split of {family.name}", split, allowed)
    return list(dict.fromkeys(request.splits)) or allowed


def _seeds(cell: Cell, seed: int | None) -> tuple[int, int]:
    """(env seed, held-out task seed): by default the run's `Evaluator`'s."""
    return (cell.seed * 1_000_003 + 7_777, cell.seed) if seed is None else (seed, seed)


def _default_out(source: str) -> Path:
    """`<run>/evals/<time>` for a path inside a run folder, else `./eval-<time>`; never an old one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(source).resolve()
    runs = [p for p in (path, *path.parents) if (p / "checkpoints").is_dir() and (p / "grid.json").is_file()]
    base = runs[0] / "evals" / stamp if runs else Path(f"eval-{stamp}")
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def _plain(params: Any) -> str:
    return json.dumps(asdict(params) if is_dataclass(params) else {}, sort_keys=True, default=str)


@dataclass(frozen=True)
class _CellPlan:
    """One cell's evaluation, checked before anything runs."""

    cell: Cell
    cell_id: str
    learners: list[tuple[int, Path, int]]  # (rank, checkpoint, its env steps)
    family: Any
    params: Any
    splits: list[str]
    env_seed: int
    task_seed: int
    episodes: int  # per split and learner


def _plan(found: Any, request: EvalRequest, registry: Any) -> _CellPlan:
    """A UserError for a bad learner, family, split or incompatible env, before any episode runs."""
    cell = Cell.from_config(found.cell_config)
    learners = [(_rank_of(path), path.resolve(), steps) for path, steps in zip(found.paths, found.env_steps)]
    if request.learner is not None:
        learners = [entry for entry in learners if entry[0] == request.learner]
        if not learners:
            have = ", ".join(str(_rank_of(path)) for path in found.paths)
            raise UserError(f"--learner {request.learner}: out of range, {found.cell_id} has learner(s) {have}")
    family, params = _target(request, cell, registry)
    splits = _splits(request, family)
    own = registry.get("env", cell.env)
    if family.name != own.name:
        own_params = without_resampling(params_of(own, cell.env_params))
        model_env = own.make_env(own_params, own.training_tasks(own_params, 1, cell.seed), 0)
        probe = family.make_env(params, family.training_tasks(params, 1, cell.seed), 0)
        try:
            _check_spaces(model_env, probe, cell, request.env or family.name)
        finally:
            probe.close()
            model_env.close()
    env_seed, task_seed = _seeds(cell, request.seed)
    episodes = request.episodes if request.episodes is not None else episodes_per_process(cell)
    return _CellPlan(cell, found.cell_id, learners, family, params, splits, env_seed, task_seed, episodes)


def evaluate(request: EvalRequest, registry: Any, progress: Callable[[str], None] | None = None) -> EvalOutcome:
    """Evaluate every learner `request.source` names; write the table (and video); summarise."""
    if request.episodes is not None and request.episodes < 1:
        raise UserError(f"--episodes {request.episodes}: give at least 1")
    if request.video is not None:
        video.check_video_path(request.video)
        video.prepare_rendering()  # before anything imports mujoco
    cells = resolve(request.source)
    plans = [_plan(found, request, registry) for found in cells]
    mode = "stochastic" if request.stochastic else "greedy"
    rows = RowBuffer(EVALS_SCHEMA)
    writer = video.VideoWriter(request.video) if request.video is not None else None
    try:
        for number, plan in enumerate(plans):
            _evaluate_cell(plan, request, registry, rows, mode, writer if number == 0 else None, progress)
        video_path = writer.finish() if writer is not None else None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    table = rows.to_table()
    out = request.out if request.out is not None else _default_out(request.source)
    write_table(out / "evaluations.parquet", table)
    write_json(
        out / "eval.json",
        {
            "schema_version": SCHEMA_VERSION,
            "source": request.source,
            "env": request.env,
            "splits": list(request.splits),
            "episodes": {plan.cell_id: plan.episodes for plan in plans},
            "mode": mode,
            "learner": request.learner,
            "seed": request.seed,
            "video": None if video_path is None else str(video_path),
            "checkpoints": {plan.cell_id: [str(path) for _, path, _ in plan.learners] for plan in plans},
        },
    )
    notes = [note for found in cells for note in found.skipped]
    notes += [f"{found.cell_id} {bad}; evaluated its other learners" for found in cells for bad in found.unusable]
    return EvalOutcome(out, table, summarise(table), video_path, writer.frames if writer else 0, notes)


def _evaluate_cell(
    plan: _CellPlan,
    request: EvalRequest,
    registry: Any,
    rows: RowBuffer,
    mode: str,
    writer: video.VideoWriter | None,
    progress: Callable[[str], None] | None,
) -> None:
    cell, family, params, splits, episodes = plan.cell, plan.family, plan.params, plan.splits, plan.episodes
    own_family = registry.get("env", cell.env)
    own_params = without_resampling(params_of(own_family, cell.env_params))
    # One simulator of the cell's own env: what the learner (and so the model) is built for.
    model_env = own_family.make_env(own_params, own_family.training_tasks(own_params, 1, cell.seed), 0)
    learner = None
    try:
        learner = build_learner(registry, cell, model_env, world=cell.learner_processes)
        if request.stochastic and not learner.has_sampled_policy:
            raise UserError(f"--stochastic: {cell.algorithm}'s learners have no sampled policy (act_sampled)")
        act = learner.act_sampled if request.stochastic else learner.act_greedy
        training = family.training_tasks(params, cell.learners, cell.seed)
        held_out = {
            split: family.evaluation_tasks(params, split, episodes, plan.task_seed)
            for split in splits
            if split != "train"
        }
        for position, (rank, path, steps) in enumerate(plan.learners):
            if progress is not None:
                progress(f"{plan.cell_id} learner {rank}: {', '.join(splits)} on {family.name}")
            learner.load_state_dict(checkpoint.load_run_checkpoint(path).state["learner"], mode="model")
            own = simulator_tasks(training, cell, rank)
            for index, split in enumerate(splits):
                tasks = [own[k % len(own)] for k in range(episodes)] if split == "train" else held_out[split]
                env = family.make_env(params, tasks, plan.env_seed)
                try:
                    record = None
                    if writer is not None and position == 0:
                        video.can_render(env, family.name)
                        caption = f"{plan.cell_id} · learner {rank} · {family.name} {split} · {tasks[0].task_id}"
                        record = lambda frame, caption=caption: writer.add(frame, caption)  # noqa: E731
                    # Sampled actions: reproducible per (seed, learner, split).
                    torch.manual_seed(plan.env_seed * 1_009 + rank * 101 + index)
                    finished = run_episodes(env, act, episodes, plan.env_seed, record=record)
                finally:
                    env.close()
                _append_rows(rows, plan, split, mode, (rank, path, steps), finished)
    finally:
        if learner is not None:
            learner.close()
        model_env.close()


def _append_rows(
    rows: RowBuffer,
    plan: _CellPlan,
    split: str,
    mode: str,
    learner: tuple[int, Path, int],
    finished: list[FinishedEpisode],
) -> None:
    """One row per evaluated episode of one learner (rank, checkpoint, env steps) on one split."""
    rank, path, steps = learner
    for episode_index, episode in enumerate(finished):
        rows.append(
            checkpoint=str(path),
            cell_id=plan.cell_id,
            algorithm=plan.cell.algorithm,
            learner=rank,
            env_step=steps,
            trained_env=plan.cell.env,
            env=plan.family.name,
            env_params=_plain(plan.params),
            split=split,
            mode=mode,
            seed=plan.env_seed,
            episode=episode_index,
            task_id=episode.task.task_id,
            task_params=[(key, float(value)) for key, value in episode.task.parameters.items()],
            episode_return=episode.episode_return,
            episode_length=episode.episode_length,
            success=episode.success,
        )
