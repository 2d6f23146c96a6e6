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

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from . import legacy
from .architectures import ArchSpec, find_arch
from .archives.download import is_url
from .archives.extract import file_sha256
from .errors import BadInputError, ParityError, SourceError
from .folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, build_config, weights_metadata, write_config
from .legacy.checkpoint import LegacyCheckpoint, Source, first_non_finite, open_legacy_checkpoint
from .legacy.keymap import check_against, legacy_to_timm
from .legacy.recognise import detect_architecture
from .loading import build_timm_on_meta, check_folder, load_timm_from_dir, resolve_model_dir
from .parity import ParityReport, compare_logits, parity_input, run_logits
from .publish.cards import build_card
from .staging import atomic_output, refuse_existing

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
    #: The floating dtype(s) of the source tensors when not float32 (e.g. ``"float16"``): the folder holds them
    #: cast to float32, the dtype timm's loaders and the parity check work in. ``None`` for float32 sources.
    source_dtype: str | None = None

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    def __str__(self) -> str:
        cast = f"\n  {self.source_dtype} source weights saved as float32" if self.source_dtype else ""
        return (f"{self.arch.name} -> {self.out_dir} ({self.arch.timm_arch}, {self.num_classes} classes)\n"
                f"  source sha256 {self.source_sha256}{cast}\n  {self.parity}")


def _check_label_names(label_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if label_names is None:
        return None
    names = [str(n) for n in label_names]
    if len(names) != num_classes:
        raise BadInputError(f"{len(names)} label names given but the checkpoint's head has {num_classes} classes; "
                            f"give exactly one name per output")
    return names


#: ``errno`` values that mean "the disk (or the quota) is full" when writing the output.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _full_disk_reason(exc: BaseException) -> str | None:
    """``"No space left on device"`` (or the like) when ``exc`` is a write failing for want of space, else None."""
    if isinstance(exc, OSError):
        return (exc.strerror or os.strerror(exc.errno)) if exc.errno in _FULL else None
    text = str(exc)  # safetensors' Rust errors: 'IoError(Os { code: 28, kind: StorageFull, message: "..." })'
    code = re.search(r"\bcode: (\d+)", text)
    if code and int(code.group(1)) in _FULL:
        return os.strerror(int(code.group(1)))
    return next((os.strerror(e) for e in sorted(_FULL) if os.strerror(e).lower() in text.lower()), None)


@contextlib.contextmanager
def _writing(name: str, target: Path) -> Iterator[None]:
    """Turn a full disk while writing ``name`` of the output ``target`` into a :class:`BadInputError`.

    Raised inside :func:`~rnet_hub.staging.atomic_output`, so the staging folder is removed as for any failure.
    """
    try:
        yield
    except (OSError, safetensors.SafetensorError) as exc:
        reason = _full_disk_reason(exc)
        if reason is None:
            raise
        raise BadInputError(f"could not write {name} for {target} ({reason}); nothing was written: free space "
                            f"or choose another --out") from exc


def _prepare_source(checkpoint: LegacyCheckpoint) -> str | None:
    """Refuse NaN/Inf weights; cast float16/bfloat16/float64 tensors to float32 (in place).

    The converted folder always holds float32, the dtype timm's loaders give and the parity check runs
    both models in. Returns the source's other floating dtype(s) (``"float16"``), or ``None``.
    """
    state = checkpoint.state_dict
    bad = first_non_finite(state)
    if bad is not None:
        raise SourceError(f"{checkpoint.source_name} holds NaN/Inf values (first: {bad}); the checkpoint is "
                          f"damaged: download or extract it again")
    other = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()
                    if t.is_floating_point() and t.dtype != torch.float32})
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            state[key] = tensor.float()  # one at a time: the source's copy goes as its cast comes
    bad = first_non_finite(state) if other else None  # float64 values beyond float32's range
    if bad is not None:
        raise SourceError(f"{checkpoint.source_name}: {bad} holds {other[-1]} values beyond float32's range; "
                          f"it cannot be converted to a float32 timm model")
    return ", ".join(other) or None


def _legacy_logits(checkpoint: LegacyCheckpoint, spec: ArchSpec, num_classes: int) -> torch.Tensor:
    """Logits of the original wrapper topology holding the source weights."""
    wrapper = legacy.build_with_state(checkpoint.state_dict, spec, num_classes)
    return run_logits(wrapper, parity_input(spec.input_size))


def _mapped_weights(checkpoint: LegacyCheckpoint, spec: ArchSpec,
                    num_classes: int) -> tuple[dict[str, torch.Tensor], int, tuple[int, int]]:
    """The source weights under timm's names, checked against timm; timm's ``num_features``; and the
    final feature map's size at the native input size (``pretrained_cfg['pool_size']``, shapes only)."""
    mapped = legacy_to_timm(spec, checkpoint.state_dict)
    timm_model = build_timm_on_meta(spec.timm_arch, num_classes=num_classes, **spec.model_args)
    check_against(mapped, {k: v.shape for k, v in timm_model.state_dict().items()},
                  f"{checkpoint.source_name} ({spec.name} -> {spec.timm_arch})")
    with torch.no_grad():
        features = timm_model.eval().forward_features(torch.empty(1, 3, spec.input_size, spec.input_size,
                                                                  device="meta"))
    return mapped, int(timm_model.num_features), (int(features.shape[-2]), int(features.shape[-1]))


def _save_weights(mapped: dict[str, torch.Tensor], checkpoint: LegacyCheckpoint, spec: ArchSpec,
                  folder: Path, source_dtype: str | None) -> None:
    metadata = weights_metadata(source_name=checkpoint.source_name, source_sha256=checkpoint.sha256,
                                architecture=spec.timm_arch)
    if source_dtype:
        metadata["source_dtype"] = source_dtype
    safetensors.torch.save_file({k: v.contiguous() for k, v in mapped.items()}, folder / WEIGHTS_NAME,
                                metadata=metadata)


def convert(source: Source, out_dir: str | os.PathLike[str] | None = None, *,
            arch: str | None = None, label_names: Sequence[str] | None = None, repo_id: str | None = None,
            origin_url: str | None = None, overwrite: bool = False, cache_dir: Path | None = None,
            progress: bool = True) -> ConversionResult:
    """Convert a legacy RadiologyNET checkpoint into a verified timm/transformers folder.

    Args:
        source: a ``.tar.gz``/``.tgz``/``.tar`` archive, a ``.pth``/``.pt`` file, an http(s) URL, or an
            :class:`~rnet_hub.archives.extract.ArchiveExtraction` already started (the CLI starts one before
            importing torch, so the decompression overlaps the import).
        out_dir: the folder to create; default ``converted/<timm architecture>``.
        arch: the architecture (legacy name, alias or timm name); detected from the keys when omitted.
        label_names: one name per output class, stored in ``config.json`` as ``label_names``.
        repo_id: the Hub repository the folder is meant for (recorded as ``hf_hub_id``); none when omitted.
        origin_url: the URL ``source`` was downloaded from, when it is a local copy (default: ``source`` itself
            when it is a URL). Recorded as ``origin_url``; the ``radiologynet`` tag is recorded only when it is
            the architecture's published archive (``ArchSpec.archive_url``). So a conversion claims the
            published weights' repository, tag or URL only when told: the publishing pipeline passes its
            ``repo_id`` and the published URL, a user's ``rnet-hub convert model.pth`` claims neither.
        overwrite: replace an earlier output at ``out_dir`` (or use an empty folder); see :mod:`rnet_hub.staging`.

    Raises:
        ParityError: the converted model does not reproduce the original logits.
        KeyMapError: the mapped weights do not fill the timm model exactly.
        SourceError, UnknownArchitectureError, HeadShapeError: the source is not a RadiologyNET checkpoint.
        OutputExistsError: ``out_dir`` exists and may not be replaced (see :func:`rnet_hub.staging.refuse_existing`).
        SourceError: also for NaN/Inf weights (float16, bfloat16 and float64 weights are converted to float32).
        BadInputError: ``label_names`` does not give one name per class, or the disk is full.
    """
    if out_dir is not None:
        refuse_existing(Path(out_dir), overwrite)  # before the (long) read of the source
    with open_legacy_checkpoint(source, cache_dir=cache_dir, progress=progress) as checkpoint:
        spec, num_classes = detect_architecture(checkpoint.state_dict, arch)
        names = _check_label_names(label_names, num_classes)
        source_dtype = _prepare_source(checkpoint)
        target = Path(out_dir) if out_dir is not None else Path("converted") / spec.timm_arch
        origin = origin_url or (source if isinstance(source, str) and is_url(source) else None)
        with atomic_output(target, overwrite) as staging, ThreadPoolExecutor(max_workers=1) as helper:
            mapped, num_features, pool_size = _mapped_weights(checkpoint, spec, num_classes)
            # The original topology's forward pass (compute) runs while the weights are written (I/O),
            # and the written file is hashed while the converted model runs.
            reference = helper.submit(_legacy_logits, checkpoint, spec, num_classes)
            with _writing(WEIGHTS_NAME, target):
                _save_weights(mapped, checkpoint, spec, staging, source_dtype)
            del mapped
            weights_sha256 = helper.submit(file_sha256, staging / WEIGHTS_NAME)
            config = build_config(spec, num_classes=num_classes, num_features=num_features, repo_id=repo_id,
                                  origin_url=origin, pool_size=pool_size, label_names=names)
            with _writing(CONFIG_NAME, target):
                write_config(staging, config)
            reference_logits = reference.result()
            checkpoint.state_dict.clear()  # release the mmapped source before loading the copy
            parity = compare_logits(reference_logits, run_logits(load_timm_from_dir(staging),
                                                                 parity_input(spec.input_size)), spec.input_size)
            if not parity.passed:
                raise ParityError(f"{spec.name}: the converted model does not reproduce the original; {parity}")
            # Without repo_id the card says it is not published and its snippets use a placeholder repository.
            card = build_card(spec, repo_id=repo_id, source_name=checkpoint.source_name,
                              source_sha256=checkpoint.sha256, parity_max_abs_diff=parity.max_abs_diff,
                              parity_tolerance=parity.tolerance, source_url=origin, num_classes=num_classes,
                              label_names=names)
            with _writing(CARD_NAME, target):
                card.save(staging / CARD_NAME)
        return ConversionResult(out_dir=target, arch=spec, num_classes=num_classes, source_sha256=checkpoint.sha256,
                                weights_sha256=weights_sha256.result(), parity=parity, source_dtype=source_dtype)


def verify(model_dir: str | os.PathLike[str], against: Source, *,
           cache_dir: Path | None = None, progress: bool = True) -> ParityReport:
    """Rerun the parity check of a converted folder against its source checkpoint.

    ``model_dir`` may also be a Hub id, pinned or not (``hf-hub:radiologynet/resnet50@<sha>``):
    the folder is downloaded at that revision first.
    """
    model_dir = resolve_model_dir(model_dir)
    config = check_folder(model_dir)  # config and weights' names and shapes, before the (long) read of the source
    spec = find_arch(config["architecture"])
    with open_legacy_checkpoint(against, cache_dir=cache_dir, progress=progress) as checkpoint:
        _, num_classes = detect_architecture(checkpoint.state_dict, spec)
        _prepare_source(checkpoint)
        reference = _legacy_logits(checkpoint, spec, num_classes)
    candidate = run_logits(load_timm_from_dir(model_dir), parity_input(spec.input_size))
    return compare_logits(reference, candidate, spec.input_size)
