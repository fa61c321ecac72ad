"""The per-process learner loop: collect → update → mix → log / evaluate, until the budget is spent.

`run_learner` is independent of how the process was started: the local launcher calls it in a
forked process, and a torchrun entry point can call it with rank and rendezvous from the
environment. It reports progress through a callback and writes its own Parquet files.
"""

from __future__ import annotations

import math
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from benchbase import checkpoint
from benchbase.comm import Communicator, message_layout
from benchbase.episodes import run_episodes
from benchbase.contracts import (
    ConsensusParams, EnvFamily, FinishedEpisode, GossipParams, LearnerSpec, Task, params_of, without_resampling,
)
from benchbase.grid import Cell, replay_parts
from benchbase.plugins import load_registry
from benchbase.replay import ReplayMix, batch_shares
from benchbase.resume import CheckpointKeeper, LoopState, StopSignal, checkpoint_folder, default_every, resume_point
from benchbase.shm import SharedBoard, segment_bytes, shared_memory_room, synchronous_slots
from benchbase.results import EPISODES_SCHEMA, EVALUATIONS_SCHEMA, METRICS_SCHEMA, RowBuffer, RunFolder, write_table
from benchbase.topology import build_mixing_plan

Report = Callable[[tuple], None]

PROGRESS_INTERVAL_S = 0.5
METRIC_POINTS = 100  # metric rows per learner over a cell (plus the last iteration)


@dataclass(frozen=True)
class ExecutionSettings:
    """How cells run, as opposed to what they are: none of this is part of a cell's identity."""

    device: str = "cpu"  # cpu, cuda or auto (CUDA round-robin when present)
    comm_timeout_s: float = 120.0
    transport: str = "auto"  # shm (same host, benchbase.shm), p2p (gloo messages) or auto
    plugins_only: tuple[str, ...] | None = None
    plugins_blocked: tuple[str, ...] = ()
    plugins_extra: tuple[str, ...] = ()
    #: Cell env steps between checkpoints; None = every 10% of the budget, 0 = only at the end.
    checkpoint_every: int | None = None
    #: Off-policy learners: also checkpoint the replay buffers' contents (as large as the buffers).
    checkpoint_replay: bool = False


@dataclass(frozen=True)
class LearnerLaunch:
    """Everything one learner process needs (picklable)."""

    cell_config: dict[str, Any]
    out_dir: str
    rank: int
    world_size: int
    store_host: str
    store_port: int
    device: str  # this learner's device, resolved from settings.device
    cell_started_at: float  # time.time() when the launcher started the cell
    settings: ExecutionSettings
    shm_prefix: str = ""
    cores: tuple[int, ...] = ()  # the cores the launcher gave this cell (empty: all)


def simulator_tasks(tasks: Sequence[Task], cell: Cell, rank: int) -> list[Task]:
    """The task of each of this process's simulators. Learner k of the grid owns task k; the
    centralised baseline's single process runs every learner's simulators."""
    simulators_per_task = cell.envs_per_learner * cell.learner_processes // cell.learners
    first = rank * cell.envs_per_learner
    return [tasks[(first + k) // simulators_per_task] for k in range(cell.envs_per_learner)]


class Evaluator:
    """Greedy episodes on the learner's own tasks ("train") and on the family's held-out splits."""

    def __init__(self, family: EnvFamily, env_params: Any, own_tasks: Sequence[Task], cell: Cell, rank: int) -> None:
        self.params = without_resampling(env_params)
        self.family = family
        self.seed = cell.seed * 1_000_003 + 7_777
        self.rank = rank
        episodes = cell.eval_episodes
        splits: dict[str, list[Task]] = {"train": [own_tasks[k % len(own_tasks)] for k in range(episodes)]}
        for split in family.splits:
            # The same held-out tasks for every learner and every evaluation: fair comparisons.
            splits[split] = family.evaluation_tasks(self.params, split, episodes, cell.seed)
        self.envs = {split: family.make_env(self.params, tasks, self.seed) for split, tasks in splits.items()}

    def run(self, act: Callable[[np.ndarray], np.ndarray]) -> dict[str, list[FinishedEpisode]]:
        """The first episode of every simulator (one simulator per episode) of every split."""
        return {split: run_episodes(env, act, env.num_envs, self.seed) for split, env in self.envs.items()}

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _task_params(task: Task) -> list[tuple[str, float]]:
    return [(key, float(value)) for key, value in task.parameters.items()]


def run_learner(launch: LearnerLaunch, report: Report) -> dict[str, Any]:
    """Run one learner of a cell to the end of its budget; returns its summary."""
    torch.set_num_threads(1)  # N learners share the cores without thrashing
    settings = launch.settings
    registry = load_registry(
        only=set(settings.plugins_only) if settings.plugins_only is not None else None,
        blocked=set(settings.plugins_blocked),
        extra=settings.plugins_extra,
    )
    cell = Cell.from_config(launch.cell_config)
    cell_id, rank, world = cell.cell_id, launch.rank, launch.world_size
    algorithm = registry.get("algorithm", cell.algorithm)
    topology = registry.get("topology", cell.topology)
    family = registry.get("env", cell.env)
    algorithm_params = params_of(algorithm, cell.algorithm_params)
    topology_params = params_of(topology, cell.topology_params)
    env_params = params_of(family, cell.env_params)
    communicates = isinstance(algorithm_params, ConsensusParams)
    staleness = algorithm_params.staleness if communicates else 0
    link_drop = algorithm_params.link_drop if communicates else 0.0
    num_peers = algorithm_params.num_peers if isinstance(algorithm_params, GossipParams) else None

    # Under torchrun the process group exists already (one per job, reused by its cells) and
    # SIGTERM, which torchrun sends its workers on Ctrl-C, also means "checkpoint and stop".
    if torch.device(launch.device).type == "cuda":
        torch.cuda.set_device(torch.device(launch.device))  # NCCL maps each rank to its current device
    owns_group = not dist.is_initialized()  # False: a torchrun worker, started on its own
    stop = StopSignal((signal.SIGUSR1,) if owns_group else (signal.SIGUSR1, signal.SIGTERM))
    store = None
    if world > 1 and owns_group:
        store = dist.TCPStore(
            launch.store_host, launch.store_port, world, is_master=False, timeout=timedelta(seconds=settings.comm_timeout_s)
        )
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=settings.comm_timeout_s)
        )
    elif world > 1:
        store = dist.PrefixStore(f"benchbase/{cell_id}/", default_store())
    try:
        plan = build_mixing_plan(topology, topology_params, world, cell.seed, num_peers)
        tasks = family.training_tasks(env_params, cell.learners, cell.seed)
        own_tasks = simulator_tasks(tasks, cell, rank)
        env = family.make_env(env_params, own_tasks, cell.seed * 1_000_003 + 1_009 * rank)
        learner = build_learner(registry, cell, env, rank=rank, world=world, device=launch.device)
        if cell.init_from is not None:
            initialise_from(learner, cell.init_from, rank)
        buffer = learner.parameters_buffer()
        device_group = _device_group(launch, plan, staleness)
        board = None
        if device_group is None:
            board = _shared_board(launch, plan, staleness, buffer, forked=owns_group)
        comm = Communicator(plan, rank, buffer.numel(), buffer.dtype, staleness, settings.comm_timeout_s, board,
                            link_drop=link_drop, seed=cell.seed, device_group=device_group, device=buffer.device)
        # Learners that wait for each other every iteration must resume and stop together.
        lockstep = staleness == 0 and plan.has_edges and world > 1
        keeper = CheckpointKeeper(
            checkpoint_folder(launch.out_dir, cell_id, rank), launch.cell_config,
            default_every(cell.env_steps, world, settings.checkpoint_every), enabled=hasattr(learner, "state_dict"),
        )
        loop = _resume(learner, comm, keeper, lockstep, world, report, cell_id, rank)
        evaluator = Evaluator(family, env_params, own_tasks, cell, rank) if cell.evaluations > 0 else None
        context = _LoopContext(cell, launch, learner, comm, evaluator, staleness, report, keeper, stop, store, lockstep,
                               settings.checkpoint_replay and algorithm.uses_replay)
        summary, tables = _train(context, loop)
        summary["transport"] = comm.transport
        if summary["stopped"]:  # checkpointed; no result files for an unfinished cell
            comm.close(None)
            return summary
        comm.close(learner.parameters_buffer())
        if keeper.enabled:  # the final model (bench eval, --init-from); resuming from it only writes the rows
            loop.rows = {name: buffer.copy_columns() for name, buffer in tables.items()}
            keeper.save(_checkpoint_state(learner, comm, loop, False), summary["env_steps"], wait=True, keep=1)
        # Asynchronous runs: learner 0 received every learner's snapshots and records the spread.
        _add_consensus_rows(tables["metrics"], comm.consensus_snapshots())
        folder = RunFolder(launch.out_dir)
        for name, rows in tables.items():
            write_table(folder.learner_path(name, cell_id, rank), rows.to_table())
        if evaluator is not None:
            evaluator.close()
        if hasattr(learner, "close"):
            learner.close()
        env.close()
        return summary
    finally:
        if world > 1 and owns_group and dist.is_initialized():
            dist.destroy_process_group()


def default_store() -> Any:
    """The default process group's store (the agent's, under torchrun)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _checkpoint_state(learner: Any, comm: Communicator, loop: LoopState, replay: bool) -> dict[str, Any]:
    learner_state = learner.state_dict(replay=True) if replay else learner.state_dict()
    return {"learner": learner_state, "comm": comm.state_dict(), "loop": loop.to_dict()}


def _resume(learner: Any, comm: Communicator, keeper: CheckpointKeeper, lockstep: bool, world: int,
            report: Report, cell_id: str, rank: int) -> LoopState:
    """The loop state to start from: a checkpoint's (learner and communicator restored) or fresh."""
    if not keeper.enabled:
        return LoopState()
    path, notes = resume_point(keeper.folder, keeper.cell_config, lockstep=lockstep, world=world)
    for note in notes:
        report(("note", cell_id, rank, note))
    if path is None:
        return LoopState()
    found = checkpoint.load(path, keeper.cell_config)
    learner.load_state_dict(found.state["learner"])
    comm.load_state_dict(found.state["comm"])
    loop = LoopState.from_dict(found.state["loop"])
    report(("resumed", cell_id, rank, loop.local_steps))
    return loop


def initialise_from(learner: Any, source: dict[str, Any], rank: int) -> None:
    """`bench run --init-from`: this learner starts from source learner (rank mod N)'s model,
    normalisation statistics and optimiser moments, with the new cell's hyperparameters."""
    paths = source["checkpoints"]
    found = checkpoint.load(paths[rank % len(paths)])
    learner.load_state_dict(found.state["learner"], mode="init")


def build_learner(registry: Any, cell: Cell, env: Any, *, rank: int = 0, world: int = 1, device: str = "cpu") -> Any:
    """The cell's algorithm's learner number `rank` of `world`, on `env` (also used outside a
    cell: bench eval, checking that a checkpoint fits a cell's model)."""
    algorithm = registry.get("algorithm", cell.algorithm)
    algorithm_params = params_of(algorithm, cell.algorithm_params)
    replay = _replay_mix(registry, algorithm, algorithm_params, cell, rank)
    spec = LearnerSpec(env, rank, world, cell.seed, torch.device(device), replay=replay,
                       env_steps_budget=math.ceil(cell.env_steps / world))
    return algorithm.make_learner(algorithm_params, spec)


def _replay_mix(registry: Any, algorithm: Any, algorithm_params: Any, cell: Cell, rank: int) -> ReplayMix | None:
    """The learner's replay buffers, one per strategy of the cell's mix (off-policy algorithms)."""
    if not algorithm.uses_replay:
        return None
    parts = batch_shares(
        [(name, params_of(registry.get("replay", name), values)) for name, values in replay_parts(cell.replay, cell.replay_params)],
        algorithm_params.batch_size, owner=f"replay {cell.replay}",
    )
    buffers = [
        registry.get("replay", part.name).make_buffer(part.params, cell.seed * 1_000_003 + 7_919 * rank + k)
        for k, part in enumerate(parts)
    ]
    return ReplayMix(parts, buffers)


def _device_group(launch: LearnerLaunch, plan: Any, staleness: int) -> Any:
    """An NCCL group when every learner of a synchronous cell has a GPU of its own, so that
    parameters travel GPU to GPU; None otherwise (gloo; a GPU learner's buffer is staged through
    pinned host memory). A collective: every learner takes the same decision."""
    if launch.world_size == 1 or not plan.has_edges or staleness != 0:
        return None
    device = torch.device(launch.device)
    mine = (socket.gethostname(), str(device)) if device.type == "cuda" and dist.is_nccl_available() else None
    everyone: list[Any] = [None] * launch.world_size
    dist.all_gather_object(everyone, mine)
    if any(entry is None for entry in everyone) or len(set(everyone)) < launch.world_size:
        return None
    return dist.new_group(backend="nccl", timeout=timedelta(seconds=launch.settings.comm_timeout_s))


def _shared_board(launch: LearnerLaunch, plan: Any, staleness: int, buffer: torch.Tensor,
                  forked: bool = True) -> SharedBoard | None:
    """Same-host shared memory for the exchange when asked for and possible; every learner of the
    cell takes the same decision (a collective), else they fall back to gloo together."""
    if launch.settings.transport == "p2p" or launch.world_size == 1 or not plan.has_edges:
        return None
    layout = message_layout(plan, buffer.numel(), buffer.dtype, staleness)
    channels = {j: layout.channels(plan, j) for j in range(launch.world_size)}
    slots = synchronous_slots(plan) if staleness == 0 else 2
    needed = sum(segment_bytes(layout.width, slots or 2, layout.dtype, channels[j]) for j in channels)
    hosts: list[Any] = [None] * launch.world_size  # torchrun may spread a cell over several machines
    dist.all_gather_object(hosts, socket.gethostname())
    room = len(set(hosts)) == 1 and slots is not None and shared_memory_room(needed)
    agreed = torch.tensor([1 if room else 0])
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    if not agreed.item():
        if launch.settings.transport == "shm":
            raise RuntimeError("transport shm: the learners are on several hosts, or there is not enough room in "
                               "/dev/shm, or too many slots for this topology")
        return None
    board = SharedBoard(launch.shm_prefix, launch.rank, layout.width, slots, layout.dtype,
                        launch.settings.comm_timeout_s, channels[launch.rank])
    dist.barrier()  # every segment exists before anyone opens its neighbours'
    board.attach(plan.in_peers(launch.rank), channels, own_tracker=not forked)
    return board


@dataclass
class _LoopContext:
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


def _train(context: _LoopContext, state: LoopState) -> tuple[dict[str, Any], dict[str, RowBuffer]]:
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
                task_params=_task_params(episode.task), env_step=local_steps, cell_env_step=local_steps * world,
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
                        task_id=episode.task.task_id, task_params=_task_params(episode.task),
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
            snapshot = _checkpoint_state(learner, comm, state, context.checkpoint_replay)
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


def _add_consensus_rows(metrics: RowBuffer, distances: dict[int, float]) -> None:
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
