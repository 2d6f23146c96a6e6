"""The study's pictures (matplotlib, Agg), each drawn from data that is kept with it.

* :func:`curve_pictures`: per model x lr one picture, one panel per training fraction, the mean ± std
  (across runs) validation curve of the main metric over the first N epochs, one line per init (the
  original README's two figures);
* :func:`fraction_pictures`: per model x lr one picture: the final test metric, and the area under the
  first-N-epochs validation curve, against the training fraction, one line per init.

A :class:`Picture` holds its panels and their :class:`Line` data; :func:`draw` renders one to PNG, and
``plots.json`` (:func:`pictures_json`) records the data, so tests (and users) read lines and points,
not pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Line", "Panel", "Picture", "curve_pictures", "draw", "fraction_pictures", "pictures_json"]

_COLOURS = {"radiologynet": "tab:red", "imagenet": "tab:blue", "scratch": "tab:gray"}


@dataclass(frozen=True)
class Line:
    """One line: at each ``x`` the ``mean`` and ``std`` over ``n`` runs (``std`` is ``nan`` for one run)."""

    label: str
    x: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n: tuple[int, ...]


@dataclass(frozen=True)
class Panel:
    """One set of axes: a title, axis labels and its lines."""

    title: str
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...]

    def line(self, label: str) -> Line:
        """The line called ``label``."""
        return next(line for line in self.lines if line.label == label)


@dataclass(frozen=True)
class Picture:
    """One PNG file (``name``, relative to the study folder) with its panels side by side."""

    name: str
    title: str
    panels: tuple[Panel, ...]

    def panel(self, title: str) -> Panel:
        """The panel whose title is ``title``."""
        return next(panel for panel in self.panels if panel.title == title)


def _slug(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _line(label: str, block: pd.DataFrame, x: str, y: str) -> Line:
    stats = block.groupby(x, sort=True)[y].agg(["mean", "std", "count"])
    return Line(label, tuple(float(v) for v in stats.index), tuple(float(v) for v in stats["mean"]),
                tuple(float(v) for v in stats["std"]), tuple(int(v) for v in stats["count"]))


def _inits(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["init"]))


def curve_pictures(cells: pd.DataFrame, *, metric: str, first: int) -> list[Picture]:
    """Per model x lr: the validation ``metric`` over epochs 1..``first``, a panel per fraction, a line per init."""
    pictures = []
    inits = _inits(cells)
    early = cells[(cells["epoch"] >= 1) & (cells["epoch"] <= first)].dropna(subset=[metric])
    for (model, lr), block in early.groupby(["model", "lr"], sort=True):
        panels = []
        for fraction, part in block.groupby("fraction", sort=True):
            lines = tuple(_line(init, part[part["init"] == init], "epoch", metric)
                          for init in inits if (part["init"] == init).any())
            panels.append(Panel(f"fraction {_slug(float(fraction))}", "epoch", f"validation {metric}", lines))
        pictures.append(Picture(f"curves_{model}_lr{_slug(float(lr))}.png",
                                f"{model}, lr {_slug(float(lr))}: validation {metric}, first {first} epochs "
                                f"(mean ± std over runs)", tuple(panels)))
    return pictures


def fraction_pictures(final: pd.DataFrame, *, measures: Sequence[tuple[str, str]]) -> list[Picture]:
    """Per model x lr: each ``(column of final, axis label)`` in ``measures`` against the training fraction,
    a panel per measure, a line per init."""
    pictures = []
    inits = _inits(final)
    for (model, lr), block in final.groupby(["model", "lr"], sort=True):
        panels = []
        for column, label in measures:
            if column not in block.columns:
                continue
            part = block.dropna(subset=[column])
            lines = tuple(_line(init, part[part["init"] == init], "fraction", column)
                          for init in inits if (part["init"] == init).any())
            panels.append(Panel(label, "training fraction", label, lines))
        pictures.append(Picture(f"fractions_{model}_lr{_slug(float(lr))}.png",
                                f"{model}, lr {_slug(float(lr))}: against the training fraction (mean ± std over runs)",
                                tuple(panels)))
    return pictures


def draw(picture: Picture, path: Path) -> None:
    """Render ``picture`` to the PNG ``path`` (matplotlib's Agg canvas; no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    count = max(1, len(picture.panels))
    figure = Figure(figsize=(4.2 * count, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0]
    for ax, panel in zip(axes, picture.panels, strict=False):
        for line in panel.lines:
            colour = _COLOURS.get(line.label)
            ax.plot(line.x, line.mean, marker="o", markersize=3, label=line.label, color=colour)
            low = [m - s if math.isfinite(s) else m for m, s in zip(line.mean, line.std, strict=True)]
            high = [m + s if math.isfinite(s) else m for m, s in zip(line.mean, line.std, strict=True)]
            ax.fill_between(line.x, low, high, alpha=0.2, color=colour, linewidth=0)
        if panel.xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        elif panel.lines:
            ax.set_xticks(sorted({x for line in panel.lines for x in line.x}))
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.lines:
            ax.legend(fontsize=8)
    figure.suptitle(picture.title, fontsize=10)
    figure.savefig(path, format="png")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def pictures_json(pictures: Sequence[Picture]) -> dict[str, Any]:
    """The data behind every picture, JSON-able (``nan`` as ``null``): file name -> title and panels."""
    return {p.name: {"title": p.title, "panels": [_plain(asdict(panel)) for panel in p.panels]} for p in pictures}
