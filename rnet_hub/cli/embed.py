"""``rnet-hub embed``: embeddings of every image (DICOM, PNG, JPEG, ...) in files and folders."""

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
    if args.device is not None:
        from ..imaging.embed import resolve_device

        resolve_device(args.device, option="--device")


def _cmd_embed(args: argparse.Namespace) -> int:
    """Embed every image under INPUT and print the report."""
    from ..imaging.embed import embed

    _check_options(args)
    stem = args.out.with_suffix("") if args.out.suffix in (".npy", ".csv", ".parquet") else args.out
    with writing_to(stem, "--out", beside=(f"{stem.name}.",)):  # STEM.npy, STEM.csv, ...
        report = embed(args.inputs, model=args.model, out=args.out, batch_size=args.batch_size,
                       num_workers=args.num_workers, resume=args.resume, stage=args.stage, faithful=args.faithful,
                       device=args.device, file_timeout=args.file_timeout, progress=not args.quiet)
    print(report)
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``embed`` command."""
    parser = sub.add_parser(
        "embed", help="embeddings of every image (DICOM, PNG, JPEG, ...) in files and folders",
        description="Walk the inputs, read DICOM (recognised by its header; windowed as in pretraining, one "
                    "image per frame and window) and ordinary images, batch them through the model's pooled "
                    "features and write STEM.npy (float32 rows) + STEM.csv (path, SOPInstanceUID, frame, window, "
                    "rule), and STEM.parquet when pyarrow is installed. Unreadable files are listed in "
                    "STEM.errors.csv and skipped.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files and folders (walked recursively)")
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
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_embed)
