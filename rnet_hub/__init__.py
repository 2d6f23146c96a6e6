"""rnet_hub: the RadiologyNET foundation models for timm, transformers and the Hugging Face Hub.

Importing the package registers the ten ``<timm architecture>.radiologynet`` pretrained
tags in timm (see :func:`register_pretrained_tags`).
"""

__version__ = "0.1.0"

from . import legacy
from ._convert import ConversionResult, convert, verify
from ._create import create_model
from ._table import ARCHITECTURES, ArchSpec, find_arch
from ._tags import register_pretrained_tags
from .transfer import TransferError, TransferReport, transfer_weights

register_pretrained_tags()

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "ConversionResult",
    "TransferError",
    "TransferReport",
    "__version__",
    "convert",
    "create_model",
    "find_arch",
    "legacy",
    "register_pretrained_tags",
    "transfer_weights",
    "verify",
]
