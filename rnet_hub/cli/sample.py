"""``rnet-hub sample-archive``: a stand-in archive in the exact original format (random weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import ARCH_HELP, SubParsers, writing_to

__all__ = ["add_parser"]


def _cmd_sample_archive(args: argparse.Namespace) -> int:
    """Write the stand-in archive and print its path and size."""
    from ..testing import write_sample_archive

    with writing_to(args.output, "-o/--output", beside=("rnet-hub-sample-",)):  # its temporary folder
        path = write_sample_archive(args.name, args.output, seed=args.seed, num_classes=args.num_classes,
                                    with_optimizer=not args.no_optimizer)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``sample-archive`` command."""
    parser = sub.add_parser(
        "sample-archive", help="write a stand-in archive in the exact original format (random weights)",
        description="Write <NAME>.tar.gz exactly as the published archives are laid out, with random "
                    "(seeded) weights and BatchNorm statistics. For tests and demos: results on it say "
                    "nothing about the real weights.")
    parser.add_argument("name", help=ARCH_HELP)
    parser.add_argument("-o", "--output", type=Path, required=True, help="archive path, or a folder for <Name>.tar.gz")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights; default 0)")
    parser.add_argument("--num-classes", type=int, default=36, help="head size (default 36, as pretrained)")
    parser.add_argument("--no-optimizer", action="store_true",
                        help="leave out the AdamW state (a much smaller archive)")
    parser.set_defaults(func=_cmd_sample_archive)
