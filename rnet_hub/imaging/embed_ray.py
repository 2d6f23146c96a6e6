"""``rnet-hub embed --engine ray``: the same embeddings on a Ray cluster, across machines and GPUs.

A Ray Data pipeline, streaming:

1. listing (:func:`~rnet_hub.imaging.embed_inputs.list_inputs`, on the driver): folders, globs and
   manifests, local or on any filesystem pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``file://``);
2. decode and preprocess as CPU tasks: :func:`rnet_hub.imaging.embed.read_file` (the exporter's
   DICOM rules, one row per frame or window, the model's own transform, the per-file time limit),
   the very code the local engine runs; a file that cannot be read becomes an error row;
3. inference in an actor pool (``map_batches`` with a callable class): the model is loaded once per
   actor from weights the driver puts in the object store (no shared filesystem needed), on a GPU
   when ``gpus_per_worker`` asks for one, in ``inference_mode`` and channels-last. Ray restarts an
   actor whose process dies and retries its batch (Ray Data's actor pool defaults: ``max_restarts=-1``,
   ``max_task_retries=-1``);
4. the driver writes Parquet shards of whole files (:mod:`.embed_shards`) with the local engine's
   schema (:mod:`.embed_schema`), the unreadable files to ``STEM.errors.csv``, and on request the
   series/study vectors (:mod:`.aggregate`).

Ray is optional (``pip install 'rnet-hub[ray]'``) and imported only here. ``address``: ``None``
starts Ray on this machine (or joins ``RAY_ADDRESS``), ``"auto"`` joins the cluster this machine
belongs to, ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` a given one; a Ray already initialised in
this process is used as it is.

Test hook: when the environment variable ``RNET_HUB_TEST_KILL_WORKER`` names a file that does
not exist, the first inference actor to reach its second batch creates it and kills its own
process (SIGKILL), once, so that a test can check Ray's retry loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, MissingExtraError, OutputExistsError
from ..folder import CONFIG_NAME, WEIGHTS_NAME
from ..progress import progress_bar
from .embed_inputs import is_remote, list_inputs
from .embed_model import ModelInfo, check_stage, identify_model
from .embed_output import OutputPaths, write_errors
from .embed_schema import INDEX_COLUMNS

__all__ = ["KILL_WORKER_ENV", "embed_ray"]

KILL_WORKER_ENV = "RNET_HUB_TEST_KILL_WORKER"
_FILES_PER_BLOCK = 8
_DEFAULT_ROWS_PER_SHARD = 4096
#: Memory each decode task declares (a worker that imported torch holds about 0.65 GiB; big DICOM files
#: need more). Also keeps Ray Data from fusing decoding into the model actors (their remote arguments
#: differ), so that decoding runs as separate CPU tasks, in parallel with the model.
_DECODE_MEMORY = 1024**3
#: CPUs a decode task declares. Reading and preprocessing an image costs 2-12 ms on one core, a CNN forward
#: 35-100 ms (ResNet18, 2-core development machine), so on a CPU-only cluster nearly all of a node is the model's.
_DECODE_CPUS = 0.25
_TRANSFORMS: dict[str, Any] = {}


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError("--engine ray needs Ray Data: pip install 'rnet-hub[ray]'") from exc
    return ray


def _transform(config: dict[str, Any], faithful: bool) -> Any:
    """The model's transform, made once per worker process."""
    key = json.dumps([config, faithful], sort_keys=True, default=str)
    if key not in _TRANSFORMS:
        from .transforms import create_transform

        _TRANSFORMS[key] = create_transform(config, faithful=faithful)
    return _TRANSFORMS[key]


def _read(path: str, transform: Any, file_timeout: float | None) -> Any:
    """:func:`~rnet_hub.imaging.embed.read_file` of a local path, or of a copy of a remote file."""
    from .embed import _Item, read_file

    if not is_remote(path):
        return read_file(path, transform, file_timeout)
    from pyarrow import fs

    suffix = Path(path).suffix[:16]
    with tempfile.NamedTemporaryFile(suffix=suffix) as copy:
        try:
            filesystem, inner = fs.FileSystem.from_uri(path)
            with filesystem.open_input_stream(inner) as source:
                while block := source.read(1 << 22):
                    copy.write(block)
            copy.flush()
        except Exception as exc:  # no such key, no permission: an error row like any unreadable file
            return _Item(path, None, [], f"{type(exc).__name__}: {exc}")
        item = read_file(copy.name, transform, file_timeout)
    rows = [{**row, "path": path} for row in item.rows]
    error = None if item.error is None else item.error.replace(copy.name, path)
    return _Item(path, item.images, rows, error)


def decode_batch(batch: dict[str, np.ndarray], *, config: dict[str, Any], faithful: bool,
                 file_timeout: float | None) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: a batch of paths -> one row per image (index columns, ``file_rows``,
    ``error``, ``image``); a file that cannot be read gives one row with its ``error`` and a blank image."""
    import torch

    torch.set_num_threads(1)  # small per-image work: a thread pool would only contend
    transform = _transform(config, faithful)
    blank = np.zeros(tuple(int(v) for v in config["input_size"]), dtype=np.float32)
    out: dict[str, list[Any]] = {c: [] for c in (*INDEX_COLUMNS, "file_rows", "error", "image")}
    for path in batch["path"]:
        item = _read(str(path), transform, file_timeout)
        if item.error is not None:
            rows = [{c: "" for c in INDEX_COLUMNS} | {"path": item.path, "frame": 0, "window_index": 0}]
            images = [blank]
        else:
            rows, images = item.rows, list(item.images.numpy())
        for row, image in zip(rows, images, strict=True):
            for c in INDEX_COLUMNS:
                out[c].append(row[c])
            out["file_rows"].append(len(rows))
            out["error"].append(item.error or "")
            out["image"].append(image)
    result: dict[str, np.ndarray] = {}
    for c, values in out.items():
        if c in ("frame", "window_index", "file_rows"):
            result[c] = np.asarray(values, dtype=np.int32)
        elif c in ("window_center", "window_width"):
            result[c] = np.asarray([np.nan if v == "" else float(v) for v in values], dtype=np.float64)
        elif c == "image":
            result[c] = np.stack(values)
        else:
            result[c] = np.asarray([str(v) for v in values], dtype=object)
    return result


class Embedder:
    """Ray Data inference stage (one instance per actor): the model loaded once, batches of images in,
    ``embedding`` out (zeros for error rows, which only pass through)."""

    def __init__(self, *, files: list[Any], stage: int | None, input_size: Sequence[int], threads: int,
                 kill_marker: str | None) -> None:
        import ray
        import torch

        from .embed_model import forward_fn, load_model

        torch.set_num_threads(threads)
        blobs = ray.get(files[0])
        with tempfile.TemporaryDirectory(prefix="rnet-hub-model-") as folder:
            for name, data in blobs.items():
                Path(folder, name).write_bytes(data)
            model = load_model(folder)
        use_gpu = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.forward = forward_fn(self.model, stage)
        with torch.inference_mode():  # the embedding size, for batches that hold only error rows
            self.dim = int(self.forward(torch.zeros(1, *map(int, input_size), device=self.device)).shape[1])
        self.kill_marker, self.calls = kill_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed the batch's images."""
        import torch

        self.calls += 1
        if self.kill_marker and self.calls == 2 and not os.path.exists(self.kill_marker):
            Path(self.kill_marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: Ray must restart the actor and retry
        images = batch.pop("image")
        ok = batch["error"] == ""
        vectors = None
        if ok.any():
            x = torch.from_numpy(np.ascontiguousarray(images[ok]))
            with torch.inference_mode():
                y = self.forward(x.to(self.device).contiguous(memory_format=torch.channels_last))
            vectors = y.float().cpu().numpy()
        embedding = np.zeros((len(ok), self.dim), dtype=np.float32)
        if vectors is not None:
            embedding[ok] = vectors
        batch["embedding"] = embedding
        return batch


def _check(workers: int | None, gpus_per_worker: float | None, rows_per_shard: int) -> None:
    if workers is not None and workers < 1:
        raise BadInputError(f"--workers must be at least 1, got {workers}")
    if gpus_per_worker is not None and not gpus_per_worker >= 0:
        raise BadInputError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
    if rows_per_shard < 1:
        raise BadInputError(f"--rows-per-shard must be at least 1, got {rows_per_shard}")


def _inference_actors(ray: Any, workers: int | None, gpus: float) -> tuple[int, float, int]:
    """How many model actors, the CPUs each declares, and the torch threads each runs.

    With GPUs: one actor per ``gpus`` GPUs of the cluster, 1 CPU and 1 thread each. On CPUs, by default, one
    actor per node, declaring all of the smallest node's CPUs but a decode task's share and running that
    many threads (a one-thread actor would leave the rest of a node to decoding, which needs little of it).
    ``workers`` given without GPUs: that many actors of 1 CPU and 1 thread.
    """
    if gpus:
        present = ray.cluster_resources().get("GPU", 0)
        if present < gpus:
            raise BadInputError(f"--gpus-per-worker {gpus:g}: the Ray cluster has {present:g} GPUs; join GPU "
                                f"nodes or leave the option out to embed on CPUs")
        return workers or max(1, int(present // gpus)), 1.0, 1
    if workers is not None:
        return workers, 1.0, 1
    node_cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    node_cpus = [cpus for cpus in node_cpus if cpus >= 2 * _DECODE_CPUS]
    if not node_cpus:
        return 1, 1.0, 1
    smallest = min(node_cpus)
    return len(node_cpus), smallest - _DECODE_CPUS, max(1, int(smallest))


def _pipeline(ray: Any, todo: list[str], info: ModelInfo, config: dict[str, Any], *, faithful: bool,
              file_timeout: float | None, stage: int | None, batch_size: int, workers: int | None,
              gpus_per_worker: float | None) -> Any:
    """The Ray Data dataset of embedded rows for the files ``todo``."""
    gpus = gpus_per_worker or 0
    actors, actor_cpus, threads = _inference_actors(ray, workers, gpus)
    files = ray.put({name: (info.folder / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)})
    blocks = max(1, min(len(todo), -(-len(todo) // _FILES_PER_BLOCK)))
    ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    ds = ds.map_batches(decode_batch, batch_format="numpy", num_cpus=_DECODE_CPUS, memory=_DECODE_MEMORY,
                        fn_kwargs={"config": config, "faithful": faithful, "file_timeout": file_timeout or None})
    return ds.map_batches(
        Embedder, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus or None, num_cpus=actor_cpus,  # Ray Data restarts dead actors and retries their batches
        fn_constructor_kwargs={"files": [files], "stage": stage, "input_size": list(config["input_size"]),
                               "threads": threads, "kill_marker": os.environ.get(KILL_WORKER_ENV) or None})


def embed_ray(inputs: Sequence[str | os.PathLike[str]], *, model: str, out: str | os.PathLike[str] = "embeddings",
              batch_size: int = 32, resume: bool = False, stage: int | None = None, faithful: bool = False,
              progress: bool = True, file_timeout: float | None = 60.0, aggregate: Sequence[str] = (),
              max_pool: bool = False, address: str | None = None, workers: int | None = None,
              gpus_per_worker: float | None = None, rows_per_shard: int | None = None) -> Any:
    """Embed every image under ``inputs`` on a Ray cluster; returns an
    :class:`~rnet_hub.imaging.embed.EmbedReport`. ``workers``: inference actors (default: one per
    ``gpus_per_worker`` GPUs of the cluster, else one per node using nearly all its CPUs);
    ``rows_per_shard``: rows per Parquet shard (default 4096; a shard holds whole files). Other options
    as :func:`rnet_hub.imaging.embed.embed`.

    Raises:
        MissingExtraError: Ray Data is not installed (``pip install 'rnet-hub[ray]'``), before anything is written.
    """
    from .aggregate import check_levels, write_aggregates
    from .embed import EmbedReport, check_common_options
    from .embed_shards import ShardWriter
    from .transforms import resolve_input_config

    levels = check_levels(aggregate)
    check_common_options(batch_size, file_timeout)
    rows_per_shard = _DEFAULT_ROWS_PER_SHARD if rows_per_shard is None else rows_per_shard
    _check(workers, gpus_per_worker, rows_per_shard)
    ray = _import_ray()
    files = list_inputs(inputs)
    paths = OutputPaths.for_out(out)
    if paths.npy.exists():
        raise OutputExistsError(f"{paths.npy} exists: --out {paths.stem} holds the local engine's output; "
                                f"choose another --out")
    info = identify_model(model)
    check_stage(info.folder, stage)
    config = resolve_input_config(info.folder)
    meta = {"model": info.model_id, "weights_sha256": info.weights_sha256, "hub_revision": info.hub_revision,
            "stage": stage, "faithful": faithful, "engine": "ray",
            "input": {k: config[k] for k in ("input_size", "interpolation", "crop_mode", "mean", "std")}}
    shards = ShardWriter(paths.parquet, paths.meta, meta, resume=resume, rows_per_shard=rows_per_shard)
    todo = [f for f in files if f not in shards.done]
    report = EmbedReport(npy=None, csv=None, parquet=paths.parquet, already_done=len(files) - len(todo),
                         engine="ray")
    started = not ray.is_initialized()
    if started and todo:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=progress)
    try:
        if todo:
            ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: files, below
            ds = _pipeline(ray, todo, info, config, faithful=faithful, file_timeout=file_timeout, stage=stage,
                           batch_size=batch_size, workers=workers, gpus_per_worker=gpus_per_worker)
            with progress_bar(total=len(todo), desc="embed", unit="file", disable=not progress) as bar:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    complete, failed = shards.add(batch)
                    report.files += len(complete)
                    report.failed += failed
                    bar.update(len(complete) + len(failed))
            shards.finish()
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    report.images = shards.rows_written
    report.errors_csv = write_errors(paths, sorted(report.failed))
    if levels and shards.shards:
        report.aggregates = write_aggregates(shards.shards, paths.stem, levels, max_pool=max_pool)
    return report
