"""Reading fine-tuning data from a Hugging Face ``datasets`` dataset.

Accepted: a ``Dataset`` or ``DatasetDict`` object, a ``save_to_disk`` folder, or a Hub dataset
name (loaded with ``datasets.load_dataset`` under the usual ``HF_HOME``/``HF_DATASETS_CACHE``
cache and ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` rules). Split names ``train``,
``validation``/``val``/``valid``/``dev`` and ``test``/``testing`` are recognised; others are
ignored. Labels: a ``ClassLabel`` (its names become the label names), a list of ``ClassLabel``
(multi-label), text/whole numbers (single-label), fractional numbers (regression), or lists of
0/1 (multi-label). Every row is one image.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import BadInputError, MissingExtraError
from .examples import DatasetRows
from .sources import Raw, split_name

__all__ = ["is_saved_dataset", "read_datasets"]

_EXTRA = "pip install 'rnet-hub[finetune]'"
_LABEL_COLUMNS = ("label", "labels")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(f"reading a Hugging Face dataset needs the datasets package: {_EXTRA}") from None
    return datasets


def is_saved_dataset(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a ``save_to_disk`` folder (of a ``Dataset`` or a ``DatasetDict``)."""
    return os.path.isfile(os.path.join(folder, "dataset_dict.json")) or \
        os.path.isfile(os.path.join(folder, "state.json"))


def _load(data: Any) -> Any:
    datasets = _datasets()
    if isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        return data
    if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise BadInputError("a streaming (iterable) dataset cannot be split or cached: load it without "
                            "streaming=True")
    name = os.fspath(data)
    if os.path.isdir(name):
        return datasets.load_from_disk(name)
    try:
        return datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        raise BadInputError(f"{name!r} is no local folder or manifest, and loading it as a Hub dataset failed "
                            f"({type(exc).__name__}: {str(exc)[:200]}); check the name, or the cache when "
                            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set") from exc


def _splits(loaded: Any, where: str) -> dict[str | None, Any]:
    datasets = _datasets()
    if isinstance(loaded, datasets.Dataset):
        return {None: loaded}
    named = {split_name(k): v for k, v in loaded.items() if split_name(k)}
    if "train" not in named:
        raise BadInputError(f"{where} has splits {', '.join(loaded) or '(none)'} but no 'train' split: rename "
                            "one to 'train' (e.g. DatasetDict(train=..., validation=..., test=...)) or pass a "
                            "single Dataset to split automatically")
    if len(named) != len([k for k in loaded if split_name(k)]):
        raise BadInputError(f"{where} has two splits for one role ({', '.join(loaded)}); keep one of each")
    return named  # type: ignore[return-value]


def _label_column(ds: Any, label_column: str | None, where: str) -> str:
    if label_column is not None:
        if label_column not in ds.column_names:
            raise BadInputError(f"{where} has no column {label_column!r} (columns: {', '.join(ds.column_names)}); "
                                "pass one of them as label_column")
        return label_column
    for name in _LABEL_COLUMNS:
        if name in ds.column_names:
            return name
    raise BadInputError(f"{where} has no label column (columns: {', '.join(ds.column_names)}); pass "
                        "label_column=NAME")


def _class_names(feature: Any) -> tuple[list[str] | None, bool]:
    """``(ClassLabel names or None, is a list of labels)`` of a label feature."""
    datasets = _datasets()
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), False
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    if inner is not None:
        return (list(inner.names) if isinstance(inner, datasets.ClassLabel) else None), True
    return None, False


def read_datasets(data: Any, image_column: str, label_column: str | None
                  ) -> tuple[list[Raw], str, list[str] | None, bool, DatasetRows]:
    """``(rows, label column, ClassLabel names or None, labels are lists, DatasetRows)`` of a
    ``datasets`` source. Rows are ``"dataset:<i>"`` over every split concatenated."""
    datasets = _datasets()
    where = f"dataset {data!r}" if isinstance(data, (str, os.PathLike)) else "the dataset"
    parts = _splits(_load(data), where)
    first = next(iter(parts.values()))
    if image_column not in first.column_names:
        raise BadInputError(f"{where} has no image column {image_column!r} (columns: "
                            f"{', '.join(first.column_names)}); pass image_column=NAME")
    column = _label_column(first, label_column, where)
    names, is_list = _class_names(first.features[column])
    rows: list[Raw] = []
    tables = []
    offset = 0
    for split, ds in parts.items():
        if image_column not in ds.column_names or column not in ds.column_names:
            raise BadInputError(f"{where}: split {split} lacks column {image_column!r} or {column!r}; every split "
                                "needs the same columns")
        labels = ds[column]
        if is_list and names is not None:
            labels = [tuple(float(i in set(v)) for i in range(len(names))) for v in labels]
        elif is_list:
            labels = [tuple(v) for v in labels]
        rows.extend(Raw(f"dataset:{offset + i}", 0, f"dataset:{offset + i}", label, split)
                    for i, label in enumerate(labels))
        images = ds.select_columns([image_column])
        if isinstance(images.features[image_column], datasets.Image):
            images = images.cast_column(image_column, datasets.Image(decode=False))
        tables.append(images)
        offset += len(ds)
    if not rows:
        raise BadInputError(f"{where} has no rows")
    table = tables[0] if len(tables) == 1 else datasets.concatenate_datasets(tables)
    fingerprint = "+".join(str(getattr(t, "_fingerprint", "")) for t in tables)
    return rows, column, names, is_list, DatasetRows(table, image_column, fingerprint)
