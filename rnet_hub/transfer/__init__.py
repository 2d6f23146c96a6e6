"""Partial weight transfer with a report: any RadiologyNET source into any ``nn.Module``.

The original helper copied a tensor when a target key had the same name (or one of three
renamed forms) and the same shape, and said nothing. :func:`transfer_weights` keeps that
behaviour as its first two rules, adds the conversion key maps and a careful suffix rule,
and always returns a :class:`TransferReport` (and logs one line, a warning when nothing
matched), so a load that matched nothing can no longer pass for success.

Algorithm
---------
1. **Read the source** into one flat state dict (original key names; :mod:`.sources`): a
   legacy archive, ``.pth`` or URL, a ``model.safetensors`` file, a state dict, a module, or
   a model name read by :func:`rnet_hub.names.parse_model_name`: a converted folder
   (``config.json`` + ``model.safetensors``; ``local-dir:DIR`` or its path) or a Hub
   repository (``hf-hub:org/name[@rev]``, ``org/name``, or an architecture name such as
   ``res50`` or ``resnet50.radiologynet`` for ``radiologynet/resnet50``), downloaded by
   :func:`rnet_hub.hub.download_model_files`. Source keys that share storage (the DenseNet
   wrapper's ``features.*`` and ``model.features.*``) form one *source tensor*.
2. **Name the source in every scheme.** When its keys are exactly (apart from the head and
   a prefix all keys share, like ``module.``) one of the ten architectures in legacy-wrapper,
   torchvision or timm naming (the one recogniser, :mod:`rnet_hub.legacy.recognise`), each
   tensor also gets its name in the other two schemes: ``rnet_hub.legacy.keymap.legacy_to_timm``
   one way, its inverse (the recogniser's name table, built once per architecture from a
   meta-device wrapper, key names only) the other. The architecture named by a converted folder's config, a checkpoint's
   ``model_name``, a legacy wrapper or a timm model's ``pretrained_cfg`` is tried first.
   The documented reshapes come with the renames: VGG16 ``classifier.0``/``.3``
   (Linear) <-> ``pre_logits.fc1``/``.fc2`` (7x7 / 1x1 conv), MobileNetV3 ``classifier.0``
   (Linear) <-> ``conv_head`` (1x1 conv). torchvision names are the legacy names without the
   wrapper's ``model.`` prefix.
3. **Match target keys** (:mod:`.matching`), each rule over all still-unfilled targets before the next:

   a. *exact*: the same key;
   b. *original fallbacks*, source key by source key as the original helper did: ``model.``
      prepended, ``features`` replaced by ``model``, everything up to the first ``model.`` dropped;
   c. *key maps*: a target key that is ``<prefix><name>`` for a name in one of the schemes
      (source, legacy, torchvision, timm), e.g. ``encoder.`` + ``layer1.0.conv1.weight`` in an
      smp U-Net, ``encoder.model.`` + a timm name in an smp ``tu-`` encoder. timm's feature
      wrappers flatten nested names with ``_`` (``features_denseblock1``), so names are also
      compared with ``_`` read as ``.``. Matches are grouped by (scheme, prefix) and the
      largest groups are applied first, so a stray decoder key can never take a tensor
      that the real backbone matches;
   d. *suffix*: the longest run of trailing name components (at least two, like
      ``conv1.weight``) shared with source names; accepted only when exactly one unused
      source tensor has it; when several do, the target stays untouched.

   A tensor is only ever copied into a target of the same shape (the reshapes of step 2 give
   the source tensor the target's shape first); a same-name, other-shape pair is reported as
   a shape mismatch, and the rest of that layer is left untouched too (no layer is ever
   half-loaded, e.g. a bias without its weight). A source tensor fills at most one target
   tensor; targets that share storage (DenseNet's duplicated modules) are filled together.
4. **Check, then copy.** ``strict`` and ``min_coverage`` are checked before anything is
   written, so a refused transfer leaves the target as it was.

The rule that filled each target is in the report (:mod:`.report`): ``exact``, ``original fallback``,
``prefix`` (the source's own names under a target prefix), ``legacy names``/``torchvision
names``/``timm names`` (a key map), ``... (_ read as .)``, or ``suffix``.

Coverage is the fraction of the target's parameter and persistent buffer *elements* that
were filled, each shared storage counted once. ``num_batches_tracked`` counters are
transferred and listed like any tensor but do not count towards coverage (they are training
step counters, not weights; counting them would let an all-BatchNorm miss look covered).

``strict`` refuses when any target parameter or buffer outside the classifier (counters
excepted) would stay untouched: BatchNorm statistics matter as much as weights. The
*classifier* it allows to stay untouched is: for a timm model, the module
``get_classifier()`` returns (else ``pretrained_cfg['classifier']``); for a legacy wrapper,
its head (``ArchSpec.legacy_head``, both DenseNet copies); otherwise the last ``nn.Linear``.
A segmentation model has no classifier in this sense: pass its encoder (``unet.encoder``)
as the target to demand a complete body.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError, SourceError, TransferError
from ..legacy.checkpoint import first_non_finite
from .matching import Target, match
from .report import ShapeMismatch, TransferredTensor, TransferReport, percent
from .sources import Source, name_schemes, open_source

__all__ = ["ShapeMismatch", "TransferReport", "TransferredTensor", "transfer_weights", "transfer_weights_to_model"]

logger = logging.getLogger("rnet_hub.transfer")

_SHOWN = 8


def transfer_weights(source: Source, target: nn.Module, *, strict: bool = False,
                     min_coverage: float | None = None) -> TransferReport:
    """Copy every source tensor that has a counterpart in ``target`` into it and report what happened.

    Args:
        source: a legacy archive, ``.pth`` or URL; a converted folder; a ``model.safetensors``
            file; a model name (``hf-hub:org/name[@rev]``, ``org/name``, ``local-dir:DIR``,
            ``resnet50.radiologynet``, ``ResNet50``, ``res50``, ``resnet50``: see
            :func:`rnet_hub.names.parse_model_name`); a state dict; a module.
        target: any module; it is changed in place (its tensors keep device and dtype).
        strict: refuse (``TransferError``) when any parameter or buffer outside the classifier
            would stay untouched (``num_batches_tracked`` counters excepted).
        min_coverage: refuse when less than this fraction (0-1) of the target's elements would be filled.

    Returns:
        A :class:`TransferReport`; ``print(report)`` shows it as a short table.

    Raises:
        TransferError: ``strict`` or ``min_coverage`` refused; the target was not changed.
        BadInputError: the source or the target cannot be read (``SourceError`` for sources, also when a
            tensor that would be copied holds NaN/Inf; ``UnknownArchitectureError`` for a name that designates
            no model). Nothing is copied then either.
    """
    if min_coverage is not None and not 0.0 <= min_coverage <= 1.0:
        raise BadInputError(f"min_coverage must be a fraction between 0 and 1, got {min_coverage}")
    filling = Target.of(target)
    with open_source(source) as (state, description, hint):
        empty = [k for k, v in state.items() if v.is_meta]
        if empty:
            raise BadInputError(f"the source has tensors on the meta device (e.g. {empty[0]}): they hold no weights")
        schemes, source_arch = name_schemes(state, hint)
        plan = match(filling, schemes)
        report = plan.report(state, description, source_arch)
        # only what would be copied: a source's unused tensors (an uninitialised head) may hold anything
        bad = first_non_finite({t.source: state[t.source] for t in report.transferred})  # no copy made
        if bad is not None:
            raise SourceError(f"{description}: {bad} holds NaN/Inf values, which would make the target's outputs "
                              f"NaN; the weights are damaged: use an undamaged source (convert or download it "
                              f"again)")
        _log(report)
        _check(report, filling, strict, min_coverage)
        plan.apply()  # inside the block: an archive's tensors are only valid until it ends
    return report


def _check(report: TransferReport, target: Target, strict: bool, min_coverage: float | None) -> None:
    """Refuse (before anything is copied) when ``strict`` or ``min_coverage`` is not met."""
    if strict:
        missing = [k for k in report.untouched_target_keys if k in target.checked]
        if missing:
            shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
            mismatches = "; ".join(str(m) for m in report.shape_mismatches[:3])
            raise TransferError(
                f"strict transfer refused: {len(missing)} target tensors outside the classifier would stay "
                f"untouched ({shown}); coverage would be {percent(report.coverage)}"
                + (f"; shape mismatches: {mismatches}" if mismatches else "")
                + ". Pass a target whose layers match the source (for a segmentation model, its encoder), "
                  "or strict=False to accept a partial transfer", report)
    if min_coverage is not None and report.coverage < min_coverage:
        raise TransferError(f"transfer refused: coverage {percent(report.coverage)} is below min_coverage "
                            f"{min_coverage:.1%} ({report.summary()})", report)


def _log(report: TransferReport) -> None:
    """One line per transfer; a warning when nothing matched, so a useless load is never silent."""
    if report.transferred:
        logger.info(report.summary())
    else:
        logger.warning("%s: nothing matched; the source and the target have no tensor name and shape in common "
                       "(is it the right architecture?)", report.summary())


def transfer_weights_to_model(path: Any, target_model: nn.Module, device: str | torch.device = "cpu") -> TransferReport:
    """The original helper's signature: copy matching weights of ``path`` into ``target_model``.

    Unlike the original it returns a :class:`TransferReport` and logs a one-line summary,
    so a load that matched nothing no longer looks like success.
    """
    report = transfer_weights(path, target_model)
    target_model.to(device)
    return report
