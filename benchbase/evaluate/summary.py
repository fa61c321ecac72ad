"""`bench eval`'s summary: per (cell, env family, split), over learners, and its console table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def summarise(table: pa.Table) -> list[dict[str, Any]]:
    """One entry per (cell, env, split), over its learners: episodes, return mean ± std, success."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in table.select(["cell_id", "learner", "env", "split", "episode_return", "success"]).to_pylist():
        group = groups.setdefault(
            (row["cell_id"], row["env"], row["split"]),
            {
                "cell_id": row["cell_id"],
                "env": row["env"],
                "split": row["split"],
                "learners": [],
                "returns": [],
                "successes": [],
            },
        )
        if row["learner"] not in group["learners"]:
            group["learners"].append(row["learner"])
        group["returns"].append(row["episode_return"])
        if row["success"] is not None:
            group["successes"].append(row["success"])
    summary = []
    for group in groups.values():
        returns = np.array(group.pop("returns"))
        successes = group.pop("successes")
        summary.append(
            group
            | {
                "episodes": len(returns),
                "mean_return": float(returns.mean()),
                "std_return": float(returns.std()),
                "success_rate": float(np.mean(successes)) if successes else None,
            }
        )
    return summary


def summary_table(summary: list[dict[str, Any]], mode: str) -> Any:
    """The console summary: a rich table."""
    from rich.table import Table

    from benchbase.formatting import DASH
    from benchbase.report.text import number

    table = Table(title=f"bench eval ({mode})")
    for column, justify in (
        ("cell", "left"),
        ("learners", "left"),
        ("env family", "left"),
        ("split", "left"),
        ("episodes", "right"),
        ("return (mean ± std)", "right"),
        ("success", "right"),
    ):
        table.add_column(column, justify=justify)
    for entry in summary:
        success = DASH if entry["success_rate"] is None else f"{entry['success_rate'] * 100:.0f}%"
        table.add_row(
            entry["cell_id"],
            _ranks(entry["learners"]),
            entry["env"],
            entry["split"],
            str(entry["episodes"]),
            f"{number(entry['mean_return'])} ± {number(entry['std_return'])}",
            success,
        )
    return table


def _ranks(ranks: list[int]) -> str:
    """0–3 for a contiguous range, else 0, 2, 5."""
    ranks = sorted(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}–{ranks[-1]}"
    return ", ".join(str(rank) for rank in ranks)
