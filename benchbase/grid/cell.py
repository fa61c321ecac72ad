"""A cell: one fully resolved point of a grid. Its id is a hash of its resolved config, so the same
config always maps to the same id (this is what makes resume work).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchbase.api.contracts import params_of
from benchbase.api.params import to_dict
from benchbase.api.registry import Registry
from benchbase.errors import UserError

# -- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One fully resolved point of the grid."""

    algorithm: str
    algorithm_params: dict[str, Any]
    topology: str
    topology_params: dict[str, Any]
    env: str
    env_params: dict[str, Any]
    replay: str
    replay_params: dict[str, Any]
    seed: int
    learners: int  # as asked for: the number of tasks (and of learners, unless centralised)
    learner_processes: int  # learner processes actually run (1 for the centralised baseline)
    envs_per_learner: int  # simulators of each learner process
    env_steps: int  # budget: total env steps across the cell's learners
    evaluations: int  # periodic evaluations, the last at the end
    eval_episodes: int  # episodes per split and learner at each evaluation
    #: `bench run --init-from`: the checkpoints the learners start from (None: from scratch).
    init_from: dict[str, Any] | None = None
    #: `--straggler RANK:FACTOR`: learner RANK runs FACTOR times slower than it could (None: nobody).
    straggler: str | None = None

    def config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        for optional in ("init_from", "straggler"):
            if config[optional] is None:
                del config[optional]  # cells without them keep the ids they always had
        return config

    @property
    def cell_id(self) -> str:
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.algorithm} · {self.topology} · {self.env} · {self.replay} · seed {self.seed}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Cell:
        return cls(**config)


def parse_straggler(text: str) -> tuple[int, float]:
    """Parse RANK:FACTOR into (learner rank, slowdown factor ≥ 1), or a UserError saying the form."""
    rank_text, _, factor_text = str(text).partition(":")
    try:
        rank, factor = int(rank_text), float(factor_text)
    except ValueError:
        rank, factor = -1, 0.0
    if rank < 0 or not 1.0 <= factor <= 1000.0:
        raise UserError(
            f"straggler: {text!r} is not RANK:FACTOR (a learner rank ≥ 0 and a slowdown from 1 to 1000, e.g. 0:3)"
        )
    return rank, factor


def straggler_factor(cell: Cell, rank: int) -> float:
    """How many times slower than it could the learner of `rank` runs in `cell` (1: not slowed)."""
    if cell.straggler is None:
        return 1.0
    slow_rank, factor = parse_straggler(cell.straggler)
    return factor if rank == slow_rank else 1.0


def replay_parts(label: str, replay_params: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(strategy, its parameters)] of a cell's replay (one entry unless a mix)."""
    if "+" in label:
        return [(name, dict(replay_params[name])) for name in label.split("+")]
    return [(label, dict(replay_params))]


def variant(cell: Cell, registry: Registry) -> str:
    """The cell's parameters that differ from their plugins' defaults ("diff-a2c.lr=0.002 random.p=0.3"),
    so that two entries of one plugin with different parameters stay apart in summaries."""
    parts = []
    for kind, name, values in (
        ("algorithm", cell.algorithm, cell.algorithm_params),
        ("topology", cell.topology, cell.topology_params),
        ("env", cell.env, cell.env_params),
        *(("replay", strategy, values) for strategy, values in replay_parts(cell.replay, cell.replay_params)),
    ):
        defaults = to_dict(params_of(registry.get(kind, name)))
        parts += [f"{name}.{key}={value}" for key, value in values.items() if defaults.get(key) != value]
    return " ".join(parts)


def grid_fingerprint(cells: Sequence[Cell]) -> list[str]:
    return sorted(cell.cell_id for cell in cells)
