"""The pretraining exporter's rules, as pure functions of a pydicom dataset and its pixels.

:mod:`rnet_hub.imaging.dicom` reads files and applies these; the rules themselves (the
linear window truncated to uint8, which tags the exporter read and how, which frames and
windows it wrote, and the best-effort rules for everything it did not export) are here,
so each can be tested on its own. The facts behind them are in the module docstring of
:mod:`rnet_hub.imaging.dicom`. Every export function mimics the exporter's numpy dtypes:
:func:`exporter_array` is its array just before the final ``np.uint8(...)`` (what its drop
rules saw) and :func:`written_image` that cast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInputError

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["CR_INTENDED", "CR_RULES", "CR_WRITTEN_FLOAT", "CR_WRITTEN_RESCALED", "CR_WRITTEN_SIGNED",
           "CR_WRITTEN_UNSIGNED", "DROP_MODES", "EXPORT_MODALITIES", "FALLBACK_PERCENTILES", "MIN_ASPECT_RATIO",
           "MIN_GREY_LEVEL_SHARE", "NEAR_BLACK_MAX", "Planned", "Rescale", "Window", "apply_window",
           "best_effort_grey", "check_options", "colour_frame", "cr_inversion", "export_drop_reason", "export_frame",
           "export_plan", "exporter_array", "written_image"]

EXPORT_MODALITIES = ("MR", "CR", "NM", "CT", "RF", "XA")
FALLBACK_PERCENTILES = (0.5, 99.5)

_SINGLE_WINDOW_MODALITIES = ("MR", "CR", "NM", "RF")

Window = tuple[float, float]
Rescale = tuple[float, float]

CR_RULES = ("written", "intended")
"""``cr_rule`` options: what the exporter wrote (default), or the inversion it meant to write."""
CR_WRITTEN_RESCALED = "written: floor(255 - v) (rescale present)"
CR_WRITTEN_FLOAT = "written: floor(255 - v) (float pixels)"
CR_WRITTEN_UNSIGNED = "written: (floor(v) + 1) mod 256 (unsigned, no rescale)"
CR_WRITTEN_SIGNED = "written: 255 - floor(v) (signed, no rescale)"
CR_INTENDED = "intended: 255 - v"

DROP_MODES = ("report", "apply")
"""``drop`` options besides None: set :attr:`Frame.dropped`, or also leave those frames out."""
MIN_ASPECT_RATIO = 0.1
MIN_GREY_LEVEL_SHARE = 0.1
NEAR_BLACK_MAX = 64


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


def exporter_array(pixels: np.ndarray, window: Window, rescale: Rescale | None, *, invert: bool = False) -> np.ndarray:
    """The exporter's array just before its ``np.uint8(...)``, dtype included (its drop rules saw this).

    Without a rescale (slope 1 and intercept 0 as Python ints) integer pixels keep their dtype and
    ``np.piecewise`` stores the window output in it, truncated (int8 cannot hold 255: int16 here).
    ``invert`` is the CR step ``np.abs(v - 255)``: it wraps around in unsigned dtypes.
    """
    windowed = apply_window(_modality_values(pixels, rescale), *window)
    if rescale is None and np.issubdtype(pixels.dtype, np.integer):
        windowed = np.floor(windowed).astype(np.int16 if pixels.dtype == np.int8 else pixels.dtype)
    return np.abs(windowed - 255) if invert else windowed


def written_image(array: np.ndarray) -> np.ndarray:
    """The exporter's ``np.uint8(array)``: integers wrap modulo 256, floats in [0, 255] truncate."""
    return array.astype(np.uint8) if np.issubdtype(array.dtype, np.integer) else _to_uint8(array)


def _written_label(dtype: np.dtype, rescale: Rescale | None) -> str:
    if rescale is not None:
        return CR_WRITTEN_RESCALED
    if not np.issubdtype(dtype, np.integer):
        return CR_WRITTEN_FLOAT
    return CR_WRITTEN_SIGNED if np.issubdtype(dtype, np.signedinteger) else CR_WRITTEN_UNSIGNED


def cr_inversion(ds: Dataset) -> tuple[bool, str]:
    """(invert, label) for a CR dataset: the exporter inverted when PresentationLUTShape is absent or
    exactly ``"INVERSE"`` (PhotometricInterpretation not consulted); ``label`` says why it did not."""
    if "PresentationLUTShape" not in ds:
        return True, ""
    shape = ds.PresentationLUTShape
    return shape == "INVERSE", f"none (PresentationLUTShape {shape or 'empty'})"


def export_frame(pixels: np.ndarray, window: Window, rescale: Rescale | None, *, invert: bool = False,
                 cr_rule: str = "written") -> tuple[np.ndarray, np.ndarray, str | None]:
    """(8-bit frame, :func:`exporter_array`, CR label) for one exported frame.

    ``invert`` (CR only): ``cr_rule="written"`` gives what the exporter wrote (label ``CR_WRITTEN_*``),
    ``"intended"`` gives ``255 - v`` on the window output as the exporter held it (truncated first
    on the integer path), never wrapped (label :data:`CR_INTENDED`). The label is None otherwise.
    """
    array = exporter_array(pixels, window, rescale, invert=invert)
    if not invert:
        return written_image(array), array, None
    if cr_rule == "written":
        return written_image(array), array, _written_label(pixels.dtype, rescale)
    plain = exporter_array(pixels, window, rescale)
    return _to_uint8(255.0 - plain.astype(np.float64)), array, CR_INTENDED


def check_options(cr_rule: str, drop: str | None) -> None:
    """Refuse a ``cr_rule`` outside :data:`CR_RULES` or a ``drop`` outside None and :data:`DROP_MODES`."""
    if cr_rule not in CR_RULES:
        raise BadInputError(f"cr_rule must be one of {', '.join(CR_RULES)}, got {cr_rule!r}")
    if drop is not None and drop not in DROP_MODES:
        raise BadInputError(f"drop must be None, {' or '.join(DROP_MODES)}, got {drop!r}")


def export_drop_reason(array: np.ndarray) -> str | None:
    """Why the exporter's drop rules (its ``shape_policy`` and ``value_policy``, threshold 0.1) reject
    ``array``; None when it is kept. Give it :func:`exporter_array` for an exact answer, or any frame.

    * ``"aspect ratio below 0.1"``: shorter / longer side < 0.1 (the first two axes);
    * ``"too few grey levels: ..."``: the maximum m is below 1 (black) or below 64 (near black:
      ``int(log2(m)) + 1 < 7``), or the values occupy at most 10% of the ``2**bits - 1`` unit-wide
      bins from 0 to ``2**bits - 1`` (``bits = int(log2(m)) + 1``, log2 in the array's own precision).
    """
    rows, columns = array.shape[:2]
    if min(rows, columns) / max(rows, columns) < MIN_ASPECT_RATIO:
        return f"aspect ratio below {MIN_ASPECT_RATIO} ({rows} x {columns})"
    top = np.max(array)
    if top < 1:
        return "too few grey levels: black (maximum below 1)"
    bits = int(np.log2(top)) + 1
    if bits < 7:
        return f"too few grey levels: near black (maximum {top} below {NEAR_BLACK_MAX})"
    bins = 2**bits - 1
    hist, _ = np.histogram(np.ravel(array), bins=np.linspace(0, bins, bins + 1))
    used = int(np.count_nonzero(hist))
    if used / bins > MIN_GREY_LEVEL_SHARE:
        return None
    return f"too few grey levels: {used} of {bins} levels used (at most {MIN_GREY_LEVEL_SHARE:.0%})"


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
    ``exact`` False means an export slip is not reproduced (best-effort rule ``"window"``);
    ``dropped`` is set where the slip made the export drop the image whatever the pixels."""

    frame: int
    window: Window | None
    rescale: Rescale | None = None
    exact: bool = True
    note: str = ""
    dropped: str | None = None


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
                                  note="MR frame without a per-frame rescale (the export used slope 0 here)",
                                  dropped="too few grey levels: constant (the export used slope 0 here)"))
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
