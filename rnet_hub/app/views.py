"""What the app shows of an uploaded file: every image the exporter rules make, why, and the model input.

Each image is a :class:`~rnet_hub.imaging.dicom.Frame` from
:func:`~rnet_hub.imaging.dicom.load_frames` with ``drop="report"`` (frames of multi-frame
files, one image per window for CT/XA, frames the exporter would have dropped marked with the
reason), described by :func:`frame_metadata` (modality, rule, window, rescale, CR rule, drop
reason) and paired with the exact tensor the model gets from
:func:`~rnet_hub.imaging.transforms.create_transform`, previewed at the model's native size
by :func:`input_preview`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..imaging.dicom import Frame, is_dicom, load_frames
from ..imaging.transforms import ImageTransform

__all__ = ["METADATA_COLUMNS", "ImageView", "dicom_rescale", "frame_metadata", "frame_preview", "input_preview",
           "read_views"]

#: The columns of the metadata table, in order (:meth:`ImageView.row`).
METADATA_COLUMNS = ("#", "file", "frame", "modality", "rule", "window (centre/width)", "rescale (slope/intercept)",
                    "CR rule", "dropped by the exporter", "size", "note")


@dataclass(frozen=True)
class ImageView:
    """One image made of an uploaded file: the frame, what decided it, and the model's input tensor (C, H, W)."""

    number: int
    name: str
    frame: Frame
    metadata: dict[str, str]
    model_input: torch.Tensor

    @property
    def caption(self) -> str:
        """A short gallery caption: number, file, frame, rule and window."""
        meta = self.metadata
        window = f", W {meta['window (centre/width)']}" if meta["window (centre/width)"] != "-" else ""
        dropped = " - DROPPED" if meta["dropped by the exporter"] != "-" else ""
        return f"#{self.number} {self.name} frame {self.frame.frame} ({self.frame.rule}{window}){dropped}"

    def row(self) -> list[str]:
        """The image's row of the metadata table (:data:`METADATA_COLUMNS`)."""
        return [self.metadata[column] for column in METADATA_COLUMNS]


def _number(value: float) -> str:
    return f"{value:g}"


def read_header(path: str | os.PathLike[str]) -> Any | None:
    """The DICOM header of ``path`` without pixel data, or None for a file that is not DICOM (or not readable)."""
    try:
        if not is_dicom(path):
            return None
        import pydicom

        return pydicom.dcmread(os.fspath(path), stop_before_pixels=True, force=True)
    except Exception:
        return None


def dicom_rescale(header: Any, frame: int) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) that applies to ``frame``: the per-frame functional group, the shared
    one, then the top level, as the exporter looked; None when neither source holds both."""
    sources = []
    for sequence, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
            sources.append(getattr(header, sequence)[index].PixelValueTransformationSequence[0])
    sources.append(header)
    for item in sources:
        try:
            return float(item.RescaleSlope), float(item.RescaleIntercept)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return None


def frame_metadata(frame: Frame, *, number: int, name: str, header: Any | None = None) -> dict[str, str]:
    """What decided the image, as text for the metadata table (:data:`METADATA_COLUMNS`)."""
    if frame.rule == "image":
        rule = "image (not DICOM: used as it is)"
    elif frame.faithful:
        rule = "export (as the pretraining exporter wrote it)"
    else:
        rule = f"{frame.rule} (best effort: the exporter wrote no image here)"
    rescale = "-"
    if header is not None:
        found = dicom_rescale(header, frame.frame)
        rescale = f"{_number(found[0])} / {_number(found[1])}" if found else "absent (slope 1, intercept 0)"
    window = f"{_number(frame.window[0])} / {_number(frame.window[1])}" if frame.window else "-"
    shape = frame.pixels.shape
    return {
        "#": str(number), "file": name, "frame": str(frame.frame), "modality": frame.modality or "-", "rule": rule,
        "window (centre/width)": window, "rescale (slope/intercept)": rescale, "CR rule": frame.cr_rule or "-",
        "dropped by the exporter": frame.dropped or "-",
        "size": f"{shape[0]} x {shape[1]}{' x 3' if len(shape) == 3 else ''} {frame.pixels.dtype}",
        "note": frame.note or "-",
    }


def frame_preview(frame: Frame) -> np.ndarray:
    """The frame as an 8-bit image for display (16-bit and float images scaled to 0-255)."""
    pixels = frame.pixels
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return np.rint(pixels / 257.0).astype(np.uint8)
    return np.clip(np.rint(pixels.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def input_preview(model_input: torch.Tensor, config: dict[str, Any]) -> np.ndarray:
    """The model input (C, H, W) as the 8-bit image it encodes, at its native size: ``x * std + mean``, x 255.

    Grey (H, W) when every channel holds the same values (the grey channel replicated), else (H, W, 3)."""
    array = model_input.detach().cpu().numpy().astype(np.float64)
    channels = array.shape[0]
    mean = np.asarray(config["mean"], dtype=np.float64)[:channels].reshape(-1, 1, 1)
    std = np.asarray(config["std"], dtype=np.float64)[:channels].reshape(-1, 1, 1)
    image = np.clip(np.rint((array * std + mean) * 255.0), 0, 255).astype(np.uint8)
    if channels == 1 or all(np.array_equal(image[0], image[c]) for c in range(1, channels)):
        return image[0]
    return image.transpose(1, 2, 0)


def read_views(path: str | os.PathLike[str], *, transform: ImageTransform, name: str | None = None,
               first_number: int = 1) -> list[ImageView]:
    """Every image the exporter rules make of ``path`` (numbered from ``first_number``) with its metadata
    and model input.

    Raises:
        ImageReadError: the file is not an image or DICOM file, is empty or corrupt.
        MissingExtraError: a DICOM file whose pixel data needs a decoder that is not installed.
    """
    name = name or os.path.basename(os.fspath(path))
    frames = load_frames(path, drop="report")
    header = read_header(path) if any(f.rule != "image" for f in frames) else None
    return [ImageView(number=first_number + i, name=name, frame=frame,
                      metadata=frame_metadata(frame, number=first_number + i, name=name, header=header),
                      model_input=transform(frame))
            for i, frame in enumerate(frames)]
