"""``rnet-hub embed``: embeddings of every image (DICOM, PNG, JPEG, ...) in files and folders, on this
machine (``--engine local``, the default) or on a Ray cluster (``--engine ray``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BadInputError
from ._shared import SubParsers, writing_to

__all__ = ["add_parser"]


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option values that would otherwise fail deep inside torch with its own message."""
    if args.num_workers is not None and args.num_workers < 0:
        raise BadInputError(f"--num-workers must be 0 or more, got {args.num_workers}")
    ray_only = [name for name, value in (("--address", args.address), ("--workers", args.workers),
                                         ("--gpus-per-worker", args.gpus_per_worker),
                                         ("--rows-per-shard", args.rows_per_shard)) if value is not None]
    if args.engine != "ray" and ray_only:
        raise BadInputError(f"{ray_only[0]} is an option of --engine ray; add --engine ray or leave it out")
    if args.engine == "ray" and (args.device is not None or args.num_workers is not None):
        raise BadInputError("--device and --num-workers are options of --engine local; with --engine ray use "
                            "--gpus-per-worker and --workers")
    if args.device is not None:
        from ..imaging.embed import resolve_device

        resolve_device(args.device, option="--device")


def _cmd_embed(args: argparse.Namespace) -> int:
    """Embed every image under INPUT and print the report."""
    from ..imaging.embed_engines import embed

    _check_options(args)
    stem = args.out.with_suffix("") if args.out.suffix in (".npy", ".csv", ".parquet") else args.out
    with writing_to(stem, "--out", beside=(f"{stem.name}.",)):  # STEM.npy, STEM.csv, ...
        report = embed(args.inputs, model=args.model, out=args.out, batch_size=args.batch_size,
                       num_workers=args.num_workers, resume=args.resume, stage=args.stage, faithful=args.faithful,
                       device=args.device, file_timeout=args.file_timeout, progress=not args.quiet,
                       aggregate=args.aggregate or (), max_pool=args.max_pool, engine=args.engine,
                       address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                       rows_per_shard=args.rows_per_shard)
    print(report)
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``embed`` command."""
    parser = sub.add_parser(
        "embed", help="embeddings of every image (DICOM, PNG, JPEG, ...) in files and folders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Walk the inputs, read DICOM (recognised by its header; windowed as in pretraining, one "
                    "image per frame and window) and ordinary images, batch them through the model's pooled "
                    "features and write the rows (path, SOP/Series/Study UIDs, frame, window, rule, modality, "
                    "model id, weights SHA-256, Hub revision, embedding).\n\n"
                    "--engine local (default): STEM.npy (float32 rows) + STEM.csv + STEM.parquet (with pyarrow).\n"
                    "--engine ray: a Ray Data pipeline (CPU tasks decode, GPU/CPU actors embed) writing Parquet "
                    "shards to the folder STEM.parquet/; needs pip install 'rnet-hub[ray]'.\n"
                    "Either way unreadable files are listed in STEM.errors.csv and skipped, --resume embeds only "
                    "what is missing, and --aggregate series|study adds pooled vectors per UID "
                    "(STEM.series.parquet, STEM.study.parquet).",
        epilog="examples:\n"
               "  rnet-hub embed scans/ --model radiologynet/resnet50 --out emb\n"
               "  rnet-hub embed 'scans/**/*.dcm' manifest.csv --model ./resnet50 --out emb --aggregate series\n"
               "  rnet-hub embed s3://bucket/archive/ --model radiologynet/resnet50 --out emb --engine ray \\\n"
               "      --address auto --gpus-per-worker 1 --batch-size 128 --aggregate study --max-pool\n"
               "  rnet-hub embed s3://bucket/archive/ --model radiologynet/resnet50 --out emb --engine ray "
               "--address auto --resume")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, folders (walked recursively), glob patterns, CSV/Parquet manifests (a 'path' "
                             "column); with --engine ray also URIs pyarrow reads (s3://, gs://, hdfs://, file://)")
    parser.add_argument("--model", required=True,
                        help="a converted folder or a model name (radiologynet/resnet50, ResNet50, resnet50, ...)")
    parser.add_argument("--out", type=Path, default=Path("embeddings"),
                        help="output stem: writes STEM.npy, STEM.csv, STEM.json (default: embeddings)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--num-workers", type=int, help="file-reading processes (default: CPUs - 1, at most 4)")
    parser.add_argument("--resume", action="store_true", help="keep STEM's rows, embed only the files not listed")
    parser.add_argument("--stage", type=int, metavar="K",
                        help="embed feature stage K (0 = earliest) averaged over space, not the pooled features")
    parser.add_argument("--faithful", action="store_true",
                        help="the exact pretraining resize chain (letterbox to 224, then OpenCV to the native size)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--file-timeout", type=float, default=60, metavar="SECONDS",
                        help="skip (and list) a file that takes longer than this to read (0: no limit; default 60)")
    parser.add_argument("--aggregate", action="append", choices=("series", "study"),
                        help="also write mean-pooled vectors per SeriesInstanceUID or StudyInstanceUID to "
                             "STEM.series.parquet / STEM.study.parquet (repeat for both)")
    parser.add_argument("--max-pool", action="store_true", help="with --aggregate: add max-pooled vectors too")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: a Ray cluster (pip install 'rnet-hub[ray]')")
    parser.add_argument("--address", help="--engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT; default: "
                                          "RAY_ADDRESS, else start Ray on this machine)")
    parser.add_argument("--workers", type=int, help="--engine ray: inference actors (default: one per "
                                                    "--gpus-per-worker GPUs of the cluster; without GPUs one "
                                                    "per node, using nearly all its CPUs; --workers N without "
                                                    "GPUs: N actors of one CPU each)")
    parser.add_argument("--gpus-per-worker", type=float, metavar="G",
                        help="--engine ray: GPUs each inference actor holds (0 or unset: CPU)")
    parser.add_argument("--rows-per-shard", type=int, metavar="N",
                        help="--engine ray: rows per Parquet shard (default 4096; whole files per shard)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_embed)
