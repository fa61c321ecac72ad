"""How a cell ended, as its launcher saw it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CellOutcome:
    status: str  # completed | failed | interrupted
    error: str | None
    wall_time_s: float
    startup_s: float
    summaries: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_env_step: int | None = None  # cell env steps already done when it resumed
