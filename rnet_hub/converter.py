"""Legacy archive -> converted folder (``model.safetensors`` + ``config.json`` + card), verified.

The recipe follows safetensors' ``convert.py``: load safely, drop shared duplicates, save,
reload and compare. Here "compare" is the strong version: the original wrapper topology
with the source weights and the timm model read back from the written folder run on the
same batch, and the conversion fails unless their logits agree (see ``_parity``).

The folder is written atomically (``_output``): everything goes into a hidden temporary sibling that is
renamed into place only after verification, so a failed or interrupted conversion leaves
nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from . import legacy
from .architectures import ArchSpec, find_arch
from .archives.download import is_url
from .archives.extract import file_sha256
from .errors import BadInputError, ParityError
from .folder import CONFIG_NAME, WEIGHTS_NAME, build_config, read_config
from .legacy.checkpoint import LegacyCheckpoint, Source, open_legacy_checkpoint
from .legacy.keymap import check_against, legacy_to_timm
from .legacy.recognise import detect_architecture
from .loading import build_timm_on_meta, load_timm_from_dir, resolve_model_dir
from .parity import ParityReport, compare_logits, parity_input, run_logits
from .publish.cards import build_card
from .staging import atomic_output, refuse_existing
from .version import __version__

__all__ = ["ConversionResult", "convert", "verify"]


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote and how well it reproduced the original."""

    out_dir: Path
    arch: ArchSpec
    num_classes: int
    source_sha256: str
    weights_sha256: str
    parity: ParityReport

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    def __str__(self) -> str:
        return (f"{self.arch.name} -> {self.out_dir} ({self.arch.timm_arch}, {self.num_classes} classes)\n"
                f"  source sha256 {self.source_sha256}\n  {self.parity}")


def _check_label_names(label_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if label_names is None:
        return None
    names = [str(n) for n in label_names]
    if len(names) != num_classes:
        raise BadInputError(f"{len(names)} label names given but the checkpoint's head has {num_classes} classes; "
                            f"give exactly one name per output")
    return names


def _legacy_logits(checkpoint: LegacyCheckpoint, spec: ArchSpec, num_classes: int) -> torch.Tensor:
    """Logits of the original wrapper topology holding the source weights."""
    wrapper = legacy.build_with_state(checkpoint.state_dict, spec, num_classes)
    return run_logits(wrapper, parity_input(spec.input_size))


def _mapped_weights(checkpoint: LegacyCheckpoint, spec: ArchSpec,
                    num_classes: int) -> tuple[dict[str, torch.Tensor], int]:
    """The source weights under timm's names, checked against timm; and timm's ``num_features``."""
    mapped = legacy_to_timm(spec, checkpoint.state_dict)
    timm_model = build_timm_on_meta(spec.timm_arch, num_classes=num_classes, **spec.model_args)
    check_against(mapped, {k: v.shape for k, v in timm_model.state_dict().items()},
                  f"{checkpoint.source_name} ({spec.name} -> {spec.timm_arch})")
    return mapped, int(timm_model.num_features)


def _save_weights(mapped: dict[str, torch.Tensor], checkpoint: LegacyCheckpoint, spec: ArchSpec,
                  folder: Path) -> None:
    metadata = {"format": "pt", "source_file": checkpoint.source_name, "source_sha256": checkpoint.sha256,
                "converter": f"rnet_hub {__version__}", "architecture": spec.timm_arch}
    safetensors.torch.save_file({k: v.contiguous() for k, v in mapped.items()}, folder / WEIGHTS_NAME,
                                metadata=metadata)


def convert(source: Source, out_dir: str | os.PathLike[str] | None = None, *,
            arch: str | None = None, label_names: Sequence[str] | None = None, repo_id: str | None = None,
            overwrite: bool = False, cache_dir: Path | None = None, progress: bool = True) -> ConversionResult:
    """Convert a legacy RadiologyNET checkpoint into a verified timm/transformers folder.

    Args:
        source: a ``.tar.gz``/``.tgz``/``.tar`` archive, a ``.pth``/``.pt`` file, an http(s) URL, or an
            :class:`~rnet_hub.archives.extract.ArchiveExtraction` already started (the CLI starts one before
            importing torch, so the decompression overlaps the import).
        out_dir: the folder to create; default ``converted/<timm architecture>``.
        arch: the architecture (legacy name, alias or timm name); detected from the keys when omitted.
        label_names: one name per output class, stored in ``config.json`` as ``label_names``.
        repo_id: the Hub repository the folder is meant for (recorded as ``hf_hub_id``).
        overwrite: replace an earlier output at ``out_dir`` (or use an empty folder); see :mod:`rnet_hub.staging`.

    Raises:
        ParityError: the converted model does not reproduce the original logits.
        KeyMapError: the mapped weights do not fill the timm model exactly.
        SourceError, UnknownArchitectureError, HeadShapeError: the source is not a RadiologyNET checkpoint.
        OutputExistsError: ``out_dir`` exists and may not be replaced (see :func:`rnet_hub.staging.refuse_existing`).
        BadInputError: ``label_names`` does not give one name per class.
    """
    if out_dir is not None:
        refuse_existing(Path(out_dir), overwrite)  # before the (long) read of the source
    with open_legacy_checkpoint(source, cache_dir=cache_dir, progress=progress) as checkpoint:
        spec, num_classes = detect_architecture(checkpoint.state_dict, arch)
        names = _check_label_names(label_names, num_classes)
        target = Path(out_dir) if out_dir is not None else Path("converted") / spec.timm_arch
        repo = repo_id or spec.repo_id()
        with atomic_output(target, overwrite) as staging, ThreadPoolExecutor(max_workers=1) as helper:
            mapped, num_features = _mapped_weights(checkpoint, spec, num_classes)
            # The original topology's forward pass (compute) runs while the weights are written (I/O),
            # and the written file is hashed while the converted model runs.
            reference = helper.submit(_legacy_logits, checkpoint, spec, num_classes)
            _save_weights(mapped, checkpoint, spec, staging)
            del mapped
            weights_sha256 = helper.submit(file_sha256, staging / WEIGHTS_NAME)
            config = build_config(spec, num_classes=num_classes, num_features=num_features, repo_id=repo,
                                  label_names=names)
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            reference_logits = reference.result()
            checkpoint.state_dict.clear()  # release the mmapped source before loading the copy
            parity = compare_logits(reference_logits, run_logits(load_timm_from_dir(staging),
                                                                 parity_input(spec.input_size)), spec.input_size)
            if not parity.passed:
                raise ParityError(f"{spec.name}: the converted model does not reproduce the original; {parity}")
            build_card(spec, repo_id=repo, source_name=checkpoint.source_name, source_sha256=checkpoint.sha256,
                       parity_max_abs_diff=parity.max_abs_diff, parity_tolerance=parity.tolerance,
                       source_url=source if isinstance(source, str) and is_url(source) else None,
                       num_classes=num_classes, label_names=names).save(staging / "README.md")
        return ConversionResult(out_dir=target, arch=spec, num_classes=num_classes, source_sha256=checkpoint.sha256,
                                weights_sha256=weights_sha256.result(), parity=parity)


def verify(model_dir: str | os.PathLike[str], against: Source, *,
           cache_dir: Path | None = None, progress: bool = True) -> ParityReport:
    """Rerun the parity check of a converted folder against its source checkpoint.

    ``model_dir`` may also be a Hub id, pinned or not (``hf-hub:radiologynet/resnet50@<sha>``):
    the folder is downloaded at that revision first.
    """
    model_dir = resolve_model_dir(model_dir)
    config = read_config(model_dir)
    spec = find_arch(config["architecture"])
    with open_legacy_checkpoint(against, cache_dir=cache_dir, progress=progress) as checkpoint:
        _, num_classes = detect_architecture(checkpoint.state_dict, spec)
        reference = _legacy_logits(checkpoint, spec, num_classes)
    candidate = run_logits(load_timm_from_dir(model_dir), parity_input(spec.input_size))
    return compare_logits(reference, candidate, spec.input_size)
