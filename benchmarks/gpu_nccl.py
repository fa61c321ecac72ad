"""The NCCL exchange on this machine's GPUs (step 1 of benchmarks/gpu_check.sh).

One process per GPU. Each checks an NCCL all-reduce on its device and times it on a buffer the
size of a Diff-A2C CartPole learner's. With two GPUs or more, each also mixes a ring and a
fully-connected plan twice, once through the communicator's default path (gloo, GPU buffers
staged through host memory) and once through its NCCL path (batched send/receive pairs, the
group all-reduce), and the two must agree bit for bit, as they do on CPU in
tests/comm/test_comm.py. With one GPU there is no pair of processes to exchange between (NCCL
refuses two ranks on one device), so only the all-reduce runs.

    python benchmarks/gpu_nccl.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NUMEL = 9_164  # a Diff-A2C learner's buffer on CartPole (hidden 64)
MIXES = 20
TIMEOUT = timedelta(seconds=60)


def worker(rank: int, world: int, init_file: str, results: dict) -> None:
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=TIMEOUT)
    nccl = dist.new_group(backend="nccl", timeout=TIMEOUT)
    values = torch.full((NUMEL,), float(rank + 1), device=device)
    dist.all_reduce(values, group=nccl)
    torch.cuda.synchronize(device)
    outcome = {"all_reduce_ok": bool(torch.all(values == world * (world + 1) / 2))}
    started = time.perf_counter()
    for _ in range(100):
        dist.all_reduce(values, group=nccl)
    torch.cuda.synchronize(device)
    outcome["all_reduce_us"] = (time.perf_counter() - started) / 100 * 1e6
    if world > 1:
        outcome["plans"] = mix_both_ways(rank, world, nccl, device)
    results[rank] = outcome
    dist.destroy_process_group()


def mix_both_ways(rank: int, world: int, nccl: object, device: torch.device) -> dict[str, object]:
    from benchbase.api.contracts import params_of
    from benchbase.api.registry import load_registry
    from benchbase.comm.communicator import Communicator
    from benchbase.comm.mixing_plan import build_mixing_plan

    registry = load_registry()
    found = {}
    for name in ("ring", "fully-connected"):
        topology = registry.get("topology", name)
        plan = build_mixing_plan(topology, params_of(topology, {}), world, 0)
        finals, transports = [], []
        for group in (None, nccl):
            comm = Communicator(plan, rank, NUMEL, torch.float32, 0, 60.0, device_group=group, device=device)
            generator = torch.Generator().manual_seed(rank)
            params = torch.randn(NUMEL, generator=generator).to(device)
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for iteration in range(MIXES):
                comm.mix(params, iteration)
            torch.cuda.synchronize(device)
            transports.append((comm.transport, (time.perf_counter() - started) / MIXES * 1e6))
            finals.append(params.cpu())
            comm.close()
        found[name] = {"equal": bool(torch.equal(*finals)), "transports": transports}
    return found


def main() -> int:
    world = torch.cuda.device_count()
    if world == 0:
        print("no CUDA device here")
        return 1
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, str(Path(folder) / "init"), results), nprocs=world, join=True)
        results = dict(results)
    ok = True
    for rank in range(world):
        outcome = results[rank]
        ok &= outcome["all_reduce_ok"]
        line = f"GPU {rank}: NCCL all-reduce {'right' if outcome['all_reduce_ok'] else 'WRONG'}"
        print(f"{line}, {outcome['all_reduce_us']:.0f} µs per all-reduce of {NUMEL:,} floats")
        for name, plan in outcome.get("plans", {}).items():
            ok &= plan["equal"]
            ways = ", ".join(f"{transport} {us:.0f} µs per mix" for transport, us in plan["transports"])
            print(f"  {name}: {ways}; {'bit for bit equal' if plan['equal'] else 'DIFFERENT'}")
    if world == 1:
        print("one GPU: no exchange between processes to compare (NCCL needs a device per rank)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
