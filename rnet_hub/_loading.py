"""Building timm models from converted folders without wasting time on random init.

The model is built on the meta device (no memory, no initialisation) and the safetensors
weights are assigned into it, which gives exactly the weights timm's own loader would
(the tests compare the two) at a fraction of the time and memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import nn

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ConvertedFolderError",
    "assign_state",
    "build_timm_on_meta",
    "ensure_materialised",
    "load_timm_from_dir",
    "read_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ConvertedFolderError(ValueError):
    """A folder that is not a converted RadiologyNET/timm model folder."""


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The timm ``config.json`` of a converted folder."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file() or not (Path(model_dir) / WEIGHTS_NAME).is_file():
        raise ConvertedFolderError(f"{model_dir} is not a converted model folder (it needs {CONFIG_NAME} and "
                                   f"{WEIGHTS_NAME}); create one with `rnet-hub convert ARCHIVE --out DIR`")
    return json.loads(path.read_text())


def build_timm_on_meta(architecture: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(architecture, **kwargs)`` with every tensor on the meta device."""
    with torch.device("meta"):
        return timm.create_model(architecture, pretrained=False, **kwargs)


def assign_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into a meta-built model by assignment and check nothing stayed on meta."""
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return ensure_materialised(model)


def ensure_materialised(model: nn.Module) -> nn.Module:
    """Fail if any parameter or buffer is still on the meta device (i.e. was never filled)."""
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors not filled by the checkpoint: {leftovers[:5]}")
    return model


def load_timm_from_dir(model_dir: str | os.PathLike[str]) -> nn.Module:
    """The timm model of a converted folder, with its weights, in eval mode."""
    config = read_config(model_dir)
    model = build_timm_on_meta(config["architecture"], num_classes=config["num_classes"],
                               pretrained_cfg=config["pretrained_cfg"], **config.get("model_args", {}))
    weights = safetensors.torch.load_file(Path(model_dir) / WEIGHTS_NAME, device="cpu")
    return assign_state(model, weights).eval()
