"""Imported by the learners' forkserver, first in its preload list (`benchbase.run.local`): the
kernel kills the forkserver the moment the process that started it ends, and SIGTERM to the whole
process group leaves it be. `bench run` takes SIGTERM as Ctrl-C (`benchbase.run.runner`) and its
learners stop when it asks them; the forkserver has to outlive that stop, since only it can tell
the launcher how each learner ended (a learner whose forkserver has gone reads as exit code 255).
multiprocessing makes the forkserver ignore SIGINT itself; this adds SIGTERM.

The forkserver would exit by itself once the launcher and every learner have closed its "alive"
pipe, but only after a second or two of interpreter shutdown with torch loaded, and not at all
while a learner lives; this makes it go at once. Python's forkserver runs no code of ours but
its preload imports, hence this module's one effect on import. Importing it in any other
process would tie that process to its parent thread: only the forkserver imports it.
"""

from __future__ import annotations

import os
import signal

from benchbase.run.lifeline import parent_death_signal

_arrange = parent_death_signal(signal.SIGKILL, parent=os.getppid())
if _arrange is not None:
    _arrange()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
