"""The converted-folder format: its file names, ``config.json`` and safetensors metadata.

A converted folder holds ``model.safetensors`` + ``config.json`` (+ ``README.md``, the card),
the layout timm's ``local-dir:``/``hf-hub:`` loaders and transformers' TimmWrapper read.
Every module that reads or writes one asks this module, so the format has one owner;
:mod:`rnet_hub.staging` writes the folder atomically.

``pretrained_cfg`` describes the pretraining preprocessing (facts file, section
"Preprocessing used in pretraining"): letterbox to the native size with zero padding
(crop_mode ``border``, crop_pct 1.0, bilinear), values in [0, 1] (mean 0, std 1).
``model_args`` never holds ``num_classes``: transformers' TimmWrapper passes that itself.
Torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .architectures import ArchSpec
from .errors import ConvertedFolderError
from .version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "OUTPUT_NAMES",
    "PAPER_DOI",
    "RECORD_NAME",
    "WEIGHTS_NAME",
    "build_config",
    "is_converted_folder",
    "pretrained_cfg",
    "read_config",
    "read_weights_metadata",
    "weights_metadata",
    "write_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: The batch pipeline's record of a verified conversion (source and weights sha256, parity).
RECORD_NAME = ".rnet-hub-conversion.json"

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


def is_converted_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds both ``config.json`` and ``model.safetensors``."""
    return (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file()


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The timm ``config.json`` of a converted folder."""
    if not is_converted_folder(model_dir):
        raise ConvertedFolderError(f"{model_dir} is not a converted model folder (it needs {CONFIG_NAME} and "
                                   f"{WEIGHTS_NAME}); create one with `rnet-hub convert ARCHIVE --out DIR`")
    path = Path(model_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertedFolderError(f"{path} is not valid JSON ({exc}); convert the model again") from exc
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ConvertedFolderError(f"{path} names no timm architecture (its 'architecture' field); "
                                   f"convert the model again")
    return config


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` as timm's ``save_for_hf`` lays it out (indented, newline-terminated)."""
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def weights_metadata(*, source_name: str, source_sha256: str, architecture: str) -> dict[str, str]:
    """The safetensors metadata of a conversion: where the weights came from and who converted them."""
    return {"format": "pt", "source_file": source_name, "source_sha256": source_sha256,
            "converter": f"rnet_hub {__version__}", "architecture": architecture}


def read_weights_metadata(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors metadata of a folder's ``model.safetensors`` (read from the header only)."""
    from safetensors import safe_open

    with safe_open(Path(folder) / WEIGHTS_NAME, framework="numpy") as weights:
        return dict(weights.metadata() or {})


#: Every file a conversion writes into its folder (the batch adds its hidden record). An existing folder that
#: holds ``config.json`` and ``model.safetensors`` and nothing but these, all plain files, is an earlier
#: output: the only kind of folder ``overwrite`` replaces (besides an empty one).
OUTPUT_NAMES = frozenset({CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, RECORD_NAME})
