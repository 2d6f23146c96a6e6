"""Pixels as the RadiologyNET models saw them in pretraining: DICOM frames, then model inputs.

The public names of :mod:`rnet_hub.imaging.dicom` (step 1: DICOM -> 8-bit frames, with the
exporter's rules) and :mod:`rnet_hub.imaging.transforms` (step 2: frame -> model input), in
one place, as before the imaging code was split by job.
"""

from __future__ import annotations

from .imaging.dicom import (
    CR_RULES,
    DROP_MODES,
    EXPORT_MODALITIES,
    FALLBACK_PERCENTILES,
    PRETRAINING_EXPORT_SIZE,
    Frame,
    apply_window,
    export_drop_reason,
    is_dicom,
    load_dicom,
    load_frames,
)
from .imaging.transforms import ImageTransform, create_transform, resolve_input_config

__all__ = [
    "CR_RULES",
    "DROP_MODES",
    "EXPORT_MODALITIES",
    "FALLBACK_PERCENTILES",
    "PRETRAINING_EXPORT_SIZE",
    "Frame",
    "ImageTransform",
    "apply_window",
    "create_transform",
    "export_drop_reason",
    "is_dicom",
    "load_dicom",
    "load_frames",
    "resolve_input_config",
]
