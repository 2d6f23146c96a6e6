"""Labels of fine-tuning data: which task they make, and the targets and label names for it.

Every source (class folders, a manifest's columns, a ``datasets`` label column) hands its raw
labels here: text, whole numbers or booleans make single-label classification, one column of
fractional numbers makes regression, several 0/1 columns (or a 0/1 list) make multi-label.
``task=`` overrides the inference where the labels allow it and fails clearly where they do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import BadInputError
from .examples import TASKS, Target

__all__ = ["choose_task", "encode_targets", "value_kind"]


def value_kind(values: Sequence[Any]) -> str:
    """``"bool"``, ``"integer"``, ``"float"`` or ``"text"``: the kind of a column's non-missing values
    (floats that are all whole numbers stay ``"float"``: a fractional column means regression)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "integer"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "text"


def choose_task(kinds: Sequence[str], names: Sequence[str], requested: str | None, where: str) -> str:
    """The task for label columns ``names`` of kinds ``kinds`` (see :func:`value_kind`): inferred, or
    ``requested`` checked against them. ``where`` names the data in messages."""
    if requested is not None and requested not in TASKS:
        raise BadInputError(f"unknown task {requested!r}: use one of {', '.join(TASKS)}")
    shown = ", ".join(repr(n) for n in names)
    if not names:
        raise BadInputError(f"{where} has no label column: add one (e.g. 'label') next to the image paths")
    if requested == "multi_label" or (requested is None and len(names) > 1):
        return "multi_label"
    if len(names) > 1:
        raise BadInputError(f"task {requested} needs one label column but {where} has {len(names)} ({shown}); "
                            "pass label_column=NAME, or use task multi_label for 0/1 columns")
    kind = kinds[0]
    if requested == "regression" and kind in ("text", "bool"):
        raise BadInputError(f"task regression needs a numeric target but {where} column {shown} holds "
                            f"{'text' if kind == 'text' else 'true/false values'}; use task single_label")
    if requested is not None:
        return requested
    return "regression" if kind == "float" else "single_label"


def _class_names(values: Sequence[Any]) -> list[str]:
    unique = set(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
        return [_name(v) for v in sorted(unique)]
    return sorted(_name(v) for v in unique)


def _name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def encode_targets(task: str, raw: Sequence[Any], *, names: Sequence[str], where: str,
                   class_names: Sequence[str] | None = None) -> tuple[tuple[str, ...], list[Target]]:
    """``(label_names, targets)`` for ``task`` from raw labels. Single-label: ``raw`` values (class
    indices into ``class_names`` when given, e.g. a ClassLabel, else anything hashable; names are the
    sorted distinct values); multi-label: ``raw`` tuples of 0/1 numbers, one per name in ``names``;
    regression: numbers. ``names`` are the label columns; ``where`` names the data in messages."""
    missing = [i for i, v in enumerate(raw) if v is None or (isinstance(v, float) and math.isnan(v))
               or (isinstance(v, tuple) and any(x is None for x in v))]
    if missing:
        rows = ", ".join(str(i + 1) for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                                              else "")
        raise BadInputError(f"{where} has missing labels in rows {rows}: fill them in or drop those rows")
    if task == "single_label":
        labels = list(class_names) if class_names is not None else _class_names(raw)
        if len(set(raw)) < 2:
            only = (labels[raw[0]] if class_names is not None else _name(raw[0])) if raw else "none"
            raise BadInputError(f"{where} has a single class ({only}): classification "
                                "needs at least two; add images of another class")
        index = {name: i for i, name in enumerate(labels)}
        targets: list[Target] = [int(v) if class_names is not None else index[_name(v)] for v in raw]
        return tuple(labels), targets
    if task == "multi_label":
        bad = [(i, v) for i, v in enumerate(raw) if any(x not in (0, 1) or isinstance(x, str) for x in v)]
        if bad:
            i, v = bad[0]
            raise BadInputError(f"{where}: multi-label values must be 0 or 1, but {len(bad)} rows are not "
                                f"(row {i + 1}: {dict(zip(names, v, strict=False))}); use one 0/1 column per label")
        return tuple(names), [tuple(float(x) for x in v) for v in raw]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: regression targets must be numbers; column {names[0]!r} holds text") from None
    if not all(math.isfinite(v) for v in values):
        raise BadInputError(f"{where}: regression target {names[0]!r} holds infinite values; fix those rows")
    return (str(names[0]),), values
