"""Imported by the learners' forkserver, first in its preload list (`benchbase.run.local`): the
kernel kills the forkserver the moment the process that started it ends.

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
