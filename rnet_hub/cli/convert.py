"""``rnet-hub convert`` and ``rnet-hub verify``: a legacy checkpoint into a verified folder, and the re-check.

Both start extracting a local archive in a child process *before* importing torch and timm
(:func:`started_extraction`), and import them with the garbage collector paused
(:func:`import_converter`): the two longest steps of a conversion then run at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import BadInputError, ParityError
from ._shared import ARCH_HELP, SubParsers, writing_to

if TYPE_CHECKING:
    from ..archives.extract import ArchiveExtraction

__all__ = ["add_parser", "import_converter", "started_extraction"]


def _read_label_names(args: argparse.Namespace) -> list[str] | None:
    """The ``--label-names`` or ``--label-names-file`` class names (``None`` when neither is given)."""
    if args.label_names_file:
        path = Path(args.label_names_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BadInputError(f"cannot read --label-names-file {path}: {reason}; "
                                f"give a UTF-8 text file with one class name per line") from exc
        return [line.strip() for line in text.splitlines() if line.strip()]
    if args.label_names:
        return [name.strip() for name in args.label_names.split(",")]
    return None


def started_extraction(source: str, quiet: bool) -> contextlib.AbstractContextManager[ArchiveExtraction | None]:
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


def import_converter() -> ModuleType:
    """``rnet_hub.converter``, and with it torch and timm, imported with the collector paused."""
    with _gc_paused():
        return importlib.import_module("rnet_hub.converter")


def _cmd_convert(args: argparse.Namespace) -> int:
    """Convert SOURCE and print the result (a failed parity check raises :class:`ParityError`)."""
    label_names = _read_label_names(args)  # a missing file fails before anything is read or imported
    if args.out is not None:
        from ..staging import refuse_existing

        refuse_existing(args.out, args.overwrite)  # before the archive is read or torch imported
    with started_extraction(args.source, args.quiet) as extraction:
        converter = import_converter()  # torch and timm import while the archive decompresses
        target = args.out if args.out is not None else Path("converted")
        with writing_to(target, "--out"):
            result = converter.convert(extraction or args.source, args.out, arch=args.arch, label_names=label_names,
                                       repo_id=args.repo_id, overwrite=args.overwrite, progress=not args.quiet)
    print(result)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Print the parity report of MODEL_DIR against SOURCE; raise :class:`ParityError` when it fails."""
    with started_extraction(args.against, args.quiet) as extraction:
        converter = import_converter()  # torch and timm import while the archive decompresses
        report = converter.verify(args.model_dir, extraction or args.against, progress=not args.quiet)
    print(report)
    if not report.passed:
        raise ParityError(f"{args.model_dir} does not reproduce {args.against} ({report}); it was converted from "
                          f"another source or its files were changed: convert it again from the right source")
    return 0


def _add_convert(sub: SubParsers) -> None:
    """Add the ``convert`` command."""
    parser = sub.add_parser(
        "convert", help="convert a legacy archive/.pth/URL into a verified timm/transformers folder",
        description="Convert a RadiologyNET checkpoint (.tar.gz/.tgz/.tar, .pth/.pt or http(s) URL) into "
                    "model.safetensors + config.json + README.md. The conversion fails, leaving nothing, "
                    "unless the converted model reproduces the original topology's logits.")
    parser.add_argument("source", help="archive, .pth file or URL")
    parser.add_argument("--arch", help=f"architecture, detected from the weights when omitted; {ARCH_HELP}")
    parser.add_argument("--out", type=Path, help="output folder (default converted/<timm architecture>)")
    parser.add_argument("--repo-id", help="Hub repository the folder is meant for, recorded as hf_hub_id "
                                          "(default: none; a user's own conversion never claims the official one)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-names", help="comma-separated class names, one per output of the head")
    labels.add_argument("--label-names-file", type=Path, help="file with one class name per line")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output folder (or use an empty one); other folders are never replaced")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_convert)


def _add_verify(sub: SubParsers) -> None:
    """Add the ``verify`` command."""
    parser = sub.add_parser(
        "verify", help="rerun the parity check of a converted folder against its source",
        description="Run the original wrapper topology on SOURCE's weights and the converted model in "
                    "MODEL_DIR on the same batch and compare logits. Exit status 1 when they differ.")
    parser.add_argument("model_dir", help="converted folder, or a Hub id such as hf-hub:radiologynet/resnet50@<sha>")
    parser.add_argument("--against", required=True, help="the source archive, .pth or URL")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_verify)


def add_parser(sub: SubParsers) -> None:
    """Add the ``convert`` and ``verify`` commands."""
    _add_convert(sub)
    _add_verify(sub)
