"""One fine-tuning run from data to ``DIR``: the steps :func:`rnet_hub.finetune.finetune` takes after checking ``DIR``.

Data (:mod:`.data`) → training arguments (:mod:`.options`) → seed → model (:mod:`.modeling`) → ``Trainer``
(:mod:`.engine`) → ``train(resume_from_checkpoint=...)`` → test evaluation of the best checkpoint → outputs
(:mod:`.outputs`, main process only; ``DIR/model`` then ``test_metrics.json`` last).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from . import FinetuneResult, check_targets
from .options import FinetuneOptions

__all__ = ["CHECKPOINTS_NAME", "train_and_write"]

CHECKPOINTS_NAME = "checkpoints"


def _last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint in ``folder`` (one whose ``trainer_state.json``, written last, exists):
    a run killed while saving leaves a partial newest one, which is skipped."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        step = path.name.rpartition("-")[2]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """``--quiet``: no transformers warnings or weight-loading bars while the run lasts (Trainer's bars go
    with ``disable_tqdm``). These switches are process-wide, so the caller's settings come back afterwards:
    a Python caller's later downloads keep their progress bars."""
    from transformers.utils import logging as hf_logging

    from .modeling import transformers_errors_only

    bar_states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    saved_states, bars = dict(bar_states), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with transformers_errors_only():
            yield
    finally:
        if bars:  # transformers' own switch; it also sets huggingface_hub's (restored next), warning if env forbids
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()
        bar_states.clear()
        bar_states.update(saved_states)


def train_and_write(data: Any, *, model: str | os.PathLike[str], out: Path, task: str | None,
                    opts: FinetuneOptions) -> FinetuneResult:
    """Train, evaluate and write ``out`` (see the module docstring), quietly with ``opts.quiet``."""
    with _quiet_libraries() if opts.quiet else contextlib.nullcontext():
        return _train_and_write(data, model=model, out=out, task=task, opts=opts)


def _train_and_write(data: Any, *, model: str | os.PathLike[str], out: Path, task: str | None,
                     opts: FinetuneOptions) -> FinetuneResult:
    import torch
    from transformers import EarlyStoppingCallback, set_seed

    from ..files import write_text_atomic
    from .data import load_data, make_dataset
    from .engine import EpochRecords, epoch_rows, loss_weights, make_trainer
    from .metrics import json_safe, metrics_function
    from .modeling import build_model, classifier_parameter_names, resolve_base
    from .options import training_arguments
    from .outputs import (
        METRICS_NAME,
        CardFacts,
        card_base_model,
        render_card,
        write_curves,
        write_model_folder,
        write_test_metrics,
    )

    dataset = load_data(data, task=task, image_column=opts.image_column, label_column=opts.label_column)
    num_labels = 1 if dataset.task == "regression" else len(dataset.label_names)
    check_targets(dataset, num_labels)
    if opts.class_weights and dataset.task == "regression":
        raise BadInputError("--class-weights applies to classification; leave it out for regression")
    args = training_arguments(opts, output_dir=out / CHECKPOINTS_NAME, task=dataset.task)
    if "tensorboard" in (args.report_to or []):
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    set_seed(args.seed)
    base = resolve_base(model, cache_dir=opts.cache_dir)
    net = build_model(base, init=opts.init, task=dataset.task, label_names=dataset.label_names,
                      image_size=opts.image_size)
    config = net.config.to_dict()
    splits = {split: make_dataset(dataset, split, model_config=config, init=opts.init, flip=opts.flip,
                                  cache_dir=opts.data_cache_dir) for split in ("train", "val", "test")}
    metric = args.metric_for_best_model.removeprefix("eval_")
    weights = loss_weights(dataset.task, [e.target for e in dataset.splits["train"]], num_labels) \
        if opts.class_weights else None
    records = EpochRecords(out / METRICS_NAME, metric, quiet=opts.quiet)
    trainer = make_trainer(net, args, task=dataset.task, train_dataset=splits["train"], eval_dataset=splits["val"],
                           compute_metrics=metrics_function(dataset.task), records=records, patience=opts.patience,
                           weights=weights, freeze_backbone=opts.freeze_backbone, unfreeze_after=opts.unfreeze_after,
                           head_names=classifier_parameter_names(net))
    resume_from = _last_checkpoint(out / CHECKPOINTS_NAME) if opts.resume else None
    if opts.resume and args.process_index == 0 and not opts.quiet:
        print(f"resuming from {resume_from}" if resume_from else f"no checkpoint in {out / CHECKPOINTS_NAME}; "
              f"training from the start", file=sys.stderr, flush=True)
    trained = trainer.train(resume_from_checkpoint=resume_from)
    trainer.pop_callback(EarlyStoppingCallback)  # the test evaluation is no validation: nothing to stop
    test = json_safe(trainer.evaluate(splits["test"], metric_key_prefix="test"))
    test.pop("epoch", None)
    rows = epoch_rows(trainer.state.log_history)
    best_value = trainer.state.best_metric
    summary = {**test, "best_metric": f"eval_{metric}", "best_value": best_value,
               "best_checkpoint": trainer.state.best_model_checkpoint, "epochs": len(rows),
               # the training loop's own time (this invocation's part of it, with --resume): epochs, their
               # validation and checkpoints, not start-up or the test evaluation
               "train_runtime": trained.metrics.get("train_runtime"),
               "train_samples_per_second": trained.metrics.get("train_samples_per_second")}
    summary = json_safe(summary)
    if trainer.is_world_process_zero():
        import json

        write_text_atomic(out / METRICS_NAME, "".join(json.dumps(row) + "\n" for row in rows))
        write_curves(out, rows, metric)
        facts = CardFacts(timm_arch=base.spec.timm_arch, task=dataset.task, init=opts.init,
                          label_names=dataset.label_names, base_model=card_base_model(
                              base.hub_id, opts.init, base.spec.imagenet_tag),
                          base_source=base.base_model, data_summary=dataset.summary(), test_metrics=test,
                          best_metric_name=metric, best_metric_value=best_value, epochs_run=len(rows),
                          training_args=args.to_dict(), flip=opts.flip,
                          input_size=int(config["pretrained_cfg"]["input_size"][-1]))
        model_dir = write_model_folder(trainer.model, out, render_card(facts))
        write_test_metrics(out, summary)
        if not opts.quiet:
            print(f"wrote {model_dir} (best {metric} {best_value}); test metrics in {out / 'test_metrics.json'}",
                  file=sys.stderr, flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # the other processes return once DIR is written
    return FinetuneResult(out, out / "model", dataset.task, tuple(dataset.label_names), len(rows),
                          f"eval_{metric}", best_value, summary, tuple(rows), resumed_from=resume_from,
                          model=trainer.model)
