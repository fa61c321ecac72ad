"""Entries for `bench report`: cells grouped into the things being compared, their labels, the
baseline a user names, and what the report says about cells it cannot score.

An entry is an (algorithm, variant, topology, replay, setting) key, with "*" for a field that is
not in `group_by`; a task is an env family with its own non-default parameters, if any (the env's
part of a cell's variant belongs to the task, not to the entry).

Cells that differ in anything but the seed are never pooled: the rest of each cell's resolved
config (`init_from`, `env_steps`, `learners`, `envs_per_learner`, `evaluations`, `eval_episodes`,
every parameter) is compared, and cells whose configs differ become separate entries whose
`setting` names the keys that differ ("init_from=3fa2…", "env_steps=200000"). Only the fields a
user leaves out of `group_by` are pooled on purpose. An entry's runs are its independent seeds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase.errors import UserError, close_match
from benchbase.report.load import Runs

GROUP_FIELDS: tuple[str, ...] = ("algorithm", "variant", "topology", "replay")

EntryKey = tuple[str, str, str, str, str]  # (algorithm, variant, topology, replay, setting); "*" = pooled

_PART_SEPARATOR = " "
#: Config keys that never set entries apart: the seed (what runs are), and the env (the task's).
_TASK_KEYS = ("seed", "env", "env_params")
#: Config keys pooled when a field is left out of `group_by` (the topology decides how many
#: learner processes run, and so how many simulators each has).
_POOLED_KEYS = {
    "algorithm": ("algorithm", "algorithm_params"),
    "variant": ("algorithm_params", "topology_params", "replay_params"),
    "topology": ("topology", "topology_params", "learner_processes", "envs_per_learner"),
    "replay": ("replay", "replay_params"),
}


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


def _entry_fields(cell: dict[str, Any], variant: str, group_by: Sequence[str]) -> tuple[str, str, str, str]:
    values = {
        "algorithm": str(cell["algorithm"]),
        "variant": variant,
        "topology": str(cell["topology"]),
        "replay": str(cell["replay"]),
    }
    return tuple(values[f] if f in group_by else "*" for f in GROUP_FIELDS)  # type: ignore[return-value]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameters as dotted keys ("algorithm_params.lr"); a start from checkpoints is one
    value, named by the cell it came from (its files' paths may differ between machines)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "init_from" and not prefix and isinstance(value, dict):
            flat[name] = {k: v for k, v in value.items() if k != "checkpoints"}
        elif isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _setting_of(cell: dict[str, Any], group_by: Sequence[str]) -> dict[str, str]:
    """The cell's config that must match for cells to pool: all but the seed, the task and what
    `group_by` leaves out; values as canonical JSON."""
    ignored = set(_TASK_KEYS)
    for field_name, keys in _POOLED_KEYS.items():
        if field_name not in group_by:
            ignored.update(keys)
    config = {key: value for key, value in (cell.get("config") or {}).items() if key not in ignored}
    return {key: json.dumps(value, sort_keys=True, default=str) for key, value in _flatten(config).items()}


_ABSENT = "null"


def _setting_text(setting: dict[str, str], differing: list[str]) -> str:
    """What sets a cell's config apart: "init_from=3fa2… · env_steps=200000"."""
    parts = []
    for key in differing:
        text = setting.get(key, _ABSENT)
        value = json.loads(text)
        if key == "init_from":
            parts.append(f"init_from={value.get('cell_id', '?')}" if isinstance(value, dict) else "from scratch")
        else:
            plain = value is None or isinstance(value, (bool, int, float, str))
            parts.append(f"{key}={'none' if value is None else value if plain else json.dumps(value)}")
    return " · ".join(parts)


def _settings(cells: list[dict[str, Any]], fields: dict[str, tuple], group_by: Sequence[str]) -> dict[str, str]:
    """Cell id -> its setting: "" where every cell with its fields has the same config but the
    seed, else the keys in which the configs of those cells differ, with the cell's values."""
    setting_of = {cell["cell_id"]: _setting_of(cell, group_by) for cell in cells}
    by_fields: dict[tuple, list[str]] = {}
    for cell in cells:
        by_fields.setdefault(fields[cell["cell_id"]], []).append(cell["cell_id"])
    canonical = {cid: json.dumps(setting, sort_keys=True) for cid, setting in setting_of.items()}
    text: dict[str, str] = {}
    for ids in by_fields.values():
        if len({canonical[cid] for cid in ids}) == 1:
            text.update({cid: "" for cid in ids})
            continue
        keys = sorted({key for cid in ids for key in setting_of[cid]})
        differing = [key for key in keys if len({setting_of[cid].get(key, _ABSENT) for cid in ids}) > 1]
        shown = {canonical[cid]: _setting_text(setting_of[cid], differing) for cid in ids}
        if len(set(shown.values())) < len(shown):  # e.g. one source cell's checkpoints, written twice
            shown = {setting: f"{line} (config {i + 1})" for i, (setting, line) in enumerate(sorted(shown.items()))}
        text.update({cid: shown[canonical[cid]] for cid in ids})
    return text


def _label(key: EntryKey, group_by: Sequence[str]) -> str:
    algorithm, variant, topology, replay, setting = key
    parts = [
        value
        for name, value in (("algorithm", algorithm), ("topology", topology), ("replay", replay))
        if name in group_by
    ]
    label = " · ".join(parts) if parts else "all"
    if "variant" in group_by and variant:
        label += f" ({variant})"
    return label + (f" · {setting}" if setting else "")


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
    seed_of: dict[str, Any]  # every cell id -> its seed

    def seeds(self, cell_ids: Sequence[str]) -> int:
        """Independent runs among cells: their distinct seeds."""
        return len({self.seed_of[cid] for cid in cell_ids})

    def runs(self, key: EntryKey) -> int:
        """An entry's runs: the fewest seeds it has on any task it has scores on (0: none)."""
        counts = [self.seeds(cids) for cids in self.members[key].values() if cids]
        return min(counts) if counts else 0


def group_entries(runs: Runs, completed_ids: list[str], value_of: dict[str, float], group_by: Sequence[str]) -> Entries:
    """Every cell's entry and task; the completed cells with a score (`value_of`) are members."""
    fields: dict[str, tuple[str, str, str, str]] = {}
    task_of: dict[str, str] = {}
    for cell in runs.cells:
        entry_variant, env_variant = _split_variant(cell)
        fields[cell["cell_id"]] = _entry_fields(cell, entry_variant, group_by)
        task_of[cell["cell_id"]] = cell["env"] + (f" ({env_variant})" if env_variant else "")
    settings = _settings(runs.cells, fields, group_by)
    key_of: dict[str, EntryKey] = {cid: (*fields[cid], settings[cid]) for cid in fields}  # type: ignore[misc]
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
    seed_of = {cell["cell_id"]: cell.get("seed") for cell in runs.cells}
    return Entries(keys, labels, key_of, task_of, members, env_of_task, excluded, seed_of)


def score_matrix(cell_ids_by_task: dict[str, list[str]], values: dict[str, float], tasks: Sequence[str]) -> np.ndarray:
    """[runs, tasks] with NaN padding where a task has fewer runs."""
    columns = [[values[cid] for cid in cell_ids_by_task.get(task, [])] for task in tasks]
    out = np.full((max([len(c) for c in columns] + [1]), len(tasks)), float("nan"))
    for j, column in enumerate(columns):
        out[: len(column), j] = column
    return out


# ============================================================================================
# What the report says about entries and cells


def coverage_problems(entries: Entries, tasks: list[str]) -> list[str]:
    """Per entry: tasks with fewer runs (seeds) than its others, and tasks it has no run on."""
    problems = []
    for key in entries.keys:
        label = entries.labels[key]
        counts = {task: entries.seeds(cids) for task, cids in entries.members[key].items()}
        if counts and len(set(counts.values())) > 1:
            most = max(counts.values())
            short = ", ".join(f"{task} {n} of {most}" for task, n in sorted(counts.items()) if n < most)
            problems.append(f"{label}: missing runs ({short}); its scores use the runs it has")
        absent = [task for task in tasks if task not in counts]
        if counts and absent:
            problems.append(f"{label}: no runs on {', '.join(absent)}; its scores pool its other families only")
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


#: What may stand between the parts of an entry's label when a user names it: the label's own "·",
#: "/" or a comma, "-", "." or "|" between spaces ("diff-a2c - ring": inside a name they stay), or plain
#: spaces. Labels are split the same way, so a looser split can only make a name ambiguous (an error), never
#: pick the wrong entry.
_TYPED_SEPARATOR = re.compile(r"\s*[·/,]\s*|\s+[-.|]\s+|\s+")


def _words(text: str) -> list[str]:
    """A label or a typed name as its words, lower case: "diff-a2c · ring (diff-a2c.lr=0.1)" →
    ["diff-a2c", "ring", "diff-a2c.lr=0.1"]; the "-" and "." inside names stay."""
    return [word for word in _TYPED_SEPARATOR.split(text.lower().replace("(", " ").replace(")", " ")) if word]


def resolve_baseline(baseline: str, labels: list[str]) -> str:
    """The entry label `baseline` names, however its parts are separated ("diff-a2c · ring · none",
    "diff-a2c - ring - none", "diff-a2c ring none"): the first rule that picks exactly one label wins, and
    one that picks several is an error naming them. The rules, from strict to loose: the label itself; the
    same words in the same order; labels having every typed word as a whole word ("isolated"); labels
    containing the typed words as one run of text ("a2c · ri"); labels with every typed word inside one of
    theirs ("gala ring")."""
    if baseline in labels:
        return baseline
    typed = _words(baseline)
    if not typed:
        raise UserError(f'baseline "{baseline}" names no entry: give an entry\'s label or a part of it')
    words = {label: _words(label) for label in labels}
    rules = (
        lambda label: words[label] == typed,
        lambda label: set(typed) <= set(words[label]),
        lambda label: " ".join(typed) in " ".join(words[label]),
        lambda label: all(any(part in word for word in words[label]) for part in typed),
    )
    for rule in rules:
        matches = [label for label in labels if rule(label)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = "; ".join(f'"{m}"' for m in matches[:5]) + ("; …" if len(matches) > 5 else "")
            raise UserError(f'baseline "{baseline}" matches {len(matches)} entries ({shown}): name one exactly')
    candidates = _baseline_candidates(labels)
    by_words = {" ".join(_words(candidate)): candidate for candidate in candidates}
    suggestion = close_match(" ".join(typed), by_words)
    hint = f'; did you mean "{by_words[suggestion]}"?' if suggestion else ""
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
