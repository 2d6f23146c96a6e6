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
* CR: what the exporter *wrote* (``cr_rule="written"``, the default; :attr:`Frame.cr_rule`
  names the branch). It meant ``255 - v`` when PresentationLUTShape is absent or ``"INVERSE"``
  (PhotometricInterpretation not consulted) and wrote ``np.uint8(np.abs(v - 255))``, so:
  ``"written: floor(255 - v) (rescale present)"`` (RescaleSlope and RescaleIntercept both read:
  v is a float; also ``"... (float pixels)"``); ``"written: (floor(v) + 1) mod 256 (unsigned, no
  rescale)"`` (either tag absent, PixelRepresentation 0, the usual CR: v is truncated into the
  pixels' dtype and ``v - 255`` wraps: *not* inverted, 255 becomes 0); ``"written: 255 - floor(v)
  (signed, no rescale)"``; ``"none (PresentationLUTShape IDENTITY)"`` (or any other value).
  ``cr_rule="intended"`` gives ``255 - v`` (v truncated first where the exporter truncated it),
  labelled ``"intended: 255 - v"``, never :attr:`Frame.faithful`.
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
* Drop rules (the exporter's ``shape_policy`` and ``value_policy``) on its array before the
  uint8 cast, with ``drop="report"`` (:attr:`Frame.dropped` says why) or ``"apply"`` (left out);
  by default every frame is returned. ``"aspect ratio below 0.1"``; ``"too few grey levels"``:
  maximum m < 1 (black) or < 64 (near black), or at most 10% of the ``2**bits - 1`` unit bins
  up to ``2**bits - 1`` used, ``bits = int(log2(m)) + 1`` (numbers read from the public toolset;
  the facts file says only "near-black or almost constant"). So an unsigned CR without rescale
  whose inversion wrapped in 16 bits is reported dropped. Frames the export did not write are
  checked on their 8-bit pixels; MR frames of the slope-0 slip are always dropped.

Best-effort rules (:attr:`Frame.faithful` is false), in this order:

* ``"rgb"``: colour images (RGB/YBR, converted by pydicom; PALETTE COLOR through its LUT),
  scaled to 8 bits by their bit depth.
* ``"voi-lut"``: a VOI LUT Sequence, applied with pydicom, scaled from the LUT's range to 0-255.
* ``"window"``: the first window found (per-frame functional groups, then shared ones,
  then the top level), with the export's linear formula - the closest to what the model saw.
* ``"percentile"``: no window at all: the export's linear window from the 0.5th to the
  99.5th percentile of the modality values (min-max when those coincide).
* MONOCHROME1 frames made by a best-effort rule are inverted so that bone is bright.

Hostile files: only regular files (or symlinks to them) are opened; FIFOs, sockets, devices
and dangling symlinks raise :class:`~rnet_hub.errors.ImageReadError` unopened. A DICOM header
whose Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8 is larger than the
pixel data the file holds (uncompressed) or than :data:`MAX_PIXEL_BYTES` (compressed; the
``RNET_HUB_MAX_PIXEL_BYTES`` environment variable overrides it) is refused before decoding.

pydicom and OpenCV are optional (``pip install "rnet-hub[dicom]"``, ``"rnet-hub[faithful]"``);
compressed transfer syntaxes need pydicom's pixel handlers (``"rnet-hub[dicom-codecs]"``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import BadInputError, ImageReadError, MissingExtraError
from ..files import regular_file_problem
from .export_rules import (
    CR_RULES,
    DROP_MODES,
    EXPORT_MODALITIES,
    FALLBACK_PERCENTILES,
    Window,
    apply_window,
    best_effort_grey,
    check_options,
    colour_frame,
    cr_inversion,
    export_drop_reason,
    export_frame,
    export_plan,
)

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "CR_RULES",
    "DROP_MODES",
    "EXPORT_MODALITIES",
    "FALLBACK_PERCENTILES",
    "MAX_PIXEL_BYTES",
    "PRETRAINING_EXPORT_SIZE",
    "Frame",
    "apply_window",
    "export_drop_reason",
    "is_dicom",
    "load_dicom",
    "load_frames",
]

PRETRAINING_EXPORT_SIZE = 224
_DICOM_EXTRA = 'pip install "rnet-hub[dicom]"'
_CODECS_EXTRA = 'pip install "rnet-hub[dicom-codecs]"'

MAX_PIXEL_BYTES = 2 * 1024**3
"""Most decoded bytes a compressed DICOM may claim (``RNET_HUB_MAX_PIXEL_BYTES`` overrides it)."""
_MAX_PIXEL_BYTES_ENV = "RNET_HUB_MAX_PIXEL_BYTES"

@dataclass(frozen=True)
class Frame:
    """One 8-bit image from a file, and how it was made.

    ``pixels`` is ``uint8`` (H, W) for grey or (H, W, 3) for colour (for non-DICOM images
    loaded by :func:`load_frames` it keeps the file's depth: uint8 or uint16).
    ``rule`` is ``"export"`` (pretraining-faithful), ``"window"``, ``"voi-lut"``,
    ``"percentile"``, ``"rgb"`` (best-effort) or ``"image"`` (not DICOM). ``frame`` is the
    0-based frame number in the file; ``window`` the (center, width) applied, if any;
    ``note`` says why a best-effort rule was used. ``cr_rule`` names the CR inversion rule
    applied to an exported CR frame (``"written: ..."``, ``"intended: 255 - v"`` or
    ``"none (PresentationLUTShape ...)"``), None otherwise. ``dropped`` is the exporter's drop
    reason (``"aspect ratio below 0.1 ..."``, ``"too few grey levels: ..."``) when asked for with
    ``drop=``, else None. ``series_instance_uid`` and ``study_instance_uid`` are the DICOM file's
    (None when absent or not DICOM), for grouping embeddings by series or study.
    """

    pixels: np.ndarray
    rule: str
    frame: int = 0
    window: Window | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    path: str | None = None
    note: str = ""
    cr_rule: str | None = None
    dropped: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None

    @property
    def faithful(self) -> bool:
        """True when the frame is exactly what the pretraining export wrote (never with ``cr_rule="intended"``)."""
        return self.rule == "export" and not (self.cr_rule or "").startswith("intended")


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------

def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise MissingExtraError(f"reading DICOM needs pydicom: {_DICOM_EXTRA}") from exc
    return pydicom


def _require_regular_file(where: str) -> None:
    """Refuse, without opening it, anything but a regular file or a symlink to one (see :mod:`rnet_hub.files`)."""
    problem = regular_file_problem(where)
    if problem is not None:
        suffix = "; only regular files are read" if problem.endswith("not a regular file") else ""
        raise ImageReadError(problem + suffix)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True when the file carries the DICOM preamble marker ``DICM`` at byte 128 (False, unopened,
    for anything but a regular file: a FIFO, a socket, a device)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return False
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
    _check_pixel_size(ds, where, syntax)
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


def _max_pixel_bytes() -> int:
    given = os.environ.get(_MAX_PIXEL_BYTES_ENV, "").strip()
    if not given:
        return MAX_PIXEL_BYTES
    try:
        return int(given)
    except ValueError:
        raise BadInputError(f"{_MAX_PIXEL_BYTES_ENV} must be a whole number of bytes, got {given!r}") from None


def _size(count: int) -> str:
    """``count`` bytes for people: 8.0 GiB, 12.3 MiB, 512 bytes."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def _check_pixel_size(ds: Dataset, where: str, syntax: Any) -> None:
    """Refuse a header that claims more pixels than the file could hold before pydicom allocates them:
    uncompressed pixel data must be in the file; compressed data may decode to at most the ceiling."""
    try:
        rows, columns, samples, bits = (int(ds.get(k) or 0) for k in ("Rows", "Columns", "SamplesPerPixel",
                                                                       "BitsAllocated"))
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{where}: an image size tag (Rows, Columns, NumberOfFrames, SamplesPerPixel, "
                             f"BitsAllocated) is not a number ({exc})") from exc
    samples = max(samples, 1)
    claimed = (rows * columns * frames * samples * bits + 7) // 8
    what = (f"{where} claims {frames} frame{'s' if frames != 1 else ''} of {rows} x {columns} x {samples} "
            f"sample{'s' if samples != 1 else ''} at {bits} bits = {_size(claimed)}")
    if syntax is not None and syntax.is_compressed:
        ceiling = _max_pixel_bytes()
        if claimed > ceiling:
            raise ImageReadError(f"{what} decoded, more than the {_size(ceiling)} allowed for compressed pixel "
                                 f"data (set {_MAX_PIXEL_BYTES_ENV} to allow more)")
        return
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        claimed = claimed * 2 // 3  # stored with the chroma halved
    data = ds.get("PixelData")
    held = len(data) if isinstance(data, bytes | bytearray) else 0
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str) and os.path.isfile(filename):
        held = max(held, os.path.getsize(filename))
    if claimed > held:
        raise ImageReadError(f"{what}, more than the file holds ({_size(held)})")


def _split_frames(ds: Dataset, pixels: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """The 2-D (grey) or (H, W, 3) (colour) frames, and whether pydicom gave several (as the export saw it)."""
    colour = int(ds.get("SamplesPerPixel", 1)) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if pixels.ndim == (3 if colour else 2):
        return [pixels], False
    return list(pixels), True


def load_dicom(path: str | os.PathLike[str] | Dataset, *, cr_rule: str = "written",
               drop: str | None = None) -> list[Frame]:
    """The 8-bit frame(s) of a DICOM file (or dataset), as the pretraining export made them.

    See the module docstring for the rules; :attr:`Frame.rule` and :attr:`Frame.faithful`
    tell pretraining-faithful frames from best-effort ones. ``cr_rule``: ``"written"`` (what the
    exporter wrote for CR) or ``"intended"`` (the inversion it meant). ``drop``: None (every
    frame, unchecked), ``"report"`` (every frame, :attr:`Frame.dropped` set) or ``"apply"``
    (frames the exporter dropped are left out).
    """
    check_options(cr_rule, drop)
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    if isinstance(path, pydicom.Dataset):
        ds, where = path, str(getattr(path, "filename", None) or "dataset")
    else:
        where = os.fspath(path)
        _require_regular_file(where)
        try:
            ds = pydicom.dcmread(where, force=True)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            raise ImageReadError(f"{where} is not a readable DICOM file ({exc})") from exc
    pixels = _decode(ds, where)
    frames, multi = _split_frames(ds, pixels)
    common = {"sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
              "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) or None,
              "study_instance_uid": str(ds.get("StudyInstanceUID", "")) or None,
              "modality": str(ds.get("Modality", "")) or None, "path": None if where == "dataset" else where}
    if frames[0].ndim == 3:
        out = []
        for i, f in enumerate(frames):
            image = colour_frame(ds, f)
            out.append(Frame(image, "rgb", frame=i, note="colour image",
                             dropped=export_drop_reason(image) if drop else None, **common))
    else:
        out = _grey_frames(ds, frames, multi, common, cr_rule, bool(drop))
    return [f for f in out if f.dropped is None] if drop == "apply" else out


def _grey_frames(ds: Dataset, frames: list[np.ndarray], multi: bool, common: dict[str, Any], cr_rule: str,
                 check: bool) -> list[Frame]:
    modality = common["modality"] or ""
    invert, not_inverted = cr_inversion(ds) if modality == "CR" else (False, "")
    out = []
    for plan in export_plan(ds, modality, len(frames), multi):
        pixels = frames[plan.frame]
        if plan.window is not None:
            image, array, label = export_frame(pixels, plan.window, plan.rescale, invert=invert, cr_rule=cr_rule)
            dropped = None if not check else export_drop_reason(array) if plan.exact \
                else plan.dropped or export_drop_reason(image)
            out.append(Frame(image, "export" if plan.exact else "window", frame=plan.frame, window=plan.window,
                             note="" if plan.exact else plan.note, dropped=dropped,
                             cr_rule=label or not_inverted or None, **common))
        else:
            image, rule, window = best_effort_grey(ds, pixels, plan.frame)
            out.append(Frame(image, rule, frame=plan.frame, window=window, note=plan.note,
                             dropped=export_drop_reason(image) if check else None, **common))
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


def load_frames(path: str | os.PathLike[str], *, cr_rule: str = "written", drop: str | None = None) -> list[Frame]:
    """The image(s) in a file: DICOM (recognised by its header) through :func:`load_dicom`
    (``cr_rule`` and ``drop`` are passed on), anything PIL reads (PNG, JPEG, ... 8 or 16 bit)
    as one frame with rule ``"image"``, never checked or dropped.
    Headerless DICOM files (no preamble) are tried with pydicom when PIL cannot read them."""
    check_options(cr_rule, drop)
    where = os.fspath(path)
    _require_regular_file(where)
    try:
        dicom = is_dicom(where)
    except OSError as exc:  # missing, a folder, no permission
        raise ImageReadError(f"{where} cannot be read: {exc.strerror or exc}") from exc
    if dicom:
        return load_dicom(where, cr_rule=cr_rule, drop=drop)
    try:
        with Image.open(where) as image:
            pixels = pil_to_array(image)
    except (OSError, SyntaxError) as exc:  # PIL raises UnidentifiedImageError (an OSError)
        try:
            return load_dicom(where, cr_rule=cr_rule, drop=drop)
        except (ValueError, ImportError):
            raise ImageReadError(f"{where} is neither an image PIL can read nor a DICOM file ({exc})") from exc
    return [Frame(pixels, "image", path=where)]
