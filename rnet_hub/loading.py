"""``rnet_hub.create_model``: one call for every way users name a RadiologyNET model.

Names accepted: ``radiologynet/resnet50``, ``hf-hub:radiologynet/resnet50@<revision>``,
``resnet50.radiologynet``, a legacy name or alias (``ResNet50``, ``res50``), a timm name
(``resnet50``), or a local converted folder. The weights come from the local folder or
from the Hub (``snapshot_download``: cache, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply).

With ``pretrained=True`` the model is built on the meta device and the safetensors weights
are assigned into it, so no time goes into a random initialisation that would be
overwritten. The adaptations timm's own loader makes are made the same way: a new head
for another ``num_classes`` (freshly initialised, like timm's), ``in_chans`` through
timm's ``adapt_input_conv``, and ``features_only`` models filled from the full model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from .architectures import find_arch
from .errors import ConvertedFolderError
from .folder import WEIGHTS_NAME, read_config
from .hub import download_model_files
from .names import ModelRef, parse_model_name

__all__ = ["assign_state", "build_timm_on_meta", "create_model", "ensure_materialised", "load_timm_from_dir",
           "resolve_model_dir"]


def resolve_model_dir(name: str | os.PathLike[str] | ModelRef, *,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding ``config.json`` + ``model.safetensors`` for ``name`` (downloaded if needed)."""
    ref = name if isinstance(name, ModelRef) else parse_model_name(name)
    if ref.folder is not None:
        read_config(ref.folder)  # validates, with a message naming the fix
        return ref.folder
    return download_model_files(str(ref.repo_id), revision=ref.revision, cache_dir=cache_dir)



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


def _load_weights(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a folder's ``model.safetensors``; a damaged file is a :class:`ConvertedFolderError`."""
    path = Path(model_dir) / WEIGHTS_NAME
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (OSError, safetensors.SafetensorError) as exc:
        raise ConvertedFolderError(f"{path} cannot be read ({exc}); it may be truncated or damaged: "
                                   f"convert or download the folder again") from exc


def load_timm_from_dir(model_dir: str | os.PathLike[str]) -> nn.Module:
    """The timm model of a converted folder, with its weights, in eval mode.

    Raises:
        ConvertedFolderError: the folder is not a converted folder, its weights cannot be read,
            or they do not fit the architecture its ``config.json`` names.
    """
    config = read_config(model_dir)
    model = build_timm_on_meta(config["architecture"], num_classes=config["num_classes"],
                               pretrained_cfg=config["pretrained_cfg"], **config.get("model_args", {}))
    weights = _load_weights(model_dir)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ConvertedFolderError(f"{model_dir} does not fit {config['architecture']} ({reason[:300]}); "
                                   f"convert it again with `rnet-hub convert`") from exc
    return ensure_materialised(model).eval()


def _init_fresh(module: nn.Module) -> None:
    """Materialise a module left on meta (a new head) with its layers' default initialisation."""
    module.to_empty(device="cpu")
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def _adapt_weights(state: dict[str, torch.Tensor], config: Mapping[str, Any], *, num_classes: int,
                   in_chans: int) -> dict[str, torch.Tensor]:
    """The changes timm's ``load_pretrained`` makes: new head, other input channels."""
    cfg = config["pretrained_cfg"]
    if num_classes != config["num_classes"]:
        head = cfg["classifier"]
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    if in_chans != 3:
        key = cfg["first_conv"] + ".weight"
        state[key] = adapt_input_conv(in_chans, state[key])
    return state


def _materialise_leftovers(model: nn.Module) -> None:
    """Initialise modules whose tensors stayed on meta (a new classifier, a new head)."""
    for _, module in model.named_modules():
        direct = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if direct and all(t.is_meta for t in direct):
            _init_fresh(module)


def _fill_features_only(features: nn.Module, full: nn.Module) -> nn.Module:
    """Fill a ``features_only`` wrapper from the loaded full model (timm flattens names with '_')."""
    source = {k.replace("_", "."): v for k, v in full.state_dict().items()}
    state = {}
    for key, target in features.state_dict().items():
        value = source.get(key.replace("_", "."))
        if value is None or value.shape != target.shape:
            raise RuntimeError(f"features_only: no weight for {key} in the full model")
        state[key] = value
    return assign_state(features, state)


def create_model(name: str | os.PathLike[str], pretrained: bool = True, *,
                 cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> nn.Module:
    """Create a RadiologyNET timm model from any of its names; see the module docstring.

    Keyword arguments are timm's (``num_classes``, ``in_chans``, ``features_only``,
    ``out_indices``, ``global_pool``, ``drop_rate``, ...). Returns the model in eval mode
    when pretrained (like ``timm.create_model``, the caller switches to train mode).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ref = parse_model_name(name)
    if not pretrained:
        if ref.folder is not None:
            config = read_config(ref.folder)
            return timm.create_model(config["architecture"], **{**config.get("model_args", {}), **kwargs})
        spec = ref.arch or find_arch(str(ref.repo_id).rsplit("/", 1)[1])
        return timm.create_model(spec.timm_arch, **{**spec.model_args, **kwargs})
    model_dir = resolve_model_dir(ref, cache_dir=cache_dir)
    config = read_config(model_dir)
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls", "output_stride") if k in kwargs}
    model_kwargs = {**config.get("model_args", {}), **kwargs}
    model_kwargs.setdefault("num_classes", config["num_classes"])
    model = build_timm_on_meta(config["architecture"], pretrained_cfg=config["pretrained_cfg"], **model_kwargs)
    state = _load_weights(model_dir)
    state = _adapt_weights(state, config, num_classes=model_kwargs["num_classes"],
                           in_chans=model_kwargs.get("in_chans", 3))
    result = model.load_state_dict(state, strict=False, assign=True)
    head = config["pretrained_cfg"]["classifier"] + "."
    unexpected_missing = [k for k in result.missing_keys if not k.startswith(head)]
    if result.unexpected_keys or unexpected_missing:
        raise ConvertedFolderError(f"{model_dir} does not fit {config['architecture']}: missing "
                                   f"{unexpected_missing[:5]}, unexpected {result.unexpected_keys[:5]}; "
                                   f"convert it again with `rnet-hub convert`")
    _materialise_leftovers(model)
    ensure_materialised(model)
    if features_only:
        features = build_timm_on_meta(config["architecture"], pretrained_cfg=config["pretrained_cfg"],
                                      features_only=True, **feature_kwargs, **model_kwargs)
        model = _fill_features_only(features, model)
    return model.eval()
