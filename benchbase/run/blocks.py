"""How many learners each process of a cell hosts: blocks of K learners (`benchbase.learner.
block`) where the cell allows them, else one learner per process.

A cell runs in blocks when its algorithm has a block form for its observations, it mixes by
synchronous diffusion or not at all, and no learner is paced as a straggler. A block runs on
its process's device: the CPU, or with `--device cuda` (or `auto` where CUDA is present) one GPU
per block process, round-robin.

`--learners-per-process` chooses: unset, each cell that can runs as one block of all its
learners (on the CPU, a cell of frames only when it has more learners than the machine has
cores; with `--transport shm` or `p2p`, one learner per process); 1, one learner per process as
before; K, blocks of K learners in N/K processes that send each other the rows their learners
read (`benchbase.comm.block_exchange`), refused in one line for a cell that cannot run in
blocks or whose N K does not divide (blocks of unequal sizes are not supported). `--transport
shm` is refused in one line for a cell whose graph needs more message slots than a shared-memory
segment holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from benchbase.api.contracts import Algorithm, params_of
from benchbase.comm.block_graph import BlockGraph, block_mixing_refusal
from benchbase.comm.mixing_plan import build_mixing_plan
from benchbase.comm.shm import MAX_SLOTS, message_slots
from benchbase.errors import UserError
from benchbase.formatting import size
from benchbase.grid.cell import Cell
from benchbase.learner.cell_plugins import CellPlugins
from benchbase.learner.settings import ExecutionSettings
from benchbase.run.placement import device_for, gpu_memory

_observation_kinds: dict[str, str] = {}


def block_refusal(cell: Cell, registry: Any) -> str | None:
    """Why `cell` cannot run as one block of learners; None when it can."""
    if cell.learner_processes < 2:
        return "it has one learner"
    plugins = CellPlugins.resolve(registry, cell)
    algorithm = plugins.algorithm
    if plugins.num_peers is not None:  # GALA: its point is asynchrony, which a block's lockstep would remove
        return f"{cell.algorithm} gossips asynchronously between processes"
    if type(algorithm).make_learner_block is Algorithm.make_learner_block or not algorithm.block_observation_kinds:
        return f"{cell.algorithm} has no block form yet"
    if not issubclass(_defined_by(algorithm, "make_learner_block"), _defined_by(algorithm, "make_learner")):
        # a subclass with a learner of its own, whose block (inherited) would not run that learner
        return f"{cell.algorithm} overrides make_learner but not make_learner_block"
    if cell.straggler is not None:
        return "--straggler paces one learner's process"
    plan = build_mixing_plan(plugins.topology, plugins.topology_params, cell.learner_processes, cell.seed, None)
    reason = block_mixing_refusal(plan, plugins.staleness, plugins.link_drop)
    if reason is not None:
        return reason
    kind = _observation_kind(plugins.family, cell)
    if kind not in algorithm.block_observation_kinds:
        return f"{cell.algorithm} has no block form for {kind} observations"
    return None


def learners_per_process(cell: Cell, registry: Any, settings: ExecutionSettings) -> int:
    """The learners each process of `cell` hosts (checked beforehand by `check_process_layout`)."""
    asked = settings.learners_per_process
    if asked == 1 or cell.learner_processes == 1 or block_refusal(cell, registry) is not None:
        return 1
    if asked is None and settings.transport != "auto":  # a transport between the learners' processes
        return 1
    if asked is None and cell.learner_processes <= len(os.sched_getaffinity(0)):
        # Frames on a CPU with a core per learner: a process per learner convolves on cores of its
        # own, faster than a block's threads (2 Atari learners on 2 cores: 283 steps/s against
        # 206); with more learners than cores the block wins (4 on 2 cores: 164 against 102).
        # The device last: asking whether CUDA is there (`auto`) imports torch.
        plugins = CellPlugins.resolve(registry, cell)
        if _observation_kind(plugins.family, cell) == "image" and device_for(0, settings.device) == "cpu":
            return 1
    return cell.learner_processes if asked is None else asked


def runs_in_blocks(registry: Any, settings: ExecutionSettings) -> Callable[[Cell], bool]:
    """Whether a cell's learners run in blocks, as the memory checks ask (`memory_needs`)."""
    return lambda cell: learners_per_process(cell, registry, settings) > 1


def check_process_layout(cells: list[Cell], registry: Any, settings: ExecutionSettings) -> None:
    """A UserError naming the first cell that cannot run as `--learners-per-process` and
    `--transport` ask, before anything runs."""
    _check_learners_per_process(cells, registry, settings)
    if settings.transport == "shm":
        for cell in cells:
            reason = shared_memory_refusal(cell, registry, settings)
            if reason is not None:
                hint = "--transport auto or p2p sends them over gloo"
                raise UserError(f"--transport shm: {_label(cell)}: {reason} ({hint})")


def check_gpu_memory(
    cells: list[Cell], registry: Any, settings: ExecutionSettings, gpus: list[int] | None = None
) -> None:
    """A UserError naming the first cell whose learners would not fit on a GPU, before anything
    runs: the learners one GPU hosts (its share of the cell's processes, round-robin, times the
    learners a process hosts) times each learner's model as the machine's memory check estimates
    it in a block (`memory_needs`: MODEL_COPIES copies of the parameters, whatever the layout: what
    a learner in a process of its own holds beyond that, its checkpoints' copies and its
    shared-memory slots, is host memory), against the smallest GPU's memory (`gpus`: bytes per
    GPU, default `gpu_memory()`). Activations and CUDA's own memory come on top."""
    if settings.device == "cpu":
        return
    gpus = gpu_memory() if gpus is None else gpus
    if not gpus or device_for(0, settings.device) == "cpu":  # `auto` without CUDA (asked last: imports torch)
        return
    from benchbase.grid.expand import in_a_block, memory_needs

    for _, cell, _, model in memory_needs(cells, registry, in_blocks=in_a_block):
        per_process = learners_per_process(cell, registry, settings)
        processes = cell.learner_processes // per_process
        on_one_gpu = -(-processes // min(processes, len(gpus))) * per_process
        if on_one_gpu * model > min(gpus):
            hint = "fewer learners per process, more GPUs, fewer learners or a smaller network"
            if per_process == 1:
                hint = "more GPUs, fewer learners or a smaller network"
            raise UserError(
                f"GPU memory: {_label(cell)} puts {on_one_gpu} learners on one GPU, about "
                f"{size(on_one_gpu * model)} for their models alone, more than the {size(min(gpus))} "
                f"of {'the smallest' if len(gpus) > 1 else 'this'} GPU: {hint}"
            )


def shared_memory_refusal(cell: Cell, registry: Any, settings: ExecutionSettings) -> str | None:
    """Why shared memory cannot carry `cell`'s messages on any host: its graph lets a learner (or
    a block) lead a reader by more iterations than a segment holds (`message_slots`). None
    when it can; one host and room in /dev/shm are checked as the cell starts."""
    n, per_process = cell.learner_processes, learners_per_process(cell, registry, settings)
    if n == 1 or per_process == n:
        return None
    plugins = CellPlugins.resolve(registry, cell)
    plan = build_mixing_plan(plugins.topology, plugins.topology_params, n, cell.seed, plugins.num_peers)
    if not plan.has_edges:
        return None
    peers = BlockGraph(plan, per_process) if per_process > 1 else plan
    if message_slots(peers, plugins.staleness) is not None:
        return None
    return (
        f"on this graph a {'block' if per_process > 1 else 'learner'} can lead a reader by more than "
        f"{MAX_SLOTS - 1} iterations, more than a shared-memory segment holds"
    )


def _label(cell: Cell) -> str:
    n = cell.learner_processes
    return f"cell {cell.cell_id[:8]} ({cell.algorithm} · {cell.topology}, {n} learner{'s' * (n != 1)})"


def _check_learners_per_process(cells: list[Cell], registry: Any, settings: ExecutionSettings) -> None:
    asked = settings.learners_per_process
    if asked is None or asked == 1:
        return
    if asked < 1:
        raise UserError(f"--learners-per-process {asked}: give at least 1 (1: one learner per process)")
    for cell in cells:
        n, label = cell.learner_processes, _label(cell)
        if asked > n:
            raise UserError(f"--learners-per-process {asked}: more than the {n} learners of {label}")
        if n % asked:
            divisors = ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)
            raise UserError(
                f"--learners-per-process {asked}: does not divide the {n} learners of {label} "
                f"(blocks of equal size: {divisors})"
            )
        reason = block_refusal(cell, registry)
        if reason is not None:
            raise UserError(f"--learners-per-process {asked}: {label} cannot run as a block: {reason}")
        if asked == n and settings.transport != "auto":
            raise UserError(
                f"--transport {settings.transport}: with --learners-per-process {asked} every learner of {label} "
                "shares one process, so nothing travels between processes (choose fewer learners per process)"
            )


def _defined_by(algorithm: Any, method: str) -> type:
    """The class of `algorithm`'s MRO that defines `method`."""
    return next(klass for klass in type(algorithm).__mro__ if method in vars(klass))


def _observation_kind(family: Any, cell: Cell) -> str:
    from benchbase.grid.expand import probe_spaces

    key = json.dumps([cell.env, cell.env_params], sort_keys=True, default=str)
    if key not in _observation_kinds:
        _observation_kinds[key] = probe_spaces(family, params_of(family, cell.env_params))[1]
    return _observation_kinds[key]
