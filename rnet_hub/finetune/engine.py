"""The training engine: transformers' ``Trainer`` with the task's loss, callbacks and per-epoch records.

No hand-written loop: :class:`FinetuneTrainer` is a ``Trainer`` whose ``compute_loss`` applies the task's
loss (cross-entropy, BCE with logits, MSE; optionally class-weighted) and records the training batches'
outputs so each epoch's log carries training metrics next to the validation ones (under several
processes: the main process's share of the batches). Callbacks:

* :class:`EpochRecords`: after each evaluation, rewrites ``DIR/metrics.jsonl`` from the trainer state's
  log history (restored from a checkpoint on ``--resume``, so the file never holds epochs that were
  lost) and prints one summary line per epoch (main process only);
* :class:`UnfreezeAfter`: ``--freeze-backbone --unfreeze-after N``: drops the backbone's gradients
  before each optimiser step of the first N epochs (every parameter stays in the optimiser and under
  DDP, so nothing is rebuilt when it unfreezes);
* ``EarlyStoppingCallback`` (patience on the validation metric) and a progress bar without log dicts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..files import write_text_atomic
from .metrics import compute, json_safe

__all__ = ["EpochRecords", "FinetuneTrainer", "SilentProgress", "UnfreezeAfter", "epoch_rows", "loss_weights",
           "make_trainer"]


def loss_weights(task: str, targets: Sequence[Any], num_labels: int) -> torch.Tensor | None:
    """``--class-weights``: ``n / (classes * count)`` per class (single-label cross-entropy), or
    ``negatives / positives`` per label (multi-label ``pos_weight``); classes without samples weigh 1."""
    if task == "single_label":
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_labels).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (num_labels * np.maximum(counts, 1)), 1.0)
    elif task == "multi_label":
        matrix = np.asarray(targets, dtype=np.float64).reshape(len(targets), num_labels)
        positives = matrix.sum(axis=0)
        weights = np.where(positives > 0, (len(matrix) - positives) / np.maximum(positives, 1), 1.0)
    else:
        return None
    return torch.tensor(weights, dtype=torch.float32)


class FinetuneTrainer(Trainer):
    """``Trainer`` with the task's loss (weighted on request) and training metrics in each epoch's log."""

    def __init__(self, *args: Any, task: str, weights: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task = task
        self.weights = weights
        self._train_logits: list[torch.Tensor] = []
        self._train_labels: list[torch.Tensor] = []

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = None if self.weights is None else self.weights.to(logits.device)
        if self.task == "single_label":
            return torch.nn.functional.cross_entropy(logits.float(), labels.long(), weight=weights)
        if self.task == "multi_label":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(),
                                                                        pos_weight=weights)
        return torch.nn.functional.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The task's loss of one batch; in training, the batch's logits are kept for the epoch's metrics."""
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"])
        loss = self._task_loss(outputs.logits, labels)
        if model.training:
            self._train_logits.append(outputs.logits.detach().float().cpu())
            self._train_labels.append(labels.detach().cpu())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the training metrics of the batches since the last log to a training-loss log."""
        if "loss" in logs and self._train_logits:
            logits = torch.cat(self._train_logits).numpy()
            labels = torch.cat(self._train_labels).numpy()
            logs.update({f"train_{k}": v for k, v in json_safe(compute(self.task, logits, labels)).items()
                         if v is not None})
            self._train_logits.clear()
            self._train_labels.clear()
        super().log(logs, start_time)


def epoch_rows(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch from a trainer's ``log_history``: ``train_loss``, ``train_*``, ``eval_*``."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in history:
        if "epoch" not in entry or "train_runtime" in entry or "test_loss" in entry:
            continue
        epoch = round(float(entry["epoch"]))
        row = rows.setdefault(epoch, {"epoch": epoch})
        for key, value in entry.items():
            if key == "epoch" or key.startswith("test_") or key.endswith(("_runtime", "_per_second")):
                continue
            row["train_loss" if key == "loss" else key] = value
    return [json_safe(rows[k]) for k in sorted(rows)]


class EpochRecords(TrainerCallback):
    """Rewrites ``metrics.jsonl`` after each evaluation and prints one line per epoch (main process only)."""

    def __init__(self, path: Path, metric: str, *, quiet: bool, write: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.metric = metric
        self.quiet = quiet
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if not state.is_world_process_zero or metrics is None or not any(k.startswith("eval_") for k in metrics):
            return
        rows = epoch_rows(state.log_history)
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in rows))
        if self.quiet or not rows:
            return
        row, key = rows[-1], f"eval_{self.metric}"
        parts = [f"epoch {row['epoch']}/{round(args.num_train_epochs)}"]
        parts += [f"{label} {row[k]:.4g}" for label, k in (("train loss", "train_loss"), ("val loss", "eval_loss"),
                                                          (f"val {self.metric}", key)) if row.get(k) is not None]
        best = f" (best {state.best_metric:.4g})" if state.best_metric is not None else ""
        self.write(f"{parts[0]}: {', '.join(parts[1:])}{best}")


class UnfreezeAfter(TrainerCallback):
    """Drop the backbone's gradients before each optimiser step of the first ``epochs`` epochs."""

    def __init__(self, backbone: Sequence[torch.nn.Parameter], epochs: int) -> None:
        self.backbone = list(backbone)
        self.epochs = epochs

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if int(state.epoch + 1e-9) < self.epochs:  # state.epoch is e + (finished steps) / steps in epoch e
            for parameter in self.backbone:
                parameter.grad = None


class SilentProgress(ProgressCallback):
    """Trainer's progress bars without the log dictionaries it writes under them (:class:`EpochRecords` reports)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def make_trainer(model: Any, args: Any, *, task: str, train_dataset: Any, eval_dataset: Any,
                 compute_metrics: Callable[[Any], dict[str, float]], records: EpochRecords, patience: int,
                 weights: torch.Tensor | None, freeze_backbone: bool, unfreeze_after: int | None,
                 head_names: set[str]) -> FinetuneTrainer:
    """The configured :class:`FinetuneTrainer` (freezing applied, callbacks in place)."""
    backbone = [p for name, p in model.named_parameters() if name not in head_names]
    if freeze_backbone and unfreeze_after is None:
        for parameter in backbone:
            parameter.requires_grad_(False)  # never trained: left out of the optimiser (and of DDP)
    callbacks: list[TrainerCallback] = [records]
    if patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    if freeze_backbone and unfreeze_after is not None:
        callbacks.append(UnfreezeAfter(backbone, unfreeze_after))
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              compute_metrics=compute_metrics, callbacks=callbacks, task=task, weights=weights)
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(SilentProgress())
    return trainer
