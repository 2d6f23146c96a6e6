"""The pretraining exporter's rules, as pure functions of a pydicom dataset and its pixels.

:mod:`rnet_hub.imaging.dicom` reads files and applies these; the rules themselves (the
linear window truncated to uint8, which tags the exporter read and how, which frames and
windows it wrote, and the best-effort rules for everything it did not export) are here,
so each can be tested on its own. The facts behind them are in the module docstring of
:mod:`rnet_hub.imaging.dicom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["EXPORT_MODALITIES", "FALLBACK_PERCENTILES", "Planned", "Rescale", "Window", "apply_window",
           "best_effort_grey", "colour_frame", "export_frame", "export_plan"]

EXPORT_MODALITIES = ("MR", "CR", "NM", "CT", "RF", "XA")
FALLBACK_PERCENTILES = (0.5, 99.5)

_SINGLE_WINDOW_MODALITIES = ("MR", "CR", "NM", "RF")

Window = tuple[float, float]
Rescale = tuple[float, float]


# ---------------------------------------------------------------------------------------
# The export's arithmetic
# ---------------------------------------------------------------------------------------

def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The export's linear window, in float64, *not yet truncated*.

    ``v <= c - w/2`` -> 0, ``v > c + w/2`` -> 255, else ``(v - c + w/2) / w * 255``,
    evaluated in that order so that the later ``floor`` matches the export bit for bit.
    """
    out = np.empty(values.shape, dtype=np.float64)
    low = values <= center - width / 2
    high = values > center + width / 2
    mid = ~(low | high)
    out[low] = 0.0
    out[high] = 255.0
    out[mid] = (values[mid].astype(np.float64) - center + width / 2) / width * 255
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """The export's final ``np.uint8(...)`` cast: truncation (floor for values in [0, 255])."""
    return np.floor(values).astype(np.uint8)


def _modality_values(pixels: np.ndarray, rescale: Rescale | None) -> np.ndarray:
    """Stored values x slope + intercept (float64), or the stored integers when there is no rescale."""
    if rescale is None:
        return pixels
    slope, intercept = rescale
    return pixels * slope + intercept


def export_frame(pixels: np.ndarray, window: Window, rescale: Rescale | None, *, invert: bool) -> np.ndarray:
    """One exported frame. Without rescale the export windowed integer pixels in place (it
    truncated before a CR inversion); with it, it inverted the float values, then truncated."""
    windowed = apply_window(_modality_values(pixels, rescale), *window)
    if invert:
        if rescale is None:
            windowed = np.floor(windowed)
        windowed = 255.0 - windowed
    return _to_uint8(windowed)


# ---------------------------------------------------------------------------------------
# Reading tags the way the exporter did
# ---------------------------------------------------------------------------------------

def _single_window(item: Any) -> Window | None:
    """``float(WindowCenter), float(WindowWidth)``; None when absent, multi-valued or width <= 0."""
    try:
        center, width = float(item.WindowCenter), float(item.WindowWidth)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return (center, width) if width > 0 and math.isfinite(center) and math.isfinite(width) else None


def _all_windows(item: Any) -> list[Window]:
    """Every listed (center, width) pair, single- or multi-valued; [] when unusable."""
    single = _single_window(item)
    if single is not None:
        return [single]
    centers, widths = item.get("WindowCenter"), item.get("WindowWidth")
    try:
        pairs = [(float(c), float(w)) for c, w in zip(centers, widths)]  # noqa: B905 - the export zipped
    except (TypeError, ValueError):
        return []
    return [p for p in pairs if p[1] > 0]


def _first_window(item: Any) -> Window | None:
    windows = _all_windows(item)
    return windows[0] if windows else None


def _rescale(item: Any) -> Rescale | None:
    """``float(RescaleSlope), float(RescaleIntercept)``; None (export: 1 and 0) unless both read."""
    try:
        return float(item.RescaleSlope), float(item.RescaleIntercept)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


def _group_item(ds: Dataset, frame: int | None, sequence: str) -> Any | None:
    """Item 0 of ``sequence`` in the per-frame (``frame`` given) or shared functional groups."""
    try:
        groups = ds.PerFrameFunctionalGroupsSequence[frame] if frame is not None \
            else ds.SharedFunctionalGroupsSequence[0]
        return groups[sequence][0] if sequence in groups else None
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _per_frame_window(ds: Dataset, frame: int) -> Window | None:
    item = _group_item(ds, frame, "FrameVOILUTSequence")
    return _single_window(item) if item is not None else None


def _per_frame_rescale(ds: Dataset, frame: int) -> Rescale | None:
    item = _group_item(ds, frame, "PixelValueTransformationSequence")
    return _rescale(item) if item is not None else None


def _any_window(ds: Dataset, frame: int) -> Window | None:
    """Best-effort window lookup: per-frame groups, shared groups, top level (first value)."""
    for item in (_group_item(ds, frame, "FrameVOILUTSequence"),
                 _group_item(ds, None, "FrameVOILUTSequence"), ds):
        window = _first_window(item) if item is not None else None
        if window is not None:
            return window
    return None


def _any_rescale(ds: Dataset, frame: int) -> Rescale | None:
    for item in (_group_item(ds, frame, "PixelValueTransformationSequence"),
                 _group_item(ds, None, "PixelValueTransformationSequence"), ds):
        rescale = _rescale(item) if item is not None else None
        if rescale is not None:
            return rescale
    return None


# ---------------------------------------------------------------------------------------
# Export plans: which (frame, window, rescale) the exporter wrote for a dataset
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One image the exporter would write: ``window`` None means it wrote nothing (best-effort);
    ``exact`` False means an export slip is not reproduced (best-effort rule ``"window"``)."""

    frame: int
    window: Window | None
    rescale: Rescale | None = None
    exact: bool = True
    note: str = ""


def _skipped(n_frames: int, note: str) -> list[Planned]:
    return [Planned(i, None, note=note) for i in range(n_frames)]


def _plan_single_window(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[Planned]:
    """MR, CR, NM, RF: one window per image."""
    if not multi:
        window = _single_window(ds)
        note = "" if window else f"{modality} without a single WindowCenter/WindowWidth: the export skipped it"
        return [Planned(0, window, _rescale(ds), note=note)]
    if modality in ("CR", "RF"):
        return _skipped(n_frames, f"multi-frame {modality}: the export wrote nothing")
    if modality == "NM":
        return [Planned(i, _per_frame_window(ds, i) or _single_window(ds), _rescale(ds), note="NM without a window")
                for i in range(n_frames)]
    plans = []
    for i in range(n_frames):
        window, rescale = _per_frame_window(ds, i), _per_frame_rescale(ds, i)
        if window is None:
            plans.append(Planned(i, None, note="MR frame without a per-frame window: the export skipped it"))
        elif rescale is None:
            plans.append(Planned(i, window, _any_rescale(ds, i), exact=False,
                                  note="MR frame without a per-frame rescale (the export used slope 0 here)"))
        else:
            plans.append(Planned(i, window, rescale))
    return plans


def _plan_multi_window(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[Planned]:
    """CT, XA: one image per listed window."""
    windows = _all_windows(ds)
    if not windows:
        return _skipped(n_frames, f"{modality} without a usable window: the export skipped it")
    if modality == "CT" and multi:
        return _skipped(n_frames, "multi-frame CT: the export wrote nothing")
    if modality == "CT" and len(windows) > 1 and "WindowCenterWidthExplanation" not in ds:
        return _skipped(1, "CT with several windows and no WindowCenterWidthExplanation: the export skipped it")
    rescale = _rescale(ds)
    slip = "XA multi-frame with several windows: the export windowed windowed pixels here"
    return [Planned(i, window, rescale, exact=not (multi and k > 0), note=slip if multi and k > 0 else "")
            for i in range(n_frames) for k, window in enumerate(windows)]


def export_plan(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[Planned]:
    if modality not in EXPORT_MODALITIES:
        return _skipped(n_frames, f"modality {modality or '(missing)'} was not in the pretraining export")
    if modality in _SINGLE_WINDOW_MODALITIES:
        return _plan_single_window(ds, modality, n_frames, multi)
    return _plan_multi_window(ds, modality, n_frames, multi)


# ---------------------------------------------------------------------------------------
# Best-effort rules
# ---------------------------------------------------------------------------------------

def _scale_to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    return np.rint(np.clip(values.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8) if top > 0 \
        else np.zeros(values.shape, np.uint8)


def colour_frame(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB from pydicom's RGB (or palette-looked-up) pixels."""
    if pixels.dtype == np.uint8:
        return pixels
    bits = 16 if ds.get("PhotometricInterpretation") == "PALETTE COLOR" else int(ds.get("BitsStored", 16))
    return _scale_to_uint8(pixels, float(2 ** bits - 1))


def _voi_lut_frame(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """pydicom's VOI LUT, scaled from the LUT's own output range to 0-255."""
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    n_entries, first = int(item.LUTDescriptor[0]) or 2 ** 16, int(item.LUTDescriptor[1])
    table = apply_voi(np.arange(first, first + n_entries, dtype=np.int64), ds).astype(np.float64)
    lo, hi = float(table.min()), float(table.max())
    mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
    return _scale_to_uint8(mapped - lo, hi - lo)


def _percentile_window(values: np.ndarray) -> Window | None:
    lo, hi = (float(v) for v in np.percentile(values, FALLBACK_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return ((lo + hi) / 2, hi - lo) if hi > lo else None


def best_effort_grey(ds: Dataset, pixels: np.ndarray, frame: int) -> tuple[np.ndarray, str, Window | None]:
    """(uint8 frame, rule, window) for a grey frame the export would not have written."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
    else:
        values = _modality_values(pixels, _any_rescale(ds, frame)).astype(np.float64)
    if ds.get("VOILUTSequence"):
        out, rule, window = _voi_lut_frame(ds, values), "voi-lut", None
    else:
        window, rule = _any_window(ds, frame), "window"
        if window is None:
            window, rule = _percentile_window(values), "percentile"
        out = _to_uint8(apply_window(values, *window)) if window else np.zeros(values.shape, np.uint8)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out, rule, window
