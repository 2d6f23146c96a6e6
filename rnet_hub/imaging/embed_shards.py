"""The Ray engine's output: ``STEM.parquet/``, a folder of Parquet shards that only ever holds whole files.

Rows reach the driver in batches, in any order, and the rows of one input file (every frame and
window) may come in several batches. :class:`ShardWriter` keeps a file's rows until all of them
have arrived (each row says how many its file has), then moves the file to the next shard. A
shard is written under a temporary name and renamed (``part-000001.parquet``), so a shard
on disk is complete and every file is in exactly one shard, all of its rows.

``--resume`` reads the ``path`` column of the shards: those files are done, every other one is
embedded again (a killed driver loses at most the rows not yet in a shard, and never leaves a
duplicate). ``STEM.json`` records the model, weights hash, stage and transform, checked on resume.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, OutputExistsError
from .embed_output import check_resumable
from .embed_schema import INDEX_COLUMNS, MODEL_COLUMNS, arrow_table

__all__ = ["ShardWriter"]

_SHARD = re.compile(r"^part-(\d+)\.parquet$")


class ShardWriter:
    """Collects the rows of whole files and writes them as atomic Parquet shards in ``folder``."""

    def __init__(self, folder: Path, meta_path: Path, meta: dict[str, Any], *, resume: bool,
                 rows_per_shard: int) -> None:
        import pyarrow.parquet as pq

        self.folder, self.meta_path, self.meta, self.rows_per_shard = folder, meta_path, meta, rows_per_shard
        self.model = {k: str(meta[k] if k != "model_id" else meta["model"]) for k in MODEL_COLUMNS}
        self.done: set[str] = set()
        self.shards: list[Path] = []
        self._pending: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = defaultdict(list)
        self._ready: list[tuple[dict[str, Any], np.ndarray]] = []
        self.rows_written = 0
        if folder.exists() and not folder.is_dir():
            raise OutputExistsError(f"{folder} exists and is not a folder of shards; choose another --out")
        if folder.exists() and not resume:
            raise OutputExistsError(f"{folder} exists; pass --resume to add the missing files to it, "
                                    "or choose another --out")
        if folder.exists():
            check_resumable(meta_path, folder, meta)
            for leftover in folder.glob(".part-*.partial"):  # a shard cut short by a killed driver
                leftover.unlink()
            for shard in sorted(p for p in folder.iterdir() if _SHARD.match(p.name)):
                try:
                    self.done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
                except Exception as exc:  # written atomically: only someone else's file gets here
                    raise BadInputError(f"{shard} is not a readable shard ({exc}); remove it and --resume") \
                        from exc
                self.shards.append(shard)
        self._next = 1 + max((int(_SHARD.match(p.name).group(1)) for p in self.shards), default=0)  # type: ignore[union-attr]

    def _start(self) -> None:
        """Create the folder and ``STEM.json`` (replacing one a run killed before its first shard left)
        with the first shard of a new output."""
        if not self.folder.exists():
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            self.meta_path.write_text(json.dumps(self.meta, indent=2) + "\n")
            self.folder.mkdir()

    def add(self, batch: dict[str, np.ndarray]) -> tuple[list[str], list[tuple[str, str]]]:
        """Take one batch of rows (the :data:`INDEX_COLUMNS`, ``file_rows``, ``error``, ``embedding``);
        return (files now complete, (path, reason) of files that could not be read)."""
        complete, failed = [], []
        for i, path in enumerate(batch["path"]):
            path = str(path)
            if batch["error"][i]:
                failed.append((path, str(batch["error"][i])))
                continue
            rows = self._pending[path]
            rows.append(({c: batch[c][i] for c in INDEX_COLUMNS}, batch["embedding"][i]))
            if len(rows) == int(batch["file_rows"][i]):
                self._ready += sorted(self._pending.pop(path), key=lambda r: (int(r[0]["frame"]),
                                                                              int(r[0]["window_index"])))
                complete.append(path)
                if len(self._ready) >= self.rows_per_shard:
                    self.write()
        return complete, failed

    def write(self) -> Path | None:
        """Write the complete files collected so far as the next shard (nothing when there are none)."""
        import pyarrow.parquet as pq

        if not self._ready:
            return None
        self._start()
        rows = sorted(self._ready, key=lambda r: str(r[0]["path"]))  # stable: frames stay in order
        columns = {c: [row[c] for row, _ in rows] for c in INDEX_COLUMNS}
        table = arrow_table(columns, np.stack([vector for _, vector in rows]), self.model)
        name = f"part-{self._next:06d}.parquet"
        partial = self.folder / f".{name}.partial"
        pq.write_table(table, partial)
        target = partial.rename(self.folder / name)
        self._next += 1
        self._ready = []
        self.shards.append(target)
        self.rows_written += len(rows)
        self.done.update(columns["path"])
        return target

    def finish(self) -> None:
        """Write what is left; a file some of whose rows never came is a bug in the pipeline."""
        if self._pending:
            missing = next(iter(self._pending))
            raise RuntimeError(f"rows of {missing} (and {len(self._pending) - 1} other files) never arrived")
        self.write()
