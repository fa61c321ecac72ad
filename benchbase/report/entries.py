"""Entries for `bench report`: cells grouped into the things being compared, their labels, the
baseline a user names, and what the report says about cells it cannot score.

An entry is an (algorithm, variant, topology, replay) key, with "*" for a field that is not in
`group_by`; a task is an env family with its own non-default parameters, if any (the env's part
of a cell's variant belongs to the task, not to the entry).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.errors import UserError, close_match
from benchbase.report.load import Runs

GROUP_FIELDS: tuple[str, ...] = ("algorithm", "variant", "topology", "replay")

EntryKey = tuple[str, str, str, str]  # (algorithm, variant, topology, replay); "*" = pooled

_PART_SEPARATOR = " "


def _split_variant(cell: dict[str, Any]) -> tuple[str, str]:
    """(entry variant, env variant): the env's own non-default parameters belong to the task."""
    text = cell.get("variant") or ""
    if not text:
        return "", ""
    names = [str(cell.get(k)) for k in ("algorithm", "topology", "env", "replay") if cell.get(k)]
    pattern = r" (?=(?:" + "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)) + r")\.)"
    parts = re.split(pattern, text)
    env_prefix = f"{cell.get('env')}."
    entry = [p for p in parts if not p.startswith(env_prefix)]
    env = [p[len(env_prefix) :] for p in parts if p.startswith(env_prefix)]
    return _PART_SEPARATOR.join(entry), ",".join(env)


def _entry_key(cell: dict[str, Any], variant: str, group_by: Sequence[str]) -> EntryKey:
    values = {
        "algorithm": str(cell["algorithm"]),
        "variant": variant,
        "topology": str(cell["topology"]),
        "replay": str(cell["replay"]),
    }
    return tuple(values[f] if f in group_by else "*" for f in GROUP_FIELDS)  # type: ignore[return-value]


def _label(key: EntryKey, group_by: Sequence[str]) -> str:
    algorithm, variant, topology, replay = key
    parts = [
        value
        for name, value in (("algorithm", algorithm), ("topology", topology), ("replay", replay))
        if name in group_by
    ]
    label = " · ".join(parts) if parts else "all"
    if "variant" in group_by and variant:
        label += f" ({variant})"
    return label


@dataclass
class Entries:
    """Cells grouped into entries and tasks (an env family, with its own non-default parameters
    when it has some)."""

    keys: list[EntryKey]  # sorted
    labels: dict[EntryKey, str]
    key_of: dict[str, EntryKey]  # every cell id (any status) -> its entry
    task_of: dict[str, str]  # every cell id -> its task
    members: dict[EntryKey, dict[str, list[str]]]  # entry -> task -> scored cell ids
    env_of_task: dict[str, str]
    excluded: dict[EntryKey, int]  # entry -> its cells that are not completed


def group_entries(runs: Runs, completed_ids: list[str], value_of: dict[str, float], group_by: Sequence[str]) -> Entries:
    """Every cell's entry and task; the completed cells with a score (`value_of`) are members."""
    key_of: dict[str, EntryKey] = {}
    task_of: dict[str, str] = {}
    for cell in runs.cells:
        entry_variant, env_variant = _split_variant(cell)
        key_of[cell["cell_id"]] = _entry_key(cell, entry_variant, group_by)
        task_of[cell["cell_id"]] = cell["env"] + (f" ({env_variant})" if env_variant else "")
    keys = sorted(set(key_of.values()))
    members: dict[EntryKey, dict[str, list[str]]] = {key: {} for key in keys}
    for cid in completed_ids:
        if not math.isnan(value_of[cid]):
            members[key_of[cid]].setdefault(task_of[cid], []).append(cid)
    env_of_task = {task_of[cell["cell_id"]]: cell["env"] for cell in runs.cells}
    excluded: dict[EntryKey, int] = {}
    for cell in runs.cells:
        if cell["status"] != "completed":
            key = key_of[cell["cell_id"]]
            excluded[key] = excluded.get(key, 0) + 1
    labels = {key: _label(key, group_by) for key in keys}
    return Entries(keys, labels, key_of, task_of, members, env_of_task, excluded)


def score_matrix(cell_ids_by_task: dict[str, list[str]], values: dict[str, float], tasks: Sequence[str]) -> np.ndarray:
    """[runs, tasks] with NaN padding where a task has fewer runs."""
    columns = [[values[cid] for cid in cell_ids_by_task.get(task, [])] for task in tasks]
    out = np.full((max([len(c) for c in columns] + [1]), len(tasks)), float("nan"))
    for j, column in enumerate(columns):
        out[: len(column), j] = column
    return out


# ============================================================================================
# What the report says about entries and cells


def coverage_problems(entries: Entries, tasks: list[str], completed: list[dict[str, Any]]) -> list[str]:
    """Per entry: tasks with fewer runs than its others, tasks it has no run on, mixed budgets."""
    problems = []
    for key in entries.keys:
        label = entries.labels[key]
        counts = {task: len(cids) for task, cids in entries.members[key].items()}
        if counts and len(set(counts.values())) > 1:
            most = max(counts.values())
            short = ", ".join(f"{task} {n} of {most}" for task, n in sorted(counts.items()) if n < most)
            problems.append(f"{label}: missing runs ({short}); its scores use the runs it has")
        absent = [task for task in tasks if task not in counts]
        if counts and absent:
            problems.append(f"{label}: no runs on {', '.join(absent)}; its scores pool its other families only")
        own = [c for c in completed if entries.key_of[c["cell_id"]] == key]
        budgets = {c["budget"] for c in own if c.get("budget") is not None}
        if len(budgets) > 1:
            shown = ", ".join(f"{b:,}" for b in sorted(budgets))
            problems.append(f"{label}: pools cells with different env-step budgets ({shown})")
    return problems


def _first_line(error: str | None) -> str:
    if not error:
        return "no error recorded"
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):
        return lines[-1]  # a traceback's first line says nothing; its last names the exception
    return lines[0] if lines else "no error recorded"


def cell_name(cell: dict[str, Any]) -> str:
    return (
        f"{cell['cell_id']} ({cell['algorithm']} · {cell['topology']} · {cell['env']} · {cell['replay']} · "
        f"seed {cell['seed']})"
    )


def excluded_line(cell: dict[str, Any]) -> str:
    """Why a cell that is not completed is left out of the scores."""
    status = cell["status"]
    if status == "failed":
        return f"excluded {cell_name(cell)}: failed — {_first_line(cell.get('error'))}"
    if status == "running":
        return f"excluded {cell_name(cell)}: running (still running, or its run was killed: re-run the grid)"
    return f"excluded {cell_name(cell)}: {status} (re-run the grid to finish it)"


# ============================================================================================
# The baseline


def resolve_baseline(baseline: str, labels: list[str]) -> str:
    """The entry label `baseline` names: exactly, or as the only label containing it."""
    if baseline in labels:
        return baseline
    lowered = baseline.lower()
    matches = [label for label in labels if lowered in label.lower()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = "; ".join(f'"{m}"' for m in matches[:5]) + ("; …" if len(matches) > 5 else "")
        raise UserError(f'baseline "{baseline}" matches {len(matches)} entries ({shown}): name one exactly')
    suggestion = close_match(baseline, _baseline_candidates(labels))
    hint = f'; did you mean "{suggestion}"?' if suggestion else ""
    shown = ", ".join(f'"{label}"' for label in labels[:8]) + (", …" if len(labels) > 8 else "")
    raise UserError(f'unknown baseline entry "{baseline}"{hint} (entries: {shown})')


def _baseline_candidates(labels: list[str]) -> list[str]:
    """What to suggest for a mistyped baseline: an entry, or a part of one ("ring" for "rnig")
    that names exactly one entry."""
    parts: dict[str, set[str]] = {}
    for label in labels:
        for part in re.split(r" · | \(|\)", label):
            if part.strip():
                parts.setdefault(part.strip(), set()).add(label)
    return labels + [part for part, owners in parts.items() if len(owners) == 1 and part not in labels]
