"""One learner process, start to end: process group, mixing plan, env, learner, communicator,
resume, the loop, result files.

`run_learner` is independent of how the process was started: the local launcher calls it in a
forked process, and a torchrun worker calls it with rank and rendezvous from the environment.
It reports typed events (`benchbase.learner.events`) through a callback and writes its own
Parquet files. A block of several learners in one process runs in `benchbase.learner.block`,
which shares this module's group, resume and result helpers.
"""

from __future__ import annotations

import signal
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from benchbase.api.registry import Registry, load_registry
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.resume import (
    CheckpointKeeper,
    LoopState,
    StopSignal,
    checkpoint_folder,
    default_every,
    resume_point,
)
from benchbase.comm.communicator import Communicator, MessageLayout, message_layout
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.comm.shm import (
    SharedBoard,
    message_slots,
    segment_bytes,
    shared_memory_room,
)
from benchbase.grid.cell import Cell
from benchbase.learner.build import build_learner, initialise_from, simulator_seed, simulator_tasks
from benchbase.learner.cell_plugins import CellPlugins
from benchbase.learner.evaluation import Evaluator
from benchbase.learner.events import Note, Report, Resumed
from benchbase.learner.loop import (
    LoopContext,
    add_consensus_rows,
    checkpoint_state,
    train,
)
from benchbase.learner.settings import ExecutionSettings, LearnerLaunch
from benchbase.results import RowBuffer, RunFolder, write_table


def run_learner(launch: LearnerLaunch, report: Report) -> dict[str, Any]:
    """Run one learner of a cell to the end of its budget; returns its summary."""
    torch.set_num_threads(1)  # N learners share the cores without thrashing
    registry = _load_registry(launch.settings)
    cell = Cell.from_config(launch.cell_config)
    plugins = CellPlugins.resolve(registry, cell)
    owns_group = not dist.is_initialized()  # False: a torchrun worker, started on its own
    stop, store = _join_group(launch, cell, owns_group)
    try:
        context, loop, env = _build(launch, cell, registry, plugins, report, stop, store, owns_group)
        summary, tables = train(context, loop)
        summary["transport"] = context.comm.transport
        if summary["stopped"]:  # checkpointed; no result files for an unfinished cell
            context.comm.close(None)
            return summary
        _finish(context, loop, summary, tables)
        env.close()
        return summary
    finally:
        if launch.world_size > 1 and owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _load_registry(settings: ExecutionSettings) -> Registry:
    return load_registry(
        only=set(settings.plugins_only) if settings.plugins_only is not None else None,
        blocked=set(settings.plugins_blocked),
        extra=settings.plugins_extra,
    )


def _join_group(launch: LearnerLaunch, cell: Cell, owns_group: bool) -> tuple[StopSignal, Any]:
    """The stop signal and the cell's store; joins the cell's process group unless it exists.

    Under torchrun the process group exists already (one per job, reused by its cells) and
    SIGTERM, which torchrun sends its workers on Ctrl-C, also means "checkpoint and stop"."""
    rank, world, timeout = launch.rank, launch.world_size, timedelta(seconds=launch.settings.comm_timeout_s)
    if torch.device(launch.device).type == "cuda":
        torch.cuda.set_device(torch.device(launch.device))  # NCCL maps each rank to its current device
    stop = StopSignal((signal.SIGUSR1,) if owns_group else (signal.SIGUSR1, signal.SIGTERM))
    store = None
    if world > 1 and owns_group:
        store = dist.TCPStore(launch.store_host, launch.store_port, world, is_master=False, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    elif world > 1:
        store = dist.PrefixStore(f"benchbase/{cell.cell_id}/", default_store())
    return stop, store


def _build(
    launch: LearnerLaunch,
    cell: Cell,
    registry: Registry,
    plugins: CellPlugins,
    report: Report,
    stop: StopSignal,
    store: Any,
    owns_group: bool,
) -> tuple[LoopContext, LoopState, Any]:
    """Mixing plan, env, learner, communicator, checkpoint keeper, resumed state and evaluator: the
    loop's context, the state it starts from, and the env (closed at the end)."""
    settings, rank, world = launch.settings, launch.rank, launch.world_size
    plan = build_mixing_plan(plugins.topology, plugins.topology_params, world, cell.seed, plugins.num_peers)
    tasks = plugins.family.training_tasks(plugins.env_params, cell.learners, cell.seed)
    own_tasks = simulator_tasks(tasks, cell, rank)
    env = plugins.family.make_env(plugins.env_params, own_tasks, simulator_seed(cell, rank))
    learner = build_learner(registry, cell, env, rank=rank, world=world, device=launch.device)
    if cell.init_from is not None:
        initialise_from(learner, cell.init_from, rank)
    buffer = learner.parameters_buffer()
    staleness = plugins.staleness
    device_group = _device_group(launch, plan, staleness)
    board = None
    if device_group is None:
        board = _shared_board(launch, plan, staleness, buffer, forked=owns_group)
    comm = Communicator(
        plan,
        rank,
        buffer.numel(),
        buffer.dtype,
        staleness,
        settings.comm_timeout_s,
        board,
        link_drop=plugins.link_drop,
        seed=cell.seed,
        device_group=device_group,
        device=buffer.device,
        parameter_numel=learner.model_parameters().numel(),
    )
    # Learners that wait for each other every iteration must resume and stop together.
    lockstep = staleness == 0 and plan.has_edges and world > 1
    keeper = CheckpointKeeper(
        checkpoint_folder(launch.out_dir, cell.cell_id, rank),
        launch.cell_config,
        default_every(cell.env_steps, world, settings.checkpoint_every),
        enabled=learner.checkpointable,
    )
    loop = _resume(learner, comm, keeper, lockstep, world, report, cell.cell_id, rank)
    evaluator = Evaluator(plugins.family, plugins.env_params, own_tasks, cell, rank) if cell.evaluations > 0 else None
    context = LoopContext(
        cell,
        launch,
        learner,
        comm,
        evaluator,
        staleness,
        report,
        keeper,
        stop,
        store,
        lockstep,
        settings.checkpoint_replay and plugins.algorithm.uses_replay,
    )
    return context, loop, env


def _finish(context: LoopContext, loop: LoopState, summary: dict[str, Any], tables: dict[str, RowBuffer]) -> None:
    """A finished learner: close the communicator, save the final model, write the result files."""
    learner, comm, keeper, evaluator = context.learner, context.comm, context.keeper, context.evaluator
    comm.close(learner.parameters_buffer())
    if keeper.enabled:  # the final model (bench eval, --init-from); resuming from it only writes the rows
        loop.rows = {name: buffer.copy_columns() for name, buffer in tables.items()}
        keeper.save(checkpoint_state(learner, comm, loop, False), summary["env_steps"], wait=True, keep=1)
    # Asynchronous runs: learner 0 received every learner's snapshots and records the spread.
    add_consensus_rows(tables["metrics"], comm.consensus_snapshots())
    folder = RunFolder(context.launch.out_dir)
    cell_id, rank = context.cell.cell_id, context.launch.rank
    for name, rows in tables.items():
        write_table(folder.learner_path(name, cell_id, rank), rows.to_table())
    if evaluator is not None:
        evaluator.close()
    learner.close()


def default_store() -> Any:
    """The default process group's store (the agent's, under torchrun)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _resume(
    learner: Any,
    comm: Communicator,
    keeper: CheckpointKeeper,
    lockstep: bool,
    world: int,
    report: Report,
    cell_id: str,
    rank: int,
) -> LoopState:
    """The loop state to start from: a checkpoint's (learner and communicator restored) or fresh."""
    if not keeper.enabled:
        return LoopState()
    path, notes = resume_point(keeper.folder, keeper.cell_config, lockstep=lockstep, world=world)
    for note in notes:
        report(Note(cell_id, rank, note))
    if path is None:
        return LoopState()
    found = checkpoint.load_run_checkpoint(path, keeper.cell_config)
    learner.load_state_dict(found.state["learner"])
    comm.load_state_dict(found.state["comm"])
    loop = LoopState.from_dict(found.state["loop"])
    report(Resumed(cell_id, rank, loop.local_steps))
    return loop


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


def _shared_board(
    launch: LearnerLaunch, plan: Any, staleness: int, buffer: torch.Tensor, forked: bool = True
) -> SharedBoard | None:
    """Same-host shared memory for the exchange when asked for and possible; every learner of the
    cell takes the same decision (a collective), else they fall back to gloo together."""
    if launch.settings.transport == "p2p" or launch.world_size == 1 or not plan.has_edges:
        return None
    layout = message_layout(plan, buffer.numel(), buffer.dtype, staleness)
    channels = {j: layout.channels(plan, j) for j in range(launch.world_size)}
    slots = message_slots(plan, staleness)
    return open_shared_board(launch, layout, slots, channels, plan.in_peers(launch.rank), forked)


def open_shared_board(
    launch: LearnerLaunch,
    layout: MessageLayout,
    slots: int | None,
    channels: dict[int, int],
    in_peers: list[int],
    forked: bool = True,
) -> SharedBoard | None:
    """Process `launch.rank`'s segment of `channels[rank]` channels of `slots` messages, attached
    to its `in_peers`' segments, when every process of the group is on this host, `slots` is not
    None and /dev/shm has room; a collective: every process takes the same decision (None: gloo).
    `--transport shm` makes the fallback an error."""
    needed = sum(segment_bytes(layout.width, slots or 2, layout.dtype, count) for count in channels.values())
    hosts: list[Any] = [None] * launch.world_size  # torchrun may spread a cell over several machines
    dist.all_gather_object(hosts, socket.gethostname())
    room = len(set(hosts)) == 1 and slots is not None and shared_memory_room(needed)
    agreed = torch.tensor([1 if room else 0])
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    if not agreed.item():
        if launch.settings.transport == "shm":
            raise RuntimeError(
                "transport shm: the learners are on several hosts, or there is not enough room in "
                "/dev/shm, or too many slots for this topology"
            )
        return None
    board = SharedBoard(
        launch.shm_prefix,
        launch.rank,
        layout.width,
        slots,
        layout.dtype,
        launch.settings.comm_timeout_s,
        channels[launch.rank],
    )
    dist.barrier()  # every segment exists before anyone opens its neighbours'
    board.attach(in_peers, channels, own_tracker=not forked)
    return board
