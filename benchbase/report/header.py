"""The report's header: how each run folder it reads was made, from the folder's ``grid.json``.

`bench run` writes there the benchbase (and torch, Python) version, when it was written, the
command, the grid spec (budget, learners × simulators, seeds, the axes) and the machine (host, CPU
model and count, GPUs). Folders written before the command and the machine were kept lack those
two: the header says "not recorded" rather than guess. A missing or unreadable grid.json is not a
reason to refuse a report: its header says why it is empty, and the scores are read as ever.

The `*_text` functions give each part as one plain line; `benchbase.report.html` lays them out as
a table per folder, `benchbase.report.text` as one line per folder in report.md.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchbase.report.model import RunHeader

__all__ = [
    "NOT_RECORDED",
    "budget_text",
    "grid_text",
    "machine_text",
    "read_run_header",
    "read_run_headers",
    "seeds_text",
    "versions_text",
    "written_text",
]

NOT_RECORDED = "not recorded"

_AXES = ("algorithms", "topologies", "envs", "replay")


def read_run_headers(folders: Sequence[str | Path]) -> list[RunHeader]:
    """One header per run folder, in order."""
    return [read_run_header(folder) for folder in folders]


def read_run_header(folder: str | Path) -> RunHeader:
    """What ``<folder>/grid.json`` records; fields it lacks (or holds in an unexpected form) stay None."""
    path = Path(folder) / "grid.json"
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return RunHeader(str(folder), note="no grid.json in the folder")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return RunHeader(str(folder), note=f"grid.json cannot be read ({type(error).__name__})")
    if not isinstance(grid, dict):
        return RunHeader(str(folder), note="grid.json is not a JSON object")
    spec, versions, machine = (_mapping(grid.get(key)) for key in ("spec", "versions", "machine"))
    seeds = spec.get("seeds")
    gpus = machine.get("gpus") if machine else None
    return RunHeader(
        folder=str(folder),
        benchbase_version=_text(versions.get("benchbase")),
        python_version=_text(versions.get("python")),
        torch_version=_text(versions.get("torch")),
        written_at=_text(grid.get("written_at")),
        command=_text(grid.get("command")),
        env_steps=_whole(spec.get("env_steps")),
        learners=_whole(spec.get("learners")),
        envs_per_learner=_whole(spec.get("envs_per_learner")),
        evaluations=_whole(spec.get("evaluations")),
        eval_episodes=_whole(spec.get("eval_episodes")),
        seeds=tuple(seeds) if isinstance(seeds, list) and all(_whole(s) is not None for s in seeds) else None,
        grid=tuple(
            (axis, tuple(str(name) for name in spec[axis])) for axis in _AXES if isinstance(spec.get(axis), list)
        ),
        host=_text(machine.get("host")),
        cpus=_whole(machine.get("cpus")),
        cpu_model=_text(machine.get("cpu_model")),
        # A recorded machine without "gpus" had none that torch saw; an unrecorded machine, unknown.
        gpus=tuple(str(g) for g in gpus) if isinstance(gpus, list) else (() if machine else None),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- one line per part


def versions_text(header: RunHeader) -> str:
    """``benchbase 0.1.0 (torch 2.3.0, Python 3.11.7)``."""
    if header.benchbase_version is None:
        return NOT_RECORDED
    others = [f"{name} {version}" for name, version in (("torch", header.torch_version),
                                                        ("Python", header.python_version)) if version]  # fmt: skip
    return f"benchbase {header.benchbase_version}" + (f" ({', '.join(others)})" if others else "")


def written_text(header: RunHeader) -> str:
    """``2026-12-02 10:14 UTC`` (the raw text when it is not ISO 8601)."""
    if header.written_at is None:
        return NOT_RECORDED
    try:
        moment = datetime.datetime.fromisoformat(header.written_at)
    except ValueError:
        return header.written_at
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    zone = "UTC" if offset == datetime.timedelta(0) else moment.strftime("UTC%z")
    return f"{moment.strftime('%Y-%m-%d %H:%M')} {zone}"


def budget_text(header: RunHeader) -> str:
    """``6,000 env steps per cell · 2 learners × 2 simulators · 3 evaluations of 3 episodes``."""
    if header.env_steps is None and header.learners is None:
        return NOT_RECORDED
    parts = []
    if header.env_steps is not None:
        parts.append(f"{header.env_steps:,} env steps per cell")
    if header.learners is not None:
        learners = f"{header.learners} learner{'' if header.learners == 1 else 's'}"
        if header.envs_per_learner is not None:
            simulators = header.envs_per_learner
            learners += f" × {simulators} simulator{'' if simulators == 1 else 's'}"
        parts.append(learners)
    if header.evaluations is not None:
        episodes = f" of {header.eval_episodes} episode{'' if header.eval_episodes == 1 else 's'}"
        parts.append(
            f"{header.evaluations} evaluation{'' if header.evaluations == 1 else 's'}"
            + (episodes if header.eval_episodes is not None and header.evaluations else "")
        )
    return " · ".join(parts)


def seeds_text(header: RunHeader) -> str:
    """``5: 0–4`` (the count, then the seeds with runs of consecutive ones as ranges)."""
    if header.seeds is None:
        return NOT_RECORDED
    seeds = sorted(set(header.seeds))
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    listed = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}, {r[1]}" if len(r) == 2 else f"{r[0]}–{r[-1]}"
                       for r in runs)  # fmt: skip
    return f"{len(seeds)}: {listed}" if seeds else "0"


def machine_text(header: RunHeader) -> str:
    """``vm: 2 CPUs (Intel(R) Xeon(R) Processor), GPUs: 2 × NVIDIA H200``."""
    if header.host is None and header.cpus is None and header.cpu_model is None:
        return NOT_RECORDED
    cpus = f"{header.cpus} CPU{'' if header.cpus == 1 else 's'}" if header.cpus is not None else "CPUs"
    text = f"{header.host or 'unknown host'}: {cpus}"
    if header.cpu_model:
        text += f" ({header.cpu_model})"
    if header.gpus is None:
        text += f", GPUs: {NOT_RECORDED}"
    elif not header.gpus:
        text += ", no GPU"
    else:
        text += ", GPUs: " + ", ".join(
            name if number == 1 else f"{number} × {name}" for name, number in Counter(header.gpus).items()
        )
    return text


def grid_text(header: RunHeader) -> str:
    """``algorithms diff-a2c, diff-ppo; topologies ring, isolated; envs random-cartpole; replay none``."""
    if not header.grid:
        return NOT_RECORDED
    return "; ".join(f"{axis} {', '.join(names)}" for axis, names in header.grid)
