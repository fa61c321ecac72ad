"""What the process environment says about how bench was started, read without importing torch
(the command line asks before it has checked its arguments)."""

from __future__ import annotations

import os


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (it sets these for every worker)."""
    return all(name in os.environ for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"))
