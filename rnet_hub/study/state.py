"""The study's state in its folder, so that a study can be stopped and continued (``--resume``).

Layout of ``DIR``::

    study.json                 the settings, the grid and the exact command (checked on --resume)
    cells/<cell key>/cell.json the cell's state: running, done (with its metrics) or failed (with the error)
    cells/<cell key>/finetune/ the fine-tuning run's output folder (rnet-hub finetune's DIR)

Only the study's own process writes ``study.json`` and ``cell.json`` (each atomically: a temporary file
renamed into place). A finished cell is never run again; a cell found ``running`` was interrupted and
continues with fine-tuning's resume; a failed cell is tried again. Torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BadInputError, OutputExistsError
from ..files import write_text_atomic
from .grid import Cell

__all__ = ["CELLS_DIR", "CELL_FILE", "FINETUNE_DIR", "MUST_MATCH", "STUDY_FILE", "StudyState", "write_json"]

STUDY_FILE = "study.json"
CELLS_DIR = "cells"
CELL_FILE = "cell.json"
FINETUNE_DIR = "finetune"
#: Settings that make a cell's result what it is: a study continued with ``--resume`` must keep them.
MUST_MATCH = ("data", "data_summary", "task", "epochs", "seed", "finetune_options")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a temporary file beside it, renamed into place)."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


class StudyState:
    """The state of the study in ``root``: its settings and each cell's status and result."""

    def __init__(self, root: Path, settings: Mapping[str, Any]) -> None:
        """Use :meth:`open`."""
        self.root = root
        self.settings = dict(settings)

    @classmethod
    def open(cls, root: str | os.PathLike[str], settings: Mapping[str, Any], *, resume: bool) -> StudyState:
        """Start a study in ``root``, or (``resume``) continue the one there.

        Without ``resume`` the folder must not exist or be empty. With it, a folder that holds a study must
        hold one with the same :data:`MUST_MATCH` settings (the grid may grow or shrink: cells are matched by
        their key); a missing or empty folder starts a new study.
        """
        root = Path(root).absolute()  # worker processes and Ray tasks may run elsewhere
        if root.exists() and not root.is_dir():
            raise BadInputError(f"--out {root} is a file; choose a folder")
        study_file = root / STUDY_FILE
        has_entries = root.is_dir() and any(root.iterdir())
        if has_entries and not resume:
            raise OutputExistsError(f"{root} exists and is not empty; add --resume to continue the study in it, "
                                    f"or choose another --out")
        if has_entries and not study_file.is_file():
            raise BadInputError(f"{root} is not a study folder (it has no {STUDY_FILE}); choose another --out")
        if study_file.is_file():
            earlier = _read_json(study_file)
            changed = [k for k in MUST_MATCH if json.loads(json.dumps(settings.get(k), default=str))
                       != earlier.get("settings", {}).get(k)]
            if changed:
                raise BadInputError(f"{root} holds a study with other {', '.join(changed)}; continue it with the "
                                    f"same data and options, or choose another --out")
        state = cls(root, settings)
        (root / CELLS_DIR).mkdir(parents=True, exist_ok=True)
        return state

    def save(self, extra: Mapping[str, Any]) -> None:
        """Write ``study.json``: the settings plus ``extra`` (the grid, the command)."""
        write_json(self.root / STUDY_FILE, {"settings": self.settings, **extra})

    def cell_dir(self, cell: Cell) -> Path:
        """The cell's folder."""
        return self.root / CELLS_DIR / cell.key

    def finetune_dir(self, cell: Cell) -> Path:
        """The cell's fine-tuning output folder."""
        return self.cell_dir(cell) / FINETUNE_DIR

    def read(self, cell: Cell) -> dict[str, Any]:
        """The cell's record (``{"status": "new"}`` when it never started)."""
        path = self.cell_dir(cell) / CELL_FILE
        try:
            return _read_json(path)
        except FileNotFoundError:
            return {"status": "new"}
        except (OSError, ValueError):
            return {"status": "running"}  # a record cut short: treat the cell as interrupted

    def status(self, cell: Cell) -> str:
        """``new``, ``running`` (started, not finished: interrupted, unless it runs now), ``done`` or ``failed``."""
        return str(self.read(cell).get("status", "running"))

    def mark_running(self, cell: Cell, *, attempt: int, resume: bool) -> None:
        """Record that the cell started (its ``attempt``-th try; ``resume``: continuing an interrupted one)."""
        record = self.read(cell)
        record.update(status="running", cell=cell.as_dict(), attempt=attempt, resumed=resume)
        record.pop("error", None)
        write_json(self.cell_dir(cell) / CELL_FILE, record)

    def mark_done(self, cell: Cell, outcome: Mapping[str, Any], *, attempt: int) -> None:
        """Record the finished cell with its ``outcome`` (metrics, wall time, energy)."""
        record = {"status": "done", "cell": cell.as_dict(), "attempt": attempt, **outcome}
        write_json(self.cell_dir(cell) / CELL_FILE, record)

    def mark_failed(self, cell: Cell, error: str, *, attempt: int) -> None:
        """Record that the cell failed on every try; ``error`` is the last traceback."""
        record = {"status": "failed", "cell": cell.as_dict(), "attempt": attempt, "error": error}
        write_json(self.cell_dir(cell) / CELL_FILE, record)
