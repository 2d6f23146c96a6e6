"""The ``<timm architecture>.radiologynet`` pretrained tags, registered from the table.

After ``import rnet_hub``, ``timm.list_pretrained("*radiologynet*")`` lists ten names and
``timm.create_model("resnet50.radiologynet", pretrained=True)`` loads
``radiologynet/resnet50`` from the Hub (or the HF cache) with the right ``pretrained_cfg``.
The organisation is ``$RNET_HUB_ORG`` or ``radiologynet``; :func:`register_pretrained_tags`
re-registers all ten for another one.

This is the one place that touches timm internals. timm has no public API for adding a
pretrained tag (``resnet50.radiologynet``) to an architecture it already registers, so this module
edits the registry tables in ``timm.models._registry`` the same way ``register_model`` fills them. It checks the
installed timm has those tables first and fails with a clear message otherwise; a test
runs that check against the installed timm.

It also wraps the entrypoints of architectures whose RadiologyNET weights need extra
constructor arguments (MobileNetV3: ``bn_eps=0.001``) so that
``timm.create_model("mobilenetv3_large_100.radiologynet", pretrained=True)`` builds the
network the weights were trained in, exactly as ``hf-hub:`` loading does from ``model_args``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import timm
from timm.models import _registry
from timm.models._pretrained import DefaultCfg, PretrainedCfg

from .architectures import ARCHITECTURES, PRETRAINING_NUM_CLASSES, default_org
from .errors import IncompatibleTimmError
from .folder import pretrained_cfg

__all__ = ["TAG", "add_pretrained_tag", "check_timm_compat", "register_pretrained_tags"]

TAG = "radiologynet"
_REGISTRY_TABLES = ("_model_entrypoints", "_model_has_pretrained", "_model_default_cfgs",
                    "_model_pretrained_cfgs", "_model_with_tags")
_WRAPPED_MARK = "_rnet_hub_tag_args"


def register_pretrained_tags(org: str | None = None) -> list[str]:
    """Register (or re-point) the ten tags at ``<org>/<timm architecture>``; returns their names."""
    org = org or default_org()
    names = []
    for spec in ARCHITECTURES:
        cfg = pretrained_cfg(spec, num_classes=PRETRAINING_NUM_CLASSES, repo_id=spec.repo_id(org),
                             origin_url=spec.archive_url)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # timm's cfgs hold tuples
        names.append(add_pretrained_tag(spec.timm_arch, TAG, cfg, model_args=spec.model_args))
    return names


def check_timm_compat() -> None:
    """Fail with an actionable message unless timm's registry has the tables this module edits."""
    missing = [name for name in _REGISTRY_TABLES if not hasattr(_registry, name)]
    if missing:
        raise IncompatibleTimmError(
            f"timm {timm.__version__} has no {', '.join(missing)} in timm.models._registry, so rnet_hub cannot "
            f"register the '.radiologynet' pretrained tags; install a timm release this package supports "
            f"(pip install 'timm>=1.0.20,<2') or load models with hf-hub:/local-dir: names instead")


def _with_tag_args(entrypoint: Callable[..., Any], tag: str, model_args: Mapping[str, Any]) -> Callable[..., Any]:
    """An entrypoint that adds ``model_args`` whenever the ``tag`` weights are asked for."""
    tagged = {**getattr(entrypoint, _WRAPPED_MARK, {}), tag: dict(model_args)}
    original = getattr(entrypoint, "__wrapped__", entrypoint)

    @functools.wraps(original)
    def entrypoint_with_tag_args(*args: Any, **kwargs: Any) -> Any:
        cfg = kwargs.get("pretrained_cfg")
        cfg_tag = cfg if isinstance(cfg, str) else getattr(cfg, "tag", None)
        for key, value in tagged.get(cfg_tag, {}).items():
            kwargs.setdefault(key, value)
        return original(*args, **kwargs)

    setattr(entrypoint_with_tag_args, _WRAPPED_MARK, tagged)
    return entrypoint_with_tag_args


def add_pretrained_tag(architecture: str, tag: str, cfg: Mapping[str, Any],
                       model_args: Mapping[str, Any] | None = None) -> str:
    """Register ``<architecture>.<tag>`` with pretrained ``cfg``; returns the tagged name.

    Idempotent: registering again replaces the cfg (used when the Hub organisation changes).
    """
    check_timm_compat()
    if architecture not in _registry._model_entrypoints:
        raise IncompatibleTimmError(f"timm {timm.__version__} does not know the architecture {architecture!r}")
    name = f"{architecture}.{tag}"
    pretrained_cfg = PretrainedCfg(**{**cfg, "tag": tag, "architecture": architecture})
    _registry._model_pretrained_cfgs[name] = pretrained_cfg
    _registry._model_has_pretrained.add(name)
    _registry._model_has_pretrained.add(architecture)
    if name not in _registry._model_with_tags[architecture]:
        _registry._model_with_tags[architecture].append(name)
    default = _registry._model_default_cfgs.setdefault(architecture, DefaultCfg())
    default.cfgs[tag] = pretrained_cfg
    if tag not in default.tags:
        default.tags.append(tag)
    if model_args:
        entrypoint = _registry._model_entrypoints[architecture]
        _registry._model_entrypoints[architecture] = _with_tag_args(entrypoint, tag, model_args)
    return name
