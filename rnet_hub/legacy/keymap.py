"""Legacy wrapper state dict -> timm state dict, one pure function per family.

Each function takes the legacy ``model_state`` (already stripped of ``module.``) and
returns a new dict with timm's names and shapes. Tensors are passed through (or reshaped
as views), never copied, so an mmapped checkpoint stays file-backed.
:func:`check_against` then proves that the result fills a timm model exactly: same key
set, same shapes, nothing left unmapped on either side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

import torch

from ..architectures import ArchSpec
from ..errors import KeyMapError

__all__ = ["check_against", "legacy_to_timm"]

StateDict = Mapping[str, torch.Tensor]




def _strip_model_prefix(state_dict: StateDict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in state_dict.items()}


def map_resnet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """``model.conv1.weight`` -> ``conv1.weight``: timm's ResNet uses torchvision's names."""
    return _strip_model_prefix(state_dict)


def map_inception(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Strip ``model.`` and drop the never-trained ``AuxLogits`` head (timm builds none)."""
    return {k: v for k, v in _strip_model_prefix(state_dict).items() if not k.startswith("AuxLogits.")}


def map_densenet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Keep one copy of each duplicated module (``features.*``/``model.features.*`` share storage).

    timm's DenseNet uses torchvision's ``features``/``classifier`` names; its ``norm5`` is a
    BatchNorm+ReLU, which matches the legacy forward's explicit ReLU.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        mapped.setdefault(key.removeprefix("model."), tensor)
    return mapped


def map_vgg(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """``classifier.0/3/6`` -> ``pre_logits.fc1`` (7x7 conv) / ``pre_logits.fc2`` (1x1 conv) / ``head.fc``."""
    renames = {"classifier.0": ("pre_logits.fc1", (512, 7, 7)),
               "classifier.3": ("pre_logits.fc2", (4096, 1, 1)),
               "classifier.6": ("head.fc", None)}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        new_prefix, conv_shape = renames.get(prefix, (prefix, None))
        if conv_shape is not None and leaf == "weight":
            tensor = tensor.reshape(tensor.shape[0], *conv_shape)
        mapped[f"{new_prefix}.{leaf}"] = tensor
    return mapped


# ----------------------------------------------------------------------------- MBConv families
_CONV_LAYER = re.compile(r"^(?P<block>.+)\.block\.(?P<layer>\d+)\.(?P<rest>.+)$")


def _block_layers(keys: list[str], block: str) -> list[tuple[int, bool]]:
    """(layer index, is squeeze-excite) for each layer of a torchvision MBConv/InvertedResidual."""
    layers: dict[int, bool] = {}
    for key in keys:
        match = _CONV_LAYER.match(key)
        if match and match["block"] == block:
            layers[int(match["layer"])] = match["rest"].startswith("fc")
    return sorted(layers.items())


def _timm_layer_names(layers: list[tuple[int, bool]]) -> dict[int, tuple[str, ...]]:
    """Name each torchvision layer as timm does.

    Conv layers are [expand] depthwise project: with an expansion timm builds an
    ``InvertedResidual`` (conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3), without one a
    ``DepthwiseSeparableConv`` (conv_dw/bn1, conv_pw/bn2). Squeeze-excite -> ``se``.
    """
    convs = [index for index, is_se in layers if not is_se]
    conv_names = ([("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")] if len(convs) == 3
                  else [("conv_dw", "bn1"), ("conv_pw", "bn2")])
    names: dict[int, tuple[str, ...]] = dict(zip(convs, conv_names, strict=True))
    names.update({index: ("se",) for index, is_se in layers if is_se})
    return names


def _rename_block_key(rest: str, names: tuple[str, ...]) -> str:
    if names == ("se",):
        return "se." + rest.replace("fc1.", "conv_reduce.").replace("fc2.", "conv_expand.")
    conv, norm = names
    sub, _, leaf = rest.partition(".")
    return f"{conv if sub == '0' else norm}.{leaf}"


def _block_prefixes(keys: list[str]) -> list[str]:
    """Torchvision block prefixes (``features.3.1``) in network order."""
    seen: dict[str, None] = {}
    for key in keys:
        match = _CONV_LAYER.match(key)
        if match:
            seen.setdefault(match["block"], None)
    return list(seen)


def _stage_indices(state_dict: StateDict, blocks: list[str]) -> Iterator[tuple[str, int, int]]:
    """Group blocks into timm stages: a new stage starts where the output width changes."""
    keys = list(state_dict)
    stage, index, width = -1, 0, None
    for block in blocks:
        project = max(i for i, is_se in _block_layers(keys, block) if not is_se)
        out_width = state_dict[f"{block}.block.{project}.0.weight"].shape[0]
        stage, index = (stage, index + 1) if out_width == width else (stage + 1, 0)
        width = out_width
        yield block, stage, index


def _map_mbconv_blocks(state_dict: StateDict) -> tuple[dict[str, torch.Tensor], int]:
    """Map every torchvision MBConv block; returns the mapping and the number of stages."""
    keys = list(state_dict)
    mapped: dict[str, torch.Tensor] = {}
    stages = 0
    for block, stage, index in _stage_indices(state_dict, _block_prefixes(keys)):
        names = _timm_layer_names(_block_layers(keys, block))
        for key in keys:
            match = _CONV_LAYER.match(key)
            if match and match["block"] == block:
                new = _rename_block_key(match["rest"], names[int(match["layer"])])
                mapped[f"blocks.{stage}.{index}.{new}"] = state_dict[key]
        stages = stage + 1
    return mapped, stages


def _map_conv_norm(state_dict: StateDict, prefix: str, conv: str, norm: str) -> dict[str, torch.Tensor]:
    """A torchvision ``Conv2dNormActivation`` at ``prefix`` -> timm ``conv``/``norm`` names."""
    mapped = {}
    for key, tensor in state_dict.items():
        if key.startswith(prefix + "."):
            sub, _, leaf = key[len(prefix) + 1:].partition(".")
            mapped[f"{conv if sub == '0' else norm}.{leaf}"] = tensor
    return mapped


def _last_feature_index(state_dict: StateDict) -> int:
    return max(int(k.split(".")[1]) for k in state_dict if k.startswith("features."))


def map_efficientnet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision EfficientNet -> timm: stem, MBConv blocks by structure, head conv, classifier."""
    last = _last_feature_index(state_dict)
    mapped = _map_conv_norm(state_dict, "features.0", "conv_stem", "bn1")
    mapped.update(_map_mbconv_blocks(state_dict)[0])
    mapped.update(_map_conv_norm(state_dict, f"features.{last}", "conv_head", "bn2"))
    mapped.update({k.replace("classifier.1.", "classifier."): v
                   for k, v in state_dict.items() if k.startswith("classifier.1.")})
    return mapped


def map_mobilenetv3(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision MobileNetV3 -> timm.

    Stem, InvertedResidual blocks by structure, the last 1x1 conv as timm's final
    ``ConvBnAct`` stage, ``classifier.0`` (Linear) -> ``conv_head`` (1x1 conv with bias),
    ``classifier.3`` -> ``classifier``.
    """
    last = _last_feature_index(state_dict)
    mapped = _map_conv_norm(state_dict, "features.0", "conv_stem", "bn1")
    blocks, stages = _map_mbconv_blocks(state_dict)
    mapped.update(blocks)
    mapped.update(_map_conv_norm(state_dict, f"features.{last}", f"blocks.{stages}.0.conv",
                                 f"blocks.{stages}.0.bn1"))
    weight = state_dict["classifier.0.weight"]
    mapped["conv_head.weight"] = weight.reshape(*weight.shape, 1, 1)
    mapped["conv_head.bias"] = state_dict["classifier.0.bias"]
    mapped["classifier.weight"] = state_dict["classifier.3.weight"]
    mapped["classifier.bias"] = state_dict["classifier.3.bias"]
    return mapped


_MAPS: dict[str, Callable[[StateDict], dict[str, torch.Tensor]]] = {
    "resnet": map_resnet,
    "inception": map_inception,
    "densenet": map_densenet,
    "vgg": map_vgg,
    "efficientnet": map_efficientnet,
    "mobilenetv3": map_mobilenetv3,
}


def legacy_to_timm(spec: ArchSpec, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Rename (and where needed reshape) a legacy ``model_state`` into timm's layout."""
    return _MAPS[spec.family](state_dict)


def check_against(mapped: StateDict, expected: Mapping[str, torch.Size], what: str) -> None:
    """Fail unless ``mapped`` has exactly the keys of ``expected`` with the same shapes."""
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong = sorted(k for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        details = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                   f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                   "shape mismatches: " + ", ".join(
                       f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k])}" for k in wrong[:3])
                   if wrong else ""]
        raise KeyMapError(f"{what}: the mapped keys do not fill the timm model exactly: "
                          + "; ".join(d for d in details if d))
