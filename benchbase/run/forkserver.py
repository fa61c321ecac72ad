"""The learners' forkserver: started once per `bench run`, it imports torch and the built-in
plugins, and every learner process forks from it (`benchbase.run.local`).

This module imports no torch, so `bench run` starts the forkserver before its own process
imports torch: the two imports then run side by side instead of one after the other.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from benchbase.api.registry import BUILTIN_PLUGINS

_context: Any = None


def context() -> Any:
    """The forkserver multiprocessing context, with its preload list set."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # benchbase.run.forkserver_lifeline: the forkserver dies with this process, killed or not.
        preload = ["benchbase.run.forkserver_lifeline", "benchbase.learner.process"]
        _context.set_forkserver_preload([*preload, *BUILTIN_PLUGINS])
    return _context


def warm_up() -> None:
    """Start the forkserver (it imports torch) while the caller does other work."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()
