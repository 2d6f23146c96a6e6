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

from .version import __version__

#: Public name -> the module that defines it, imported on first use.
_LAZY_NAMES = {
    "ARCHITECTURES": ".architectures",
    "ArchSpec": ".architectures",
    "find_arch": ".architectures",
    "ModelRef": ".names",
    "parse_model_name": ".names",
    "RnetHubError": ".errors",
    "ConversionResult": ".converter",
    "convert": ".converter",
    "verify": ".converter",
    "create_model": ".loading",
    "register_pretrained_tags": ".tags",
    "TransferError": ".errors",
    "TransferReport": ".transfer",
    "transfer_weights": ".transfer",
    "embed": ".imaging.embed_engines",
    "EmbedReport": ".imaging.embed",
    "build_card": ".publish.cards",
    "push_folder": ".publish.push",
    "legacy": ".legacy",
    "finetune": ".finetune",
    "FinetuneResult": ".finetune",
    "study": ".study",
    "StudyResult": ".study",
}

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "ConversionResult",
    "EmbedReport",
    "FinetuneResult",
    "ModelRef",
    "RnetHubError",
    "StudyResult",
    "TransferError",
    "TransferReport",
    "__version__",
    "build_card",
    "convert",
    "create_model",
    "embed",
    "find_arch",
    "finetune",
    "legacy",
    "parse_model_name",
    "push_folder",
    "register_pretrained_tags",
    "study",
    "transfer_weights",
    "verify",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from . import legacy, study
    from .architectures import ARCHITECTURES, ArchSpec, find_arch
    from .converter import ConversionResult, convert, verify
    from .errors import RnetHubError, TransferError
    from .finetune import FinetuneResult, finetune
    from .imaging.embed import EmbedReport
    from .imaging.embed_engines import embed
    from .loading import create_model
    from .names import ModelRef, parse_model_name
    from .publish.cards import build_card
    from .publish.push import push_folder
    from .study import StudyResult
    from .tags import register_pretrained_tags
    from .transfer import TransferReport, transfer_weights


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rnet_hub' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if module_name == f".{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


def _register_tags(timm: ModuleType) -> None:
    """Post-import hook: the tags need timm's registry, so they are added once timm is loaded."""
    from .tags import register_pretrained_tags

    register_pretrained_tags()


wrapt.register_post_import_hook(_register_tags, "timm")
