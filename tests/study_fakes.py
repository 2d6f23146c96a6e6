"""A stand-in cell runner and data for the study's tests (no training: known metrics, written instantly).

:func:`fake_cell` writes what ``rnet_hub.finetune`` writes that the study reads (``metrics.jsonl``,
``test_metrics.json``) with values computed from the cell by :func:`fake_value`, so the tests know
every number in advance. It also records each call (``calls.jsonl`` in the cell folder: the seed, the
training examples in order, whether it resumed), so a test can count the runs of a cell and check
what data it saw. It lives in a module (not a test file) so that worker processes can import it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rnet_hub.finetune.examples import Example, FinetuneData  # torch-free (finetune.data imports torch)

#: Added to the metric per init: RadiologyNET a constant 0.05 above scratch, ImageNet 0.02.
INIT_SHIFT = {"radiologynet": 0.05, "imagenet": 0.02, "scratch": 0.0}


def make_data(n_train: int = 40, n_val: int = 6, n_test: int = 6) -> FinetuneData:
    """A single-label FinetuneData over made-up file names (the fake runner never reads them)."""
    def examples(split: str, count: int) -> tuple[Example, ...]:
        return tuple(Example(f"/data/{split}/{i:03d}.png", 0, f"/data/{split}/{i:03d}.png", i % 2)
                     for i in range(count))

    splits = {"train": examples("train", n_train), "val": examples("val", n_val), "test": examples("test", n_test)}
    return FinetuneData("single_label", ("a", "b"), splits, "folder", "/data")


def fake_value(init: str, fraction: float, run: int, epoch: int) -> float:
    """The validation f1_weighted of a cell at an epoch (epoch 0: the test value)."""
    base = 0.5 + 0.2 * fraction + 0.01 * run + INIT_SHIFT[init]
    return round(base + (0.03 * epoch if epoch else 0.04), 6)


def _calls(job: Any) -> Path:
    return job.out_dir.parent / "calls.jsonl"


def fake_cell(job: Any) -> None:
    """Write the fake run's outputs for ``job`` (and record the call)."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    train = [e.source for e in job.data.splits["train"]]
    with open(_calls(job), "a") as handle:
        handle.write(json.dumps({"seed": job.cell.seed, "train": train, "resume": job.resume, "pid": os.getpid(),
                                 "val": [e.source for e in job.data.splits["val"]]}) + "\n")
    delay = float(os.environ.get("STUDY_FAKE_DELAY", "0"))
    rows = []
    for epoch in range(1, job.epochs + 1):
        time.sleep(delay)
        value = fake_value(job.cell.init, job.cell.fraction, job.cell.run, epoch)
        rows.append({"epoch": epoch, "train_loss": 1.0 / epoch, "eval_loss": 1.0 - value, "eval_f1_weighted": value,
                     "eval_accuracy": value - 0.01})
        (job.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = fake_value(job.cell.init, job.cell.fraction, job.cell.run, 0)
    (job.out_dir / "test_metrics.json").write_text(json.dumps(
        {"test_loss": 1.0 - test, "test_f1_weighted": test, "test_accuracy": test - 0.01, "test_runtime": 0.1,
         "best_metric": "eval_f1_weighted", "epochs": job.epochs}))


def failing_cell(job: Any) -> None:
    """Like :func:`fake_cell`, but the first try of every scratch cell at fraction 1 raises, and every try of
    run 1 of such a cell raises (so that one fails twice)."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    tries = _calls(job).read_text().count("\n") if _calls(job).exists() else 0
    if job.cell.init == "scratch" and job.cell.fraction == 1.0 and (tries == 0 or job.cell.run == 1):
        with open(_calls(job), "a") as handle:
            handle.write(json.dumps({"failed": True}) + "\n")
        raise RuntimeError(f"made-up failure of {job.cell.key}")
    fake_cell(job)


def crashing_cell(job: Any) -> None:
    """Kill the worker process itself (as the OOM killer would) on a scratch cell's first try."""
    tries = _calls(job).read_text().count("\n") if _calls(job).exists() else 0
    if job.cell.init == "scratch" and tries == 0:
        job.out_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(_calls(job), "a") as handle:
            handle.write(json.dumps({"crashed": True}) + "\n")
        os._exit(9)
    fake_cell(job)
