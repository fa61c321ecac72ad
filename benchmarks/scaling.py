"""What one mixing step costs a learner as the cell grows: bytes sent and time, by topology.

    python benchmarks/scaling.py                   # ring, exponential, fully connected; N = 2, 4, 8, 16
    python benchmarks/scaling.py --quick           # fewer steps
    python benchmarks/scaling.py --numel 1000000   # a bigger model (default 100,000 parameters)

N real processes exchange a parameter vector through benchbase's communicator (the same code a
cell runs, synchronous diffusion) with nothing else to do: per learner and mixing step, the bytes
it sent and the wall time of `mix`, for gloo messages (p2p) and, on one host, shared memory
(shm). A fully connected graph is averaged by all-reduce. On a 2-core machine N > 2 processes
share the cores, so times grow with N for that reason too; bytes do not depend on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchbase.api.contracts import params_of  # noqa: E402
from benchbase.api.registry import load_registry  # noqa: E402
from benchbase.comm.communicator import Communicator, message_layout  # noqa: E402
from benchbase.comm.mixing_plan import build_mixing_plan  # noqa: E402
from benchbase.comm.shm import SharedBoard, synchronous_slots  # noqa: E402

TOPOLOGIES = ("ring", "exponential", "fully-connected")
SIZES = (2, 4, 8, 16)


def worker(
    rank: int, world: int, port: int, topology_name: str, numel: int, steps: int, transport: str, prefix: str, results
) -> None:
    try:
        _exchange(rank, world, port, topology_name, numel, steps, transport, prefix, results)
    except BaseException:
        import traceback

        results.put(("error", traceback.format_exc()))


def _exchange(
    rank: int, world: int, port: int, topology_name: str, numel: int, steps: int, transport: str, prefix: str, results
) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    topology = load_registry(only={"plugins.topologies.builtin"}).get("topology", topology_name)
    plan = build_mixing_plan(topology, params_of(topology), world, 0)
    params = torch.full((numel,), float(rank))
    board = None
    if transport == "shm" and plan.has_edges and synchronous_slots(plan) is not None:
        layout = message_layout(plan, numel, params.dtype, 0)
        channels = {j: layout.channels(plan, j) for j in range(world)}
        board = SharedBoard(prefix, rank, layout.width, synchronous_slots(plan), layout.dtype, 120.0, channels[rank])
        dist.barrier()
        board.attach(plan.in_peers(rank), channels)
    comm = Communicator(plan, rank, numel, params.dtype, 0, 120.0, board)
    for iteration in range(5):  # warm-up: connections, first touches
        comm.mix(params, iteration)
    dist.barrier()
    sent_before, started = comm.bytes_sent, time.perf_counter()
    for iteration in range(5, 5 + steps):
        comm.mix(params, iteration)
    elapsed = time.perf_counter() - started
    results.put(
        (
            rank,
            (comm.bytes_sent - sent_before) / steps,
            elapsed / steps,
            comm.transport,
            len(plan.out_peers(rank)) if hasattr(plan, "out_peers") else 0,
        )
    )
    comm.close(params)
    dist.destroy_process_group()


def measure(context, topology: str, world: int, numel: int, steps: int, transport: str) -> dict:
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=120))
    results = context.Queue()
    prefix = f"benchbase-scaling-{topology}-{world}-{transport}"
    processes = [
        context.Process(
            target=worker, args=(rank, world, store.port, topology, numel, steps, transport, prefix, results)
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    found = [results.get(timeout=300) for _ in range(world)]
    errors = [f[1] for f in found if f[0] == "error"]
    if errors:
        raise RuntimeError(errors[0])
    for process in processes:
        process.join(timeout=60)
    per_learner_bytes = sum(f[1] for f in found) / world
    mix_s = max(f[2] for f in found)
    return {
        "bytes": per_learner_bytes,
        "mix_ms": 1000 * mix_s,
        "transport": found[0][3],
        "out_degree": max(f[4] for f in found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=100_000, help="parameters mixed (float32)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="learner counts, comma-separated")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    args = parser.parse_args()
    steps = 20 if args.quick else 100
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "benchbase.comm.communicator", "benchbase.comm.shm", "plugins.topologies.builtin"]
    )
    size_mb = args.numel * 4 / 2**20
    print(f"{args.numel:,} float32 parameters ({size_mb:.2f} MiB) per learner, {steps} synchronous mixing steps")
    print(
        f"{'topology':<16} {'N':>3} {'out-degree':>10} {'sent/learner/step':>18} {'× model':>8} "
        f"{'p2p ms/step':>12} {'shm ms/step':>12}"
    )
    for topology in args.topologies.split(","):
        for world in map(int, args.sizes.split(",")):
            p2p = measure(context, topology, world, args.numel, steps, "p2p")
            shm = measure(context, topology, world, args.numel, steps, "shm") if topology != "fully-connected" else None
            ratio = p2p["bytes"] / (args.numel * 4)
            if shm is None:
                shm_text = f"{'(all-reduce)':>12}"
            elif shm["transport"] != "shm":  # too many phases for the synchronous slots: cells use p2p
                shm_text = f"{'(p2p)':>12}"
            else:
                shm_text = f"{shm['mix_ms']:12.2f}"
            print(
                f"{topology:<16} {world:>3} {p2p['out_degree']:>10} {p2p['bytes'] / 2**20:>14.2f} MiB {ratio:>8.2f} "
                f"{p2p['mix_ms']:>12.2f} {shm_text}"
            )


if __name__ == "__main__":
    main()
