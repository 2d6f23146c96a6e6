"""The data layer of ``rnet-hub finetune``: read a folder, manifest or ``datasets`` dataset into splits.

:func:`load_data` detects the layout, infers the task (or checks ``task=``), encodes the labels and
splits (seeded, stratified, one study never on two sides); :func:`make_dataset` (from
:mod:`rnet_hub.finetune.dataset`) turns a split into model inputs with the pretraining transform.

Layouts:

* a folder ``DATA/{train,val,test}/<class>/*.{png,jpg,jpeg,dcm}`` (or ``DATA/<class>/...``; DICOM
  files without extension are recognised by their header); single-label;
* a CSV or Parquet manifest with a ``path`` column (relative to the manifest), then ``label``
  (single-label), several 0/1 columns (multi-label) or one numeric column (regression), and an
  optional ``split`` column;
* a Hugging Face ``datasets`` dataset: a ``Dataset``/``DatasetDict`` object, a ``save_to_disk``
  folder, or a Hub name, with image and label columns.

Splits that are not given (no ``val``/``test`` folder, split column or split) are carved out of the
training data with ``fractions`` (0.75/0.125/0.125, seed 1221: the original study's).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .dataset import FinetuneDataset, make_dataset
from .examples import (
    DEFAULT_FRACTIONS,
    DEFAULT_SEED,
    SPLITS,
    TASKS,
    DatasetRows,
    Example,
    FinetuneData,
)
from .hfsource import is_saved_dataset, read_datasets
from .labels import choose_task, encode_targets, value_kind
from .sources import MANIFEST_SUFFIXES, Raw, read_folder, read_manifest
from .splits import split_groups

__all__ = ["DEFAULT_FRACTIONS", "DEFAULT_SEED", "SPLITS", "TASKS", "Example", "FinetuneData", "FinetuneDataset",
           "load_data", "make_dataset"]


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or not all(math.isfinite(f) and f > 0 for f in values):
        raise BadInputError(f"fractions must be three positive train/val/test shares, got {fractions!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def _is_path_like(name: str) -> bool:
    """Whether a missing ``name`` was meant as a local path (not a Hub dataset name)."""
    return (Path(name).suffix.lower() in MANIFEST_SUFFIXES or os.path.isabs(name) or name.startswith(("./", "../", "~"))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def _labels_from_folder(raws: list[Raw], task: str | None, where: str) -> tuple[str, tuple[str, ...], list[Any]]:
    if task not in (None, "single_label"):
        raise BadInputError(f"task {task} cannot apply to {where}: class folders make single-label data; use a CSV or "
                            "Parquet manifest for multi_label or regression")
    names, targets = encode_targets("single_label", [r.label for r in raws], names=["class"], where=where)
    return "single_label", names, targets


def _labels_from_columns(raws: list[Raw], columns: list[str], values: list[list[Any]], task: str | None,
                         where: str) -> tuple[str, tuple[str, ...], list[Any]]:
    chosen = choose_task([value_kind(v) for v in values], columns, task, where)
    raw = [r.label for r in raws]
    if chosen == "multi_label" and len(columns) == 1:
        raw = [(v,) for v in raw]
    names, targets = encode_targets(chosen, raw, names=columns, where=where)
    return chosen, names, targets


def _labels_from_dataset(raws: list[Raw], column: str, class_names: list[str] | None, is_list: bool,
                         task: str | None, where: str) -> tuple[str, tuple[str, ...], list[Any]]:
    raw = [r.label for r in raws]
    if is_list:
        if task not in (None, "multi_label"):
            raise BadInputError(f"task {task} cannot apply to {where}: column {column!r} holds lists of labels "
                                "(multi-label); use task multi_label")
        width = {len(v) for v in raw}
        if len(width) != 1:
            raise BadInputError(f"{where}: the label lists in {column!r} have different lengths "
                                f"({sorted(width)[:5]}); give every row one 0/1 value per label")
        names = class_names or [str(i) for i in range(width.pop())]
        return "multi_label", *encode_targets("multi_label", raw, names=names, where=where)
    kind = "text" if class_names is not None else value_kind(raw)
    chosen = choose_task([kind], [column], task, where)
    if chosen == "multi_label":
        raw = [(v,) for v in raw]
    names, targets = encode_targets(chosen, raw, names=[column], where=where,
                                    class_names=class_names if chosen == "single_label" else None)
    return chosen, names, targets


def _split(examples: list[Example], given: list[str | None], task: str, seed: int,
           fractions: tuple[float, float, float], where: str) -> dict[str, tuple[Example, ...]]:
    share = dict(zip(SPLITS, fractions, strict=True))
    present = set(given)
    if present == {None}:
        return {s: tuple(v) for s, v in split_groups(examples, share, task=task, seed=seed, where=where).items()}
    if "train" not in present:
        raise BadInputError(f"{where} gives {', '.join(sorted(str(p) for p in present))} but no train split: add "
                            "train/ (or 'train' rows), or give no split at all to split automatically")
    splits = {s: [e for e, g in zip(examples, given, strict=True) if g == s] for s in SPLITS}
    missing = [s for s in SPLITS if not splits[s]]
    if missing:
        carve = {"train": share["train"], **{s: share[s] for s in missing}}
        splits.update(split_groups(splits["train"], carve, task=task, seed=seed, where=where))
    return {s: tuple(splits[s]) for s in SPLITS}


def load_data(data: str | os.PathLike[str] | Any, *, task: str | None = None, seed: int = DEFAULT_SEED,
              fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, image_column: str = "image",
              label_column: str | None = None) -> FinetuneData:
    """Read fine-tuning data: a class folder, a CSV/Parquet manifest, or a ``datasets`` dataset (object,
    ``save_to_disk`` folder or Hub name); see the module docstring for the layouts.

    ``task``: ``"single_label"``, ``"multi_label"`` or ``"regression"``; inferred from the labels when
    None. ``seed`` and ``fractions`` make the splits the data does not give. ``image_column`` and
    ``label_column`` name the columns of a ``datasets`` dataset (``label_column`` also picks one label
    column of a manifest). Bad input raises a :class:`~rnet_hub.errors.BadInputError` whose one-line
    message says what is wrong and how to fix it (unreadable files:
    :class:`~rnet_hub.errors.ImageReadError`, listing them by path).
    """
    if task is not None and task not in TASKS:
        raise BadInputError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    fractions = _check_fractions(fractions)
    if isinstance(data, FinetuneData):  # already read and split (the study passes each cell's training fraction)
        if task is not None and task != data.task:
            raise BadInputError(f"the data is {data.task}, not {task}: leave --task out or read the data with it")
        return data
    rows: DatasetRows | None = None
    if isinstance(data, (str, os.PathLike)):
        root = os.fspath(data)
        path = Path(root).expanduser()
        where = str(path)
        if path.is_file():
            if path.suffix.lower() not in MANIFEST_SUFFIXES:
                raise BadInputError(f"{path} is a file but not a manifest: give a .csv or .parquet manifest, or a "
                                    "folder of class folders")
            raws, columns, values = read_manifest(path, label_column)
            kind, (chosen, names, targets) = "manifest", _labels_from_columns(raws, columns, values, task,
                                                                              f"manifest {path}")
        elif path.is_dir() and not is_saved_dataset(path):
            raws = read_folder(path)
            kind, (chosen, names, targets) = "folder", _labels_from_folder(raws, task, str(path))
        elif path.is_dir() or not _is_path_like(root):
            raws, column, class_names, is_list, rows = read_datasets(root, image_column, label_column)
            kind, (chosen, names, targets) = "datasets", _labels_from_dataset(raws, column, class_names, is_list,
                                                                              task, f"dataset {root!r}")
        else:
            raise BadInputError(f"{root} does not exist: give an image folder, a .csv/.parquet manifest, a "
                                "datasets save_to_disk folder or a Hub dataset name")
    else:
        root = f"<in-memory {type(data).__module__.split('.')[0]}.{type(data).__name__}>"
        where = "the dataset"
        raws, column, class_names, is_list, rows = read_datasets(data, image_column, label_column)
        kind, (chosen, names, targets) = "datasets", _labels_from_dataset(raws, column, class_names, is_list, task,
                                                                          where)
    examples = [Example(r.source, r.frame, r.group, t) for r, t in zip(raws, targets, strict=True)]
    splits = _split(examples, [r.split for r in raws], chosen, seed, fractions, where)
    return FinetuneData(chosen, names, splits, kind, root, rows)
