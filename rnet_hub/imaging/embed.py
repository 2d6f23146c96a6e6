"""``rnet-hub embed``: one embedding per image of every file under the inputs, resumable.

Files are read by a torch ``DataLoader`` (DICOM recognised by its header and windowed by
:func:`rnet_hub.preprocess.load_frames`, every frame and window one image), turned into
model inputs by the model's own transform, batched across files, and run through the
model's pooled features (timm ``forward_features`` + ``forward_head(pre_logits=True)``),
or through one feature stage, averaged over space, on request.

Outputs for ``--out STEM`` (``.npy``/``.csv``/``.parquet`` suffixes are dropped):

* ``STEM.npy``: float32, one row per image;
* ``STEM.csv``: the same rows: path, SOP/Series/Study instance UIDs, frame, window index, center and
  width, rule, modality (:data:`~rnet_hub.imaging.embed_schema.INDEX_COLUMNS`);
* ``STEM.json``: the model, weights hash, stage, transform and embedding size, checked on ``--resume``;
* ``STEM.parquet``: both in one table with the model columns (:mod:`.embed_schema`, the Ray engine's
  schema too), when pyarrow is installed (``pip install "rnet-hub[parquet]"``);
* ``STEM.series.parquet`` / ``STEM.study.parquet``: pooled vectors, with ``aggregate`` (:mod:`.aggregate`);
* ``STEM.errors.csv``: files that could not be read, with the reason (they are skipped).

The Ray engine (:mod:`.embed_ray`) runs the same reading and model on a Ray cluster;
:func:`rnet_hub.embed` (:mod:`.embed_engines`) runs either.

Only regular files (and symlinks to them) are opened: FIFOs, sockets, devices, dangling
symlinks and symlinks to folders met while walking are listed in ``STEM.errors.csv`` with the
reason, unopened. No single file can stall a run: reading one (and making its model inputs)
has ``file_timeout`` seconds (default 60), after which it is skipped. On POSIX the limit is a
``SIGALRM`` timer in the reading thread (the main thread when reading inline, each loader
worker's own thread otherwise); called from another thread, reading moves to one worker
process so that the limit still holds. A read stuck inside one long C call (a decoder) is
interrupted only when that call returns.

Rows are appended once every image of a file is embedded; the ``.npy`` header, rewritten
after each append, is the commit point. An interrupted run therefore leaves consistent
files, and ``--resume`` embeds only the files not yet listed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import BadInputError
from ..progress import progress_bar
from .aggregate import check_levels, write_aggregates
from .dicom import load_frames
from .embed_inputs import collect_inputs
from .embed_model import forward_fn, identify_model, load_model, resolve_device
from .embed_output import COLUMNS, OutputPaths, Writer, write_errors, write_parquet
from .transforms import ImageTransform, create_transform

__all__ = ["COLUMNS", "DEFAULT_FILE_TIMEOUT", "EmbedReport", "collect_inputs", "embed", "read_file",
           "resolve_device"]

DEFAULT_FILE_TIMEOUT = 60.0
"""Seconds one file may take to read (and turn into model inputs) before it is skipped."""

# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

class _ReadTimeout(BaseException):
    """Raised by the alarm in the reading thread; a BaseException so that no reader's ``except Exception`` eats it."""


def _can_time_reads() -> bool:
    """Whether a ``SIGALRM`` timer can limit a read in this thread (POSIX, main thread of its process)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_ReadTimeout` in this thread after ``seconds`` (nothing where that is impossible).
    The previous ``SIGALRM`` handler is restored, and a timer someone else had set is re-armed with
    what is left of it."""
    if not seconds or not _can_time_reads():
        yield
        return
    armed = True

    def expired(signum: int, frame: Any) -> None:
        nonlocal armed
        if armed:
            armed = False  # at most once: a late alarm during the clean-up below is ignored
            raise _ReadTimeout

    previous = signal.signal(signal.SIGALRM, expired)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        while True:
            try:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
                if outer:  # someone else's timer: what is left of it (at once if it fell due meanwhile)
                    signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3), interval)
                break
            except _ReadTimeout:  # the alarm went off just as the read finished
                continue


class _Item(NamedTuple):
    """What a loader worker hands back for one file."""

    path: str
    images: torch.Tensor | None
    rows: list[dict[str, Any]]
    error: str | None


def read_file(path: str, transform: ImageTransform, file_timeout: float | None = None) -> _Item:
    """All images of one file as model inputs with their rows (:data:`COLUMNS`), or the reason it could
    not be read within ``file_timeout`` seconds (never raises for a bad file). Both engines read with it."""
    try:
        with _time_limit(file_timeout):
            frames = load_frames(path)
            images = torch.stack([transform(frame) for frame in frames])
    except _ReadTimeout:
        return _Item(path, None, [], f"TimeoutError: {path} took longer than {file_timeout:g} s to read; skipped")
    except Exception as exc:  # an unreadable file is reported, never fatal
        return _Item(path, None, [], f"{type(exc).__name__}: {exc}")
    rows, windows = [], {}
    for f in frames:
        windows[f.frame] = windows.get(f.frame, -1) + 1  # CT/XA: one image per window of a frame
        rows.append({"path": path, "sop_instance_uid": f.sop_instance_uid or "",
                     "series_instance_uid": f.series_instance_uid or "",
                     "study_instance_uid": f.study_instance_uid or "", "frame": f.frame,
                     "window_index": windows[f.frame],
                     "window_center": "" if f.window is None else f.window[0],
                     "window_width": "" if f.window is None else f.window[1], "rule": f.rule,
                     "modality": f.modality or ""})
    return _Item(path, images, rows, None)


class _FileDataset(Dataset):
    """One item per file: all its images as model inputs, or the reason it could not be read."""

    def __init__(self, files: Sequence[Path], transform: ImageTransform, file_timeout: float | None = None) -> None:
        self.files, self.transform, self.file_timeout = list(files), transform, file_timeout

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> _Item:
        return read_file(str(self.files[index]), self.transform, self.file_timeout)


def _as_is(item: _Item) -> _Item:
    return item


def _one_thread(_: int) -> None:
    """Loader workers do small per-image work: torch's thread pool would only contend."""
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

@dataclass
class EmbedReport:
    """What a run did: files and images embedded, files skipped as done, files that failed, what was written.

    The local engine writes ``npy`` + ``csv`` (+ ``parquet``, a file); the Ray engine ``parquet``, a
    folder of shards (``npy`` and ``csv`` are None)."""

    npy: Path | None
    csv: Path | None
    parquet: Path | None = None
    errors_csv: Path | None = None
    files: int = 0
    images: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    aggregates: list[Path] = field(default_factory=list)
    engine: str = "local"

    def __str__(self) -> str:
        if self.npy is not None and self.csv is not None:
            written = self.npy.exists() and f"{self.npy} + {self.csv.name}" + \
                (f" + {self.parquet.name}" if self.parquet else "")
        else:
            written = self.parquet is not None and self.parquet.exists() and f"{self.parquet} (Parquet shards)"
        lines = [f"embedded {self.images} images from {self.files} files into {written}" if written
                 else "no images embedded"]
        if self.already_done:
            lines.append(f"skipped {self.already_done} files already embedded (--resume)")
        lines += [f"pooled vectors: {path}" for path in self.aggregates]
        if self.failed:
            lines.append(f"{len(self.failed)} files could not be read and were skipped; see {self.errors_csv}")
            lines += [f"  {path}: {error}" for path, error in self.failed[:5]]
        return "\n".join(lines)


class _Batcher:
    """Batches images across files and hands the writer whole files, in order."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], writer: Writer, batch_size: int,
                 device: torch.device) -> None:
        self.forward, self.writer, self.batch_size, self.device = forward, writer, batch_size, device
        self.images: list[torch.Tensor] = []
        self.rows: list[dict[str, Any]] = []
        self.ready_rows: list[dict[str, Any]] = []
        self.ready: list[np.ndarray] = []

    def add(self, item: _Item) -> None:
        assert item.images is not None
        self.images.append(item.images)
        self.rows += [{**row, "_last": i == len(item.rows) - 1} for i, row in enumerate(item.rows)]
        while len(self.rows) - len(self.ready_rows) >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> None:
        if len(self.rows) > len(self.ready_rows):
            self._run(len(self.rows) - len(self.ready_rows))

    def _run(self, count: int) -> None:
        pending = torch.cat(self.images) if len(self.images) > 1 else self.images[0]
        batch, rest = pending[:count], pending[count:]
        self.images = [rest] if len(rest) else []
        with torch.inference_mode():
            out = self.forward(batch.to(self.device).contiguous(memory_format=torch.channels_last))
        self.ready.append(out.float().cpu().numpy())
        self.ready_rows = self.rows[: len(self.ready_rows) + count]
        self._flush_whole_files()

    def _flush_whole_files(self) -> None:
        ends = [i for i, row in enumerate(self.ready_rows) if row["_last"]]
        if not ends:
            return
        cut = ends[-1] + 1
        embeddings = np.concatenate(self.ready)
        self.writer.append(self.ready_rows[:cut], embeddings[:cut])
        self.rows, self.ready_rows = self.rows[cut:], self.ready_rows[cut:]
        self.ready = [embeddings[cut:]] if cut < len(embeddings) else []


def _default_workers() -> int:
    """Reading workers only where cores are left over: on 2 cores, reading inline and giving the
    model both threads measured 1.5x faster than one worker plus a one-thread model."""
    return min(4, max(0, (os.cpu_count() or 1) // 2 - 1))


def check_common_options(batch_size: int, file_timeout: float | None) -> None:
    """The option checks both engines make before anything is read or written."""
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    if file_timeout is not None and not file_timeout >= 0:
        raise BadInputError(f"--file-timeout must be 0 (no limit) or more seconds, got {file_timeout}")


def _iter_items(files: Sequence[Path], transform: ImageTransform, workers: int,
                file_timeout: float | None = None) -> Iterator[_Item]:
    loader = DataLoader(_FileDataset(files, transform, file_timeout), batch_size=None, num_workers=workers,
                        collate_fn=_as_is, worker_init_fn=_one_thread if workers else None)
    yield from loader


def embed(inputs: Sequence[str | os.PathLike[str]], *, model: str, out: str | os.PathLike[str] = "embeddings",
          batch_size: int = 32, num_workers: int | None = None, resume: bool = False, stage: int | None = None,
          faithful: bool = False, device: str | None = None, progress: bool = True,
          file_timeout: float | None = DEFAULT_FILE_TIMEOUT, aggregate: Sequence[str] = (),
          max_pool: bool = False) -> EmbedReport:
    """Embed every image under ``inputs`` with ``model`` in this process (the local engine); see the module
    docstring for the outputs. :func:`rnet_hub.embed` also runs the Ray engine.

    ``inputs``: files, folders, glob patterns and CSV/Parquet manifests (:mod:`.embed_inputs`).
    ``file_timeout``: seconds one file may take to read before it is skipped (``None`` or 0: no limit).
    ``device``: cuda when available, else cpu; one this machine cannot use is a :class:`BadInputError`
    (:func:`resolve_device`), raised like the other option errors before anything is read or written.
    ``aggregate``: ``"series"`` and/or ``"study"``: also write mean-pooled vectors per UID (and max-pooled
    ones with ``max_pool``) to ``STEM.series.parquet`` / ``STEM.study.parquet`` (:mod:`.aggregate`)."""
    levels = check_levels(aggregate)
    check_common_options(batch_size, file_timeout)
    target = resolve_device(device)
    files = collect_inputs(inputs)
    paths = OutputPaths.for_out(out)
    info = identify_model(model)
    meta = {"model": info.model_id, "weights_sha256": info.weights_sha256, "hub_revision": info.hub_revision,
            "stage": stage, "faithful": faithful}
    writer = Writer(paths, meta, resume=resume)
    todo = [f for f in files if str(f) not in writer.done]
    report = EmbedReport(npy=paths.npy, csv=paths.csv, already_done=len(files) - len(todo))
    net = load_model(info.folder)
    net = net.to(target, memory_format=torch.channels_last).eval()  # faster convolutions on CPU and GPU
    transform = create_transform(net, faithful=faithful)
    meta["input"] = {k: transform.config[k] for k in ("input_size", "interpolation", "crop_mode", "mean", "std")}
    batcher = _Batcher(forward_fn(net, stage), writer, batch_size, target)
    workers = _default_workers() if num_workers is None else num_workers
    if file_timeout and not workers and hasattr(signal, "setitimer") and not _can_time_reads():
        workers = 1  # the alarm only works in a process's main thread: a worker's is one
    threads = torch.get_num_threads()
    if target.type == "cpu" and workers:
        torch.set_num_threads(max(1, threads - workers))  # each reading worker takes a core of its own
    try:
        with progress_bar(total=len(todo), desc="embed", unit="file", disable=not progress) as bar:
            for item in _iter_items(todo, transform, workers, file_timeout):
                bar.update(1)
                if item.error is not None:
                    report.failed.append((item.path, item.error))
                    continue
                report.files += 1
                report.images += len(item.rows)
                batcher.add(item)
            batcher.finish()
    finally:
        torch.set_num_threads(threads)
        writer.close()
    report.errors_csv = write_errors(paths, report.failed)
    if paths.npy.exists():
        report.parquet = write_parquet(paths, info.columns())
    if levels:
        if report.parquet is None:
            from ..errors import MissingExtraError

            raise MissingExtraError("--aggregate writes Parquet and needs pyarrow: pip install 'rnet-hub[parquet]'")
        report.aggregates = write_aggregates([report.parquet], paths.stem, levels, max_pool=max_pool)
    return report
