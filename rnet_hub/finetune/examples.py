"""What fine-tuning data is once read: :class:`Example` rows in train/val/test, and its task.

:func:`rnet_hub.finetune.data.load_data` makes a :class:`FinetuneData` from a folder, a manifest or
a ``datasets`` dataset; :func:`rnet_hub.finetune.data.make_dataset` turns one of its splits into
model inputs. This module only holds the records and their bookkeeping (summary, training fractions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadInputError

__all__ = ["DEFAULT_FRACTIONS", "DEFAULT_SEED", "SPLITS", "TASKS", "DatasetRows", "Example", "FinetuneData"]

TASKS = ("single_label", "multi_label", "regression")
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 1221
"""The original study's split seed."""
DEFAULT_FRACTIONS = (0.75, 0.125, 0.125)
"""Train/val/test shares when the data has no split (the original study's)."""

Target = int | tuple[float, ...] | float


@dataclass(frozen=True)
class Example:
    """One model input: a frame of a file (or a ``datasets`` row) and its target.

    ``source`` is an absolute file path or ``"dataset:<row index>"``; ``frame`` the index among the
    images :func:`rnet_hub.imaging.dicom.load_frames` makes of the file (0 for PNG/JPEG); ``group``
    what must not straddle splits (the StudyInstanceUID of a DICOM file, else the file path);
    ``target`` a class index, a 0/1 vector (multi-label) or a number (regression).
    """

    source: str
    frame: int
    group: str
    target: Target


@dataclass(frozen=True)
class DatasetRows:
    """The images of a ``datasets`` source, addressed by the row index in ``Example.source``.

    ``table`` is a ``datasets.Dataset`` holding only the image column (every split concatenated,
    ``datasets.Image`` columns cast to ``decode=False`` so rnet_hub decodes them itself);
    ``fingerprint`` identifies it for the disk cache when rows carry no bytes or path.
    """

    table: Any
    column: str
    fingerprint: str


@dataclass(frozen=True)
class FinetuneData:
    """Fine-tuning data, read and split: ``splits`` maps exactly :data:`SPLITS` to non-empty example tuples.

    ``label_names`` are the class names in head order (single/multi-label) or ``(target_name,)``
    (regression); ``source_kind`` is ``"folder"``, ``"manifest"`` or ``"datasets"``; ``root`` the
    data argument as given; ``rows`` the images of a ``datasets`` source (None otherwise).
    """

    task: str
    label_names: tuple[str, ...]
    splits: Mapping[str, tuple[Example, ...]]
    source_kind: str
    root: str
    rows: DatasetRows | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BadInputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if tuple(self.splits) != SPLITS or not all(self.splits[s] for s in SPLITS):
            raise BadInputError(f"splits must be exactly {', '.join(SPLITS)}, each non-empty; "
                                f"got {', '.join(f'{k}: {len(v)}' for k, v in self.splits.items())}")
        object.__setattr__(self, "splits", {s: tuple(self.splits[s]) for s in SPLITS})

    def summary(self) -> dict[str, Any]:
        """JSON-able description (for logs and the model card): task, source, label names, per-split
        counts of images and groups (studies/files), and per-class counts (positives per label for
        multi-label; min/mean/max of the target for regression)."""
        out: dict[str, Any] = {"task": self.task, "source_kind": self.source_kind, "root": self.root,
                               "label_names": list(self.label_names),
                               "counts": {s: len(self.splits[s]) for s in SPLITS},
                               "groups": {s: len({e.group for e in self.splits[s]}) for s in SPLITS}}
        if self.task == "single_label":
            counts = {s: Counter(e.target for e in self.splits[s]) for s in SPLITS}
            out["class_counts"] = {s: {name: counts[s][i] for i, name in enumerate(self.label_names)} for s in SPLITS}
        elif self.task == "multi_label":
            out["class_counts"] = {s: {name: int(sum(e.target[i] for e in self.splits[s]))  # type: ignore[index]
                                       for i, name in enumerate(self.label_names)} for s in SPLITS}
        else:
            out["target_stats"] = {s: _stats([float(e.target) for e in self.splits[s]])  # type: ignore[arg-type]
                                   for s in SPLITS}
        return out

    def with_train_fraction(self, fraction: float, *, seed: int = DEFAULT_SEED) -> FinetuneData:
        """The first ``fraction`` of one seeded shuffle of the train split (at least one example);
        val and test unchanged. Nested: for one seed a smaller fraction keeps a subset of a larger
        one's examples (the original study's training partitions 0.05, 0.25, 0.5, 1.0)."""
        if not 0 < fraction <= 1:
            raise BadInputError(f"the training fraction must be in (0, 1], got {fraction}")
        train = self.splits["train"]
        order = np.random.default_rng(seed).permutation(len(train))
        keep = sorted(order[:max(1, round(fraction * len(train)))].tolist())
        splits = {**self.splits, "train": tuple(train[i] for i in keep)}
        return FinetuneData(self.task, self.label_names, splits, self.source_kind, self.root, self.rows)


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}
