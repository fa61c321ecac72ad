"""One learner process, start to end: process group, mixing plan, env, learner, communicator,
resume, the loop, result files.

`run_learner` is independent of how the process was started: the local launcher calls it in a
forked process, and a torchrun worker calls it with rank and rendezvous from the environment.
It reports progress through a callback and writes its own Parquet files.
"""

from __future__ import annotations

import signal
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from benchbase.api.contracts import ConsensusParams, GossipParams, params_of
from benchbase.api.registry import load_registry
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.resume import (
    CheckpointKeeper,
    LoopState,
    StopSignal,
    checkpoint_folder,
    default_every,
    resume_point,
)
from benchbase.comm.communicator import Communicator, message_layout
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.comm.shm import (
    SharedBoard,
    segment_bytes,
    shared_memory_room,
    synchronous_slots,
)
from benchbase.grid.cell import Cell
from benchbase.learner.build import build_learner, initialise_from, simulator_tasks
from benchbase.learner.evaluation import Evaluator
from benchbase.learner.loop import (
    LoopContext,
    Report,
    add_consensus_rows,
    checkpoint_state,
    train,
)
from benchbase.learner.settings import LearnerLaunch
from benchbase.results import RunFolder, write_table


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
        context = LoopContext(cell, launch, learner, comm, evaluator, staleness, report, keeper, stop, store, lockstep,
                               settings.checkpoint_replay and algorithm.uses_replay)
        summary, tables = train(context, loop)
        summary["transport"] = comm.transport
        if summary["stopped"]:  # checkpointed; no result files for an unfinished cell
            comm.close(None)
            return summary
        comm.close(learner.parameters_buffer())
        if keeper.enabled:  # the final model (bench eval, --init-from); resuming from it only writes the rows
            loop.rows = {name: buffer.copy_columns() for name, buffer in tables.items()}
            keeper.save(checkpoint_state(learner, comm, loop, False), summary["env_steps"], wait=True, keep=1)
        # Asynchronous runs: learner 0 received every learner's snapshots and records the spread.
        add_consensus_rows(tables["metrics"], comm.consensus_snapshots())
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
