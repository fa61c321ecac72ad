"""No learner outlives the process that launched it.

A learner of a local run is forked from multiprocessing's forkserver, not from `bench run`, so
the kernel's parent-death signal (`PR_SET_PDEATHSIG`) would follow the forkserver, which itself
lives on as long as any learner holds its "alive" pipe: killing `bench run` (SIGKILL, out of
memory) used to leave the learners training to the end of their budget, writing checkpoints and
result files into a folder whose cells table says `running`. So each learner watches the launcher
itself (`die_with`): a thread waits on a pidfd of the launcher (Linux ≥ 5.3; elsewhere it polls)
and kills its own process the moment the launcher ends. The forkserver is killed by the kernel
with the launcher (`benchbase.run.forkserver_lifeline`, in its preload list), rather than exiting
normally once its pipes close (about 1.5 s of interpreter shutdown with torch loaded); the
resource tracker exits when the learners are gone, unlinking any shared memory left over.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable

_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def parent_death_signal(signum: int, parent: int | None = None) -> Callable[[], None] | None:
    """A function that has the kernel send its caller `signum` when the thread that started the
    caller ends (Linux's PR_SET_PDEATHSIG, kept across exec), and at once if `parent` (this
    process by default: the function is then a `preexec_fn`) is no longer the caller's parent;
    None where there is no such thing. libc is looked up here, so the function is safe to call
    between fork and exec."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    expected = os.getpid() if parent is None else parent

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != expected:  # the parent died before the request took effect
            os.kill(os.getpid(), signum)

    return arrange


def die_with(launcher_pid: int) -> None:
    """End this process (SIGKILL: no checkpoint, nothing more written) as soon as process
    `launcher_pid` ends; at once if it has ended already."""
    handle: int | None = None
    try:
        handle = os.pidfd_open(launcher_pid)
    except ProcessLookupError:
        _die()
    except (AttributeError, OSError):  # no pidfd here (not Linux, or a kernel before 5.3): poll
        handle = None
    thread = threading.Thread(target=_watch, args=(launcher_pid, handle), name="lifeline", daemon=True)
    thread.start()


def _watch(pid: int, handle: int | None) -> None:
    if handle is not None:
        select.select([handle], [], [])  # a pidfd turns readable when its process exits
    else:
        started = start_ticks(pid)
        while running(pid) and start_ticks(pid) == started:  # a reused PID is another process
            time.sleep(_POLL_S)
    _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether `pid` is running (a zombie has ended: only its exit status waits to be collected)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _stat_fields(pid)[:1] != ["Z"]


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (Linux's /proc/PID/stat); None when
    unknown. With the boot, it tells a process from a later one given the same PID."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name, from the state on; [] where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
