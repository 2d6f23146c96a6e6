"""The converted-folder format: its file names, ``config.json`` and safetensors metadata.

A converted folder holds ``model.safetensors`` + ``config.json`` (+ ``README.md``, the card),
the layout timm's ``local-dir:``/``hf-hub:`` loaders and transformers' TimmWrapper read.
Every module that reads or writes one asks this module, so the format has one owner;
:mod:`rnet_hub.staging` writes the folder atomically.

``pretrained_cfg`` describes the pretraining preprocessing (facts file, section
"Preprocessing used in pretraining"): letterbox to the native size with zero padding
(crop_mode ``border``, crop_pct 1.0, bilinear), values in [0, 1] (mean 0, std 1).
``model_args`` never holds ``num_classes``: transformers' TimmWrapper passes that itself; it is
always an object (``{}`` when empty), and ``null`` is read as ``{}``. A conversion claims the
published weights (``hf_hub_id``, ``tag``, ``origin_url``) only when told: see :func:`pretrained_cfg`.
Torch-free.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .architectures import ArchSpec, find_arch
from .errors import ConvertedFolderError, UnknownArchitectureError
from .version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "OUTPUT_NAMES",
    "PAPER_DOI",
    "PUBLISHED_TAG",
    "RECORD_NAME",
    "RUNTIME_CFG_FIELDS",
    "SAFE_MODEL_ARGS",
    "WEIGHTS_NAME",
    "build_config",
    "check_config",
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


#: The ``tag`` of the published RadiologyNET weights (``resnet50.radiologynet`` in timm).
PUBLISHED_TAG = "radiologynet"
#: ``PretrainedCfg`` fields timm fills in itself when it loads (where the file is) or never serialises.
RUNTIME_CFG_FIELDS = ("file", "source", "state_dict")


def pretrained_cfg(spec: ArchSpec, *, num_classes: int, repo_id: str | None = None, origin_url: str | None = None,
                   pool_size: tuple[int, int] | list[int] | None = None) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` of RadiologyNET weights of ``spec``: every field of timm's ``PretrainedCfg``
    (in its order) except :data:`RUNTIME_CFG_FIELDS`, with timm's default (mostly ``None``) where ours has none.

    Nothing is claimed by default: ``hf_hub_id`` is ``repo_id`` (``None``: no Hub repository), ``origin_url``
    the URL the weights were downloaded from (``None``: unknown), and ``tag`` is :data:`PUBLISHED_TAG` only when
    that URL is the architecture's published archive (``spec.archive_url``). ``pool_size`` is the final feature
    map at ``input_size`` (the converter measures it). ``label_names`` stays ``None`` here: the names are
    ``config.json``'s top-level ``label_names``, which timm's loader moves in (as timm's own export does).
    """
    published = origin_url is not None and origin_url == spec.archive_url
    return {
        "url": None,
        "hf_hub_id": repo_id or None,
        "hf_hub_filename": None,
        "architecture": spec.timm_arch,
        "tag": PUBLISHED_TAG if published else None,
        "custom_load": False,
        "input_size": [3, spec.input_size, spec.input_size],
        "test_input_size": None,
        "min_input_size": None,
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "test_crop_pct": None,
        "crop_mode": "border",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "num_classes": num_classes,
        "label_offset": None,
        "label_names": None,
        "label_descriptions": None,
        "pool_size": list(pool_size) if pool_size is not None else None,
        "test_pool_size": None,
        "first_conv": spec.first_conv,
        "classifier": spec.classifier,
        "license": "gpl-3.0",
        "description": None,
        "origin_url": origin_url,
        "paper_name": PAPER_NAME,
        "paper_ids": f"doi:{PAPER_DOI}",
        "notes": None,
    }


def build_config(spec: ArchSpec, *, num_classes: int, num_features: int, repo_id: str | None = None,
                 origin_url: str | None = None, pool_size: tuple[int, int] | list[int] | None = None,
                 label_names: list[str] | None = None) -> dict[str, Any]:
    """The whole ``config.json``: loadable by ``timm`` (``local-dir:``/``hf-hub:``) and transformers.

    ``model_args`` is always an object (``{}`` when the architecture needs none): transformers keeps
    it on ``save_pretrained``, where a missing one becomes ``"model_args": null``, which timm cannot load.
    """
    config: dict[str, Any] = {
        "architecture": spec.timm_arch,
        "num_classes": num_classes,
        "num_features": num_features,
        "global_pool": "avg",
        "model_args": dict(spec.model_args),
        "pretrained_cfg": pretrained_cfg(spec, num_classes=num_classes, repo_id=repo_id, origin_url=origin_url,
                                         pool_size=pool_size),
    }
    if label_names is not None:
        config["label_names"] = list(label_names)
    return config


def is_converted_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds both ``config.json`` and ``model.safetensors``."""
    return (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file()


_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")  # timm's eval transforms
_CROP_MODES = ("center", "squash", "border")
#: timm's ``SelectAdaptivePool2d`` types ("" keeps the spatial map; "fast..." pools without adaptive ops).
_POOLS = ("", "avg", "max", "avgmax", "catavgmax", "fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, lengths: tuple[int, ...]) -> bool:
    return isinstance(value, list) and len(value) in lengths and all(_is_number(v) for v in value)


def _is_rate(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 1


#: ``model_args`` keys any architecture may carry besides its own (the table's ``ArchSpec.model_args``, e.g.
#: MobileNetV3's ``bn_eps``), with what the value must be. The dropout rates act in training only;
#: ``num_classes``, ``in_chans`` and ``global_pool`` (timm's ``save_for_hf`` records them for a fine-tune) set
#: shapes, which loading checks against the weights' header. Every other key is refused: ``config.json`` must
#: not steer timm (``checkpoint_path`` would make it load another file, ``pretrained`` download weights).
SAFE_MODEL_ARGS: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType({
    "drop_rate": (_is_rate, "a rate from 0 to below 1"),
    "drop_path_rate": (_is_rate, "a rate from 0 to below 1"),
    "num_classes": (lambda v: _is_int(v) and v >= 0, "a whole number of 0 or more"),
    "in_chans": (lambda v: _is_int(v) and v >= 1, "a whole number of 1 or more"),
    "global_pool": (lambda v: v in _POOLS, f"one of timm's pools ({', '.join(map(repr, _POOLS))})"),
})


def _model_args_problem(model_args: Any, architecture: str) -> tuple[str, str] | None:
    """``(field, problem)`` of the first thing wrong with ``model_args``, or ``None``."""
    if model_args is None:
        return None
    if not isinstance(model_args, dict):
        return "'model_args'", f"must be an object (or null); got {type(model_args).__name__}"
    try:
        own = dict(find_arch(architecture).model_args)
    except UnknownArchitectureError:  # another timm model: only the keys every architecture may carry
        own = {}
    for key, value in model_args.items():
        if key in SAFE_MODEL_ARGS:
            valid, expected = SAFE_MODEL_ARGS[key]
        elif key in own:  # the table's arguments are positive numbers (bn_eps)
            valid, expected = (lambda v: _is_number(v) and v > 0), f"a positive number (the table has {own[key]})"
        else:
            allowed = ", ".join(sorted({*SAFE_MODEL_ARGS, *own}))
            return f"'model_args.{key}'", f"is refused: for {architecture} only {allowed} may be passed to timm"
        if not valid(value):
            return f"'model_args.{key}'", f"must be {expected}; got {value!r}"
    return None


def _pretrained_cfg_problem(cfg: Any) -> tuple[str, str] | None:
    """``(field, problem)`` of the first field of ``pretrained_cfg`` that loading or preprocessing would trip on."""
    if not isinstance(cfg, dict):
        got = "it is missing" if cfg is None else f"got {type(cfg).__name__}"
        return "'pretrained_cfg'", f"must be an object (timm's preprocessing and head names); {got}"
    size = cfg.get("input_size")
    size_ok = isinstance(size, list) and len(size) == 3 and all(_is_int(v) and v > 0 for v in size)
    channels = (1, size[0]) if size_ok else (1, 3)
    checks: list[tuple[str, bool, str]] = [
        ("classifier", isinstance(cfg.get("classifier"), str) and bool(cfg.get("classifier")), "a module name"),
        ("first_conv", isinstance(cfg.get("first_conv"), str) and bool(cfg.get("first_conv")), "a module name"),
        ("input_size", size_ok, "[channels, height, width], 3 positive integers"),
        ("interpolation", cfg.get("interpolation") in _INTERPOLATIONS, f"one of {', '.join(_INTERPOLATIONS)}"),
        ("crop_pct", _is_number(cfg.get("crop_pct")) and cfg.get("crop_pct", 0) > 0, "a positive number"),
        ("crop_mode", cfg.get("crop_mode") in _CROP_MODES, f"one of {', '.join(_CROP_MODES)}"),
    ]
    checks += [
        ("mean", _numbers(cfg.get("mean"), channels), "a list of numbers, one per input channel"),
        ("std", _numbers(cfg.get("std"), channels) and all(v > 0 for v in cfg["std"]),
         "a list of positive numbers, one per input channel"),
        ("num_classes", cfg.get("num_classes") is None or (_is_int(cfg["num_classes"]) and cfg["num_classes"] >= 0),
         "a whole number of 0 or more"),
    ]
    for name, ok, expected in checks:
        if not ok:
            got = f"got {cfg[name]!r}" if name in cfg else "it is missing"
            return f"'pretrained_cfg.{name}'", f"must be {expected}; {got}"
    return None


def _config_problem(config: Any) -> tuple[str, str] | None:
    """``(field, problem)`` of the first thing in ``config`` that would break loading, or ``None``."""
    if not isinstance(config, dict):
        return "the file", f"must hold a JSON object, not {type(config).__name__}"
    architecture, num_classes = config.get("architecture"), config.get("num_classes")
    if not isinstance(architecture, str) or not architecture.strip():
        return "'architecture'", f"must name a timm architecture (e.g. resnet50); got {architecture!r}"
    if not _is_int(num_classes) or num_classes < 0:
        return "'num_classes'", f"must be a whole number of 0 or more (the classifier's outputs); got {num_classes!r}"
    problem = _pretrained_cfg_problem(config.get("pretrained_cfg")) or _model_args_problem(
        config.get("model_args"), architecture)
    if problem:
        return problem
    recorded = (config.get("model_args") or {}).get("num_classes", num_classes)  # timm's save_for_hf records it
    if recorded != num_classes:
        return "'model_args.num_classes'", f"must be the top-level num_classes ({num_classes}); got {recorded!r}"
    labels = config.get("label_names")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)
                                   and len(labels) == num_classes):
        shown = f"{len(labels)} entries" if isinstance(labels, list) else type(labels).__name__
        return "'label_names'", f"must list one name (a string) per class, {num_classes} in all; got {shown}"
    return None


def check_config(config: Any, path: str | os.PathLike[str]) -> None:
    """Raise :class:`ConvertedFolderError` naming the file and the field when ``config`` (read from ``path``)
    would break loading: ``architecture`` (a name), ``num_classes`` (an integer >= 0), ``pretrained_cfg`` (the
    fields loading and preprocessing read), ``model_args`` (an object or null, only the keys the architecture
    needs plus :data:`SAFE_MODEL_ARGS`), ``label_names`` (absent, null or one string per class). Other keys
    (transformers' ``save_pretrained`` adds several) are left alone."""
    problem = _config_problem(config)
    if problem is not None:
        field, what = problem
        raise ConvertedFolderError(f"{path}: {field} {what}; restore the original {CONFIG_NAME} or convert the "
                                   f"model again with `rnet-hub convert`")


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The timm ``config.json`` of a converted folder, checked against the schema (:func:`check_config`).

    ``model_args`` is always an object: ``"model_args": null`` (transformers' ``save_pretrained`` writes it
    for a config without one) and a missing one are read as ``{}``.
    """
    if not is_converted_folder(model_dir):
        raise ConvertedFolderError(f"{model_dir} is not a converted model folder (it needs {CONFIG_NAME} and "
                                   f"{WEIGHTS_NAME}); create one with `rnet-hub convert ARCHIVE --out DIR`")
    path = Path(model_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertedFolderError(f"{path} is not valid JSON ({exc}); convert the model again") from exc
    check_config(config, path)
    config["model_args"] = config.get("model_args") or {}
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
