"""Convert all ten RadiologyNET archives (or some of them) into timm/transformers folders.

    python conversion/convert_all.py --archives DIR [--out converted] [--only ResNet50,VGG16]
    python conversion/convert_all.py              # the authors' published URLs, downloaded resumably
    python conversion/convert_all.py --dry-run    # what would be converted from where; nothing done

Models already converted from a source with the same sha256 are skipped; a model that fails
does not stop the others, and the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.errors import RnetHubError
from rnet_hub.publish.batch import DEFAULT_WORK_DIR, batch_sources, convert_all, source_url


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_WORK_DIR, help="output root (default converted/)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation recorded in config.json (default radiologynet)")
    parser.add_argument("--cache-dir", type=Path, help="download cache (default ~/.cache/rnet_hub)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--dry-run", action="store_true",
                        help="list each model's source and output folder; download and convert nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    try:
        if args.dry_run:
            for spec, source in batch_sources(archives=args.archives, names=names):
                missing = source_url(source) is None and not Path(source).is_file()
                print(f"{spec.name:<17} {source} -> {args.out / spec.timm_arch}"
                      f"{'  (missing: this model would fail)' if missing else ''}")
            return 0
        outcomes = convert_all(archives=args.archives, names=names, out_dir=args.out, org=args.org,
                               cache_dir=args.cache_dir, progress=not args.quiet)
    except RnetHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
