"""The files ``rnet-hub embed`` writes, and how they are appended and resumed.

For ``--out STEM``: ``STEM.npy`` (float32 rows), ``STEM.csv`` (one row per image: the
:data:`COLUMNS`), ``STEM.json`` (model, weights, stage, transform, size; checked on resume),
``STEM.parquet`` (both together, with the model columns: :mod:`.embed_schema`, with pyarrow)
and ``STEM.errors.csv`` (skipped files).
The ``.npy`` header, rewritten after each append, is the commit point: an interrupted run
leaves consistent files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, OutputExistsError
from .embed_schema import INDEX_COLUMNS, MODEL_COLUMNS, arrow_table

__all__ = ["COLUMNS", "RESUME_KEYS", "OutputPaths", "Writer", "write_errors", "write_parquet"]

COLUMNS = INDEX_COLUMNS
#: What ``--resume`` checks in ``STEM.json``: a run with other values would mix two kinds of vectors.
RESUME_KEYS = ("model", "weights_sha256", "stage", "faithful")


def _npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 ``.npy`` header; numpy pads it so its length does not depend on ``rows``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buffer.getvalue()


@dataclass(frozen=True)
class OutputPaths:
    """The files written for ``--out STEM``."""

    stem: Path

    @classmethod
    def for_out(cls, out: str | os.PathLike[str]) -> OutputPaths:
        """The paths for ``--out`` (a ``.npy``/``.csv``/``.parquet`` suffix is dropped)."""
        path = Path(out).absolute()
        return cls(path.with_suffix("") if path.suffix in (".npy", ".csv", ".parquet") else path)

    def with_ext(self, ext: str) -> Path:
        """``STEM`` + ``ext``."""
        return self.stem.parent / (self.stem.name + ext)

    @property
    def npy(self) -> Path:
        """``STEM.npy``: the float32 rows."""
        return self.with_ext(".npy")

    @property
    def csv(self) -> Path:
        """``STEM.csv``: the index."""
        return self.with_ext(".csv")

    @property
    def meta(self) -> Path:
        """``STEM.json``: the run's settings."""
        return self.with_ext(".json")

    @property
    def parquet(self) -> Path:
        """``STEM.parquet``: a file (local engine) or a folder of shards (Ray engine)."""
        return self.with_ext(".parquet")

    @property
    def errors(self) -> Path:
        """``STEM.errors.csv``: the files skipped."""
        return self.with_ext(".errors.csv")


def _read_npy_rows(path: Path) -> tuple[int, int, int]:
    """(rows committed in the header, embedding size, header length) of an ``.npy`` being appended."""
    with open(path, "rb") as fh:
        np.lib.format.read_magic(fh)
        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        return shape[0], shape[1], fh.tell()


def _read_rows(path: Path) -> list[list[str]]:
    """Complete CSV rows (a last line cut short by an interruption is dropped)."""
    with open(path, newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise BadInputError(f"{path} is not an embeddings index written by rnet-hub embed")
    return rows[1:]


def check_resumable(meta_path: Path, output: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume ``output`` when ``meta_path`` records other :data:`RESUME_KEYS` values than ``meta``."""
    written = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    for key in RESUME_KEYS:
        if written.get(key) != meta.get(key):
            raise BadInputError(f"{output} was written with {key}={written.get(key)!r}, not "
                                f"{meta.get(key)!r}; resume with the same options or choose another --out")


class Writer:
    """Appends rows to ``.npy`` + ``.csv``, creating them on the first rows (nothing on failure)."""

    def __init__(self, paths: OutputPaths, meta: dict[str, Any], *, resume: bool) -> None:
        self.paths, self.meta = paths, meta
        self.rows = 0
        self.done: set[str] = set()
        self._npy: io.BufferedRandom | None = None
        self._csv: io.TextIOWrapper | None = None
        if paths.parquet.is_dir():
            raise OutputExistsError(f"{paths.parquet} is a folder of shards: --out {paths.stem} holds the Ray "
                                    f"engine's output; choose another --out")
        existing = [p for p in (paths.npy, paths.csv) if p.exists()]
        if existing and not resume:
            raise OutputExistsError(f"{existing[0]} exists; pass --resume to add the missing files to it, "
                                  "or choose another --out")
        if resume and paths.npy.exists():
            self._reopen()

    def _reopen(self) -> None:
        """Continue existing outputs, cut back to the last committed row."""
        check_resumable(self.paths.meta, self.paths.npy, self.meta)
        rows, dim, header = _read_npy_rows(self.paths.npy)
        listed = _read_rows(self.paths.csv) if self.paths.csv.exists() else []
        stored = (self.paths.npy.stat().st_size - header) // (4 * dim)
        if len(listed) < rows or stored < rows:
            raise BadInputError(f"{self.paths.npy} and {self.paths.csv} disagree ({rows} rows committed, "
                             f"{len(listed)} listed, {stored} stored); remove them and start again")
        self.meta["dim"], self.rows = dim, rows
        self.done = {row[0] for row in listed[:rows]}
        with open(self.paths.csv, "w", newline="") as fh:
            csv.writer(fh).writerows([COLUMNS, *listed[:rows]])
        self._npy = open(self.paths.npy, "r+b")  # noqa: SIM115 - kept open across appends
        self._npy.truncate(header + rows * dim * 4)
        self._csv = open(self.paths.csv, "a", newline="")  # noqa: SIM115

    def _create(self, dim: int) -> None:
        self.paths.stem.parent.mkdir(parents=True, exist_ok=True)
        self.meta["dim"] = dim
        self.paths.meta.write_text(json.dumps(self.meta, indent=2) + "\n")
        if len(_npy_header(0, dim)) != len(_npy_header(2**62, dim)):
            raise RuntimeError("this numpy does not pad .npy headers for appending")
        self._npy = open(self.paths.npy, "w+b")  # noqa: SIM115
        self._npy.write(_npy_header(0, dim))
        self._csv = open(self.paths.csv, "w", newline="")  # noqa: SIM115
        csv.writer(self._csv).writerow(COLUMNS)

    def append(self, rows: list[dict[str, Any]], embeddings: np.ndarray) -> None:
        """Append and commit rows (the ``.npy`` header last)."""
        if self._npy is None:
            self._create(embeddings.shape[1])
        assert self._npy is not None and self._csv is not None
        if embeddings.shape[1] != self.meta["dim"]:
            raise BadInputError(f"embedding size {embeddings.shape[1]} differs from {self.meta['dim']} "
                             f"in {self.paths.npy}")
        self._npy.seek(0, os.SEEK_END)
        self._npy.write(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
        self._npy.flush()
        csv.writer(self._csv).writerows([[row[c] for c in COLUMNS] for row in rows])
        self._csv.flush()
        self.rows += len(rows)
        self._npy.seek(0)
        self._npy.write(_npy_header(self.rows, self.meta["dim"]))  # commit
        self._npy.flush()

    def close(self) -> None:
        """Close the files."""
        for fh in (self._npy, self._csv):
            if fh is not None:
                fh.close()


def write_parquet(paths: OutputPaths, model: dict[str, str]) -> Path | None:
    """``STEM.parquet`` (the rows of :mod:`.embed_schema`: index, ``model`` columns, ``embedding``) when
    pyarrow is installed."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None
    embeddings = np.load(paths.npy, mmap_mode="r")
    rows = _read_rows(paths.csv)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
    table = arrow_table(columns, np.asarray(embeddings), {k: model[k] for k in MODEL_COLUMNS})
    partial = paths.with_ext(".parquet.partial")
    pq.write_table(table, partial)
    os.replace(partial, paths.parquet)
    return paths.parquet


def write_errors(paths: OutputPaths, failed: list[tuple[str, str]]) -> Path | None:
    """``STEM.errors.csv`` (path, error) of the files skipped, or none (a stale one removed)."""
    if not failed:
        paths.errors.unlink(missing_ok=True)  # a stale report from an earlier run
        return None
    paths.stem.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.errors, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "error"), *failed])
    return paths.errors
