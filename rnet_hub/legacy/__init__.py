"""The original side: the RadiologyNET wrapper topologies and everything that reads their checkpoints.

* :mod:`.topology`: the ten wrappers rebuilt from the architecture table (the reference every
  conversion is verified against), and the original constructor style
  (``rnet_hub.legacy.ResNet50(pretrained=False, number_of_classes=10)``);
* :mod:`.checkpoint`: safe reading of archives, ``.pth`` files and URLs (``weights_only=True``);
* :mod:`.keymap`: one pure key-renaming function per family, legacy -> timm;
* :mod:`.recognise`: the one architecture recogniser, used by conversion and transfer alike.
"""

from __future__ import annotations

from .checkpoint import LegacyCheckpoint, find_state_dict, open_legacy_checkpoint, safe_torch_load
from .keymap import check_against, legacy_to_timm
from .recognise import detect_architecture, head_keys
from .topology import *  # noqa: F403  (the ten original-style classes, named like the originals)
from .topology import LegacyWrapper, build, build_on_meta, build_with_state, legacy_class
from .topology import __all__ as _topology_names

__all__ = [
    "LegacyCheckpoint",
    "LegacyWrapper",
    "build",
    "build_on_meta",
    "build_with_state",
    "check_against",
    "detect_architecture",
    "find_state_dict",
    "head_keys",
    "legacy_class",
    "legacy_to_timm",
    "open_legacy_checkpoint",
    "safe_torch_load",
    *[n for n in _topology_names if n[0].isupper() and n != "LegacyWrapper"],
]
