"""Full Hub model cards for converted RadiologyNET models, from one Jinja2 template.

The card is what a medical user reads before deciding whether a model is usable, how to
preprocess for it and what not to do with it, so everything in it comes from checked
sources: the architecture table (names, ids, input sizes), the converted folder (source
file and sha256, label names) and the parity figure measured at conversion. The template
is ``rnet_hub/publish/templates/radiologynet.md`` (the one copy; a checkout's ``model_cards/``
holds the ten cards rendered from it) and is rendered by huggingface_hub's
``ModelCard.from_template``.

A card can be rendered before its conversion exists (``source_name``, ``source_sha256`` and
``parity_max_abs_diff`` all ``None``): its provenance then reads *pending* instead of a hash,
a parity figure and converter versions, so it states nothing that was not measured and
embeds no installed version.

The same generator serves the ten published models and a user's own fine-tuned
conversion: pass ``base_model`` (the RadiologyNET repository it started from), its
``label_names`` and ``task``, and the card says so in its metadata and text.

``pipeline_tag`` (what the Hub's widget and task filters show): ``image-feature-extraction``
for the ten published models, whose 36-cluster head has no label names (an
``image-classification`` widget would show scores such as ``LABEL_4: 0.92`` that mean nothing
clinically), and for a fine-tune without label names; ``image-classification`` only for a
fine-tune with ``label_names``, whose widget then shows named scores.

The card's model statistics (parameters, GMACs at the native input size, embedding width) are
measured, not copied: :func:`model_stats` builds the timm model on the meta device and counts
one forward pass with ``torch.utils.flop_counter.FlopCounterMode`` (shapes only, so it is fast
and deterministic), once per architecture and head per process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..architectures import PRETRAINING_NUM_CLASSES, ArchSpec
from ..errors import BadInputError, ConvertedFolderError
from ..folder import WEIGHTS_NAME, read_config, read_weights_metadata
from ..names import HUB_PREFIX, architecture_of, parse_model_name
from ..version import __version__

__all__ = ["CARD_TAGS", "FLOP_COUNTER", "TEMPLATE_NAME", "ModelStats", "build_card", "build_card_for_folder",
           "card_metadata", "converter_versions", "model_stats", "pipeline_tag_for", "template_path"]

TEMPLATE_NAME = "radiologynet.md"
CARD_TAGS = ("timm", "transformers", "image-feature-extraction", "medical-imaging", "radiology", "transfer-learning",
             "radiologynet")
FINETUNED_TAGS = ("fine-tuned",)
FEATURE_EXTRACTION = "image-feature-extraction"
CLASSIFICATION = "image-classification"
#: The tool that measures the card's GMACs, named in the card.
FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode"

#: The placeholder organisation in the snippets of a card whose folder names no Hub repository.
UNPUBLISHED_ORG = "YOUR-ORG"

def template_path() -> Path:
    """The card template, shipped inside the package (``rnet_hub/publish/templates/``)."""
    return Path(str(resources.files(__package__) / "templates" / TEMPLATE_NAME))


def pipeline_tag_for(label_names: Sequence[str] | None) -> str:
    """``image-classification`` for a head with label names (a fine-tune's), else ``image-feature-extraction``.

    The 36 pretraining clusters have no names, so a classification widget would show meaningless
    ``LABEL_k`` scores; features are what the published models are for.
    """
    return CLASSIFICATION if label_names else FEATURE_EXTRACTION


def card_metadata(spec: ArchSpec, *, base_model: str | None = None,
                  label_names: Sequence[str] | None = None) -> ModelCardData:
    """The YAML metadata of a card: license, library, pipeline, tags, and ``base_model`` for fine-tunes.

    ``pipeline_tag`` follows :func:`pipeline_tag_for`: only a fine-tune with ``label_names`` is an
    ``image-classification`` model on the Hub.
    """
    extra: dict[str, Any] = {}
    tags = list(CARD_TAGS)
    if base_model is not None:
        extra = {"base_model": base_model, "base_model_relation": "finetune"}
        tags += FINETUNED_TAGS
    pipeline_tag = pipeline_tag_for(label_names)
    if pipeline_tag not in tags:
        tags.append(pipeline_tag)
    return ModelCardData(license="gpl-3.0", library_name="timm", pipeline_tag=pipeline_tag, tags=tags, **extra)


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of one timm model, as the card states them.

    ``macs``: multiply-accumulates of one forward pass of one image at ``input_size`` (half the
    FLOPs :data:`FLOP_COUNTER` counts: convolutions and matrix multiplications).
    ``embedding_dim``: the width of the pooled features (``num_classes=0``).
    """

    parameters: int
    macs: int
    embedding_dim: int
    input_size: int
    num_classes: int

    @property
    def parameters_text(self) -> str:
        return f"{self.parameters / 1e6:.3g} M ({self.parameters:,})"

    @property
    def gmacs_text(self) -> str:
        return f"{self.macs / 1e9:.3g}"


def model_stats(spec: ArchSpec, num_classes: int = PRETRAINING_NUM_CLASSES) -> ModelStats:
    """Parameters (with a ``num_classes`` head), GMACs at the native input size and embedding width of ``spec``."""
    return _measured(spec.timm_arch, spec.input_size, num_classes, tuple(sorted(spec.model_args.items())))


@functools.cache
def _measured(timm_arch: str, input_size: int, num_classes: int,
              model_args: tuple[tuple[str, Any], ...]) -> ModelStats:
    """Count on the meta device: FlopCounterMode needs only shapes, and no time goes into initialisation."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..loading import build_timm_on_meta

    model = build_timm_on_meta(timm_arch, num_classes=num_classes, **dict(model_args)).eval()
    image = torch.empty(1, 3, input_size, input_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    parameters = sum(p.numel() for p in model.parameters())
    model.reset_classifier(0)
    with torch.no_grad():
        embedding_dim = int(model(image).shape[-1])
    return ModelStats(parameters=parameters, macs=counter.get_total_flops() // 2, embedding_dim=embedding_dim,
                      input_size=input_size, num_classes=num_classes)


def _checked_base_model(spec: ArchSpec, base_model: str | None, finetuned: bool) -> str | None:
    """The base model id of a fine-tune (default: the table's repository for ``spec``), checked against it."""
    if not finetuned:
        return None
    base = (base_model or spec.repo_id()).removeprefix(HUB_PREFIX)
    try:
        ref = parse_model_name(HUB_PREFIX + base)
    except BadInputError:
        ref = None
    if ref is None or ref.revision or ref.arch != spec:
        raise BadInputError(f"base_model {base!r} is not the RadiologyNET repository of {spec.name}; "
                            f"use e.g. {spec.repo_id()!r}")
    return base


def converter_versions() -> dict[str, str]:
    """The versions a conversion made now is made with (recorded in the card's provenance)."""
    import timm
    import torch

    return {"rnet_hub": __version__, "torch": torch.__version__, "timm": timm.__version__}


def build_card(spec: ArchSpec | str, *, repo_id: str | None, source_name: str | None, source_sha256: str | None,
               parity_max_abs_diff: float | None, parity_tolerance: float | None = None,
               source_url: str | None = None, num_classes: int = PRETRAINING_NUM_CLASSES,
               label_names: Sequence[str] | None = None, base_model: str | None = None, task: str | None = None,
               converted_with: Mapping[str, str] | None = None) -> ModelCard:
    """The full model card of one converted model, or of one whose conversion is pending.

    Args:
        spec: the architecture: a table row or any model name (:mod:`rnet_hub.names`).
        repo_id: the Hub repository the card is for; every usage snippet loads from it. ``None``: a
            conversion meant for no repository (a user's own): the card says so and its snippets use the
            placeholder ``YOUR-ORG/<timm architecture>``, so it never claims the official repository.
        source_name, source_sha256: the file the weights were converted from and its sha256.
        parity_max_abs_diff, parity_tolerance: max|Δlogits| measured at conversion, and its tolerance.
        source_url: where the source was downloaded from, when it was.
        num_classes, label_names: the head; a head other than the 36 pretraining clusters, label
            names, ``base_model`` or ``task`` make the card a fine-tune's card.
        base_model: the RadiologyNET repository a fine-tune started from (default ``spec.repo_id()``).
        task: one line saying what a fine-tuned head predicts.
        converted_with: ``rnet_hub``/``torch``/``timm`` versions of the conversion (default: these,
            see :func:`converter_versions`); pass the recorded ones when the card is written later.

    ``source_name``, ``source_sha256`` and ``parity_max_abs_diff`` all ``None`` render the card of a
    published model whose archive is not converted yet: its provenance says *pending* (and no
    version is read from this environment). Fine-tunes are always cards of a conversion.
    """
    spec = spec if isinstance(spec, ArchSpec) else architecture_of(spec)
    unpublished = repo_id is None
    repo_id = repo_id or f"{UNPUBLISHED_ORG}/{spec.timm_arch}"
    if label_names is not None and len(label_names) != num_classes:
        raise BadInputError(f"{len(label_names)} label names for a head of {num_classes} classes; "
                            f"give one per output")
    finetuned = any((base_model, task, label_names is not None, num_classes != PRETRAINING_NUM_CLASSES))
    base = _checked_base_model(spec, base_model, finetuned)
    pending = _is_pending(source_name=source_name, source_sha256=source_sha256,
                          parity_max_abs_diff=parity_max_abs_diff, parity_tolerance=parity_tolerance,
                          source_url=source_url, converted_with=converted_with, finetuned=finetuned)
    values = {
        "title": f"{spec.name} fine-tuned from RadiologyNET" if finetuned else f"RadiologyNET {spec.name}",
        "finetuned": finetuned, "repo_id": repo_id, "num_classes": num_classes, "base_model": base, "task": task,
        "label_names": list(label_names) if label_names is not None else None, "pending": pending,
        "unpublished": unpublished,
        **_table_values(spec), **_stats_values(model_stats(spec, num_classes)),
        **_provenance_values(source_name=source_name, source_sha256=source_sha256, source_url=source_url,
                             parity_max_abs_diff=parity_max_abs_diff, parity_tolerance=parity_tolerance,
                             versions=None if pending else {**converter_versions(), **(converted_with or {})}),
    }
    metadata = card_metadata(spec, base_model=base, label_names=label_names)
    template = _checked_template(set(values) | set(metadata.to_dict()))
    return ModelCard.from_template(metadata, template_str=template, **values)


def _is_pending(*, source_name: str | None, source_sha256: str | None, parity_max_abs_diff: float | None,
                parity_tolerance: float | None, source_url: str | None, converted_with: Mapping[str, str] | None,
                finetuned: bool) -> bool:
    """Whether the card is of a conversion still to be made; refuses half a provenance."""
    measured = {"source_name": source_name, "source_sha256": source_sha256, "parity_max_abs_diff": parity_max_abs_diff}
    if all(value is not None for value in measured.values()):
        return False
    if any(value is not None for value in measured.values()):
        missing = [name for name, value in measured.items() if value is None]
        raise BadInputError(f"the card's provenance lacks {', '.join(missing)}; give source_name, source_sha256 and "
                            f"parity_max_abs_diff of the conversion, or none of them for a pending conversion")
    extra = {"parity_tolerance": parity_tolerance, "source_url": source_url, "converted_with": converted_with}
    given = [name for name, value in extra.items() if value is not None]
    if given:
        raise BadInputError(f"{', '.join(given)} given for a pending conversion (no source_sha256); a pending card "
                            f"records no provenance")
    if finetuned:
        raise BadInputError("a fine-tune's card needs its conversion's provenance (source_name, source_sha256, "
                            "parity_max_abs_diff); build it from the converted folder")
    return True


def _table_values(spec: ArchSpec) -> dict[str, Any]:
    return {"name": spec.name, "timm_arch": spec.timm_arch, "pretrained_tag": spec.pretrained_tag,
            "input_size": spec.input_size, "classifier": spec.classifier, "original_url": spec.archive_url,
            "encoder_args": "".join(f", {key}={value!r}" for key, value in sorted(spec.model_args.items()))}


def _stats_values(stats: ModelStats) -> dict[str, Any]:
    return {"parameters": stats.parameters_text, "gmacs": stats.gmacs_text, "embedding_dim": stats.embedding_dim,
            "flop_counter": FLOP_COUNTER}


def _provenance_values(*, source_name: str | None, source_sha256: str | None, source_url: str | None,
                       parity_max_abs_diff: float | None, parity_tolerance: float | None,
                       versions: Mapping[str, str] | None) -> dict[str, Any]:
    """The template's provenance variables; all ``None`` for a pending conversion."""
    return {"source_name": source_name, "source_sha256": source_sha256, "source_url": source_url,
            "parity_max_abs_diff": None if parity_max_abs_diff is None else float(parity_max_abs_diff),
            "parity_tolerance": None if parity_tolerance is None else float(parity_tolerance),
            "converter_version": versions["rnet_hub"] if versions else None,
            "torch_version": versions["torch"] if versions else None,
            "timm_version": versions["timm"] if versions else None}


def _checked_template(provided: set[str]) -> str:
    """The template text, after checking that it uses no variable ``build_card`` does not provide.

    ``ModelCard.from_template`` renders unknown variables as empty text; a template edit that
    introduced one would silently publish cards with holes.
    """
    import jinja2
    from jinja2 import meta

    path = template_path()
    text = path.read_text(encoding="utf-8")
    unknown = meta.find_undeclared_variables(jinja2.Environment().parse(text)) - provided - {"card_data"}
    if unknown:
        raise BadInputError(f"the card template {path} uses variables build_card does not provide: {sorted(unknown)}")
    return text


def build_card_for_folder(folder: str | os.PathLike[str], *, parity_max_abs_diff: float,
                          parity_tolerance: float | None = None, repo_id: str | None = None,
                          source_url: str | None = None, base_model: str | None = None, task: str | None = None,
                          converted_with: Mapping[str, str] | None = None) -> ModelCard:
    """The card of an existing converted folder, read from its ``config.json`` and safetensors metadata.

    ``repo_id`` defaults to the ``hf_hub_id`` recorded at conversion.
    """
    folder = Path(folder)
    config = read_config(folder)
    metadata = read_weights_metadata(folder)
    if "source_sha256" not in metadata:
        raise ConvertedFolderError(f"{folder} has no source_sha256 in its {WEIGHTS_NAME} metadata; it was not "
                                   f"written by `rnet-hub convert`, so its provenance is unknown: convert the source "
                                   f"archive again")
    repo = repo_id or config.get("pretrained_cfg", {}).get("hf_hub_id")
    if not repo:
        raise BadInputError(f"{folder}: no repo_id given and none recorded in config.json; pass repo_id")
    return build_card(config["architecture"], repo_id=repo, source_name=metadata.get("source_file", "unknown"),
                      source_sha256=metadata["source_sha256"], parity_max_abs_diff=parity_max_abs_diff,
                      parity_tolerance=parity_tolerance, source_url=source_url, num_classes=config["num_classes"],
                      label_names=config.get("label_names"), base_model=base_model, task=task,
                      converted_with=converted_with)
