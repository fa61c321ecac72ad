"""A learner block: one process hosts K consecutive learners of a cell (every one of them, or a
block of K when the cell runs as N/K processes), their parameters stacked, acting, updating and
mixing with batched math (DESIGN §6, docs/scaling.md).

Each learner keeps what it has in a process of its own: its simulators and tasks, its seeds,
its loop state and result rows, its evaluator, its checkpoints (`checkpoints/<cell>/learner-<r>`)
and its events. One iteration of the block is the algorithm's batched `iterate` for all of them,
one product with the mixing matrix (`benchbase.comm.block`), then each learner's bookkeeping as
`benchbase.learner.loop` does it for a learner alone. Learners of a block run in lockstep, and
so do the blocks of a cell (mixing is a collective between their processes): they resume from
the same checkpoint and stop at the same iteration.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import torch
import torch.distributed as dist

from benchbase.api.contracts import params_of
from benchbase.checkpoints import checkpoint
from benchbase.checkpoints.resume import (
    CheckpointKeeper,
    LoopState,
    StopSignal,
    checkpoint_folder,
    common_resume_points,
    default_every,
)
from benchbase.comm.block import BlockMixer
from benchbase.comm.block_exchange import BlockExchange, build_block_exchange
from benchbase.comm.block_graph import BlockGraph
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.comm.shm import synchronous_slots
from benchbase.grid.cell import Cell
from benchbase.learner.build import initialise_from, learner_spec, simulator_seed, simulator_tasks
from benchbase.learner.cell_plugins import CellPlugins
from benchbase.learner.evaluation import Evaluator
from benchbase.learner.events import Note, Report, Resumed, Started
from benchbase.learner.loop import LoopContext, _Training
from benchbase.learner.process import (
    _device_group,
    _finish,
    _join_group,
    _load_registry,
    open_shared_board,
)
from benchbase.learner.settings import LearnerLaunch


class BlockUnavailable(RuntimeError):
    """The algorithm built no block for these learners (the launcher should not have asked)."""


def run_block(launch: LearnerLaunch, report: Report) -> dict[int, dict[str, Any]]:
    """Run this process's block of the cell's learners (`launch.learners` consecutive ranks from
    `launch.rank · launch.learners`) to the end of the budget; each learner's summary by rank.
    With blocks in several processes (`launch.world_size` > 1) they join the cell's gloo group,
    mix over it and agree on where to resume and when to stop."""
    processes = launch.world_size
    if processes > 1:  # first: the launcher may ask to stop while the block is being built
        stop, store = _join_group(launch, Cell.from_config(launch.cell_config), owns_group=True)
    else:
        stop, store = StopSignal((signal.SIGUSR1,)), None
    try:
        return _run_block(launch, report, stop, store)
    finally:
        if processes > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run_block(launch: LearnerLaunch, report: Report, stop: StopSignal, store: Any) -> dict[int, dict[str, Any]]:
    # A block's batched products are large enough to share the cores its process was given (the
    # launcher pins or spreads a cell's processes over its cores): on 2 cores a 4 x 8 Diff-PPO
    # cell ran at 19.6k steps/s with 2 threads against 16.5k with 1, and small Diff-A2C blocks
    # about as fast either way (docs/scaling.md).
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // launch.world_size))
    registry = _load_registry(launch.settings)
    cell = Cell.from_config(launch.cell_config)
    plugins = CellPlugins.resolve(registry, cell)
    world, processes = cell.learner_processes, launch.world_size
    ranks = range(launch.rank * launch.learners, (launch.rank + 1) * launch.learners)
    plan = build_mixing_plan(plugins.topology, plugins.topology_params, world, cell.seed, plugins.num_peers)
    tasks = plugins.family.training_tasks(plugins.env_params, cell.learners, cell.seed)
    # Learner r's simulators and seed as in a process of its own; one env steps them all.
    envs = plugins.family.make_env_block(
        plugins.env_params,
        [simulator_tasks(tasks, cell, rank) for rank in ranks],
        [simulator_seed(cell, rank) for rank in ranks],
    )
    device = torch.device(launch.device)
    params = params_of(plugins.algorithm, cell.algorithm_params)
    specs = [
        learner_spec(registry, cell, plugins.algorithm, params, env, rank, world, device)
        for rank, env in zip(ranks, envs.members)
    ]
    block = plugins.algorithm.make_learner_block(params, specs, envs)
    if block is None:
        raise BlockUnavailable(f"{cell.algorithm} built no learner block for this cell")
    members = block.learners
    if cell.init_from is not None:
        for rank, member in zip(ranks, members):
            initialise_from(member, cell.init_from, rank)
    buffers = block.parameters()
    exchange = _block_exchange(launch, plan, buffers) if processes > 1 and plan.has_edges else None
    mixer = BlockMixer(plan, buffers, members[0].model_parameters().numel(), ranks.start, exchange)
    every = default_every(cell.env_steps, world, launch.settings.checkpoint_every)
    writer = checkpoint.BackgroundWriter(max_pending=len(ranks))
    keepers = [
        CheckpointKeeper(checkpoint_folder(launch.out_dir, cell.cell_id, rank), launch.cell_config, every, True, writer)
        for rank in ranks
    ]
    folders = [keeper.folder for keeper in keepers]
    paths, notes = common_resume_points(folders, launch.cell_config, processes=launch.world_size)
    for note in notes:
        report(Note(cell.cell_id, ranks.start, note))
    with_replay = launch.settings.checkpoint_replay and plugins.algorithm.uses_replay
    trainings = []
    for rank, member, keeper, path in zip(ranks, members, keepers, paths):
        own = dataclasses.replace(launch, rank=rank, world_size=world)
        comm = mixer.member(rank)
        state = _restore(member, comm, path, launch.cell_config, report, cell.cell_id, rank)
        evaluator = (
            Evaluator(plugins.family, plugins.env_params, simulator_tasks(tasks, cell, rank), cell, rank)
            if cell.evaluations > 0
            else None
        )
        # In lockstep: learners in other processes agree through the store on when to stop.
        context = LoopContext(cell, own, member, comm, evaluator, 0, report, keeper, stop, store, True, with_replay)
        trainings.append(_Training(context, state))
    summaries = _train_block(block, mixer, trainings, report, stop)
    if not any(summary["stopped"] for summary in summaries.values()):
        for training in trainings:
            summary = summaries[training.rank]
            summary["transport"] = training.context.comm.transport
            _finish(training.context, training.state, summary, training.tables)
    mixer.close()
    block.close()  # the learners' threads (background batch preparers)
    envs.close()
    return summaries


def _block_exchange(launch: LearnerLaunch, plan: Any, buffers: torch.Tensor) -> BlockExchange:
    """This block's exchange with the others: NCCL when every block process has a GPU of its
    own, else shared memory on this host (unless `--transport p2p`), else gloo messages; every
    process takes the same decision."""
    graph = BlockGraph(plan, launch.learners)
    numel, dtype = buffers.shape[1], buffers.dtype
    device_group = _device_group(launch, plan, 0) if launch.settings.transport == "auto" else None
    board = None
    if device_group is None and launch.settings.transport != "p2p":
        layout = graph.layout(numel, dtype)
        channels = dict.fromkeys(range(graph.blocks), 1)
        board = open_shared_board(launch, layout, synchronous_slots(graph), channels, graph.in_peers(launch.rank))
    timeout_s = launch.settings.comm_timeout_s
    return build_block_exchange(graph, launch.rank, numel, dtype, timeout_s, board, device_group, buffers.device)


def _restore(
    member: Any, comm: Any, path: Any, cell_config: dict[str, Any], report: Report, cell_id: str, rank: int
) -> LoopState:
    """A learner's loop state, its learner and communicator restored from `path` (None: fresh)."""
    if path is None:
        return LoopState()
    found = checkpoint.load_run_checkpoint(path, cell_config)
    member.load_state_dict(found.state["learner"])
    comm.load_state_dict(found.state["comm"])
    state = LoopState.from_dict(found.state["loop"])
    report(Resumed(cell_id, rank, state.local_steps))
    return state


def _train_block(
    block: Any, mixer: BlockMixer, trainings: list[_Training], report: Report, stop: StopSignal
) -> dict[int, dict[str, Any]]:
    for training in trainings:
        report(Started(training.cell_id, training.rank, time.time()))
        training.start_clock()
    stopped = False
    while trainings[0].running():
        outputs = block.iterate()
        mixer.mix(trainings[0].state.iteration)
        for training, output in zip(trainings, outputs):
            training.advance(output)
            training.record_episodes(output.finished)
            training.record_metrics(output.metrics)
            training.evaluate(output.env_steps)
            training.report_progress()
        requested = stop.requested  # read once: every learner stops at the same iteration
        stops = [training.checkpoint_or_stop(out.env_steps, requested) for training, out in zip(trainings, outputs)]
        if any(stops):
            stopped = True
            break
    return {training.rank: training.finish(stopped) for training in trainings}
