"""Transports: what carries messages between learners, one class each behind `Transport`.

- `SharedMemoryTransport`: same-host shared-memory segments (`benchbase.comm.shm`).
- `GlooTransport`: gloo point-to-point messages; background receivers for asynchronous mixing.
- `DeviceGroupTransport`: batched point-to-point in a separate (NCCL) group, GPU to GPU.
- `AllReduceTransport`: one all-reduce, for a complete graph's plain average.
"""

from benchbase.comm.transports.all_reduce import AllReduceTransport
from benchbase.comm.transports.base import HostStaging, Transport
from benchbase.comm.transports.device_group import DeviceGroupTransport
from benchbase.comm.transports.gloo import GlooTransport
from benchbase.comm.transports.shared_memory import SharedMemoryTransport

__all__ = [
    "AllReduceTransport",
    "DeviceGroupTransport",
    "GlooTransport",
    "HostStaging",
    "SharedMemoryTransport",
    "Transport",
]
