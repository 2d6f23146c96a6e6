"""Where a fine-tuned classifier looks: Grad-CAM (the ``grad-cam`` package) on the model input.

The target layer is the last feature stage timm reports (``model.feature_info[-1]["module"]``:
``layer4`` for ResNets, ``blocks.5`` for MobileNetV3-Small, ``features.norm5`` for DenseNet121,
...), the last convolutional stage before pooling. The map is computed for one class (the
predicted one by default), upsampled by Grad-CAM to the input's size and scaled to [0, 1];
:func:`overlay` blends it over the model input as a heat map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MissingExtraError

__all__ = ["cam_target_layer", "grad_cam", "overlay"]

_EXTRA = "pip install 'rnet-hub[app]'"


def cam_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of the last feature stage (timm's ``feature_info``), Grad-CAM's target layer."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info to choose a Grad-CAM layer from")
    name = info[-1]["module"]
    return name, model.get_submodule(name)


def grad_cam(model: nn.Module, model_input: torch.Tensor, class_index: int | None = None) -> np.ndarray:
    """The Grad-CAM map (H, W) of ``model_input`` (C, H, W) for ``class_index`` (default: the predicted class),
    float32 in [0, 1], at the input's size."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise MissingExtraError(f"saliency maps need the grad-cam package: {_EXTRA}") from exc
    _, layer = cam_target_layer(model)
    batch = model_input.unsqueeze(0).float()
    if class_index is None:
        with torch.inference_mode():
            class_index = int(model(batch).argmax(1).item())
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        maps: Any = cam(input_tensor=batch, targets=[ClassifierOutputTarget(class_index)])
    return np.asarray(maps[0], dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, *, weight: float = 0.45) -> np.ndarray:
    """``cam`` (H, W, values in [0, 1]) as a jet heat map blended over ``image`` (8-bit grey or RGB, same size)."""
    from matplotlib import colormaps

    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[:, :, :3] * 255.0
    blended = (1.0 - weight) * rgb.astype(np.float64) + weight * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
