"""rnet_hub: the RadiologyNET foundation models for timm, transformers and the Hugging Face Hub.

Importing the package registers the ten ``<timm architecture>.radiologynet`` pretrained
tags in timm (see :func:`register_pretrained_tags`): at once when timm is already imported,
otherwise the moment it is (a ``wrapt`` post-import hook). ``import rnet_hub`` itself is
instant; the public names below import their modules, and so torch and timm (5-7 s), on
first use. That lets ``rnet-hub convert`` start decompressing an archive before it imports
torch, and ``rnet-hub --help`` answer at once.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first use.
_LAZY_NAMES = {
    "ARCHITECTURES": "._table",
    "ArchSpec": "._table",
    "find_arch": "._table",
    "ConversionResult": "._convert",
    "convert": "._convert",
    "verify": "._convert",
    "create_model": "._create",
    "register_pretrained_tags": "._tags",
    "TransferError": ".transfer",
    "TransferReport": ".transfer",
    "transfer_weights": ".transfer",
    "legacy": ".legacy",
}

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

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from . import legacy
    from ._convert import ConversionResult, convert, verify
    from ._create import create_model
    from ._table import ARCHITECTURES, ArchSpec, find_arch
    from ._tags import register_pretrained_tags
    from .transfer import TransferError, TransferReport, transfer_weights


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rnet_hub' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if name == module_name.lstrip(".") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


def _register_tags(timm: ModuleType) -> None:
    """Post-import hook: the tags need timm's registry, so they are added once timm is loaded."""
    from ._tags import register_pretrained_tags

    register_pretrained_tags()


wrapt.register_post_import_hook(_register_tags, "timm")
