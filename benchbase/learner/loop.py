"""The training loop of one learner: collect → update → mix → log / evaluate / checkpoint, until
its share of the cell's budget is spent. Rows are buffered in memory and written by the caller.

`train` reads as the loop itself; each step of an iteration (record episodes, record metrics,
evaluate, report progress, checkpoint or stop) is a method of `_Training`, which holds what the
steps share. When evaluations happen is `learner.evaluation.evaluation_due`'s rule.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.api.contracts import MetricRow
from benchbase.checkpoints.resume import CheckpointKeeper, LoopState, StopSignal
from benchbase.comm.communicator import Communicator
from benchbase.grid.cell import Cell, straggler_factor
from benchbase.learner.evaluation import Evaluator, evaluation_due, nominal_env_step, task_parameters
from benchbase.learner.events import Progress, Report, Started
from benchbase.learner.live import LiveLog
from benchbase.learner.settings import LearnerLaunch
from benchbase.results import (
    EPISODES_SCHEMA,
    EVALUATIONS_SCHEMA,
    METRICS_SCHEMA,
    RowBuffer,
)

PROGRESS_INTERVAL_S = 0.5
METRIC_POINTS = 100  # metric rows per learner over a cell (plus the last iteration)
RECENT_EPISODES = 20  # episodes behind the recent return


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
    """Train until the learner's share of the budget is spent (or it is asked to stop); returns its
    summary and its rows."""
    training = _Training(context, state)
    context.report(Started(training.cell_id, training.rank, time.time()))
    training.start_clock()
    stopped = False
    while training.running():
        output = training.iterate()
        training.record_episodes(output.finished)
        training.record_metrics(output.metrics)
        training.evaluate(output.env_steps)
        training.report_progress()
        if training.checkpoint_or_stop(output.env_steps):
            stopped = True
            break
    return training.finish(stopped), training.tables


class _Training:
    """What the steps of one learner's loop share: its context, its state, its rows and clocks."""

    def __init__(self, context: LoopContext, state: LoopState) -> None:
        self.context, self.state = context, state
        self.cell_id = context.cell.cell_id
        # The learner's rank in the cell (one learner per process today: its process's rank).
        self.rank, self.world = context.launch.rank, context.launch.world_size
        schemas = (("episodes", EPISODES_SCHEMA), ("evaluations", EVALUATIONS_SCHEMA), ("metrics", METRICS_SCHEMA))
        self.tables = {name: RowBuffer(schema, state.rows.get(name)) for name, schema in schemas}
        self.budget = math.ceil(context.cell.env_steps / self.world)  # this learner's share of the cell's budget
        self.recent_returns: deque[float] = deque(state.recent_returns, maxlen=RECENT_EPISODES)
        self.stop_at: int | None = None
        self.metric_every = 1
        if state.iterations is not None:
            self._schedule(state.iterations)
        self.loop_start = self.last_report = self.now = self.wall = 0.0
        self.slowdown = straggler_factor(context.cell, self.rank)
        self.paced_at: float | None = None  # when the straggler's last pause ended
        self.live = LiveLog.open(context.launch, self.cell_id, context.report)  # the run's loggers (None: none)

    def _schedule(self, iterations: int) -> None:
        """Metric rows every `metric_every` iterations."""
        self.metric_every = max(1, iterations // METRIC_POINTS)

    def start_clock(self) -> None:
        self.loop_start = time.perf_counter() - self.state.wall_s  # a resumed cell's clock continues
        self.last_report = time.perf_counter()

    def running(self) -> bool:
        return self.state.iterations is None or self.state.iteration < self.state.iterations

    def last_iteration(self) -> bool:
        return self.state.iteration == self.state.iterations

    def iterate(self) -> Any:
        """Collect, update and mix once; the learner's iteration output."""
        learner = self.context.learner
        started = time.perf_counter()
        output = learner.iterate()
        if self.slowdown > 1.0:
            output.metrics["straggler_pause_s"] = self._pace(started)
        self.context.comm.mix(learner.parameters_buffer(), self.state.iteration)
        return self.advance(output)

    def advance(self, output: Any) -> Any:
        """Count an iteration done (collected, updated and mixed); returns its output. A learner
        block calls it for each of its learners after the block's iteration."""
        state = self.state
        state.iteration += 1
        state.local_steps += output.env_steps
        if state.iterations is None:  # the first iteration tells the steps per iteration
            state.iterations = max(1, math.ceil(self.budget / output.env_steps))
            self._schedule(state.iterations)
        self.now = time.perf_counter()
        self.wall = self.now - self.loop_start
        return output

    def _pace(self, started: float) -> float:
        """The cell's straggler: pause (slowdown − 1) × its work since its last pause (this
        iteration, and the previous one's mixing and bookkeeping, which cost as much as the update
        for small networks), so it runs at 1/slowdown of its own speed. The pause busy-waits: a slower
        device keeps its core, and on a machine with fewer cores than learners a sleeping straggler
        would hand its core to the others and speed them up."""
        now = time.perf_counter()
        worked = now - (self.paced_at if self.paced_at is not None else started)
        deadline = now + (self.slowdown - 1.0) * worked
        while time.perf_counter() < deadline:
            pass
        self.paced_at = time.perf_counter()
        return self.paced_at - now

    def record_episodes(self, finished: list[Any]) -> None:
        steps = self.state.local_steps
        for episode in finished:
            self.recent_returns.append(episode.episode_return)
            self.tables["episodes"].append(
                cell_id=self.cell_id,
                learner=self.rank,
                simulator=episode.simulator,
                task_id=episode.task.task_id,
                task_params=task_parameters(episode.task),
                env_step=steps,
                cell_env_step=steps * self.world,
                episode_return=episode.episode_return,
                episode_length=episode.episode_length,
                success=episode.success,
                wall_time_s=self.wall,
            )

    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Add this iteration's metrics to the running means; every `metric_every` iterations (and at
        the last) write their means with the communicator's statistics and the learners' spread."""
        state, comm, learner = self.state, self.context.comm, self.context.learner
        for name, value in metrics.items():
            state.metric_sums[name] = state.metric_sums.get(name, 0.0) + value
        state.metric_count += 1
        if not (state.iteration % self.metric_every == 0 or self.last_iteration()):
            return
        values = {name: total / state.metric_count for name, total in state.metric_sums.items()}
        values.update(comm.statistics())
        comm.reset_staleness()
        values["steps_per_second"] = state.local_steps / max(self.wall - state.eval_time_s, 1e-9)
        if state.checkpoints_saved:
            values["checkpoint_copy_s"] = state.checkpoint_copy_s
        if self.recent_returns:
            values["recent_return"] = float(np.mean(self.recent_returns))
        if self.context.staleness == 0:
            values["consensus_distance"] = comm.consensus_distance(learner.model_parameters())
        else:
            comm.snapshot(learner.model_parameters(), state.iteration)
            nearby = comm.neighbour_distance(learner.model_parameters())
            if nearby is not None:
                values["neighbour_distance"] = nearby
        steps = state.local_steps
        shared = {
            "cell_id": self.cell_id,
            "learner": self.rank,
            "iteration": state.iteration,
            "env_step": steps,
            "cell_env_step": steps * self.world,
            "wall_time_s": self.wall,
        }
        self.tables["metrics"].extend(shared, metric=list(values), value=[float(value) for value in values.values()])
        state.metric_sums, state.metric_count = {}, 0
        if self.live is not None:  # throttled per logger and handed to their threads: never waits on them
            logged = {name: float(value) for name, value in values.items()}
            row = MetricRow(state.iteration, steps, steps * self.world, self.wall, logged)
            self.live.offer(row, last=self.last_iteration())
            if self.last_iteration():
                self.live.close()

    def evaluate(self, steps_per_iteration: int) -> None:
        """At an evaluation's iteration: greedy episodes on every split, one row each, placed at the
        evaluation's nominal cell env step; and the learner's evaluation time so far, as a metric."""
        evaluator, state, cell = self.context.evaluator, self.state, self.context.cell
        if evaluator is None:
            return
        cell_steps = state.local_steps * self.world
        before = cell_steps - steps_per_iteration * self.world
        number = evaluation_due(before, cell_steps, cell.env_steps, cell.evaluations, self.last_iteration())
        if not number:
            return
        started = time.perf_counter()
        results = evaluator.run(self.context.learner.act_greedy, final=self.last_iteration())
        steps, nominal = state.local_steps, nominal_env_step(number, cell.env_steps, cell.evaluations)
        for split, finished in results.items():
            for episode in finished:
                self.tables["evaluations"].append(
                    cell_id=self.cell_id,
                    learner=self.rank,
                    evaluation=number,
                    final=self.last_iteration(),
                    env_step=steps,
                    cell_env_step=nominal,
                    split=split,
                    task_id=episode.task.task_id,
                    task_params=task_parameters(episode.task),
                    episode_return=episode.episode_return,
                    episode_length=episode.episode_length,
                    success=episode.success,
                    wall_time_s=self.wall,
                )
        state.final_train = [(e.episode_return, e.success) for e in results.get("train", [])]
        state.eval_time_s += time.perf_counter() - started
        self.tables["metrics"].append(
            cell_id=self.cell_id,
            learner=self.rank,
            iteration=state.iteration,
            env_step=steps,
            cell_env_step=cell_steps,
            wall_time_s=time.perf_counter() - self.loop_start,  # with this evaluation, unlike `self.wall`
            metric="eval_time_s",
            value=state.eval_time_s,
        )

    def report_progress(self) -> None:
        """A `Progress` event every PROGRESS_INTERVAL_S and at the last iteration."""
        if not (self.now - self.last_report >= PROGRESS_INTERVAL_S or self.last_iteration()):
            return
        self.last_report = self.now
        state = self.state
        rate = state.local_steps / max(self.now - self.loop_start - state.eval_time_s, 1e-9)
        recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
        self.context.report(Progress(self.cell_id, self.rank, state.local_steps, rate, recent))

    def checkpoint_or_stop(self, steps_per_iteration: int, stop_requested: bool | None = None) -> bool:
        """Checkpoint when due, or when asked to stop (then wait for the file); returns whether to
        stop. `stop_requested`: the stop signal as read once for every learner of a block."""
        context, state, keeper = self.context, self.state, self.context.keeper
        keeper.raise_failed()  # a write that failed (a full disk) fails the learner now
        requested = context.stop.requested if stop_requested is None else stop_requested
        if requested and self.stop_at is None:
            # Learners in lockstep agree on the iteration at which they all stop.
            self.stop_at = context.stop.stop_iteration(state.iteration, self.world, context.store, context.lockstep)
        iterations = state.iterations
        stopping = self.stop_at is not None and self.stop_at <= state.iteration < iterations
        due = keeper.due(state.iteration, iterations, steps_per_iteration)
        if stopping or due:
            started = time.perf_counter()
            state.recent_returns = list(self.recent_returns)
            state.wall_s = time.perf_counter() - self.loop_start
            state.rows = {name: buffer.copy_columns() for name, buffer in self.tables.items()}
            snapshot = checkpoint_state(context.learner, context.comm, state, context.checkpoint_replay)
            if due:  # counted in the snapshot too: the learner resumed from it goes on from these
                state.checkpoints_saved += 1
                state.checkpoint_copy_s += time.perf_counter() - started
                snapshot["loop"].update(
                    checkpoints_saved=state.checkpoints_saved, checkpoint_copy_s=state.checkpoint_copy_s
                )
            encoding_s = keeper.save(snapshot, state.local_steps, wait=stopping)  # written on a thread unless stopping
            if due:  # the learner encodes its checkpoint too; the snapshot already holds its total without this one
                state.checkpoint_copy_s += encoding_s
        return stopping

    def finish(self, stopped: bool) -> dict[str, Any]:
        """Close the checkpoint writer (and the loggers, when the cell stops early) and sum the learner up."""
        state = self.state
        self.context.keeper.close()
        if self.live is not None:
            self.live.close()
        state.recent_returns = list(self.recent_returns)
        state.wall_s = time.perf_counter() - self.loop_start
        train_time = time.perf_counter() - self.loop_start - state.eval_time_s
        successes = [success for _, success in state.final_train if success is not None]
        return {
            "env_steps": state.local_steps,
            "train_time_s": train_time,
            "bytes_sent": self.context.comm.bytes_sent,
            "final_return": float(np.mean([r for r, _ in state.final_train])) if state.final_train else math.nan,
            "final_success": float(np.mean(successes)) if successes else math.nan,
            "stopped": stopped,
        }


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
        metrics.append(
            **{name: column[index] for name, column in columns.items()}
            | {"metric": "consensus_distance", "value": float(distance)}
        )
