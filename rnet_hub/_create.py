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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ._loading import CONFIG_NAME, WEIGHTS_NAME, assign_state, build_timm_on_meta, ensure_materialised, read_config
from ._table import find_arch

__all__ = ["create_model", "resolve_model_dir"]


@dataclass(frozen=True)
class _HubRef:
    repo_id: str
    revision: str | None


def _parse_name(name: str | os.PathLike[str]) -> Path | _HubRef:
    """A local folder, or the Hub repository (and revision) that ``name`` designates."""
    text = str(name)
    if text.startswith("local-dir:"):
        return Path(text.removeprefix("local-dir:"))
    if Path(text).is_dir():
        return Path(text)
    text = text.removeprefix("hf-hub:")
    repo, _, revision = text.partition("@")
    if "/" not in repo:
        repo = find_arch(repo).repo_id()  # legacy name, alias, timm name or '.radiologynet' tag
    return _HubRef(repo, revision or None)


def resolve_model_dir(name: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding ``config.json`` + ``model.safetensors`` for ``name`` (downloaded if needed)."""
    ref = _parse_name(name)
    if isinstance(ref, Path):
        read_config(ref)  # validates, with a message naming the fix
        return ref
    from huggingface_hub import snapshot_download

    from . import __version__

    return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], library_name="rnet_hub",
                                  library_version=__version__))


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
    if not pretrained:
        spec = find_arch(str(name)) if isinstance(_parse_name(name), _HubRef) else None
        if spec is None:
            config = read_config(_parse_name(name))
            return timm.create_model(config["architecture"], **{**config.get("model_args", {}), **kwargs})
        return timm.create_model(spec.timm_arch, **{**spec.model_args, **kwargs})
    model_dir = resolve_model_dir(name, cache_dir=cache_dir)
    config = read_config(model_dir)
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls", "output_stride") if k in kwargs}
    model_kwargs = {**config.get("model_args", {}), **kwargs}
    model_kwargs.setdefault("num_classes", config["num_classes"])
    model = build_timm_on_meta(config["architecture"], pretrained_cfg=config["pretrained_cfg"], **model_kwargs)
    state = safetensors.torch.load_file(Path(model_dir) / WEIGHTS_NAME)
    state = _adapt_weights(state, config, num_classes=model_kwargs["num_classes"],
                           in_chans=model_kwargs.get("in_chans", 3))
    result = model.load_state_dict(state, strict=False, assign=True)
    head = config["pretrained_cfg"]["classifier"] + "."
    unexpected_missing = [k for k in result.missing_keys if not k.startswith(head)]
    if result.unexpected_keys or unexpected_missing:
        raise RuntimeError(f"{model_dir} does not fit {config['architecture']}: missing {unexpected_missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}; convert it again with `rnet-hub convert`")
    _materialise_leftovers(model)
    ensure_materialised(model)
    if features_only:
        features = build_timm_on_meta(config["architecture"], pretrained_cfg=config["pretrained_cfg"],
                                      features_only=True, **feature_kwargs, **model_kwargs)
        model = _fill_features_only(features, model)
    return model.eval()
