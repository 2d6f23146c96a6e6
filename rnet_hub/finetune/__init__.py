"""Fine-tuning on your own data: ``rnet_hub.finetune(data, model=..., out_dir=...)`` and ``rnet-hub finetune``.

One call reads the data (:mod:`rnet_hub.finetune.data`: image folders, CSV/Parquet manifests,
``datasets``; DICOM through the pretraining preprocessing), builds transformers'
``TimmWrapperForImageClassification`` from a converted folder or Hub id with the task's head
(:mod:`.modeling`), trains it with transformers' ``Trainer`` under the original study's defaults
(:mod:`.options`, :mod:`.engine`), evaluates the best checkpoint on the test split and writes ``DIR/``
(:mod:`.outputs`): ``model/`` (loadable by timm, transformers and ``rnet_hub.create_model``; pushable with
``rnet-hub push``), ``metrics.jsonl``, ``test_metrics.json``, ``curves.png`` and ``checkpoints/``.

The same call scales out unchanged under ``torchrun --nproc_per_node N`` or ``accelerate launch``
(``Trainer`` runs DDP); only the main process writes ``DIR``. A killed run continues with
``resume=True`` from its last checkpoint; a finished run (``test_metrics.json`` and ``model/``) is not
retrained. This package imports torch and transformers on first use of :func:`finetune`.

``rnet_hub.finetune`` is both this package and the function: the package is callable
(``rnet_hub.finetune(data, model=..., out_dir=...)`` calls :func:`finetune`), since importing any of its
submodules would otherwise replace a function of that name on ``rnet_hub``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError, OutputExistsError

__all__ = ["FinetuneResult", "finetune"]

#: What a fine-tune writes in ``DIR`` (``--overwrite`` removes a folder that holds nothing else).
RUN_ENTRIES = frozenset({"model", "checkpoints", "metrics.jsonl", "test_metrics.json", "curves.png", "tensorboard"})


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tune produced: where, for which task and labels, and how it scored."""

    out_dir: Path
    model_dir: Path
    task: str
    label_names: tuple[str, ...]
    epochs: int
    best_metric: str
    best_value: float | None
    test_metrics: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    resumed_from: str | None = None
    already_finished: bool = False
    #: The trained model (the best checkpoint's weights; transformers' TimmWrapper) in this process; ``None``
    #: for a finished run that was not retrained (load ``model_dir`` instead).
    model: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        shown = ", ".join(f"{k.removeprefix('test_')} {v:.4g}" for k, v in self.test_metrics.items()
                          if isinstance(v, float) and not k.endswith(("_runtime", "_per_second")))
        head = "already finished, not retrained" if self.already_finished else f"trained {self.epochs} epochs"
        return f"{head}: {self.model_dir}\ntest: {shown}"


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _finished_result(out: Path) -> FinetuneResult:
    from .outputs import METRICS_NAME, MODEL_NAME, TEST_METRICS_NAME

    test = json.loads((out / TEST_METRICS_NAME).read_text())
    config = json.loads((out / MODEL_NAME / "config.json").read_text())
    rows = [json.loads(line) for line in (out / METRICS_NAME).read_text().splitlines() if line.strip()] \
        if (out / METRICS_NAME).is_file() else []
    task = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}.get(
        config.get("problem_type"), "regression")
    return FinetuneResult(out, out / MODEL_NAME, task, tuple(config.get("label_names") or ()), len(rows),
                          str(test.get("best_metric", "")), test.get("best_value"), test, tuple(rows),
                          already_finished=True)


def _prepare_out_dir(out: Path, *, resume: bool, overwrite: bool, main: bool, quiet: bool
                     ) -> FinetuneResult | None:
    """Check ``DIR`` (see the module docstring); the result of a finished run, else ``None``."""
    from .outputs import is_finished

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and is_finished(out) and not overwrite:
        _say(f"{out} holds a finished fine-tune (test_metrics.json and model/); not retrained "
             f"(pass --overwrite to train again)", quiet)
        return _finished_result(out)
    entries = [p.name for p in out.iterdir()] if out.is_dir() else []
    if entries and overwrite:
        foreign = sorted(n for n in entries if n not in RUN_ENTRIES and not n.startswith("."))
        if foreign:
            raise OutputExistsError(f"--out {out} holds {', '.join(foreign[:3])}, which a fine-tune does not write; "
                                    f"it is never replaced, not even with --overwrite: choose another --out")
        if main:
            for name in entries:
                path = out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif entries and not resume:
        raise OutputExistsError(f"--out {out} already exists and is not empty; pass --resume to continue the run in "
                                f"it, or --overwrite to start it again (or choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    return None


def check_targets(data: Any, num_labels: int) -> None:
    """Refuse data whose targets do not fit a head of ``num_labels`` outputs for the data's task."""
    for split, examples in data.splits.items():
        for example in examples:
            target = example.target
            if data.task == "single_label":
                ok = isinstance(target, int) and 0 <= target < num_labels
            elif data.task == "multi_label":
                ok = isinstance(target, tuple) and len(target) == num_labels
            else:
                ok = isinstance(target, int | float) and not isinstance(target, bool)
            if not ok:
                raise BadInputError(f"the label of {example.source} ({split}) is {target!r}, which does not fit a "
                                    f"{data.task} head of {num_labels} output(s) for {list(data.label_names)}; check "
                                    f"the labels or pass --task")


def finetune(data: Any, *, model: str | os.PathLike[str], out_dir: str | os.PathLike[str], task: str | None = None,
             **options: Any) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` and write ``out_dir`` (see the module docstring).

    Args:
        data: an image folder, a CSV/Parquet manifest, a ``datasets`` save_to_disk folder or Hub name, or a
            ``datasets.Dataset``/``DatasetDict`` (see :func:`rnet_hub.finetune.data.load_data`).
        model: a converted folder, Hub id or architecture name (:mod:`rnet_hub.names`); its architecture
            is used for every init.
        out_dir: the run's folder (see :mod:`rnet_hub.finetune.outputs`).
        task: ``single_label``, ``multi_label`` or ``regression`` (default: inferred from the data).
        options: the fields of :class:`rnet_hub.finetune.options.FinetuneOptions`: ``init``
            (radiologynet|imagenet|scratch), ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``patience``,
            ``metric``, ``image_size``, ``seed``, ``bf16``, ``fp16``, ``report_to``, ``num_workers``,
            ``freeze_backbone``, ``unfreeze_after``, ``flip``, ``class_weights``, ``quiet``, ``resume``,
            ``overwrite``, ``config`` (JSON/YAML of TrainingArguments fields), ``training_args`` (a mapping of
            TrainingArguments fields, applied last), ``data_cache_dir``, ``cache_dir``, ``image_column``,
            ``label_column``.

    Raises:
        BadInputError: bad data, options or model name (subclasses say which); OutputExistsError for a
            ``DIR`` that is in use.
    """
    from .options import FinetuneOptions

    opts = FinetuneOptions.from_keywords(options)
    out = Path(out_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    finished = _prepare_out_dir(out, resume=opts.resume, overwrite=opts.overwrite, main=main, quiet=opts.quiet)
    if finished is not None:
        return finished
    from .run import train_and_write

    return train_and_write(data, model=model, out=out, task=task, opts=opts)


class _CallablePackage(types.ModuleType):
    """This package's type: calling it calls :func:`finetune`."""

    def __call__(self, data: Any, **kwargs: Any) -> FinetuneResult:
        return finetune(data, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
