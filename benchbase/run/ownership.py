"""Who runs a run folder and its cells: one writer per folder, and a `running` cell that names
the process running it.

`FolderLock` is an OS advisory lock (`flock`) on the run folder, held for the whole run and
released by the kernel however the process ends, so a crash never leaves a stale lock. A local
`bench run` (the coordinating process, whatever its `--jobs`) holds it exclusively, so a second
`bench run` on the folder stops with one line naming it (and writes nothing). Rank 0 of a torchrun
job holds it shared: the jobs of a torchrun grid, one per cell, may fill one folder side by side,
but not beside a local run.

A `running` row of cells.parquet records its `Runner` (host, PID, boot and the PID's start, and
when the cell started), so a later run can tell a cell that is still running, which it refuses to
take over, from one whose process is gone, which it resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchbase.errors import UserError
from benchbase.run.lifeline import running, start_ticks

HOLDER_NAME = ".run-holder.json"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Runner:
    """A process that runs cells: enough to find it again, and to know when it is gone."""

    host: str
    pid: int
    boot_id: str | None  # a PID names one process only within one boot
    pid_started: int | None  # clock ticks after boot: a later process given the same PID differs
    started_at: str  # when it took the cell (or the folder), UTC

    @classmethod
    def this_process(cls) -> Runner:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), _boot_id(), start_ticks(os.getpid()), now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Runner | None:
        """The runner a cells row or lock file names; None for none, or for text it cannot be."""
        try:
            data = json.loads(text or "")
            return cls(
                str(data["host"]),
                int(data["pid"]),
                data.get("boot_id"),
                data.get("pid_started"),
                str(data.get("started_at", "?")),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def alive(self) -> bool | None:
        """Whether this process is still running: None when it ran on another host (not checkable here)."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False  # the machine has restarted since
        if not running(self.pid):
            return False
        started = start_ticks(self.pid)
        # A different start: the PID was given to a later process.
        return started is None or self.pid_started is None or started == self.pid_started

    def describe(self) -> str:
        since = f" (since {self.started_at})" if self.started_at else ""
        return f"PID {self.pid} on host {self.host}{since}"


class FolderLock:
    """An advisory lock on the run folder itself (no file is made for it), held exclusively (a
    local run) or shared (a torchrun job's rank 0) until `release` or the process's end. An
    exclusive holder that has checked the folder `announce`s itself in `HOLDER_NAME`, for runs on
    other hosts of a shared filesystem; on this host the kernel's lock table names the holders. A
    context manager."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root, self.shared = Path(root), shared
        self.created = False  # whether taking the lock created the folder
        self.warning: str | None = None  # set when this filesystem cannot lock: the run goes on without
        self._handle: int | None = None
        self._announced = False

    @property
    def holder_path(self) -> Path:
        return self.root / HOLDER_NAME

    def acquire(self) -> FolderLock:
        """Take the lock, creating the folder if needed; a UserError naming the holder if it is in use."""
        self.created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(
                f"cannot create or open {self.root} ({error.strerror or error}): make its parent writable, "
                "or choose another --out"
            ) from None
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise UserError(
                f"{self.root} is in use by {self._holders()}: one bench run writes a run folder at a time; "
                "wait for it to finish (or stop it), or choose another --out"
            ) from None
        except OSError as error:  # NFS, for one, may refuse to lock a folder
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
                os.close(handle)
                raise
            self.warning = (
                f"{self.root}'s filesystem cannot lock it ({error.strerror}): nothing stops a second "
                "bench run from writing this folder at the same time"
            )
        self._handle = handle
        return self

    def announce(self) -> None:
        """Name this process in the folder (once the run has found the folder fit to run)."""
        if not self.shared:
            try:
                self.holder_path.write_text(Runner.this_process().to_json() + "\n")
                self._announced = True
            except OSError:  # a courtesy to runs on other hosts; the lock itself holds regardless
                pass

    def release(self) -> None:
        if self._handle is not None:
            if self._announced:  # before unlocking: a later holder's announcement is never removed
                with contextlib.suppress(OSError):
                    self.holder_path.unlink(missing_ok=True)
                self._announced = False
            os.close(self._handle)  # closing releases the lock
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _holders(self) -> str:
        """Who holds the lock: the processes of this host the kernel's lock table names (with
        the time the announcement gives), else the announced holder (on another host)."""
        announced = None
        try:
            announced = Runner.from_json(self.holder_path.read_text())
        except OSError:
            pass
        here = _lockers(self.root)
        if here:
            exclusive = [pid for pid, mode in here if mode == "WRITE"]
            if exclusive:
                pid = exclusive[0]
                started = announced.started_at if announced is not None and announced.pid == pid else None
                runner = Runner(socket.gethostname(), pid, None, None, started or "")
                return f"bench run {runner.describe()}"
            pids = ", ".join(str(pid) for pid in sorted({pid for pid, _ in here}))
            return f"torchrun job(s) (rank-0 worker PID {pids} on host {socket.gethostname()})"
        if announced is not None and announced.alive() is not False:
            return f"bench run {announced.describe()}"
        return "another bench run (a torchrun job's rank-0 worker, or a run on another host)"


def _lockers(folder: Path) -> list[tuple[int, str]]:
    """(PID, READ or WRITE) of the processes of this host holding a flock on `folder`, from
    /proc/locks (Linux); [] where it cannot be read."""
    try:
        info = os.stat(folder)
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    found = []
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields[:2]:  # a process waiting for the lock, not holding it
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            found.append((int(fields[4]), fields[3]))
    return found


def check_running_cells(rows: dict[str, dict[str, Any]], cell_ids: list[str]) -> list[str]:
    """Before `cell_ids` are run: a UserError if one of them is `running` in a live process on
    this host; otherwise a note for each `running` one whose process is gone or cannot be checked
    from here (it is taken as interrupted: run again, from its checkpoint if it has one)."""
    notes = []
    for cell_id in cell_ids:
        row = rows.get(cell_id)
        if row is None or row.get("status") != "running":
            continue
        runner = Runner.from_json(row.get("runner"))
        if runner is None:  # written by a benchbase that did not record its runner
            notes.append(
                f"{cell_id} was left running by an earlier run: running it again (from its checkpoint, if any)"
            )
            continue
        alive = runner.alive()
        if alive:
            raise UserError(
                f"cell {cell_id} is running in {runner.describe()}: "
                "wait for it to finish (or stop it) before running it again"
            )
        how = "which has ended" if alive is False else "which cannot be checked from this host"
        notes.append(
            f"{cell_id} was left running by {runner.describe()}, {how}: running it again (from its checkpoint, if any)"
        )
    return notes
