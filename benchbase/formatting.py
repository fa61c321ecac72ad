"""Compact numbers for tables: counts, byte sizes and durations, an em dash where there is none.

Shared by the run console, the text leaderboard and the HTML report so that the same value reads
the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "—"


def finite(value: Any) -> bool:
    """A real, finite number (not None, not NaN or ±inf)."""
    try:
        return value is not None and math.isfinite(value)
    except TypeError:
        return False


def count(value: float | None) -> str:
    """950, 12.3k, 4.5M, 1.2G."""
    if not finite(value):
        return DASH
    # Round to 3 significant figures first so 999_999 becomes "1M", not "1e+03k".
    value = float(f"{float(value):.3g}")
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def size(value: float | None) -> str:
    """Bytes: 512 B, 3.5 MiB."""
    if not finite(value):
        return DASH
    value = float(value)
    for threshold, suffix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g} {suffix}"
    return f"{value:.0f} B"


def duration(seconds: float | None) -> str:
    """12.5s, 2m 05s, 1h 02m."""
    if not finite(seconds):
        return DASH
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes}m {secs:02d}s"
    hours, rem = divmod(int(round(seconds)), 3600)
    return f"{hours}h {rem // 60:02d}m"
