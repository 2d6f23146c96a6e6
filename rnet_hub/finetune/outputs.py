"""What a fine-tune leaves in ``DIR``: the model folder with its card, the metrics files and the curves.

* ``DIR/model``: the best checkpoint as a folder (``config.json`` with the real label names,
  ``model.safetensors``, ``README.md``), written through :func:`rnet_hub.staging.atomic_output`: a killed
  run leaves no half-written folder;
* ``DIR/test_metrics.json``: the test metrics, written last (its presence with ``DIR/model`` marks a
  finished run);
* ``DIR/curves.png``: loss and the main metric per epoch, training vs validation (matplotlib, Agg);
* ``DIR/metrics.jsonl`` is written during training by :class:`rnet_hub.finetune.engine.EpochRecords`.

The card is rendered from ``rnet_hub/publish/templates/finetune.md`` with huggingface_hub's
``ModelCard.from_template``; its metadata names ``base_model`` (with ``base_model_relation: finetune``)
and holds the test metrics as ``model-index`` (``EvalResult``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..files import write_atomic, write_text_atomic
from ..folder import CARD_NAME
from ..names import HUB_PREFIX, parse_model_name
from ..staging import atomic_output
from ..version import __version__

__all__ = ["CURVES_NAME", "METRICS_NAME", "MODEL_NAME", "TEST_METRICS_NAME", "CardFacts", "card_base_model",
           "is_finished", "render_card", "write_curves", "write_model_folder", "write_test_metrics"]

MODEL_NAME = "model"
METRICS_NAME = "metrics.jsonl"
TEST_METRICS_NAME = "test_metrics.json"
CURVES_NAME = "curves.png"
CARD_TEMPLATE = "finetune.md"
_TASK_TEXT = {"single_label": "single-label classification", "multi_label": "multi-label classification",
              "regression": "regression"}
_HYPERPARAMETERS = ("learning_rate", "weight_decay", "per_device_train_batch_size", "num_train_epochs", "optim",
                    "lr_scheduler_type", "max_grad_norm", "seed", "bf16", "fp16", "metric_for_best_model")


def is_finished(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished run: ``test_metrics.json`` and the model folder."""
    return (out_dir / TEST_METRICS_NAME).is_file() and (out_dir / MODEL_NAME / "config.json").is_file()


def card_base_model(hub_id: str | None, init: str, imagenet_tag: str) -> str | None:
    """The card's ``base_model``: the Hub repository the weights came from (``None`` for ``scratch``, and for a
    local folder that records no Hub repository)."""
    if init == "scratch" or (init == "radiologynet" and not hub_id):
        return None
    if init == "imagenet":
        return f"timm/{imagenet_tag}"
    try:
        ref = parse_model_name(HUB_PREFIX + str(hub_id))
    except BadInputError:
        return None
    return str(ref.repo_id)


@dataclass(frozen=True)
class CardFacts:
    """Everything the fine-tune card states (read from the run, nothing assumed)."""

    timm_arch: str
    task: str
    init: str
    label_names: Sequence[str]
    base_model: str | None
    base_source: str
    data_summary: Mapping[str, Any]
    test_metrics: Mapping[str, Any]
    best_metric_name: str
    best_metric_value: float | None
    epochs_run: int
    training_args: Mapping[str, Any]
    flip: bool
    input_size: int


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _metadata(facts: CardFacts, name: str) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    classification = facts.task != "regression"
    root = str(facts.data_summary.get("root") or "data")
    kind = str(facts.data_summary.get("source_kind"))
    hub_dataset = kind == "datasets" and not Path(root).exists()  # a Hub dataset name, not a local folder
    dataset_type = root if hub_dataset else {"folder": "imagefolder", "manifest": "manifest"}.get(kind, "custom")
    results = [EvalResult(task_type="image-classification" if classification else "image-regression",
                          dataset_type=dataset_type, dataset_name=Path(root).name or root, dataset_split="test",
                          metric_type=key.removeprefix("test_"), metric_value=float(value),
                          metric_name=key.removeprefix("test_"))
               for key, value in facts.test_metrics.items()
               if isinstance(value, int | float) and math.isfinite(value) and not key.endswith(("_runtime",
                                                                                                  "_per_second"))]
    extra: dict[str, Any] = {}
    if facts.base_model:
        extra = {"base_model": facts.base_model, "base_model_relation": "finetune"}
    tags = ["timm", "transformers", "medical-imaging", "radiology", "radiologynet", "fine-tuned", "rnet-hub-finetune"]
    return ModelCardData(license="gpl-3.0", library_name="timm", tags=tags, model_name=name, eval_results=results,
                         pipeline_tag="image-classification" if classification else None, **extra)


def render_card(facts: CardFacts) -> str:
    """The fine-tune's model card (Markdown with YAML metadata)."""
    from huggingface_hub import ModelCard

    template = (resources.files("rnet_hub.publish") / "templates" / CARD_TEMPLATE).read_text(encoding="utf-8")
    name = f"{facts.timm_arch} fine-tuned ({_TASK_TEXT[facts.task]})"
    counts = facts.data_summary.get("counts") or facts.data_summary.get("split_counts") or {}
    split_counts = [(k, v if not isinstance(v, Mapping) else sum(v.values())) for k, v in dict(counts).items()]
    shown = f"`{facts.base_model}`" if facts.base_model else f"a local folder, {Path(facts.base_source).name}"
    init_text = {"radiologynet": f"starting from the RadiologyNET weights of {shown}",  # no local path published
                 "imagenet": "starting from timm's ImageNet weights of the same architecture",
                 "scratch": "trained from a random initialisation"}[facts.init]
    grey = "an 8-bit grey image letterboxed to {s} × {s} px, scaled to [0, 1], replicated to 3 channels"
    preprocessing = grey.format(s=facts.input_size) + (
        ", then ImageNet mean/std normalisation" if facts.init == "imagenet" else "")
    augmentation = (("horizontal flip p=0.5, " if facts.flip else "") +
                    "rotation ±15°, brightness 0.8-1.2, contrast 0.8-1.3; none at evaluation")
    values = {
        "title": name, "timm_arch": facts.timm_arch, "rnet_hub_version": __version__, "task": facts.task,
        "task_text": _TASK_TEXT[facts.task], "data_name": Path(str(facts.data_summary.get("root", "data"))).name,
        "init_text": init_text, "base_model": facts.base_model, "label_names": list(facts.label_names),
        "best_metric_name": facts.best_metric_name, "best_metric_value": _fmt(facts.best_metric_value),
        "test_metrics": [(k.removeprefix("test_"), _fmt(v)) for k, v in facts.test_metrics.items()
                         if not k.endswith(("_runtime", "_per_second"))],
        "data_source_kind": str(facts.data_summary.get("source_kind", "data")), "split_counts": split_counts,
        "epochs_run": facts.epochs_run, "init": facts.init, "preprocessing": preprocessing,
        "augmentation": augmentation,
        "hyperparameters": [(k, _fmt(facts.training_args.get(k))) for k in _HYPERPARAMETERS],
    }
    return str(ModelCard.from_template(_metadata(facts, name), template_str=template, **values))


def write_model_folder(model: Any, out_dir: Path, card: str) -> Path:
    """Save ``model`` (``save_pretrained``) and its card to ``out_dir/model``, atomically."""
    target = out_dir / MODEL_NAME
    with atomic_output(target, overwrite=False) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return target


def write_test_metrics(out_dir: Path, metrics: Mapping[str, Any]) -> Path:
    """``out_dir/test_metrics.json`` (atomically; ``nan`` as ``null``)."""
    path = out_dir / TEST_METRICS_NAME
    write_text_atomic(path, json.dumps(dict(metrics), indent=2) + "\n")
    return path


def write_curves(out_dir: Path, rows: Sequence[Mapping[str, Any]], metric: str) -> Path:
    """``out_dir/curves.png``: loss and ``metric`` per epoch, training vs validation."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    epochs = [row["epoch"] for row in rows]
    for axis, (title, keys) in zip(figure.subplots(1, 2), (("loss", ("train_loss", "eval_loss")),
                                                            (metric, (f"train_{metric}", f"eval_{metric}"))),
                                   strict=True):
        for key, label in zip(keys, ("train", "validation"), strict=True):
            points = [(e, row[key]) for e, row in zip(epochs, rows, strict=True) if row.get(key) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = out_dir / CURVES_NAME
    write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"))
    return path
