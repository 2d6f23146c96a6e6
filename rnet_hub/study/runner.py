"""Running the study's cells: one after another, N at once in their own processes, or as Ray tasks.

Each cell is one :class:`CellJob` given to a *cell runner*, a function ``runner(job) -> None`` that
fine-tunes and leaves ``metrics.jsonl`` and ``test_metrics.json`` in ``job.out_dir``; the study's own is
:func:`finetune_cell` (``rnet_hub.finetune``), tests pass another. :func:`execute` wraps one try of a
cell: a fresh start clears the cell's earlier output (a resumed one keeps it), the wall time and, with
the optional ``codecarbon`` (``rnet-hub[energy]``), the energy are measured, and the run's metrics are
read back. :func:`run_cells` schedules the cells:

* ``parallel=1``, ``engine="local"``: in this process, one after another;
* ``parallel=N``: N cells at once, each in a fresh process (one GPU each when there are GPUs, else the
  CPU cores shared out); a cell's crash, even a killed process, is that cell's failure only;
* ``engine="ray"``: one Ray task per cell (one GPU each when the cluster has GPUs) on the cluster at
  ``address`` (or the one this process is connected to, or a local one), retried once by Ray.

A failed cell is tried once more from the start; a cell that fails twice is reported, the others go on.
Torch-free at import.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BadInputError, MissingExtraError
from .grid import Cell

if TYPE_CHECKING:
    from ..finetune.data import FinetuneData

__all__ = ["ENERGY_MISSING", "CellJob", "CellRunner", "Events", "execute", "finetune_cell", "read_outputs",
           "run_cells"]

#: What the report says about energy when codecarbon is not installed.
ENERGY_MISSING = "not measured (install rnet-hub[energy])"
METRICS_FILE = "metrics.jsonl"
TEST_FILE = "test_metrics.json"
RESULT_FILE = "result.json"
ATTEMPTS = 2  # a failed cell is retried once


@dataclass(frozen=True)
class CellJob:
    """What one cell's fine-tuning needs (picklable: it travels to worker processes and Ray tasks).

    Attributes:
        cell: the cell.
        data: the data with the training split reduced to the cell's fraction.
        out_dir: the fine-tuning run's output folder.
        epochs: the number of epochs (every cell trains exactly this many).
        task: the task, or ``None`` to let the data say it.
        resume: continue an interrupted run in ``out_dir`` (else start afresh).
        options: further keyword options for ``rnet_hub.finetune.finetune``.
    """

    cell: Cell
    data: FinetuneData
    out_dir: Path
    epochs: int
    task: str | None = None
    resume: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


#: A function that fine-tunes one cell, leaving ``metrics.jsonl`` and ``test_metrics.json`` in ``job.out_dir``.
CellRunner = Callable[[CellJob], None]


class Events(Protocol):
    """What the scheduler tells the study (called in the study's process)."""

    def started(self, job: CellJob, attempt: int) -> None:
        """The ``attempt``-th try of ``job`` begins."""

    def done(self, job: CellJob, outcome: dict[str, Any], attempt: int) -> None:
        """``job`` finished with ``outcome`` (see :func:`execute`)."""

    def failed(self, job: CellJob, error: str, attempt: int, final: bool) -> None:
        """A try of ``job`` failed with ``error`` (a traceback); ``final``: no try is left."""


def finetune_cell(job: CellJob) -> None:
    """The study's cell runner: ``rnet_hub.finetune.finetune`` with the cell's init, learning rate, seed
    and epochs, early stopping off (``patience=0``) so every cell trains the same number of epochs."""
    from ..finetune import finetune

    options = {"quiet": True, **job.options, "patience": 0}
    finetune(job.data, model=job.cell.model_name, out_dir=job.out_dir, task=job.task, init=job.cell.init,
             lr=job.cell.lr, seed=job.cell.seed, epochs=job.epochs, resume=job.resume, **options)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_outputs(out_dir: Path) -> dict[str, Any]:
    """A finished run's metrics: ``{"epochs": [{"epoch": 1, "<metric>": value, ...}, ...], "test": {...}}``.

    From ``metrics.jsonl`` (one row per epoch) the validation metrics (``eval_*``) of each epoch, from
    ``test_metrics.json`` the test metrics (``test_*``), both without their prefix and without run times;
    values that are not finite numbers become ``None``.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(out_dir / METRICS_FILE) as handle:
        for line in handle:
            record = json.loads(line) if line.strip() else {}
            if "epoch" in record:
                metrics = _prefixed(record, "eval_")
                if metrics:
                    epoch = round(float(record["epoch"]))
                    by_epoch[epoch] = {"epoch": epoch, **metrics}
    with open(out_dir / TEST_FILE) as handle:
        test = _prefixed(json.load(handle), "test_")
    return {"epochs": [by_epoch[e] for e in sorted(by_epoch)], "test": test}


def _prefixed(record: Mapping[str, Any], prefix: str) -> dict[str, float | None]:
    """The metrics of ``record`` named ``<prefix><name>`` as ``name -> value`` (run times left out)."""
    return {key[len(prefix):]: _number(value) for key, value in record.items()
            if key.startswith(prefix) and not key.endswith(("_runtime", "_per_second"))}


@contextlib.contextmanager
def _energy(out: dict[str, Any], folder: Path) -> Any:
    """Measure the block's energy with codecarbon into ``out["energy_kwh"]`` (or say why not)."""
    try:
        from codecarbon import EmissionsTracker
    except ImportError:
        out.update(energy_kwh=None, energy_note=ENERGY_MISSING)
        yield
        return
    tracker = None
    try:
        tracker = EmissionsTracker(output_dir=str(folder), save_to_file=False, log_level="error")
        tracker.start()
    except Exception as exc:  # codecarbon's own failure must not fail the cell
        out.update(energy_kwh=None, energy_note=f"not measured (codecarbon: {exc})")
        tracker = None
    try:
        yield
    finally:
        if tracker is not None:
            try:
                tracker.stop()
                out.update(energy_kwh=float(tracker.final_emissions_data.energy_consumed), energy_note="codecarbon")
            except Exception as exc:
                out.update(energy_kwh=None, energy_note=f"not measured (codecarbon: {exc})")


def execute(job: CellJob, runner: CellRunner) -> dict[str, Any]:
    """One try of ``job`` with ``runner``: the outcome is ``{"epochs", "test", "wall_s", "energy_kwh",
    "energy_note", "train_size", "resumed"}``."""
    if not job.resume and job.out_dir.exists():
        shutil.rmtree(job.out_dir)  # the cell's own folder: an earlier, failed try
    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, Any] = {"train_size": len(job.data.splits["train"]), "resumed": job.resume}
    start = time.perf_counter()
    with _energy(outcome, job.out_dir.parent):
        runner(job)
    outcome["wall_s"] = time.perf_counter() - start
    outcome.update(read_outputs(job.out_dir))
    if not outcome["epochs"]:
        raise RuntimeError(f"the run in {job.out_dir} wrote no validation metrics to {METRICS_FILE}")
    return outcome


# ---------------------------------------------------------------- one after another
def _sequential(jobs: Sequence[CellJob], runner: CellRunner, events: Events) -> None:
    for job in jobs:
        for attempt in range(1, ATTEMPTS + 1):
            current = job if attempt == 1 else replace(job, resume=False)
            events.started(current, attempt)
            try:
                outcome = execute(current, runner)
            except Exception:
                events.failed(current, traceback.format_exc(), attempt, attempt == ATTEMPTS)
                continue
            events.done(current, outcome, attempt)
            break


# ---------------------------------------------------------------- one process per cell
def _child(runner: CellRunner, job: CellJob, gpu: str | None, threads: int, result: str) -> None:
    """A worker process: one try of one cell; the outcome or the traceback goes to ``result``."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        answer: dict[str, Any] = {"ok": True, "outcome": execute(job, runner)}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    Path(result).write_text(json.dumps(answer, default=str))
    sys.exit(0 if answer["ok"] else 1)


def _gpus() -> list[str]:
    """The GPUs a cell process may be given, as ``CUDA_VISIBLE_DEVICES`` entries (none without CUDA).

    Counted by torch when it is imported already, else from the NVIDIA driver's ``/proc`` listing, so
    that a CPU-only study does not import torch (seconds) just to find no GPU.
    """
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    else:
        listing = Path("/proc/driver/nvidia/gpus")
        count = len(list(listing.iterdir())) if listing.is_dir() else 0
    setting = os.environ.get("CUDA_VISIBLE_DEVICES")
    if setting is None:
        return [str(i) for i in range(count)]
    visible = [v.strip() for v in setting.split(",") if v.strip() and v.strip() != "-1"]
    return visible[:count]


def _in_processes(jobs: Sequence[CellJob], runner: CellRunner, events: Events, parallel: int) -> None:
    context = multiprocessing.get_context("spawn")
    gpus = _gpus()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    waiting = deque((job, 1) for job in jobs)
    free = list(range(parallel))
    running: dict[int, tuple[Any, CellJob, int, int, Path]] = {}
    try:
        while waiting or running:
            while waiting and free:
                job, attempt = waiting.popleft()
                slot = free.pop(0)
                result = job.out_dir.parent / RESULT_FILE
                result.parent.mkdir(parents=True, exist_ok=True)
                result.unlink(missing_ok=True)
                events.started(job, attempt)
                gpu = gpus[slot % len(gpus)] if gpus else None
                process = context.Process(target=_child, args=(runner, job, gpu, threads, str(result)),
                                          name=f"rnet-hub-study-{job.cell.key}")
                process.start()
                running[process.sentinel] = (process, job, attempt, slot, result)
            for sentinel in wait(list(running)):
                process, job, attempt, slot, result = running.pop(sentinel)
                process.join()
                free.append(slot)
                try:
                    answer = json.loads(result.read_text())
                except (OSError, ValueError):
                    answer = {"ok": False, "error": f"the cell's process ended with exit status {process.exitcode} "
                                                    f"before it reported (killed, out of memory, or a script that "
                                                    f"runs the study without `if __name__ == '__main__':`?)"}
                result.unlink(missing_ok=True)
                if answer["ok"]:
                    events.done(job, answer["outcome"], attempt)
                else:
                    events.failed(job, answer["error"], attempt, attempt == ATTEMPTS)
                    if attempt < ATTEMPTS:
                        waiting.appendleft((replace(job, resume=False), attempt + 1))
    finally:
        for process, *_ in running.values():  # interrupted: the cells in flight stay "running" (resumable)
            process.terminate()
        for process, *_ in running.values():
            process.join(timeout=30)


# ---------------------------------------------------------------- Ray
def _ray_cell(runner: CellRunner, job: CellJob) -> dict[str, Any]:
    """A Ray task: one cell (Ray retries it once)."""
    return execute(job, runner)


def _on_ray(jobs: Sequence[CellJob], runner: CellRunner, events: Events, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise MissingExtraError("--engine ray needs Ray: pip install 'rnet-hub[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(_ray_cell).options(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=ATTEMPTS - 1,
                                             retry_exceptions=True)
        pending = {}
        for job in jobs:
            events.started(job, 1)
            pending[task.remote(runner, job)] = job
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception:
                events.failed(job, traceback.format_exc(), ATTEMPTS, True)
            else:
                events.done(job, outcome, 1)  # Ray does not say which try succeeded
    finally:
        if started_here:
            ray.shutdown()


def run_cells(jobs: Sequence[CellJob], runner: CellRunner, events: Events, *, parallel: int = 1,
              engine: str = "local", address: str | None = None) -> None:
    """Run ``jobs`` with ``runner``, reporting to ``events`` (see the module docstring for the schedules)."""
    if parallel < 1:
        raise BadInputError(f"--parallel must be 1 or more, got {parallel}")
    if engine not in ("local", "ray"):
        raise BadInputError(f"--engine must be local or ray, got {engine!r}")
    if not jobs:
        return
    if engine == "ray" or address is not None:
        _on_ray(jobs, runner, events, address)
    elif parallel == 1:
        _sequential(jobs, runner, events)
    else:
        _in_processes(jobs, runner, events, min(parallel, len(jobs)))
