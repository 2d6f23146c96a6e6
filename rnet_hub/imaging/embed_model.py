"""The model side of ``rnet-hub embed``, shared by the local and the Ray engine.

* :func:`identify_model`: the folder a model name resolves to (downloaded from the Hub if needed)
  and what every output row records about it: the model id, the SHA-256 of ``model.safetensors``
  and the Hub revision (the snapshot's commit for a Hub download, empty for a local folder);
* :func:`load_model`, :func:`forward_fn`: the model in eval mode and the features embedded (timm's
  pooled features, or one stage averaged over space);
* :func:`resolve_device`: the torch device, checked before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..archives.extract import file_sha256
from ..errors import BadInputError
from ..folder import WEIGHTS_NAME
from ..names import parse_model_name

__all__ = ["ModelInfo", "check_stage", "forward_fn", "identify_model", "load_model", "resolve_device"]


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model: its id as the outputs record it, its folder, weights hash and Hub revision."""

    model_id: str
    folder: Path
    weights_sha256: str
    hub_revision: str

    def columns(self) -> dict[str, str]:
        """The per-row model columns of the output schema."""
        return {"model_id": self.model_id, "weights_sha256": self.weights_sha256, "hub_revision": self.hub_revision}


def identify_model(name: str) -> ModelInfo:
    """Resolve ``name`` (a converted folder or a Hub/legacy name, as :func:`rnet_hub.create_model` takes
    it) to its local folder, downloading Hub models once. A folder is recorded by its absolute path, a
    Hub model by its name and the commit of the downloaded snapshot."""
    from ..loading import resolve_model_dir

    ref = parse_model_name(name)
    folder = resolve_model_dir(ref)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        from ..errors import ConvertedFolderError

        raise ConvertedFolderError(f"{folder} has no {WEIGHTS_NAME}; convert the model again with rnet-hub convert")
    if ref.folder is not None:
        return ModelInfo(str(ref.folder.absolute()), folder.absolute(), file_sha256(weights), "")
    revision = folder.name if folder.parent.name == "snapshots" else (ref.revision or "")
    return ModelInfo(name, folder.absolute(), file_sha256(weights), revision)


def load_model(folder: str | Path) -> nn.Module:
    """The pretrained timm model of a converted folder, in eval mode. A damaged folder raises
    :class:`~rnet_hub.errors.ConvertedFolderError` naming the file."""
    from ..loading import create_model

    return create_model(str(folder), pretrained=True).eval()  # create_model returns train mode, as timm does


def check_stage(folder: str | Path, stage: int | None) -> None:
    """Refuse a ``stage`` the folder's architecture does not have, without loading its weights."""
    if stage is None:
        return
    from ..loading import build_timm_on_meta, folder_config, timm_kwargs

    config = folder_config(folder)
    model = build_timm_on_meta(config["architecture"], **timm_kwargs(config))
    _stage_count(model, stage)


def _stage_count(model: nn.Module, stage: int) -> int:
    stages = len(getattr(model, "feature_info", []))
    if not 0 <= stage < stages:
        raise BadInputError(f"--stage must be between 0 and {stages - 1} for {type(model).__name__}, got {stage}")
    return stages


def resolve_device(device: str | torch.device | None, *, option: str = "device") -> torch.device:
    """The torch device to embed on: ``device``, or cuda when available, else cpu.

    One check for the API and the CLI (which passes ``option="--device"`` so the message names its option).

    Raises:
        BadInputError: ``device`` is not a torch device (``"bogus"``), or not one this machine has (cuda
            without a GPU, ``cuda:3`` with one GPU): checked before anything is read or written.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = f"{option} cpu" if option.startswith("--") else f"{option}='cpu'"
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise BadInputError(f"{option} {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from exc
    if target.type == "meta":
        raise BadInputError(f"{option} meta holds no values, so nothing can be embedded on it; use {cpu}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"{option} {device}: no CUDA device is available here; use {cpu}")
    try:
        torch.empty(0, device=target)  # the device exists and works (cuda:N within range, mps present, ...)
    except (RuntimeError, AssertionError) as exc:  # torch without that backend asserts
        reason = str(exc).splitlines()[0].split(". ")[0][:160]
        raise BadInputError(f"{option} {device}: this machine cannot use it ({reason}); use {cpu}") from exc
    return target


def forward_fn(model: nn.Module, stage: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pooled features (what the classifier sees), or stage ``stage`` averaged over space."""
    if stage is None:
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    _stage_count(model, stage)
    return lambda x: model.forward_intermediates(x, indices=[stage], intermediates_only=True)[0].mean(dim=(2, 3))
