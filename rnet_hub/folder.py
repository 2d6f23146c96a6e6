"""The converted-folder format: its file names, ``config.json``, safetensors metadata, atomic output.

A converted folder holds ``model.safetensors`` + ``config.json`` (+ ``README.md``, the card),
the layout timm's ``local-dir:``/``hf-hub:`` loaders and transformers' TimmWrapper read.
Every module that reads or writes one asks this module, so the format has one owner.

``pretrained_cfg`` describes the pretraining preprocessing (facts file, section
"Preprocessing used in pretraining"): letterbox to the native size with zero padding
(crop_mode ``border``, crop_pct 1.0, bilinear), values in [0, 1] (mean 0, std 1).
``model_args`` never holds ``num_classes``: transformers' TimmWrapper passes that itself.

The folder is written atomically: everything goes into a hidden temporary sibling that is
renamed into place only when the block succeeds, so a failed or interrupted conversion
leaves nothing behind. Torch-free: the CLI checks the output folder before it imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .architectures import ArchSpec
from .errors import ConvertedFolderError, OutputExistsError
from .version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PAPER_DOI",
    "RECORD_NAME",
    "WEIGHTS_NAME",
    "atomic_output",
    "build_config",
    "is_converted_folder",
    "pretrained_cfg",
    "read_config",
    "read_weights_metadata",
    "refuse_existing",
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
    return json.loads((Path(model_dir) / CONFIG_NAME).read_text())


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



def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` unless ``out_dir`` is free (or may be replaced)."""
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; choose another --out or pass --overwrite")


@contextlib.contextmanager
def atomic_output(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; rename it into place only on success."""
    refuse_existing(out_dir, overwrite)
    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        _apply_umask(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _apply_umask(folder: Path) -> None:
    """Give the staged folder ordinary permissions (mkdtemp and safetensors create private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)
