"""The options of a fine-tuning run and the ``TrainingArguments`` they become.

:class:`FinetuneOptions` holds every option of ``rnet-hub finetune`` / :func:`rnet_hub.finetune.finetune`.
:func:`training_arguments` turns them into transformers' ``TrainingArguments`` in four layers, each
overriding the one before:

1. the original study's defaults (:data:`STUDY_DEFAULTS`: AdamW, lr 1e-3, weight decay 1e-3, batch 32,
   constant learning rate, no gradient clipping, evaluation, checkpoint and log once per epoch, the best
   checkpoint by the validation metric kept and loaded at the end);
2. a config file (``config``: JSON or YAML mapping of ``TrainingArguments`` fields);
3. the named options (``epochs``, ``lr``, ``batch_size``, ``bf16``, ``seed``, ...), where given;
4. ``training_args`` (``--ta key=value``, typed by the dataclass field through ``HfArgumentParser``).

Torch is imported only inside the functions that need transformers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError

__all__ = ["DEFAULT_EPOCHS", "INITS", "LOWER_IS_BETTER", "MAIN_METRIC", "STUDY_DEFAULTS", "TASK_METRICS",
           "FinetuneOptions", "parse_ta",
           "read_config_file", "training_arguments"]

INITS = ("radiologynet", "imagenet", "scratch")
#: The study's maximum (200 epochs, early stopping after 10 without improvement); ``--epochs`` changes it.
DEFAULT_EPOCHS = 200
#: The validation metric early stopping and the best checkpoint follow, per task, and whether higher is better.
MAIN_METRIC = {"single_label": ("f1_weighted", True), "multi_label": ("auroc_macro", True),
               "regression": ("mae", False)}
#: The validation metrics of each task (``rnet_hub.finetune.metrics``), any of which ``--metric`` may name.
TASK_METRICS = {"single_label": ("loss", "accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "auroc_macro"),
                "multi_label": ("loss", "accuracy", "f1_weighted", "f1_macro", "auroc_macro"),
                "regression": ("loss", "mae", "mse", "rmse", "r2")}
#: Metrics where lower is better (every other one: higher is better).
LOWER_IS_BETTER = frozenset({"loss", "mae", "mse", "rmse"})

#: ``TrainingArguments`` defaults of the original study (and of a sane checkpointing scheme).
STUDY_DEFAULTS: Mapping[str, Any] = {
    "learning_rate": 1e-3,
    "weight_decay": 1e-3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 32,
    "num_train_epochs": DEFAULT_EPOCHS,
    "optim": "adamw_torch",
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_grad_norm": 0.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "save_total_limit": 1,  # with load_best_model_at_end: the best and the latest checkpoint are kept
    "load_best_model_at_end": True,
    "dataloader_num_workers": 0,
    "remove_unused_columns": False,
    "ddp_find_unused_parameters": False,
    "report_to": "none",
    "seed": 1221,
    "disable_tqdm": False,
}


@dataclass
class FinetuneOptions:
    """Every option of a fine-tuning run (the CLI's flags, the Python API's keywords).

    ``None`` means "the study's default" (:data:`STUDY_DEFAULTS`) for the options that map onto
    ``TrainingArguments``. ``image_size`` trains at another square input size than the architecture's
    native one (tests use 64 px); the output folder records it as its ``input_size``.
    """

    init: str = "radiologynet"
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    patience: int = 10
    metric: str | None = None
    image_size: int | None = None
    seed: int | None = None
    bf16: bool = False
    fp16: bool = False
    report_to: str | None = None
    num_workers: int | None = None
    freeze_backbone: bool = False
    unfreeze_after: int | None = None
    flip: bool = True
    class_weights: bool = False
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    config: str | os.PathLike[str] | None = None
    training_args: Mapping[str, Any] = field(default_factory=dict)
    data_cache_dir: str | os.PathLike[str] | None = None
    cache_dir: str | os.PathLike[str] | None = None
    image_column: str = "image"
    label_column: str | None = None

    @classmethod
    def from_keywords(cls, options: Mapping[str, Any]) -> FinetuneOptions:
        """The options from keywords, refusing unknown ones (with the closest known name) and bad values."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise BadInputError(f"unknown fine-tuning option {key!r}{hint}; known: {', '.join(known)}")
        result = cls(**options)
        result.check()
        return result

    def check(self) -> None:
        """Refuse values that would fail deep inside torch or transformers."""
        if self.init not in INITS:
            raise BadInputError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        positive = {"--epochs": self.epochs, "--lr": self.lr, "--batch-size": self.batch_size,
                    "--image-size": self.image_size}
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise BadInputError(f"{name} must be positive, got {value}")
        if self.image_size is not None and self.image_size < 32:
            raise BadInputError(f"--image-size must be at least 32 pixels, got {self.image_size}")
        if self.patience < 0 or (self.unfreeze_after is not None and self.unfreeze_after < 0):
            raise BadInputError("--patience and --unfreeze-after must be 0 or more")
        if self.unfreeze_after is not None and not self.freeze_backbone:
            raise BadInputError("--unfreeze-after N needs --freeze-backbone (the backbone trains from epoch N)")
        if self.bf16 and self.fp16:
            raise BadInputError("--bf16 and --fp16 exclude each other; choose one")
        if self.num_workers is not None and self.num_workers < 0:
            raise BadInputError(f"--num-workers must be 0 or more, got {self.num_workers}")
        if self.resume and self.overwrite:
            raise BadInputError("--resume continues the run in --out, --overwrite starts it again; choose one")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON or YAML file holding one mapping of ``TrainingArguments`` fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        raise BadInputError(f"--config {path} is not valid {'YAML' if path.suffix != '.json' else 'JSON'}: "
                            f"{str(exc).splitlines()[0]}") from exc
    if not isinstance(loaded, dict):
        raise BadInputError(f"--config {path} must hold a mapping of TrainingArguments fields, "
                            f"e.g. {{\"learning_rate\": 1e-4}}")
    return loaded


def _ta_fields() -> list[str]:
    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def _unknown_field(key: str, fields: Sequence[str], where: str) -> BadInputError:
    close = difflib.get_close_matches(key, fields, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return BadInputError(f"{where}: {key!r} is not a TrainingArguments field{hint}; see "
                         f"https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments")


def parse_ta(pairs: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (``--ta``) as typed ``TrainingArguments`` values, each converted the way
    ``HfArgumentParser`` converts ``--key value`` on a transformers command line."""
    from transformers import HfArgumentParser, TrainingArguments

    fields = _ta_fields()
    parser = HfArgumentParser(TrainingArguments)
    typed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().removeprefix("--").replace("-", "_")
        if not sep or not key:
            raise BadInputError(f"--ta {pair!r} is not key=value; write e.g. --ta learning_rate=1e-4")
        if key not in fields:
            raise _unknown_field(key, fields, f"--ta {pair}")
        argv = ["--output_dir", "unused", f"--{key}", *([value] if value != "" else [])]
        try:
            parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)[0]
        except (SystemExit, ValueError) as exc:
            raise BadInputError(f"--ta {pair}: {value!r} is not a valid value for {key}") from exc
        typed[key] = getattr(parsed, key)
    return typed


def _checked_fields(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields = _ta_fields()
    for key in values:
        if key not in fields:
            raise _unknown_field(key, fields, where)
    return dict(values)


def _has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) to train on."""
    import torch

    return bool(torch.accelerator.is_available())


def training_arguments(options: FinetuneOptions, *, output_dir: Path, task: str) -> Any:
    """The ``TrainingArguments`` of a run: the four layers of the module docstring."""
    from transformers import TrainingArguments

    metric, greater = MAIN_METRIC[task]
    if options.metric is not None:
        metric = options.metric.removeprefix("eval_")
        if metric not in TASK_METRICS[task]:
            raise BadInputError(f"--metric {options.metric!r} is not a validation metric of {task}; use one of "
                                f"{', '.join(TASK_METRICS[task])}")
        greater = metric not in LOWER_IS_BETTER
    values: dict[str, Any] = {**STUDY_DEFAULTS, "metric_for_best_model": metric, "greater_is_better": greater,
                              "dataloader_pin_memory": _has_accelerator(),
                              "use_cpu": not _has_accelerator()}  # on CPU only: DDP under torchrun needs it
    if options.config is not None:
        values.update(_checked_fields(read_config_file(options.config), f"--config {options.config}"))
    named = {"num_train_epochs": options.epochs, "learning_rate": options.lr, "weight_decay": options.weight_decay,
             "seed": options.seed, "report_to": options.report_to, "dataloader_num_workers": options.num_workers}
    if options.batch_size is not None:
        named.update(per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=options.batch_size)
    values.update({k: v for k, v in named.items() if v is not None})
    values.update(bf16=options.bf16 or values.get("bf16", False), fp16=options.fp16 or values.get("fp16", False))
    if options.quiet:
        values.update(disable_tqdm=True, log_level="error")
    if values.get("dataloader_num_workers"):
        values.setdefault("dataloader_persistent_workers", True)  # the workers' decoded-image caches live on
    values.update(_checked_fields(options.training_args, "training_args"))
    values["output_dir"] = str(output_dir)
    try:
        return TrainingArguments(**values)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"invalid training arguments: {str(exc).splitlines()[0]}") from exc
