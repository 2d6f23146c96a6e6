"""The study's tables: every cell's per-epoch metrics, one row per cell, and mean ± std across runs.

* :func:`cells_table` (``cells.csv``): one row per cell and epoch, the validation metrics of that epoch;
* :func:`final_table` (``final.csv``): one row per cell: its best epoch (by the main validation metric), the
  validation metrics there, the area under the first-N-epochs validation curve of the main metric, the
  test metrics, the wall time and the energy;
* :func:`summary_table` (``summary.csv``): mean, std (across runs, ``ddof=1``) and n per model x init x
  fraction x lr, ``at`` each epoch (``"1"``, ``"2"``, ...), at the best epoch (``"best"``), on test
  (``"test"``) and for the curve area (``"auc_first<N>"``), one row per metric.

The area under the first N epochs is the trapezoid area over epochs 1..N divided by N - 1: the curve's
mean height, in the metric's own units (a "boost in the first epochs" raises it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import write_atomic
from .grid import Cell

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KEYS", "area_first", "best_epoch", "cells_table", "final_table", "summary_table", "write_csv"]

#: The columns that say which cell a row belongs to.
KEYS = ("model", "init", "fraction", "lr", "run", "seed")
GROUP = ("model", "init", "fraction", "lr")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_epoch(epochs: Sequence[Mapping[str, Any]], metric: str, *, greater: bool) -> int | None:
    """The epoch with the best ``metric`` (the earliest of equals), or ``None`` when it never has a value."""
    scored = [(e["epoch"], e.get(metric)) for e in epochs if _finite(e.get(metric))]
    if not scored:
        return None
    best = (max if greater else min)(v for _, v in scored)
    return min(epoch for epoch, v in scored if v == best)


def area_first(epochs: Sequence[Mapping[str, Any]], metric: str, first: int) -> float:
    """The area under ``metric`` over epochs 1..``first`` divided by ``first - 1`` (trapezoid rule): the
    curve's mean height; the value itself when ``first`` is 1; ``nan`` when an epoch lacks a value."""
    values = {e["epoch"]: e.get(metric) for e in epochs}
    curve = [values.get(epoch) for epoch in range(1, first + 1)]
    if not all(_finite(v) for v in curve):
        return math.nan
    if first == 1:
        return float(curve[0])
    return sum((a + b) / 2 for a, b in itertools.pairwise(curve)) / (first - 1)


def _in_order(frame: pd.DataFrame, then: list[str]) -> pd.DataFrame:
    """Rows by model, lr, fraction, init (in the order the inits were given), then ``then``."""
    order = {init: i for i, init in enumerate(dict.fromkeys(frame["init"]))}
    ranked = frame.assign(_init=frame["init"].map(order))
    ranked = ranked.sort_values(["model", "lr", "fraction", "_init", *then], kind="stable")
    return ranked.drop(columns="_init").reset_index(drop=True)


def _keys(cell: Cell) -> dict[str, Any]:
    return {k: getattr(cell, k) for k in KEYS}


def cells_table(done: Sequence[tuple[Cell, Mapping[str, Any]]]) -> pd.DataFrame:
    """``cells.csv``: one row per finished cell and epoch with that epoch's validation metrics."""
    import pandas as pd

    rows = [{**_keys(cell), **{k: v for k, v in record.items()}} for cell, outcome in done
            for record in outcome["epochs"]]
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*KEYS, "epoch", *(k for r in rows for k in r)])))
    return _in_order(frame, ["run", "epoch"])


def final_table(done: Sequence[tuple[Cell, Mapping[str, Any]]], *, metric: str, greater: bool,
                first: int) -> pd.DataFrame:
    """``final.csv``: one row per finished cell (see the module docstring); ``metric`` is the main
    validation metric, ``greater`` whether higher is better, ``first`` the N of the curve area."""
    import pandas as pd

    rows = []
    for cell, outcome in done:
        epochs = outcome["epochs"]
        best = best_epoch(epochs, metric, greater=greater)
        at_best = next((e for e in epochs if e["epoch"] == best), {})
        row: dict[str, Any] = {**_keys(cell), "train_size": outcome.get("train_size"), "epochs": len(epochs),
                               "best_epoch": best, f"auc_first{first}_{metric}": area_first(epochs, metric, first)}
        row.update({f"best_{k}": v for k, v in at_best.items() if k != "epoch"})
        row.update({f"test_{k}": v for k, v in outcome.get("test", {}).items()})
        row.update(wall_s=outcome.get("wall_s"), energy_kwh=outcome.get("energy_kwh"))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(k for r in rows for k in r)) or list(KEYS))
    return _in_order(frame, ["run"]) if rows else frame


def _stats(values: Any) -> dict[str, Any]:
    import pandas as pd

    values = pd.to_numeric(values, errors="coerce").dropna()
    n = len(values)
    return {"mean": float(values.mean()) if n else math.nan, "std": float(values.std(ddof=1)) if n > 1 else math.nan,
            "n": n}


def summary_table(cells: pd.DataFrame, final: pd.DataFrame, *, first: int) -> pd.DataFrame:
    """``summary.csv``: mean, std and n across runs per model x init x fraction x lr, ``at`` each epoch, at
    the best epoch, on test and for the first-N curve area (long form: one row per ``at`` and metric)."""
    import pandas as pd

    rows = []
    skip = {*KEYS, "epoch"}
    for group, block in cells.groupby(list(GROUP), sort=False):
        for epoch, at_epoch in block.groupby("epoch", sort=True):
            for metric in (c for c in cells.columns if c not in skip):
                rows.append({**dict(zip(GROUP, group, strict=True)), "at": str(int(epoch)), "metric": metric,
                             **_stats(at_epoch[metric])})
    for group, block in final.groupby(list(GROUP), sort=False):
        for column in block.columns:
            for prefix, at in (("best_", "best"), ("test_", "test"), (f"auc_first{first}_", f"auc_first{first}")):
                if column.startswith(prefix) and column != "best_epoch":
                    rows.append({**dict(zip(GROUP, group, strict=True)), "at": at,
                                 "metric": column[len(prefix):], **_stats(block[column])})
    columns = [*GROUP, "at", "metric", "mean", "std", "n"]
    return pd.DataFrame(rows, columns=columns)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as CSV, atomically (a temporary file renamed into place)."""
    write_atomic(path, lambda temporary: frame.to_csv(temporary, index=False))
