"""The ``<timm architecture>.radiologynet`` pretrained tags, registered from the table.

After ``import rnet_hub``, ``timm.list_pretrained("*radiologynet*")`` lists ten names and
``timm.create_model("resnet50.radiologynet", pretrained=True)`` loads
``radiologynet/resnet50`` from the Hub (or the HF cache) with the right ``pretrained_cfg``.
The organisation is ``$RNET_HUB_ORG`` or ``radiologynet``; :func:`register_pretrained_tags`
re-registers all ten for another one.
"""

from __future__ import annotations

from ._config import pretrained_cfg
from ._table import ARCHITECTURES, PRETRAINING_NUM_CLASSES, default_org
from ._timm_compat import add_pretrained_tag

__all__ = ["TAG", "register_pretrained_tags"]

TAG = "radiologynet"


def register_pretrained_tags(org: str | None = None) -> list[str]:
    """Register (or re-point) the ten tags at ``<org>/<timm architecture>``; returns their names."""
    org = org or default_org()
    names = []
    for spec in ARCHITECTURES:
        cfg = pretrained_cfg(spec, num_classes=PRETRAINING_NUM_CLASSES, repo_id=spec.repo_id(org))
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # timm's cfgs hold tuples
        names.append(add_pretrained_tag(spec.timm_arch, TAG, cfg, model_args=spec.model_args))
    return names
