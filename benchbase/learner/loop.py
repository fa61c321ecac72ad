"""The training loop of one learner: collect → update → mix → log / evaluate / checkpoint, until
its share of the cell's budget is spent. Rows are buffered in memory and written by the caller.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.checkpoints.resume import CheckpointKeeper, LoopState, StopSignal
from benchbase.comm.communicator import Communicator
from benchbase.grid.cell import Cell
from benchbase.learner.evaluation import Evaluator, task_parameters
from benchbase.learner.settings import LearnerLaunch
from benchbase.results import (
    EPISODES_SCHEMA,
    EVALUATIONS_SCHEMA,
    METRICS_SCHEMA,
    RowBuffer,
)

Report = Callable[[tuple], None]  # the launcher's event sink

PROGRESS_INTERVAL_S = 0.5
METRIC_POINTS = 100  # metric rows per learner over a cell (plus the last iteration)


def checkpoint_state(learner: Any, comm: Communicator, loop: LoopState, replay: bool) -> dict[str, Any]:
    learner_state = learner.state_dict(replay=True) if replay else learner.state_dict()
    return {"learner": learner_state, "comm": comm.state_dict(), "loop": loop.to_dict()}


@dataclass
class LoopContext:
    cell: Cell
    launch: LearnerLaunch
    learner: Any
    comm: Communicator
    evaluator: Evaluator | None
    staleness: int
    report: Report
    keeper: CheckpointKeeper
    stop: StopSignal
    store: Any
    lockstep: bool
    checkpoint_replay: bool


def train(context: LoopContext, state: LoopState) -> tuple[dict[str, Any], dict[str, RowBuffer]]:
    cell, launch, learner, comm, report = context.cell, context.launch, context.learner, context.comm, context.report
    evaluator, keeper = context.evaluator, context.keeper
    cell_id, rank, world = cell.cell_id, launch.rank, launch.world_size
    tables = {name: RowBuffer(schema, state.rows.get(name)) for name, schema in
              (("episodes", EPISODES_SCHEMA), ("evaluations", EVALUATIONS_SCHEMA), ("metrics", METRICS_SCHEMA))}
    episodes, evaluations, metrics = tables["episodes"], tables["evaluations"], tables["metrics"]

    budget = math.ceil(cell.env_steps / world)  # this learner's share of the cell's budget
    recent_returns: deque[float] = deque(state.recent_returns, maxlen=20)
    stop_at: int | None = None
    stopped = False

    def schedule(iterations: int) -> tuple[int, dict[int, int]]:
        every = max(1, iterations // METRIC_POINTS)
        return every, {round(iterations * k / cell.evaluations): k for k in range(1, cell.evaluations + 1)}

    if state.iterations is not None:
        metric_every, eval_at = schedule(state.iterations)
    first_step_at = time.time()
    report(("started", cell_id, rank, first_step_at))
    loop_start = time.perf_counter() - state.wall_s  # a resumed cell's clock continues
    last_report = time.perf_counter()
    while state.iterations is None or state.iteration < state.iterations:
        output = learner.iterate()
        comm.mix(learner.parameters_buffer(), state.iteration)
        state.iteration += 1
        iteration = state.iteration
        state.local_steps += output.env_steps
        local_steps = state.local_steps
        if state.iterations is None:
            state.iterations = max(1, math.ceil(budget / output.env_steps))
            metric_every, eval_at = schedule(state.iterations)
        iterations = state.iterations
        now = time.perf_counter()
        wall = now - loop_start
        for episode in output.finished:
            recent_returns.append(episode.episode_return)
            episodes.append(
                cell_id=cell_id, learner=rank, simulator=episode.simulator, task_id=episode.task.task_id,
                task_params=task_parameters(episode.task), env_step=local_steps, cell_env_step=local_steps * world,
                episode_return=episode.episode_return, episode_length=episode.episode_length,
                success=episode.success, wall_time_s=wall,
            )
        for name, value in output.metrics.items():
            state.metric_sums[name] = state.metric_sums.get(name, 0.0) + value
        state.metric_count += 1

        if iteration % metric_every == 0 or iteration == iterations:
            values = {name: total / state.metric_count for name, total in state.metric_sums.items()}
            values.update(comm.statistics())
            comm.reset_staleness()
            values["steps_per_second"] = local_steps / max(wall - state.eval_time_s, 1e-9)
            if keeper.saved:
                values["checkpoint_copy_s"] = keeper.copy_s
            if recent_returns:
                values["recent_return"] = float(np.mean(recent_returns))
            if context.staleness == 0:
                values["consensus_distance"] = comm.consensus_distance(learner.parameters_buffer())
            else:
                comm.snapshot(learner.parameters_buffer(), iteration)
                nearby = comm.neighbour_distance(learner.parameters_buffer())
                if nearby is not None:
                    values["neighbour_distance"] = nearby
            for name, value in values.items():
                metrics.append(cell_id=cell_id, learner=rank, iteration=iteration, env_step=local_steps,
                               cell_env_step=local_steps * world, wall_time_s=wall, metric=name, value=float(value))
            state.metric_sums, state.metric_count = {}, 0

        if evaluator is not None and iteration in eval_at:
            started = time.perf_counter()
            number = eval_at[iteration]
            results = evaluator.run(learner.act_greedy)
            for split, finished in results.items():
                for episode in finished:
                    evaluations.append(
                        cell_id=cell_id, learner=rank, evaluation=number, final=iteration == iterations,
                        env_step=local_steps, cell_env_step=local_steps * world, split=split,
                        task_id=episode.task.task_id, task_params=task_parameters(episode.task),
                        episode_return=episode.episode_return, episode_length=episode.episode_length,
                        success=episode.success, wall_time_s=wall,
                    )
            state.final_train = [(e.episode_return, e.success) for e in results.get("train", [])]
            state.eval_time_s += time.perf_counter() - started

        if now - last_report >= PROGRESS_INTERVAL_S or iteration == iterations:
            last_report = now
            rate = local_steps / max(now - loop_start - state.eval_time_s, 1e-9)
            report(("progress", cell_id, rank, local_steps, rate, float(np.mean(recent_returns)) if recent_returns else None))

        if context.stop.requested and stop_at is None:
            stop_at = context.stop.stop_iteration(iteration, world, context.store, context.lockstep)
        stopping = stop_at is not None and iteration >= stop_at and iteration < iterations
        if stopping or keeper.due(iteration, iterations, output.env_steps):
            started = time.perf_counter()
            state.recent_returns = list(recent_returns)
            state.wall_s = time.perf_counter() - loop_start
            state.rows = {name: buffer.copy_columns() for name, buffer in tables.items()}
            snapshot = checkpoint_state(learner, comm, state, context.checkpoint_replay)
            keeper.copy_s += time.perf_counter() - started
            keeper.save(snapshot, local_steps, wait=stopping)  # written on a thread unless stopping
        if stopping:
            stopped = True
            break

    keeper.close()
    state.recent_returns = list(recent_returns)
    state.wall_s = time.perf_counter() - loop_start
    train_time = time.perf_counter() - loop_start - state.eval_time_s
    successes = [success for _, success in state.final_train if success is not None]
    summary = {
        "env_steps": state.local_steps,
        "train_time_s": train_time,
        "bytes_sent": comm.bytes_sent,
        "final_return": float(np.mean([r for r, _ in state.final_train])) if state.final_train else math.nan,
        "final_success": float(np.mean(successes)) if successes else math.nan,
        "stopped": stopped,
    }
    return summary, tables


def add_consensus_rows(metrics: RowBuffer, distances: dict[int, float]) -> None:
    """One consensus_distance row per snapshot iteration, placed like that iteration's other rows."""
    if not distances:
        return
    columns = metrics.columns
    placed: dict[int, int] = {}
    for index, iteration in enumerate(columns["iteration"]):
        placed.setdefault(iteration, index)
    for iteration, distance in distances.items():
        index = placed[iteration]
        metrics.append(**{name: column[index] for name, column in columns.items()} | {
            "metric": "consensus_distance", "value": float(distance)})
