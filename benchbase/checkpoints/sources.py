"""Which checkpoints a path names, for `bench eval` and `bench run --init-from`.

A path may be a checkpoint file (`…/step-000000012800.pt`), one learner's folder
(`…/checkpoints/<cell>/learner-0`), a cell's folder (`…/checkpoints/<cell>`) or a run folder
(`results/grid-…`, every cell with checkpoints). Each learner contributes its newest checkpoint
that verifies; for a completed cell that is the final one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbase.checkpoints import checkpoint
from benchbase.errors import UserError

_LEARNER = re.compile(r"learner-(\d+)$")


@dataclass(frozen=True)
class CellCheckpoints:
    """One cell's newest good checkpoint of each learner (ordered by learner)."""

    cell_id: str
    cell_config: dict[str, Any]
    paths: tuple[Path, ...]
    infos: tuple[dict[str, Any], ...]  # each checkpoint's verified sidecar
    skipped: tuple[str, ...] = ()  # why newer files were passed over
    #: Learners with no usable checkpoint at all, each with why ("learner-2: … is truncated").
    unusable: tuple[str, ...] = ()

    @property
    def env_steps(self) -> tuple[int, ...]:
        """Each learner's own env steps at its checkpoint."""
        return tuple(int(info["env_steps"]) for info in self.infos)


def _newest(folder: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint in `folder` that verifies, its sidecar, and why newer ones did not."""
    skipped: list[str] = []
    for path in sorted(folder.glob("step-*.pt"), reverse=True):
        try:
            return path, checkpoint.verify(path), skipped
        except checkpoint.CheckpointError as error:
            skipped.append(str(error))
    return None, None, skipped


def _learner_folders(cell_folder: Path) -> list[Path]:
    found = [
        (int(m.group(1)), child)
        for child in cell_folder.iterdir()
        if (m := _LEARNER.match(child.name)) and child.is_dir()
    ]
    return [folder for _, folder in sorted(found)]


def _cell(cell_folder: Path) -> CellCheckpoints | None:
    """The cell's learners that have a usable checkpoint (None when none has), naming the others."""
    paths, infos, skipped, unusable = [], [], [], []
    for folder in _learner_folders(cell_folder):
        path, info, notes = _newest(folder)
        if path is None:
            unusable.append(f"{folder.name}: {notes[0] if notes else 'no checkpoint'}")
            continue
        skipped += [f"{folder.name}: {note}" for note in notes]
        paths.append(path)
        infos.append(info)
    if not paths:
        return None
    return CellCheckpoints(
        cell_folder.name, infos[0]["cell_config"], tuple(paths), tuple(infos), tuple(skipped), tuple(unusable)
    )


def _why_none(cell_folder: Path) -> str:
    """Why no learner of a cell has a usable checkpoint, from its first learner's folder."""
    folders = _learner_folders(cell_folder)
    if not folders:
        return "no learner folders"
    _, _, notes = _newest(folders[0])
    return f"{folders[0].name}: {notes[0] if notes else 'no checkpoint'}"


def resolve(text: str) -> list[CellCheckpoints]:
    """The cells `text` names, with their checkpoints; a UserError when it names none."""
    path = Path(text)
    if not path.exists():
        raise UserError(f"{text}: no such file or folder")
    if path.is_file():
        if path.suffix != ".pt":
            raise UserError(f"{text} is not a checkpoint (a step-….pt file written by bench run)")
        try:
            info = checkpoint.verify(path)
        except checkpoint.CheckpointError as error:
            raise UserError(f"{text}: {error}") from None
        return [CellCheckpoints(path.parent.parent.name, info["cell_config"], (path,), (info,))]
    if _LEARNER.match(path.name):
        found, info, notes = _newest(path)
        if found is None:
            raise UserError(f"{text} holds no usable checkpoint{': ' + notes[0] if notes else ''}")
        return [CellCheckpoints(path.parent.name, info["cell_config"], (found,), (info,), tuple(notes))]
    if _learner_folders(path):
        cell = _cell(path)
        if cell is None:
            raise UserError(f"{text}: no learner of this cell has a usable checkpoint ({_why_none(path)})")
        return [cell]
    folder = path / "checkpoints"
    if folder.is_dir():
        children = [child for child in sorted(folder.iterdir()) if child.is_dir()]
        cells = [cell for child in children if (cell := _cell(child)) is not None]
        if cells:
            return cells
        if children:
            raise UserError(f"{text}: no cell of this run has a usable checkpoint ({_why_none(children[0])})")
        raise UserError(f"{text}: no cell of this run has a checkpoint yet (cells write one when they finish)")
    raise UserError(
        f"{text} is not a checkpoint, a learner's or cell's checkpoint folder, or a run folder with checkpoints/"
    )


def init_source(text: str) -> dict[str, Any]:
    """`bench run --init-from TEXT`: what goes into each cell's config (`Cell.init_from`)."""
    cells = resolve(text)
    if len(cells) > 1:
        examples = ", ".join(str(Path(text) / "checkpoints" / cell.cell_id) for cell in cells[:2])
        raise UserError(f"--init-from {text} holds {len(cells)} cells: name one, e.g. {examples}")
    cell = cells[0]
    if cell.unusable:  # learner r starts from source learner r mod N: every source learner is needed
        raise UserError(f"--init-from {text}: cell {cell.cell_id} has no usable checkpoint for {cell.unusable[0]}")
    for path in cell.paths:  # verified by digest only so far: a forged file can match its sidecar
        try:
            checkpoint.load_run_checkpoint(path)
        except checkpoint.CheckpointError as error:
            raise UserError(f"--init-from {text}: {error}") from None
    return {
        "checkpoints": [str(path.resolve()) for path in cell.paths],
        "sha256": [info["sha256"] for info in cell.infos],
        "cell_id": cell.cell_id,
        "algorithm": cell.cell_config.get("algorithm"),
        "env": cell.cell_config.get("env"),
        "env_steps": sum(cell.env_steps),
    }
