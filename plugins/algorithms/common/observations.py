"""What kind of observations a space holds, without importing torch (the memory estimate and the
learner bases ask before any network exists; `networks` builds the network this chooses)."""

from __future__ import annotations

from typing import Any


def is_image(observation_space: Any) -> bool:
    """Stacked frames (C, H, W); everything else is treated as a flat vector."""
    return len(observation_space.shape or ()) == 3
