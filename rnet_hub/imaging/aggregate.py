"""Series- and study-level vectors (``rnet-hub embed --aggregate series|study``), for both engines.

CT and MR embeddings are per slice; a series or a study is often the unit a downstream task
labels. :func:`aggregate_rows` pools the rows of one or more tables (the local engine's
``STEM.parquet``, or the Ray engine's shards, read one at a time so that memory holds one vector
sum per group, not every row) by ``SeriesInstanceUID`` or ``StudyInstanceUID``:

* ``embedding_mean``: the mean of the group's rows (summed in float64, written as float32);
* ``embedding_max`` (``max_pool=True``): the element-wise maximum.

Each group row also has ``images`` (rows pooled), ``files`` (distinct paths), ``modalities``
(sorted, distinct), the study UID (series level) and the model columns. Rows without the UID
(PNG/JPEG files, DICOM without the tag) belong to no series or study and are left out.
:func:`write_aggregates` writes ``STEM.series.parquet`` / ``STEM.study.parquet``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from .embed_schema import MODEL_COLUMNS, read_embeddings

__all__ = ["LEVELS", "aggregate_rows", "check_levels", "write_aggregates"]

#: ``--aggregate`` level -> the column grouped by.
LEVELS = {"series": "series_instance_uid", "study": "study_instance_uid"}


@dataclass
class _Group:
    """Running sums of one series or study."""

    total: np.ndarray
    maximum: np.ndarray | None
    images: int = 0
    files: set[str] = field(default_factory=set)
    modalities: set[str] = field(default_factory=set)
    study: str | None = None


def check_levels(levels: Iterable[str]) -> list[str]:
    """The ``--aggregate`` levels, checked (duplicates dropped)."""
    out = list(dict.fromkeys(levels))
    wrong = [level for level in out if level not in LEVELS]
    if wrong:
        raise BadInputError(f"--aggregate must be series or study, got {wrong[0]!r}")
    return out


def aggregate_rows(tables: Iterable[Any], *, by: str, max_pool: bool = False) -> Any:
    """One row per series (``by="series"``) or study (``by="study"``) of the embedding rows in ``tables``
    (pyarrow tables or Parquet paths of :mod:`.embed_schema`'s schema), sorted by UID; see the module
    docstring for the columns."""
    import pyarrow as pa

    key = LEVELS[check_levels([by])[0]]
    groups: dict[str, _Group] = {}
    model: dict[str, str] = {}
    for source in tables:
        index, vectors = read_embeddings(source)
        if not len(vectors):
            continue
        model = {c: index.column(c)[0].as_py() for c in MODEL_COLUMNS}
        uids = index.column(key).to_pylist()
        paths, modalities = index.column("path").to_pylist(), index.column("modality").to_pylist()
        studies = index.column("study_instance_uid").to_pylist()
        order = sorted((u, i) for i, u in enumerate(uids) if u is not None)
        start = 0
        while start < len(order):  # one pass per group: sums and maxima of its rows at once
            uid, stop = order[start][0], start
            while stop < len(order) and order[stop][0] == uid:
                stop += 1
            rows = np.array([i for _, i in order[start:stop]])
            start = stop
            block = vectors[rows]
            group = groups.get(uid)
            if group is None:
                group = groups[uid] = _Group(np.zeros(vectors.shape[1], dtype=np.float64),
                                             np.full(vectors.shape[1], -np.inf, dtype=np.float32) if max_pool
                                             else None)
            group.total += block.sum(axis=0, dtype=np.float64)
            if group.maximum is not None:
                np.maximum(group.maximum, block.max(axis=0), out=group.maximum)
            group.images += len(rows)
            group.files.update(paths[i] for i in rows)
            group.modalities.update(modalities[i] for i in rows if modalities[i])
            group.study = group.study or next((studies[i] for i in rows if studies[i]), None)
    uids = sorted(groups)
    dim = len(groups[uids[0]].total) if uids else 0
    columns: dict[str, Any] = {key: pa.array(uids, pa.string())}
    if key != "study_instance_uid":
        columns["study_instance_uid"] = pa.array([groups[u].study for u in uids], pa.string())
    columns["images"] = pa.array([groups[u].images for u in uids], pa.int64())
    columns["files"] = pa.array([len(groups[u].files) for u in uids], pa.int64())
    columns["modalities"] = pa.array([sorted(groups[u].modalities) for u in uids], pa.list_(pa.string()))
    for name in MODEL_COLUMNS:
        columns[name] = pa.array([model.get(name)] * len(uids), pa.string())

    def vectors_column(rows: list[np.ndarray]) -> Any:
        flat = np.asarray(rows, dtype=np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim) if dim else \
            pa.array([], pa.list_(pa.float32(), 1))

    columns["embedding_mean"] = vectors_column([groups[u].total / groups[u].images for u in uids])
    if max_pool:
        columns["embedding_max"] = vectors_column([groups[u].maximum for u in uids])
    return pa.table(columns)


def write_aggregates(sources: Iterable[str | os.PathLike[str]], stem: Path, levels: Iterable[str], *,
                     max_pool: bool = False) -> list[Path]:
    """Write ``STEM.<level>.parquet`` for each level from the Parquet ``sources`` (files); return the paths.
    Each file is written whole or not at all (a temporary name, then a rename)."""
    import pyarrow.parquet as pq

    written = []
    sources = list(sources)
    for level in check_levels(levels):
        target = stem.parent / f"{stem.name}.{level}.parquet"
        partial = target.with_name(target.name + ".partial")
        pq.write_table(aggregate_rows(sources, by=level, max_pool=max_pool), partial)
        os.replace(partial, target)
        written.append(target)
    return written
