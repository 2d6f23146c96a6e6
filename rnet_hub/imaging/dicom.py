"""DICOM (and ordinary image) files as 8-bit frames, exactly as the pretraining exporter wrote them.

The first of the two preprocessing steps; :mod:`rnet_hub.imaging.transforms` is the second.

Two steps, as in pretraining (facts file, "Preprocessing used in pretraining"):

1. :func:`load_dicom` turns a DICOM file into 8-bit frames exactly as the pretraining export
   did for the six exported modalities (MR, CR, NM, CT, RF, XA), and by a documented
   best-effort rule otherwise. Every :class:`Frame` says which rule made it.
2. :func:`create_transform` turns any image (a :class:`Frame`, an 8/16-bit PNG or JPEG file,
   a PIL image, a numpy array or a torch tensor; grey or RGB) into the model input described
   by the model's timm ``pretrained_cfg``: letterboxed to the native size, /255, normalised,
   with 3 channels (or 1 for ``in_chans=1`` models). ``faithful=True`` reproduces the
   pretraining resize chain exactly instead (see :class:`ImageTransform`).

Export rules (rule ``"export"``, :attr:`Frame.faithful` is true), read from the public
exporter: modality values = stored x RescaleSlope + RescaleIntercept (1 and 0 unless both
read as single numbers; without them the integer pixels are windowed as they are); the
linear window of :func:`apply_window`, truncated to uint8 (floor):

* MR, CR, NM, RF: one window, WindowCenter/WindowWidth read as single numbers. A file with
  several windows (or none) was *skipped* by the export (``float()`` of a multi-value
  fails), so such frames get the best-effort rule below, using the first window.
* CT and XA: one frame per listed window. CT with several windows also needs
  WindowCenterWidthExplanation (0028,1055), as the exporter checked (else skipped).
* CR: after windowing, ``255 - v`` when PresentationLUTShape is ``"INVERSE"`` or absent
  (PhotometricInterpretation is not consulted): on the float values, then truncated, when a
  rescale is given; on the already truncated values otherwise (the exporter windowed integer
  pixels in their own dtype). This follows the facts file; note that for *unsigned* pixels
  without rescale tags the exporter's ``np.abs(v - 255)`` wrapped around in uint16 and
  actually wrote ``(v + 1) mod 256``, which is not reproduced.
* Multi-frame: MR takes each frame's window (and rescale) from the per-frame functional
  groups; NM takes the per-frame window where present, else the top-level one (the
  facts file; the exporter's code read the top-level one only, the same for NM objects,
  which carry no functional groups); XA windows
  every frame with the top-level windows. The exporter wrote nothing for multi-frame CT, CR
  and RF, nor for MR frames without a per-frame window: those get the best-effort rule.
  Two export slips are *not* reproduced (the frames they produced were dropped or
  garbled): MR frames without a per-frame rescale (the export used slope 0, a constant
  image; here the shared/top-level rescale is used and the rule is ``"window"``), and XA
  multi-frame files with several windows, where the export windowed the already windowed
  pixels for the second window on (here each window is applied to the modality values;
  windows after the first are labelled ``"window"``).
* Not reproduced either: the export's drop rules (aspect ratio < 0.1, too few grey levels);
  :func:`load_dicom` returns every frame.

Best-effort rules (:attr:`Frame.faithful` is false), in this order:

* ``"rgb"``: colour images (RGB/YBR, converted by pydicom; PALETTE COLOR through its LUT),
  scaled to 8 bits by their bit depth.
* ``"voi-lut"``: a VOI LUT Sequence, applied with pydicom, scaled from the LUT's range to 0-255.
* ``"window"``: the first window found (per-frame functional groups, then shared ones,
  then the top level), with the export's linear formula - the closest to what the model saw.
* ``"percentile"``: no window at all: the export's linear window from the 0.5th to the
  99.5th percentile of the modality values (min-max when those coincide).
* MONOCHROME1 frames made by a best-effort rule are inverted so that bone is bright.

pydicom and OpenCV are optional (``pip install "rnet-hub[dicom]"``, ``"rnet-hub[faithful]"``);
compressed transfer syntaxes need pydicom's pixel handlers (``"rnet-hub[dicom-codecs]"``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import ImageReadError, MissingExtraError

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "EXPORT_MODALITIES",
    "FALLBACK_PERCENTILES",
    "PRETRAINING_EXPORT_SIZE",
    "Frame",
    "apply_window",
    "is_dicom",
    "load_dicom",
    "load_frames",
]

EXPORT_MODALITIES = ("MR", "CR", "NM", "CT", "RF", "XA")
PRETRAINING_EXPORT_SIZE = 224
FALLBACK_PERCENTILES = (0.5, 99.5)

_SINGLE_WINDOW_MODALITIES = ("MR", "CR", "NM", "RF")
_DICOM_EXTRA = 'pip install "rnet-hub[dicom]"'
_CODECS_EXTRA = 'pip install "rnet-hub[dicom-codecs]"'

Window = tuple[float, float]
Rescale = tuple[float, float]


@dataclass(frozen=True)
class Frame:
    """One 8-bit image from a file, and how it was made.

    ``pixels`` is ``uint8`` (H, W) for grey or (H, W, 3) for colour (for non-DICOM images
    loaded by :func:`load_frames` it keeps the file's depth: uint8 or uint16).
    ``rule`` is ``"export"`` (pretraining-faithful), ``"window"``, ``"voi-lut"``,
    ``"percentile"``, ``"rgb"`` (best-effort) or ``"image"`` (not DICOM). ``frame`` is the
    0-based frame number in the file; ``window`` the (center, width) applied, if any;
    ``note`` says why a best-effort rule was used.
    """

    pixels: np.ndarray
    rule: str
    frame: int = 0
    window: Window | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    path: str | None = None
    note: str = ""

    @property
    def faithful(self) -> bool:
        """True when the frame is exactly what the pretraining export wrote."""
        return self.rule == "export"


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


def _export_frame(pixels: np.ndarray, window: Window, rescale: Rescale | None, *, invert: bool) -> np.ndarray:
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
class _Planned:
    """One image the exporter would write: ``window`` None means it wrote nothing (best-effort);
    ``exact`` False means an export slip is not reproduced (best-effort rule ``"window"``)."""

    frame: int
    window: Window | None
    rescale: Rescale | None = None
    exact: bool = True
    note: str = ""


def _skipped(n_frames: int, note: str) -> list[_Planned]:
    return [_Planned(i, None, note=note) for i in range(n_frames)]


def _plan_single_window(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[_Planned]:
    """MR, CR, NM, RF: one window per image."""
    if not multi:
        window = _single_window(ds)
        note = "" if window else f"{modality} without a single WindowCenter/WindowWidth: the export skipped it"
        return [_Planned(0, window, _rescale(ds), note=note)]
    if modality in ("CR", "RF"):
        return _skipped(n_frames, f"multi-frame {modality}: the export wrote nothing")
    if modality == "NM":
        return [_Planned(i, _per_frame_window(ds, i) or _single_window(ds), _rescale(ds), note="NM without a window")
                for i in range(n_frames)]
    plans = []
    for i in range(n_frames):
        window, rescale = _per_frame_window(ds, i), _per_frame_rescale(ds, i)
        if window is None:
            plans.append(_Planned(i, None, note="MR frame without a per-frame window: the export skipped it"))
        elif rescale is None:
            plans.append(_Planned(i, window, _any_rescale(ds, i), exact=False,
                                  note="MR frame without a per-frame rescale (the export used slope 0 here)"))
        else:
            plans.append(_Planned(i, window, rescale))
    return plans


def _plan_multi_window(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[_Planned]:
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
    return [_Planned(i, window, rescale, exact=not (multi and k > 0), note=slip if multi and k > 0 else "")
            for i in range(n_frames) for k, window in enumerate(windows)]


def _export_plan(ds: Dataset, modality: str, n_frames: int, multi: bool) -> list[_Planned]:
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


def _colour_frame(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
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


def _best_effort_grey(ds: Dataset, pixels: np.ndarray, frame: int) -> tuple[np.ndarray, str, Window | None]:
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


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------

def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise MissingExtraError(f"reading DICOM needs pydicom: {_DICOM_EXTRA}") from exc
    return pydicom


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True when the file carries the DICOM preamble marker ``DICM`` at byte 128."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _decode(ds: Dataset, where: str) -> np.ndarray:
    """``ds.pixel_array``, with errors that name the extra when a codec is missing."""
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        raise ImageReadError(f"{where} has no pixel data (not an image object)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as exc:
            raise ImageReadError(f"{where}: pydicom cannot decode transfer syntax {syntax.name}") from exc
        if not decoder.is_available:
            raise MissingExtraError(f"{where}: pixel data is compressed ({syntax.name}) and no decoder is installed: "
                                    f"{_CODECS_EXTRA}")
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        raise ImageReadError(f"{where}: could not decode {getattr(syntax, 'name', 'the')} pixel data ({exc}); "
                             f"{_CODECS_EXTRA} adds further decoders") from exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # missing or broken image tags
        raise ImageReadError(f"{where}: pixel data cannot be read ({exc})") from exc
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    return pixels


def _split_frames(ds: Dataset, pixels: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """The 2-D (grey) or (H, W, 3) (colour) frames, and whether pydicom gave several (as the export saw it)."""
    colour = int(ds.get("SamplesPerPixel", 1)) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if pixels.ndim == (3 if colour else 2):
        return [pixels], False
    return list(pixels), True


def load_dicom(path: str | os.PathLike[str] | Dataset) -> list[Frame]:
    """The 8-bit frame(s) of a DICOM file (or dataset), as the pretraining export made them.

    See the module docstring for the rules; :attr:`Frame.rule` and :attr:`Frame.faithful`
    tell pretraining-faithful frames from best-effort ones.
    """
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    if isinstance(path, pydicom.Dataset):
        ds, where = path, str(getattr(path, "filename", None) or "dataset")
    else:
        where = os.fspath(path)
        try:
            ds = pydicom.dcmread(where, force=True)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            raise ImageReadError(f"{where} is not a readable DICOM file ({exc})") from exc
    pixels = _decode(ds, where)
    frames, multi = _split_frames(ds, pixels)
    common = {"sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
              "modality": str(ds.get("Modality", "")) or None, "path": None if where == "dataset" else where}
    if frames[0].ndim == 3:
        return [Frame(_colour_frame(ds, f), "rgb", frame=i, note="colour image", **common)
                for i, f in enumerate(frames)]
    return _grey_frames(ds, frames, multi, common)


def _grey_frames(ds: Dataset, frames: list[np.ndarray], multi: bool, common: dict[str, Any]) -> list[Frame]:
    modality = common["modality"] or ""
    invert = modality == "CR" and ds.get("PresentationLUTShape", "INVERSE") == "INVERSE"
    out = []
    for plan in _export_plan(ds, modality, len(frames), multi):
        pixels = frames[plan.frame]
        if plan.window is not None:
            image = _export_frame(pixels, plan.window, plan.rescale, invert=invert)
            out.append(Frame(image, "export" if plan.exact else "window", frame=plan.frame, window=plan.window,
                             note="" if plan.exact else plan.note, **common))
        else:
            image, rule, window = _best_effort_grey(ds, pixels, plan.frame)
            out.append(Frame(image, rule, frame=plan.frame, window=window, note=plan.note, **common))
    return out


def pil_to_array(image: Image.Image) -> np.ndarray:
    """uint8 grey/RGB, uint16 grey or float grey from any PIL mode (alpha dropped, palette expanded)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise ImageReadError(f"{mode} image with values outside 0-65535")
        return array.astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def load_frames(path: str | os.PathLike[str]) -> list[Frame]:
    """The image(s) in a file: DICOM (recognised by its header) through :func:`load_dicom`,
    anything PIL reads (PNG, JPEG, ... 8 or 16 bit) as one frame with rule ``"image"``.
    Headerless DICOM files (no preamble) are tried with pydicom when PIL cannot read them."""
    where = os.fspath(path)
    try:
        dicom = is_dicom(where)
    except OSError as exc:  # missing, a folder, no permission
        raise ImageReadError(f"{where} cannot be read: {exc.strerror or exc}") from exc
    if dicom:
        return load_dicom(where)
    try:
        with Image.open(where) as image:
            pixels = pil_to_array(image)
    except (OSError, SyntaxError) as exc:  # PIL raises UnidentifiedImageError (an OSError)
        try:
            return load_dicom(where)
        except (ValueError, ImportError):
            raise ImageReadError(f"{where} is neither an image PIL can read nor a DICOM file ({exc})") from exc
    return [Frame(pixels, "image", path=where)]
