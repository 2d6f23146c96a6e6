"""The row schema of ``rnet-hub embed``'s Parquet output, one definition for both engines.

One row per image (a frame, or one window of a frame, of a file):

==================== ===================================== =======================================
column               type                                  meaning
==================== ===================================== =======================================
path                 string                                the file (absolute path, or its URI)
sop_instance_uid     string (null: not DICOM)              SOPInstanceUID
series_instance_uid  string (null: not DICOM)              SeriesInstanceUID
study_instance_uid   string (null: not DICOM)              StudyInstanceUID
frame                int32                                 0-based frame number in the file
window_index         int32                                 0-based window of that frame (CT, XA)
window_center        float64 (null: no window)             the window applied
window_width         float64 (null: no window)
rule                 string                                how the frame was made (Frame.rule)
modality             string (null: not DICOM)              Modality
model_id             string                                the model folder's path or Hub name
weights_sha256       string                                SHA-256 of model.safetensors
hub_revision         string (empty: a local folder)        the Hub commit the weights came from
embedding            fixed_size_list<float32>[dim]         the vector
==================== ===================================== =======================================

The local engine writes these rows to ``STEM.parquet`` (a file), the Ray engine to
``STEM.parquet/part-*.parquet`` (a folder of shards): ``pyarrow.parquet.read_table`` reads either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["INDEX_COLUMNS", "MODEL_COLUMNS", "arrow_schema", "arrow_table", "read_embeddings"]

#: The per-image columns (also the ``STEM.csv`` index of the local engine).
INDEX_COLUMNS = ("path", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "frame", "window_index",
                 "window_center", "window_width", "rule", "modality")
#: The per-run columns, the same in every row.
MODEL_COLUMNS = ("model_id", "weights_sha256", "hub_revision")
_OPTIONAL_TEXT = ("sop_instance_uid", "series_instance_uid", "study_instance_uid", "modality")


def arrow_schema(dim: int) -> Any:
    """The pyarrow schema of the rows, for embeddings of size ``dim``."""
    import pyarrow as pa

    types = {"frame": pa.int32(), "window_index": pa.int32(), "window_center": pa.float64(),
             "window_width": pa.float64()}
    fields = [pa.field(c, types.get(c, pa.string())) for c in (*INDEX_COLUMNS, *MODEL_COLUMNS)]
    return pa.schema([*fields, pa.field("embedding", pa.list_(pa.float32(), dim))])


def _number(value: Any) -> float | None:
    """A window value from a CSV cell, a float or NaN; None for none."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def arrow_table(columns: Mapping[str, Sequence[Any]], embeddings: np.ndarray, model: Mapping[str, str]) -> Any:
    """The rows as a pyarrow table of :func:`arrow_schema`: ``columns`` holds the :data:`INDEX_COLUMNS`
    (empty strings and NaN for missing values are written as nulls), ``model`` the :data:`MODEL_COLUMNS`."""
    import pyarrow as pa

    count, dim = embeddings.shape
    data: dict[str, Any] = {}
    for name in INDEX_COLUMNS:
        values = list(columns[name])
        if name in ("frame", "window_index"):
            values = [int(v) for v in values]
        elif name in ("window_center", "window_width"):
            values = [_number(v) for v in values]
        elif name in _OPTIONAL_TEXT:
            values = [str(v) if v not in (None, "") else None for v in values]
        else:
            values = [str(v) for v in values]
        data[name] = values
    for name in MODEL_COLUMNS:
        data[name] = [model[name]] * count
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    schema = arrow_schema(dim)
    arrays = [pa.array(data[f.name], type=f.type) for f in schema if f.name != "embedding"]
    return pa.Table.from_arrays([*arrays, pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema)


def read_embeddings(source: Any) -> tuple[Any, np.ndarray]:
    """(the table without its embedding column, the embeddings as a float32 (rows, dim) array) of a pyarrow
    table or a Parquet file/folder written by either engine."""
    import pyarrow.parquet as pq

    table = pq.read_table(source) if not hasattr(source, "column_names") else source
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table.drop_columns(["embedding"]), values.reshape(-1, dim)
