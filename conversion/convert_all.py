"""Convert all ten RadiologyNET archives (or some of them) into timm/transformers folders.

    python conversion/convert_all.py --archives DIR [--out converted] [--only ResNet50,VGG16]
    python conversion/convert_all.py              # the authors' published URLs, downloaded resumably

Models already converted from a source with the same sha256 are skipped; a model that fails
does not stop the others, and the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.publish.batch import convert_all


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--out", type=Path, default=Path("converted"), help="output root (default converted/)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation recorded in config.json (default radiologynet)")
    parser.add_argument("--cache-dir", type=Path, help="download cache (default ~/.cache/rnet_hub)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    try:
        outcomes = convert_all(archives=args.archives, names=names, out_dir=args.out, org=args.org,
                               cache_dir=args.cache_dir, progress=not args.quiet)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
