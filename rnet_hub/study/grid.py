"""The study's grid: its cells (model x init x fraction x learning rate x run), their seeds and names,
and the nested training subsets the cells train on.

As in the original study: the training fractions are the first part of one seeded shuffle of the
training split (:meth:`FinetuneData.with_train_fraction` with the split seed, 1221 by default), so a
smaller fraction's examples are among a larger one's (nested), and validation and test are never reduced; the runs
differ only in their training seed (``seed + run``), and every init of one run gets the same subset and
the same seed, so the same data in the same order. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError, IntegrityError
from ..finetune.options import INITS

if TYPE_CHECKING:
    from ..finetune.data import FinetuneData

__all__ = ["DEFAULT_FRACTIONS", "DEFAULT_LRS", "INITS", "Cell", "check_nested", "make_grid", "model_label",
           "parse_floats", "parse_names", "train_subsets"]

DEFAULT_FRACTIONS = (0.05, 0.25, 0.5, 1.0)
DEFAULT_LRS = (1e-3,)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, order=True)
class Cell:
    """One fine-tuning run of the study.

    Attributes:
        model: the short model label used in tables and folder names (see :func:`model_label`).
        init: ``radiologynet``, ``imagenet`` or ``scratch``.
        fraction: the share of the training split (0 < fraction <= 1).
        lr: the learning rate.
        run: the run index (0-based); the runs differ only in their seed.
        seed: the training seed, ``study seed + run`` (the same for every init of a run).
        model_name: the model name as given (a Hub id, an architecture name or a folder).
    """

    model: str
    init: str
    fraction: float
    lr: float
    run: int
    seed: int
    model_name: str

    @property
    def key(self) -> str:
        """A folder-safe name, unique within the study, e.g. ``resnet18__scratch__f0.25__lr0.001__run2``."""
        return f"{self.model}__{self.init}__f{self.fraction:g}__lr{self.lr:g}__run{self.run}"

    @property
    def group(self) -> tuple[str, float, float]:
        """What a comparison between inits pairs within: (model, fraction, lr)."""
        return (self.model, self.fraction, self.lr)

    def as_dict(self) -> dict[str, Any]:
        """The cell's fields, JSON-able."""
        return asdict(self)


def parse_names(text: str | Sequence[str], option: str) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``: stripped, non-empty, no repeats."""
    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    items = [p for p in items if p]
    if not items:
        raise BadInputError(f"{option} is empty; give one or more comma-separated values")
    repeated = sorted({p for p in items if items.count(p) > 1})
    if repeated:
        raise BadInputError(f"{option} names {', '.join(repeated)} more than once; give each once")
    return tuple(items)


def parse_floats(text: str | Iterable[float], option: str) -> tuple[float, ...]:
    """``"0.05,0.25"`` or numbers -> a tuple of floats; a value that is not a number names ``option``."""
    items = parse_names(text, option) if isinstance(text, str) else tuple(text)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise BadInputError(f"{option}: {item!r} is not a number") from None
        if not math.isfinite(value):
            raise BadInputError(f"{option}: {item!r} is not a finite number")
        values.append(value)
    if len(set(values)) != len(values):
        raise BadInputError(f"{option} repeats a value; give each once")
    return tuple(values)


def model_label(name: str) -> str:
    """The short, folder-safe label of a model name: the timm architecture when the name says it
    (``ResNet50``, ``radiologynet/resnet50``), else the folder's or repository's last part."""
    from ..names import parse_model_name

    ref = parse_model_name(name)
    if ref.arch is not None and not ref.is_local:
        return ref.arch.timm_arch
    last = (ref.folder.resolve().name if ref.folder is not None else str(ref.repo_id).rsplit("/", 1)[-1]) or "model"
    return _UNSAFE.sub("_", last)


def make_grid(*, models: Sequence[str], inits: Sequence[str], fractions: Sequence[float], lrs: Sequence[float],
              runs: int, seed: int, labels: Mapping[str, str] | None = None) -> list[Cell]:
    """Every cell, in the order they run: model, learning rate, run, fraction, then init (all inits of one
    run and fraction are neighbours, so the first paired comparisons are possible early).

    ``labels`` maps a model name to its label (default :func:`model_label`). Raises
    :class:`BadInputError` for values the study cannot use.
    """
    unknown = [i for i in inits if i not in INITS]
    if unknown:
        raise BadInputError(f"--inits: unknown init {', '.join(unknown)}; choose from {', '.join(INITS)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BadInputError(f"--fractions: {', '.join(f'{f:g}' for f in bad)} not in (0, 1]; e.g. 0.05,0.25,0.5,1.0")
    if any(lr <= 0 for lr in lrs):
        raise BadInputError("--lrs: a learning rate must be greater than 0, e.g. 1e-3,1e-4")
    if runs < 1:
        raise BadInputError(f"--runs must be 1 or more, got {runs}")
    if not (models and inits and fractions and lrs):
        raise BadInputError("the study needs at least one model, init, fraction and learning rate")
    labels = dict(labels) if labels is not None else {m: model_label(m) for m in models}
    seen: dict[str, str] = {}
    for name in models:
        other = seen.setdefault(labels[name], name)
        if other != name:
            raise BadInputError(f"--models: {other} and {name} are both {labels[name]}; give each model once")
    return [Cell(labels[m], i, float(f), float(lr), r, seed + r, m)
            for m in models for lr in lrs for r in range(runs) for f in sorted(fractions) for i in inits]


def train_subsets(data: FinetuneData, fractions: Iterable[float], *, seed: int) -> dict[float, FinetuneData]:
    """fraction -> the data with its training split reduced to that fraction (one seeded shuffle, nested),
    checked with :func:`check_nested`."""
    subsets = {float(f): data.with_train_fraction(float(f), seed=seed) for f in sorted(set(fractions))}
    check_nested(data, subsets)
    return subsets


def _ids(examples: Sequence[Any]) -> list[tuple[str, int]]:
    return [(e.source, e.frame) for e in examples]


def check_nested(data: FinetuneData, subsets: Mapping[float, FinetuneData]) -> None:
    """Raise :class:`IntegrityError` unless each subset's training split is non-empty, drawn from ``data``'s
    training split without repeats and contained in every larger subset (nested), and validation and test
    are ``data``'s, unreduced."""
    full = set(_ids(data.splits["train"]))
    previous: set[tuple[str, int]] = set()
    for fraction in sorted(subsets):
        subset = subsets[fraction]
        train = _ids(subset.splits["train"])
        if not train:
            raise BadInputError(f"the training fraction {fraction:g} of {len(full)} training examples is empty; "
                                f"use a larger fraction or more data")
        if len(set(train)) != len(train) or not set(train) <= full:
            raise IntegrityError(f"the training fraction {fraction:g} repeats examples or has some that are not "
                                 f"in the training split")
        if not previous <= set(train):
            raise IntegrityError(f"the training fraction {fraction:g} lacks examples of a smaller fraction: "
                                 f"fractions are not nested")
        for split in ("val", "test"):
            if _ids(subset.splits[split]) != _ids(data.splits[split]):
                raise IntegrityError(f"the training fraction {fraction:g} changed the {split} split; "
                                     f"only the training split may be reduced")
        previous = set(train)
