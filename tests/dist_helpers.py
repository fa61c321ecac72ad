"""Multi-process helpers for the tests: real processes, gloo on CPU, rendezvous on loopback.

`run_group(target, world, *args)` starts `world` processes that join one gloo process
group through a TCPStore the test process hosts on a port the OS picks, calls
`target(rank, world, *args)` in each, and returns the results by rank. Every wait has a
deadline: a child that raises, dies or does not report in time fails the test, and leftovers
are terminated (then killed) in a `finally`. The children's functions live here so that the
child processes can import them.

Processes come from the local launcher's forkserver, which has already imported torch (a fresh
interpreter per learner would spend seconds importing torch on a small machine); sharing it
means the launcher's own tests find it started with the modules they expect.

Children report only plain data (floats, lists, numpy arrays), never tensors: torch would send
tensors through shared memory, which does not survive the child's exit.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from benchbase.comm.communicator import Communicator
from benchbase.run.forkserver import warm_up

PG_TIMEOUT_S = 20.0
_KEEP_ALIVE: list[Any] = []


# -- the harness (runs in the test process) ---------------------------------------------------


def run_group(target: Callable[..., Any], world: int, *args: Any, timeout_s: float = 60.0) -> list[Any]:
    """Run `target(rank, world, *args)` in `world` gloo processes; their results by rank."""
    warm_up()  # the launcher's forkserver (one per test session), preloaded with torch
    context = multiprocessing.get_context("forkserver")
    store = dist.TCPStore(
        "127.0.0.1", 0, world, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=PG_TIMEOUT_S)
    )
    results_queue = context.Queue()
    release = context.Event()  # children stay alive (connections open) until every one reported
    processes = [
        context.Process(
            target=_child,
            args=(target, rank, world, store.port, results_queue, release, args),
            name=f"test-learner-{rank}",
            daemon=True,
        )
        for rank in range(world)
    ]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        results: dict[int, Any] = {}
        dead_since: dict[int, float] = {}
        while len(results) < world:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world)) - set(results))
                raise AssertionError(f"learners {missing} did not report within {timeout_s:.0f} s")
            try:
                rank, status, payload = results_queue.get(timeout=min(remaining, 0.2))
            except queue.Empty as empty:
                now = time.monotonic()
                for rank, process in enumerate(processes):
                    if rank in results or process.exitcode is None:
                        continue
                    # Its report may still be in the pipe: give it a moment before failing.
                    if now - dead_since.setdefault(rank, now) > 2.0:
                        raise AssertionError(
                            f"learner {rank} exited (code {process.exitcode}) without reporting"
                        ) from empty
                continue
            if status != "ok":
                raise AssertionError(f"learner {rank} raised:\n{payload}")
            results[rank] = payload
        release.set()
        for process in processes:
            process.join(timeout=max(1.0, deadline - time.monotonic()))
        for rank, process in enumerate(processes):
            assert process.exitcode == 0, f"learner {rank} exit code {process.exitcode}"
        return [results[rank] for rank in range(world)]
    finally:
        release.set()
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=3)
            if process.is_alive():
                process.kill()
                process.join(timeout=1)
        results_queue.close()
        results_queue.cancel_join_thread()
        del store


def _child(
    target: Callable[..., Any], rank: int, world: int, port: int, results_queue: Any, release: Any, args: tuple
) -> None:
    torch.set_num_threads(1)
    try:
        timeout = timedelta(seconds=PG_TIMEOUT_S)
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
        results_queue.put((rank, "ok", target(rank, world, *args)))
    except BaseException:
        results_queue.put((rank, "error", traceback.format_exc()))
    # Keep this learner's connections open until every learner has reported, then leave without
    # tearing the process group down (a broken group's teardown could block).
    release.wait(timeout=PG_TIMEOUT_S + 30)
    results_queue.close()
    results_queue.join_thread()
    os._exit(0)


# -- data the test process can recompute --------------------------------------------------------


def initial_vector(rank: int, numel: int) -> torch.Tensor:
    """Learner `rank`'s starting parameters: different per learner, reproducible anywhere."""
    generator = torch.Generator().manual_seed(1_000 + rank)
    return torch.rand(numel, generator=generator, dtype=torch.float32) * 2 - 1 + rank


# -- children ----------------------------------------------------------------------------------


def synchronous_suite(rank: int, world: int, plans: dict[str, Any], numel: int, steps: int) -> dict[str, Any]:
    """Synchronous (K = 0) mixing on every plan, plus consensus distance; one result per plan.

    Plans named "exponential*" start at iteration 1, so phase = iteration % period is visible.
    """
    out: dict[str, Any] = {}
    for name, plan in plans.items():
        comm = Communicator(plan, rank, numel, torch.float32, staleness=0, timeout_s=PG_TIMEOUT_S)
        params = initial_vector(rank, numel)
        first_iteration = 1 if name.startswith("exponential") else 0
        trace = []
        for iteration in range(first_iteration, first_iteration + steps):
            comm.mix(params, iteration)
            if len(trace) < 2:
                trace.append(params.numpy().copy())
        out[name] = {
            "trace": trace,
            "final": params.numpy().copy(),
            "bytes_sent": comm.bytes_sent,
            "messages_sent": comm.messages_sent,
            "messages_received": comm.messages_received,
            "use_all_reduce": comm.use_all_reduce,
            "consensus_distance_after": comm.consensus_distance(params),
        }
        comm.close()
    ring = Communicator(plans["ring"], rank, numel, torch.float32, staleness=0, timeout_s=PG_TIMEOUT_S)
    out["consensus_distance_initial"] = ring.consensus_distance(initial_vector(rank, numel))
    from benchbase.comm import consensus

    whole = consensus.CONSENSUS_SCRATCH
    consensus.CONSENSUS_SCRATCH = numel // 3 + 1  # three slices, the last one shorter
    try:
        out["consensus_distance_in_slices"] = ring.consensus_distance(initial_vector(rank, numel))
    finally:
        consensus.CONSENSUS_SCRATCH = whole
    return out


def bytes_suite(rank: int, world: int, plan: Any, numel: int, steps: int) -> dict[str, float]:
    comm = Communicator(plan, rank, numel, torch.float32, staleness=0, timeout_s=PG_TIMEOUT_S)
    params = initial_vector(rank, numel)
    for iteration in range(steps):
        comm.mix(params, iteration)
    comm.close()
    return comm.statistics()


def staleness_suite(
    rank: int, world: int, plan: Any, numel: int, iterations: int, bound: int, straggler_sleep_s: float
) -> dict[str, Any]:
    """Learner 0 sleeps before each mix; the others run flat out. Once with K = 0, once with K."""
    out: dict[str, Any] = {}
    for staleness in (0, bound):
        dist.barrier()  # start together: process start-up skew must not count as mixing wait
        comm = Communicator(plan, rank, numel, torch.float32, staleness=staleness, timeout_s=PG_TIMEOUT_S)
        params = initial_vector(rank, numel)
        for iteration in range(iterations):
            if rank == 0:
                time.sleep(straggler_sleep_s)
            comm.mix(params, iteration)
        before_close = comm.statistics()
        comm.close()
        after_close = comm.statistics()
        out[staleness] = {
            "before_close": before_close,
            "after_close": after_close,
            "staleness_seen": list(comm.staleness_seen),
            "final": params.numpy().copy(),
        }
    return out


def failure_suite(
    rank: int, world: int, plan: Any, numel: int, staleness: int, fail_at: int, timeout_s: float
) -> dict[str, Any]:
    """Learner 0 raises at iteration `fail_at` (and stays alive, silent); the others keep mixing
    and report the mix that failed."""
    comm = Communicator(plan, rank, numel, torch.float32, staleness=staleness, timeout_s=timeout_s)
    params = initial_vector(rank, numel)
    for iteration in range(fail_at + staleness + 10):
        if rank == 0 and iteration == fail_at:
            # Keep the communicator: gloo drops a pending send whose work object is destroyed,
            # and the scenario is a learner that stops mixing, not one that retracts messages.
            _KEEP_ALIVE.append(comm)
            try:
                raise RuntimeError("learner 0 broke")
            except RuntimeError as error:
                return {"raised": str(error), "iteration": iteration}
        started = time.monotonic()
        try:
            comm.mix(params, iteration)
        except Exception as error:  # noqa: BLE001 - what the neighbour sees is the point
            return {
                "failed_at": iteration,
                "error": f"{type(error).__name__}: {error}",
                "elapsed_s": time.monotonic() - started,
            }
    return {"failed_at": None}


def as_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64) for v in vectors])


# -- shared-memory transport (benchbase.comm.shm) ---------------------------------------------------


def _board(
    prefix: str, rank: int, plan: Any, numel: int, slots: int, timeout_s: float = PG_TIMEOUT_S, staleness: int = 0
):
    """The board the learner loop would build (`benchbase.learner.process._shared_board`)."""
    from benchbase.comm.communicator import message_layout
    from benchbase.comm.shm import SharedBoard

    layout = message_layout(plan, numel, torch.float32, staleness)
    channels = {j: layout.channels(plan, j) for j in range(plan.n_learners)}
    board = SharedBoard(prefix, rank, layout.width, slots, layout.dtype, timeout_s, channels[rank])
    dist.barrier()
    board.attach(plan.in_peers(rank), channels)
    return board


def shared_versus_gloo_suite(
    rank: int, world: int, plans: dict[str, Any], numel: int, steps: int, prefix: str
) -> dict[str, Any]:
    """The same synchronous mixing through gloo messages and through shared memory."""
    from benchbase.comm.shm import synchronous_slots

    out: dict[str, Any] = {}
    for name, plan in plans.items():
        finals = {}
        for transport in ("p2p", "shm"):
            board = (
                _board(f"{prefix}-{name}", rank, plan, numel, synchronous_slots(plan)) if transport == "shm" else None
            )
            comm = Communicator(plan, rank, numel, torch.float32, staleness=0, timeout_s=PG_TIMEOUT_S, board=board)
            params = initial_vector(rank, numel)
            for iteration in range(steps):
                comm.mix(params, iteration)
            finals[transport] = params.numpy().copy()
            finals[f"{transport}_bytes"] = comm.bytes_sent
            dist.barrier()  # nobody closes (unlinks) while a neighbour may still read
            comm.close()
        out[name] = finals
    return out


def shared_staleness_suite(
    rank: int, world: int, plan: Any, numel: int, iterations: int, bound: int, straggler_sleep_s: float, prefix: str
) -> dict[str, Any]:
    board = _board(prefix, rank, plan, numel, slots=2, staleness=bound)
    comm = Communicator(plan, rank, numel, torch.float32, staleness=bound, timeout_s=PG_TIMEOUT_S, board=board)
    params = initial_vector(rank, numel)
    started = time.monotonic()
    for iteration in range(iterations):
        if rank == 0:
            time.sleep(straggler_sleep_s)
        comm.mix(params, iteration)
    elapsed = time.monotonic() - started
    stats = comm.statistics()
    dist.barrier()
    comm.close()
    return {"stats": stats, "staleness_seen": list(comm.staleness_seen), "elapsed_s": elapsed}


# -- push-sum (directed graphs, gossip) ----------------------------------------------------------


def push_sum_suite(
    rank: int, world: int, plans: dict[str, Any], numel: int, steps: int, prefix: str, link_drop: float = 0.0
) -> dict[str, Any]:
    """Synchronous mixing of every plan through gloo messages and shared memory, optionally with
    link drops; the final (de-biased) parameters, push-sum weight and statistics per plan."""
    from benchbase.comm.shm import synchronous_slots

    out: dict[str, Any] = {}
    for name, plan in plans.items():
        for transport in ("p2p", "shm"):
            board = (
                _board(f"{prefix}-{name}", rank, plan, numel, synchronous_slots(plan)) if transport == "shm" else None
            )
            comm = Communicator(
                plan,
                rank,
                numel,
                torch.float32,
                staleness=0,
                timeout_s=PG_TIMEOUT_S,
                board=board,
                link_drop=link_drop,
                seed=7,
            )
            params = initial_vector(rank, numel)
            for iteration in range(steps):
                comm.mix(params, iteration)
            out[(name, transport)] = {
                "final": params.numpy().copy(),
                "weight": comm.push_sum_weight,
                "stats": comm.statistics(),
            }
            dist.barrier()  # nobody closes (unlinks) while a neighbour may still read
            comm.close()
    return out


def async_push_sum_suite(
    rank: int,
    world: int,
    plan: Any,
    numel: int,
    iterations: int,
    bound: int,
    straggler_sleep_s: float,
    transport: str,
    prefix: str,
    link_drop: float = 0.0,
) -> dict[str, Any]:
    """Asynchronous push-sum with learner 0 slowed down; no learning, so every learner's mass
    w·θ summed over learners must stay Σ of the initial vectors, and Σ w must stay N."""
    board = _board(prefix, rank, plan, numel, slots=2, staleness=bound) if transport == "shm" else None
    comm = Communicator(
        plan,
        rank,
        numel,
        torch.float32,
        staleness=bound,
        timeout_s=PG_TIMEOUT_S,
        board=board,
        link_drop=link_drop,
        seed=3,
    )
    params = initial_vector(rank, numel)
    dist.barrier()
    started = time.monotonic()
    comm.snapshot(params, 0)  # the starting spread, measured without a collective
    for iteration in range(iterations):
        if rank == 0:
            time.sleep(straggler_sleep_s)
        comm.mix(params, iteration)
    comm.snapshot(params, iterations)
    elapsed = time.monotonic() - started
    before_close = comm.statistics()
    comm.close(params)
    return {
        "consensus": comm.consensus_snapshots(),
        "elapsed_s": elapsed,
        "before_close": before_close,
        "after_close": comm.statistics(),
        "staleness_seen": list(comm.staleness_seen),
        "weight": comm.push_sum_weight,
        "mass": (params.double() * comm.push_sum_weight).numpy(),
        "final": params.numpy().copy(),
    }


def device_group_suite(rank: int, world: int, plans: dict[str, Any], numel: int, steps: int) -> dict[str, Any]:
    """Every plan mixed twice: through the default group, and through a separate group handed to
    the communicator as its `device_group` (the path NCCL takes: batched send/receive pairs and a
    group all-reduce), here a gloo group so that it runs on CPU."""
    group = dist.new_group(backend="gloo")
    out: dict[str, Any] = {}
    for name, plan in plans.items():
        finals = []
        for device_group in (None, group):
            comm = Communicator(
                plan, rank, numel, torch.float32, staleness=0, timeout_s=PG_TIMEOUT_S, device_group=device_group
            )
            params = initial_vector(rank, numel)
            for iteration in range(steps):
                comm.mix(params, iteration)
            finals.append(params.numpy().copy())
            out.setdefault("transports", {}).setdefault(name, []).append(comm.transport)
            comm.close()
        out[name] = finals
    return out


def block_mixing_suite(
    rank: int, world: int, plan: Any, buffers: np.ndarray, steps: int, transport: str = "p2p", prefix: str = ""
) -> dict[str, Any]:
    """Process `rank` of `world` hosts learners rank·K … rank·K + K − 1 of `buffers` [N, numel]
    as one block and mixes them `steps` times across the blocks, the rows its learners read from
    other blocks carried by `transport` (p2p or shm); its rows, consensus, bytes, and what its
    exchange sent."""
    from benchbase.comm.block import BlockMixer
    from benchbase.comm.block_exchange import build_block_exchange
    from benchbase.comm.block_graph import BlockGraph
    from benchbase.comm.shm import SharedBoard, synchronous_slots

    size = len(buffers) // world
    own = torch.from_numpy(buffers[rank * size : (rank + 1) * size].copy())
    exchange = None
    if plan.has_edges:
        graph = BlockGraph(plan, size)
        board = None
        if transport == "shm":
            layout = graph.layout(own.shape[1], own.dtype)
            board = SharedBoard(prefix, rank, layout.width, synchronous_slots(graph), layout.dtype, PG_TIMEOUT_S)
            dist.barrier()
            board.attach(graph.in_peers(rank))
        exchange = build_block_exchange(graph, rank, own.shape[1], own.dtype, PG_TIMEOUT_S, board)
    mixer = BlockMixer(plan, own, buffers.shape[1] - 8, rank * size, exchange)
    for iteration in range(steps):
        mixer.mix(iteration)
    result = {
        "rows": own.numpy().copy(),
        "consensus": mixer.consensus_distance(),
        "bytes": [counters.bytes_sent for counters in mixer.counters],
        "exchanged_bytes": exchange.counters.bytes_sent if exchange is not None else 0,
        "transport": mixer.transport,
    }
    dist.barrier()  # nobody unlinks a segment a neighbour still reads
    mixer.close()
    return result
