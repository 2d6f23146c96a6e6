"""The timm/transformers ``config.json`` of a converted folder, derived from the table.

``pretrained_cfg`` describes the pretraining preprocessing (facts file, section
"Preprocessing used in pretraining"): letterbox to the native size with zero padding
(crop_mode ``border``, crop_pct 1.0, bilinear), values in [0, 1] (mean 0, std 1).
``model_args`` never holds ``num_classes``: transformers' TimmWrapper passes that itself.
"""

from __future__ import annotations

from typing import Any

from ._table import ArchSpec

__all__ = ["PAPER_DOI", "build_config", "pretrained_cfg"]

PAPER_DOI = "10.1038/s41598-025-05009-w"
PAPER_NAME = "Lessons learned from RadiologyNET foundation models for transfer learning in medical radiology"


def pretrained_cfg(spec: ArchSpec, *, num_classes: int, repo_id: str | None = None) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` for the RadiologyNET weights of ``spec``."""
    cfg: dict[str, Any] = {
        "tag": "radiologynet",
        "custom_load": False,
        "input_size": [3, spec.input_size, spec.input_size],
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "border",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "num_classes": num_classes,
        "first_conv": spec.first_conv,
        "classifier": spec.classifier,
        "license": "gpl-3.0",
        "origin_url": spec.archive_url,
        "paper_ids": f"doi:{PAPER_DOI}",
        "paper_name": PAPER_NAME,
    }
    if repo_id:
        cfg["hf_hub_id"] = repo_id
    return cfg


def build_config(spec: ArchSpec, *, num_classes: int, num_features: int, repo_id: str | None = None,
                 label_names: list[str] | None = None) -> dict[str, Any]:
    """The whole ``config.json``: loadable by ``timm`` (``local-dir:``/``hf-hub:``) and transformers."""
    config: dict[str, Any] = {
        "architecture": spec.timm_arch,
        "num_classes": num_classes,
        "num_features": num_features,
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg(spec, num_classes=num_classes, repo_id=repo_id),
    }
    if spec.model_args:
        config["model_args"] = dict(spec.model_args)
    if label_names is not None:
        config["label_names"] = list(label_names)
    return config
