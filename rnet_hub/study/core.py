"""``rnet_hub.study(...)``: the original study's comparison of initialisations on the user's data, as one call.

Every cell (model x init x training fraction x learning rate x run) is one ``rnet_hub.finetune`` run on
the nested, seeded training fraction (validation and test never reduced), all for the same number of
epochs; then :func:`study` writes to ``out_dir``: ``cells.csv``, ``final.csv``, ``summary.csv``,
``comparisons.csv`` (paired tests between inits), the pictures and their data (``plots.json``), and
``report.md`` / ``report.html``. The study's state lives in ``out_dir`` (:mod:`.state`), so ``resume=True``
skips the finished cells and continues the interrupted ones.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError
from ..files import write_text_atomic
from ..finetune.examples import DEFAULT_SEED
from . import grid as grid_module
from .grid import INITS, Cell, make_grid, model_label, train_subsets
from .runner import CellJob, CellRunner, finetune_cell, run_cells
from .state import StudyState, write_json

if TYPE_CHECKING:
    from ..finetune.data import FinetuneData
    from .plots import Picture

__all__ = ["StudyResult", "study"]

SPLIT_SEED = DEFAULT_SEED  # the original study's seed


@dataclass(frozen=True)
class StudyResult:
    """What :func:`study` did and wrote.

    Attributes:
        out_dir: the study folder.
        metric: the main validation metric, and ``greater`` whether higher is better.
        cells: every cell's key, in the grid's order; ``ran``, ``skipped`` (finished before) and ``failed``
            (failed twice in this call) are subsets.
        files: name -> path of each table and report (``cells.csv``, ``summary.csv``, ``report.html``, ...).
        pictures: the pictures with the data behind each line.
        wall_s: this call's wall time in seconds.
    """

    out_dir: Path
    metric: str
    greater: bool
    cells: tuple[str, ...]
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]
    files: Mapping[str, Path] = field(default_factory=dict)
    pictures: tuple[Picture, ...] = ()
    wall_s: float = 0.0

    def __str__(self) -> str:
        return (f"study in {self.out_dir}: {len(self.cells)} cells ({len(self.ran)} run now, {len(self.skipped)} "
                f"finished before, {len(self.failed)} failed) in {self.wall_s:.1f} s; report: "
                f"{self.files.get('report.html')}")


class _Events:
    """Records each cell's progress in the study's state and prints one line per finished cell."""

    def __init__(self, state: StudyState, total: int, metric: str, progress: bool) -> None:
        self.state, self.total, self.metric, self.progress = state, total, metric, progress
        self.finished = 0
        self.ran_keys: list[str] = []
        self.failed_keys: list[str] = []

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    def started(self, job: CellJob, attempt: int) -> None:
        self.state.mark_running(job.cell, attempt=attempt, resume=job.resume)

    def done(self, job: CellJob, outcome: dict[str, Any], attempt: int) -> None:
        self.state.mark_done(job.cell, outcome, attempt=attempt)
        self.finished += 1
        self.ran_keys.append(job.cell.key)
        test = outcome.get("test", {}).get(self.metric)
        shown = f", test {self.metric} {test:.4f}" if isinstance(test, float) else ""
        self._say(f"[{self.finished}/{self.total}] {job.cell.key}: done in {outcome['wall_s']:.1f} s{shown}")

    def failed(self, job: CellJob, error: str, attempt: int, final: bool) -> None:
        last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        if final:
            self.state.mark_failed(job.cell, error, attempt=attempt)
            self.finished += 1
            self.failed_keys.append(job.cell.key)
            self._say(f"[{self.finished}/{self.total}] {job.cell.key}: FAILED after {attempt} tries: {last}")
        else:
            self._say(f"{job.cell.key}: try {attempt} failed ({last}); trying again")


def _load(data: Any, task: str | None, seed: int, options: Mapping[str, Any]) -> FinetuneData:
    from ..finetune.examples import FinetuneData  # torch-free, unlike rnet_hub.finetune.data

    if isinstance(data, FinetuneData):
        if task is not None and task != data.task:
            raise BadInputError(f"the data is {data.task}, not {task}; leave task out or load the data with it")
        return data
    from ..finetune.data import load_data

    columns = {k: options[k] for k in ("image_column", "label_column") if options.get(k) is not None}
    return load_data(data, task=task, seed=seed, **columns)


def _main_metric(task: str, metric: str | None) -> tuple[str, bool]:
    from ..finetune.options import LOWER_IS_BETTER, MAIN_METRIC

    if metric is None:
        return MAIN_METRIC[task]
    name = metric.removeprefix("eval_").removeprefix("test_")
    return name, name not in LOWER_IS_BETTER


def _python_command(data: Any, **kwargs: Any) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"rnet_hub.study({str(getattr(data, 'root', data))!r}, {shown})"


def _checked(epochs: int, curve_epochs: int, alpha: float) -> None:
    if epochs < 1:
        raise BadInputError(f"--epochs must be 1 or more, got {epochs}")
    if curve_epochs < 1:
        raise BadInputError(f"--curve-epochs must be 1 or more, got {curve_epochs}")
    if not 0 < alpha < 1:
        raise BadInputError(f"--alpha must be between 0 and 1, got {alpha}")


def study(data: str | os.PathLike[str] | Any, *, models: Sequence[str], out_dir: str | os.PathLike[str],
          inits: Sequence[str] = INITS, fractions: Sequence[float] = grid_module.DEFAULT_FRACTIONS, runs: int = 5,
          epochs: int = 10, lrs: Sequence[float] = grid_module.DEFAULT_LRS, task: str | None = None,
          seed: int = SPLIT_SEED, metric: str | None = None, curve_epochs: int = 10, alpha: float = 0.05,
          parallel: int = 1, engine: str = "local", address: str | None = None, resume: bool = False,
          finetune_options: Mapping[str, Any] | None = None, cell_runner: CellRunner | None = None,
          command: str | None = None, progress: bool = True) -> StudyResult:
    """Run (or continue) a study of initialisations and write its tables, pictures and report to ``out_dir``.

    Args:
        data: what ``rnet_hub.finetune`` accepts (a folder, a manifest, a ``datasets`` dataset), or a
            ``FinetuneData``.
        models: model names (architecture names, Hub ids or converted folders).
        inits, fractions, lrs, runs: the grid; every combination with every run is one cell.
        epochs: epochs per cell (early stopping is off, so every cell trains this many).
        task: the task, when the data's own is not wanted.
        seed: the split and fraction seed (the original study's 1221); run r trains with ``seed + r``.
        metric: the main validation metric (default: fine-tuning's for the task, e.g. ``f1_weighted``).
        curve_epochs: N of "the first N epochs" (curves and the curve area; at most ``epochs``).
        alpha: the significance level of the comparisons.
        parallel: cells run at once, each in its own (spawned) process, one GPU each when there are GPUs;
            a script that asks for it calls :func:`study` under ``if __name__ == "__main__":``.
        engine, address: ``"ray"`` (or an ``address``) runs each cell as a Ray task.
        resume: continue the study in ``out_dir`` (finished cells are skipped, interrupted ones resume).
        finetune_options: further ``rnet_hub.finetune`` options for every cell (``image_size``,
            ``batch_size``, ...).
        cell_runner: the function that fine-tunes one cell (default: ``rnet_hub.finetune``; tests pass
            their own).
        command: the command to record in the report (default: this call, written as Python).
        progress: print one line per finished cell.
    """
    started = time.perf_counter()
    _checked(epochs, curve_epochs, alpha)
    options = dict(finetune_options or {})
    for reserved in ("init", "lr", "seed", "epochs", "resume", "overwrite", "patience", "model", "out_dir", "task"):
        if reserved in options:
            raise BadInputError(f"finetune option {reserved!r} is set by the study per cell; leave it out")
    models = grid_module.parse_names(models, "--models")
    labels = {m: model_label(m) for m in models}
    cells = make_grid(models=models, inits=grid_module.parse_names(inits, "--inits"),
                      fractions=grid_module.parse_floats(fractions, "--fractions"),
                      lrs=grid_module.parse_floats(lrs, "--lrs"), runs=runs, seed=seed, labels=labels)
    loaded = _load(data, task, seed, options)
    options = {k: v for k, v in options.items() if k not in ("image_column", "label_column")}
    main_metric, greater = _main_metric(loaded.task, metric or options.get("metric"))
    first = min(curve_epochs, epochs)
    subsets = train_subsets(loaded, {c.fraction for c in cells}, seed=seed)
    root = os.path.abspath(loaded.root) if os.path.exists(loaded.root) else loaded.root  # same from any folder
    summary = {k: v for k, v in loaded.summary().items() if k != "root"}
    settings = {"data": root, "data_summary": summary, "task": loaded.task, "epochs": epochs,
                "seed": seed, "finetune_options": options, "models": list(models), "inits": list(dict.fromkeys(
                    c.init for c in cells)), "fractions": sorted({c.fraction for c in cells}),
                "lrs": list(dict.fromkeys(c.lr for c in cells)), "runs": runs, "metric": main_metric,
                "greater_is_better": greater, "curve_epochs": first, "alpha": alpha}
    command = command or _python_command(data, models=list(models), out_dir=str(out_dir), inits=settings["inits"],
                                         fractions=settings["fractions"], runs=runs, epochs=epochs, lrs=settings["lrs"])
    state = StudyState.open(out_dir, settings, resume=resume)
    state.save({"cells": [c.key for c in cells], "labels": labels, "command": command})
    cell_options = {"data_cache_dir": str(state.root / "data-cache"), **options}  # images decoded once for all cells
    jobs, skipped = [], []
    for cell in cells:
        status = state.status(cell)
        if status == "done":
            skipped.append(cell.key)
            continue
        interrupted = status == "running" and state.finetune_dir(cell).exists()
        jobs.append(CellJob(cell, subsets[cell.fraction], state.finetune_dir(cell), epochs, None, interrupted,
                            cell_options))
    events = _Events(state, len(jobs), main_metric, progress)
    if progress and skipped:
        print(f"{len(skipped)} of {len(cells)} cells finished before; running the other {len(jobs)}", file=sys.stderr)
    run_cells(jobs, cell_runner or finetune_cell, events, parallel=parallel, engine=engine, address=address)
    files, pictures = write_results(state, cells, metric=main_metric, greater=greater, first=first, alpha=alpha,
                                    command=command, wall_s=time.perf_counter() - started)
    return StudyResult(Path(out_dir), main_metric, greater, tuple(c.key for c in cells), tuple(events.ran_keys),
                       tuple(skipped), tuple(events.failed_keys), files, tuple(pictures), time.perf_counter() - started)


def write_results(state: StudyState, cells: Sequence[Cell], *, metric: str, greater: bool, first: int,
                  alpha: float, command: str, wall_s: float) -> tuple[dict[str, Path], list[Picture]]:
    """Write the tables, the comparisons, the pictures and the report of the cells finished so far."""
    from . import plots, report
    from .results import cells_table, final_table, summary_table, write_csv
    from .stats import compare_inits

    records = [{"cell": c.as_dict(), **state.read(c)} for c in cells]
    done = [(c, r) for c, r in zip(cells, records, strict=True) if r.get("status") == "done"]
    cells_frame = cells_table(done)
    if done and metric not in cells_frame.columns:
        known = ", ".join(c for c in cells_frame.columns if c not in ("model", "init", "fraction", "lr", "run", "seed",
                                                                       "epoch"))
        raise BadInputError(f"the cells report no validation metric {metric!r} (they report {known}); run again with "
                            f"--resume --metric NAME: finished cells are not retrained")
    final = final_table(done, metric=metric, greater=greater, first=first)
    summary = summary_table(cells_frame, final, first=first)
    area = f"auc_first{first}_{metric}"
    comparisons = compare_inits(final, [(f"test_{metric}", greater), (area, greater)], alpha=alpha)
    files = {name: state.root / name for name in ("cells.csv", "final.csv", "summary.csv", "comparisons.csv")}
    for name, frame in zip(files, (cells_frame, final, summary, comparisons), strict=True):
        write_csv(frame, files[name])
    pictures = plots.curve_pictures(cells_frame, metric=metric, first=first) if done else []
    if done:
        pictures += plots.fraction_pictures(final, measures=[(f"test_{metric}", f"test {metric}"),
                                                             (area, f"validation {metric}, area first {first}")])
    for picture in pictures:
        plots.draw(picture, state.root / picture.name)
        files[picture.name] = state.root / picture.name
    write_json(state.root / "plots.json", plots.pictures_json(pictures))
    files["plots.json"] = state.root / "plots.json"
    blocks = report.build_blocks(settings=state.settings, command=command, final=final, comparisons=comparisons,
                                 pictures=pictures, records=records, metric=metric, greater=greater, first=first,
                                 wall_s=wall_s, versions=report.package_versions())
    for name, text in (("report.md", report.render_markdown(blocks)),
                       ("report.html", report.render_html(blocks, state.root))):
        write_text_atomic(state.root / name, text)
        files[name] = state.root / name
    return files, pictures
