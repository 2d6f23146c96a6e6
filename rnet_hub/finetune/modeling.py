"""The model a fine-tune starts from: transformers' ``TimmWrapperForImageClassification`` over our folders.

``build_model`` reads the converted folder (or Hub id) through :mod:`rnet_hub.names` /
:func:`rnet_hub.loading.resolve_model_dir` and makes the model with the task's head
(``num_labels``, ``id2label``/``label2id`` with the real names, ``problem_type``):

* ``radiologynet``: ``AutoModelForImageClassification.from_pretrained(folder, ...,
  ignore_mismatched_sizes=True)``: our weights, a fresh head;
* ``imagenet``: timm's ImageNet weights for the same architecture (``ArchSpec.imagenet_tag``, downloaded
  by timm from the Hub, so ``HF_ENDPOINT``, the cache and ``HF_HUB_OFFLINE`` apply), a fresh head, the
  architecture's timm defaults (no ``model_args``), and ImageNet mean/std in ``pretrained_cfg``;
* ``scratch``: timm's random initialisation of the folder's architecture and ``model_args``.

The ``pretrained_cfg`` the output records is the folder's, with ``input_size`` at the training size,
the normalisation of the init, and no claim of published weights (``hf_hub_id``, ``tag``, ``origin_url``
cleared): the fine-tune is not the published model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..architectures import ArchSpec, find_arch
from ..errors import BadInputError, DownloadError
from ..names import parse_model_name
from .options import INITS

__all__ = ["PROBLEM_TYPES", "BaseModel", "build_model", "classifier_parameter_names", "resolve_base",
           "transformers_errors_only"]

#: transformers' ``problem_type`` per task (it picks the loss of the model's own ``forward``).
PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}


@dataclass(frozen=True)
class BaseModel:
    """What a fine-tune starts from: the folder, its checked ``config.json``, the architecture, the name
    given (``base_model``: the Hub id, or the folder's absolute path) and the Hub repository of its weights
    (``hub_id``: the Hub id, or the one a converted folder records in ``pretrained_cfg.hf_hub_id``; ``None``
    when neither says)."""

    folder: Path
    config: dict[str, Any]
    spec: ArchSpec
    base_model: str
    hub_id: str | None = None


def resolve_base(model: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> BaseModel:
    """The converted folder a model name designates (downloaded if needed), checked."""
    from ..loading import folder_config, resolve_model_dir

    ref = parse_model_name(model)
    folder = resolve_model_dir(ref, cache_dir=cache_dir)
    config = folder_config(folder)
    spec = find_arch(str(config["architecture"]))
    base = str(ref.repo_id) if ref.repo_id is not None else str(Path(ref.folder or folder).resolve())
    hub_id = ref.repo_id or config["pretrained_cfg"].get("hf_hub_id") or None
    return BaseModel(Path(folder), config, spec, base, hub_id)


def _hf_config(base: BaseModel, *, init: str, task: str, label_names: Sequence[str], image_size: int | None) -> Any:
    """The ``TimmWrapperConfig`` of the fine-tuned model (see the module docstring)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers import AutoConfig

    num_labels = 1 if task == "regression" else len(label_names)
    names = list(label_names)[:num_labels]
    config = AutoConfig.from_pretrained(base.folder, num_labels=num_labels, problem_type=PROBLEM_TYPES[task],
                                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    config.label_names = names
    cfg = dict(config.pretrained_cfg)
    cfg.update(hf_hub_id=None, tag=None, origin_url=None, label_names=None, num_classes=num_labels)
    if image_size is not None:
        cfg.update(input_size=[3, image_size, image_size], pool_size=None)
    if init == "imagenet":
        cfg.update(mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD),
                   notes=f"initialised from timm's {base.spec.imagenet_tag} (ImageNet) weights")
        config.model_args = {}
    config.pretrained_cfg = cfg
    return config


def _timm_model(base: BaseModel, config: Any, init: str) -> Any:
    """timm's model for ``scratch`` (random) or ``imagenet`` (timm's pretrained tag) with the task's head."""
    import timm

    if init == "scratch":
        return timm.create_model(base.spec.timm_arch, pretrained=False, num_classes=config.num_labels,
                                 **(config.model_args or {}))
    tag = base.spec.imagenet_tag
    try:
        return timm.create_model(tag, pretrained=True, num_classes=config.num_labels)
    except (OSError, RuntimeError, ValueError) as exc:  # no network, offline without a cache, a missing repo
        raise DownloadError(f"--init imagenet needs timm's {tag} weights (Hub repository timm/{tag}), which could not "
                            f"be loaded ({str(exc).splitlines()[0][:200]}); check the network or HF_ENDPOINT, or "
                            f"fill the Hugging Face cache first") from exc


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """transformers logs errors only inside the block; its process-wide verbosity comes back afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def build_model(base: BaseModel, *, init: str, task: str, label_names: Sequence[str],
                image_size: int | None = None) -> Any:
    """The ``TimmWrapperForImageClassification`` a fine-tune trains (see the module docstring)."""
    from transformers import AutoModelForImageClassification

    if init not in INITS:
        raise BadInputError(f"--init must be radiologynet, imagenet or scratch, got {init!r}")
    config = _hf_config(base, init=init, task=task, label_names=label_names, image_size=image_size)
    timm_model = None if init == "radiologynet" else _timm_model(base, config, init)
    with transformers_errors_only():  # not the expected "newly initialised head" report
        # from_pretrained for every init: it sets up the key mapping that makes save_pretrained write timm's
        # own tensor names (a from_config model would write "timm_model."-prefixed ones, which timm cannot load)
        model = AutoModelForImageClassification.from_pretrained(base.folder, config=config,
                                                                ignore_mismatched_sizes=True)
    if timm_model is not None:
        model.timm_model = timm_model
    elif base.config["num_classes"] == config.num_labels:  # same width: from_pretrained kept the old head
        model.timm_model.reset_classifier(config.num_labels)
    return model


def classifier_parameter_names(model: Any) -> set[str]:
    """The names (in ``model.named_parameters()``) of the head's parameters; every other one is the backbone."""
    head = model.timm_model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}
