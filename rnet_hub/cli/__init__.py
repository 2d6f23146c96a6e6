"""``rnet-hub``: small typed commands over the package.

Each command is one function taking parsed arguments; every error that a user can fix is
printed as one ``error:`` line naming the fix, with exit status 2 (1 for failed checks).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..architectures import ARCHITECTURES

if TYPE_CHECKING:
    from ..archives.extract import ArchiveExtraction

__all__ = ["main", "run"]

_ARCH_HELP = "one of " + ", ".join(s.name for s in ARCHITECTURES) + " (aliases and timm names work too)"


def _cmd_sample_archive(args: argparse.Namespace) -> int:
    from ..testing import write_sample_archive

    path = write_sample_archive(args.name, args.output, seed=args.seed, num_classes=args.num_classes,
                                with_optimizer=not args.no_optimizer)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _read_label_names(args: argparse.Namespace) -> list[str] | None:
    if args.label_names_file:
        return [line.strip() for line in Path(args.label_names_file).read_text().splitlines() if line.strip()]
    if args.label_names:
        return [name.strip() for name in args.label_names.split(",")]
    return None


def _started_extraction(source: str, quiet: bool) -> contextlib.AbstractContextManager[ArchiveExtraction | None]:
    """Start extracting a local archive in the background; yields it (or ``None`` for other sources).

    The commands call this before they import torch and timm (5-7 s), so that import and the
    decompression, the two longest steps of a conversion, run at the same time.
    """
    from ..archives.download import is_url
    from ..archives.extract import ArchiveExtraction, sniff

    path = Path(source).expanduser()
    if is_url(source) or not path.is_file() or sniff(path) not in ("gzip", "tar"):
        return contextlib.nullcontext(None)
    return ArchiveExtraction(path, progress=not quiet).start()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: importing torch and timm allocates about a million
    objects, which triggers dozens of full collections that find nothing (about 1.5 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _import_converter() -> ModuleType:
    """``rnet_hub.converter``, and with it torch and timm, imported with the collector paused."""
    with _gc_paused():
        return importlib.import_module("rnet_hub.converter")


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.out is not None:
        from ..folder import refuse_existing

        refuse_existing(args.out, args.overwrite)  # before the archive is read or torch imported
    with _started_extraction(args.source, args.quiet) as extraction:
        converter = _import_converter()  # torch and timm import while the archive decompresses
        result = converter.convert(extraction or args.source, args.out, arch=args.arch,
                                   label_names=_read_label_names(args), repo_id=args.repo_id,
                                   overwrite=args.overwrite, progress=not args.quiet)
    print(result)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with _started_extraction(args.against, args.quiet) as extraction:
        converter = _import_converter()  # torch and timm import while the archive decompresses
        report = converter.verify(args.model_dir, extraction or args.against, progress=not args.quiet)
    print(report)
    return 0 if report.passed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.arch, args.workdir, progress=not args.quiet)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="the whole chain on a built-in default: sample archive, convert, load, parity report",
        description="Write a stand-in archive (random weights in the exact published format), convert it, "
                    "load the result with timm and transformers and print the parity report against the "
                    "original topology. Needs no network.")
    parser.add_argument("--arch", default="ResNet50", help=f"architecture (default ResNet50); {_ARCH_HELP}")
    parser.add_argument("--workdir", type=Path, default=Path("demo-output"),
                        help="folder for the archive and the converted model (default ./demo-output)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_demo)


def _add_sample_archive(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sample-archive", help="write a stand-in archive in the exact original format (random weights)",
        description="Write <NAME>.tar.gz exactly as the published archives are laid out, with random "
                    "(seeded) weights and BatchNorm statistics. For tests and demos: results on it say "
                    "nothing about the real weights.")
    parser.add_argument("name", help=_ARCH_HELP)
    parser.add_argument("-o", "--output", type=Path, required=True, help="archive path, or a folder for <Name>.tar.gz")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights; default 0)")
    parser.add_argument("--num-classes", type=int, default=36, help="head size (default 36, as pretrained)")
    parser.add_argument("--no-optimizer", action="store_true",
                        help="leave out the AdamW state (a much smaller archive)")
    parser.set_defaults(func=_cmd_sample_archive)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert", help="convert a legacy archive/.pth/URL into a verified timm/transformers folder",
        description="Convert a RadiologyNET checkpoint (.tar.gz/.tgz/.tar, .pth/.pt or http(s) URL) into "
                    "model.safetensors + config.json + README.md. The conversion fails, leaving nothing, "
                    "unless the converted model reproduces the original topology's logits.")
    parser.add_argument("source", help="archive, .pth file or URL")
    parser.add_argument("--arch", help=f"architecture, detected from the weights when omitted; {_ARCH_HELP}")
    parser.add_argument("--out", type=Path, help="output folder (default converted/<timm architecture>)")
    parser.add_argument("--repo-id", help="Hub repository the folder is meant for (default radiologynet/<arch>)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-names", help="comma-separated class names, one per output of the head")
    labels.add_argument("--label-names-file", type=Path, help="file with one class name per line")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_convert)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify", help="rerun the parity check of a converted folder against its source",
        description="Run the original wrapper topology on SOURCE's weights and the converted model in "
                    "MODEL_DIR on the same batch and compare logits. Exit status 1 when they differ.")
    parser.add_argument("model_dir", help="converted folder, or a Hub id such as hf-hub:radiologynet/resnet50@<sha>")
    parser.add_argument("--against", required=True, help="the source archive, .pth or URL")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_verify)


def _cmd_push(args: argparse.Namespace) -> int:
    from ..publish.push import push_folder

    result = push_folder(args.folder, repo_id=args.repo_id, revision=args.revision, private=args.private,
                         create_pr=args.create_pr, dry_run=args.dry_run, commit_message=args.commit_message)
    print(result)
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "push", help="upload a converted folder to the Hugging Face Hub in one commit",
        description="Create the repository if missing and upload every file of DIR in one commit, then print "
                    "the commit URL. Transient failures are retried and never give a second commit; a folder "
                    "the remote already holds uploads nothing. The token comes from HF_TOKEN or `hf auth login` "
                    "and is never printed; HF_ENDPOINT selects another Hub.")
    parser.add_argument("folder", type=Path, metavar="DIR", help="converted folder (config.json + model.safetensors)")
    parser.add_argument("--repo-id", required=True, help="repository, e.g. radiologynet/resnet50")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repository private (when it is new)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request against main instead")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files (path, size, sha256) that would be pushed; no network")
    parser.add_argument("--commit-message", help="commit title (default names the architecture)")
    parser.set_defaults(func=_cmd_push)


def _cmd_publish_all(args: argparse.Namespace) -> int:
    from ..publish.pipeline import publish_all

    names = [name.strip() for name in args.only.split(",")] if args.only else None
    paths = {key: value for key, value in (("work_dir", args.work_dir), ("manifest", args.manifest)) if value}
    report = publish_all(archives=args.archives, names=names, org=args.org, dry_run=args.dry_run,
                         revision=args.revision, private=args.private, verify_after=args.verify,
                         cache_dir=args.cache_dir, progress=not args.quiet, **paths)
    return report.exit_code


def _add_publish_all(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "publish-all", help="convert and push all ten models with full model cards",
        description="For each model: convert its archive (or reuse an earlier conversion of the same source), "
                    "write the full model card and push the folder in one commit. Re-running after a success "
                    "uploads nothing. A failing model does not stop the others; the summary names it and the "
                    "exit status is 1. The manifest records source and file sha256, commit sha and parity.")
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation (default $RNET_HUB_ORG or radiologynet)")
    parser.add_argument("--work-dir", type=Path, help="converted folders, kept between runs (default converted/)")
    parser.add_argument("--manifest", type=Path, help="the manifest to update (default conversion/manifest.json)")
    parser.add_argument("--revision", help="branch to commit to (default main)")
    parser.add_argument("--private", action="store_true", help="create new repositories private")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (repository, files, sizes, sha256); no network, no manifest")
    parser.add_argument("--verify", action="store_true",
                        help="after pushing, download each model by its commit sha and rerun parity")
    parser.add_argument("--cache-dir", type=Path, help="download cache for URLs (default ~/.cache/rnet_hub)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_publish_all)


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..imaging.embed import embed

    try:
        report = embed(args.inputs, model=args.model, out=args.out, batch_size=args.batch_size,
                       num_workers=args.num_workers, resume=args.resume, stage=args.stage, faithful=args.faithful,
                       device=args.device, progress=not args.quiet)
    except ImportError as exc:  # an optional extra, e.g. OpenCV for --faithful
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
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
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_embed)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo,
    _add_sample_archive,
    _add_convert,
    _add_verify,
    _add_push,
    _add_publish_all,
    _add_embed,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnet-hub",
        description="RadiologyNET foundation models for timm, transformers and the Hugging Face Hub.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except AssertionError as exc:  # failed parity checks
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except _USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def run() -> None:
    """The ``rnet-hub`` console script: :func:`main`, then exit without interpreter teardown.

    A process that imported torch and timm spends 1.5-2 s at a normal exit tearing down about
    2,700 modules. Every command has closed its files and removed its temporary folders by the
    time :func:`main` returns, so ``run`` flushes the output streams and logging and leaves
    with ``os._exit``. Call :func:`main` to use the CLI from Python.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
