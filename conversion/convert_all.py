"""Convert all ten RadiologyNET archives (or some of them) into timm/transformers folders.

    python conversion/convert_all.py --archives DIR [--out converted] [--only ResNet50,VGG16]
    python conversion/convert_all.py              # the authors' published URLs, downloaded resumably
    python conversion/convert_all.py --dry-run    # what would be converted from where; nothing done

Models already converted from a source with the same sha256 are skipped; a model that fails
does not stop the others, and the exit status is 1 when any failed. A downloaded archive must
have the sha256 that conversion/manifest.json (--manifest) records for its model, when it
records one; a mismatch fails that model and the file is moved aside in the download cache.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.errors import RnetHubError
from rnet_hub.publish.batch import DEFAULT_WORK_DIR, batch_sources, convert_all, source_url

MANIFEST = Path(__file__).resolve().parent / "manifest.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_WORK_DIR, help="output root (default converted/)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation recorded in config.json (default radiologynet)")
    parser.add_argument("--cache-dir", type=Path, help="download cache (default $RNET_HUB_CACHE, else "
                        "$HF_HOME/rnet_hub, else $XDG_CACHE_HOME/rnet_hub, else ~/.cache/rnet_hub)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST,
                        help="manifest whose source_sha256 each downloaded archive must match "
                             "(default conversion/manifest.json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--dry-run", action="store_true",
                        help="list each model's source and output folder; download and convert nothing")
    return parser.parse_args(argv)


def expected_sha256(manifest: Path) -> dict[str, str]:
    """Model name -> the source sha256 the manifest records (none when there is no manifest yet)."""
    from rnet_hub.publish.pipeline import read_manifest

    models = read_manifest(manifest)["models"]
    return {name: entry["source_sha256"] for name, entry in models.items()
            if isinstance(entry, dict) and isinstance(entry.get("source_sha256"), str)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    try:
        expected = expected_sha256(args.manifest)
        if args.dry_run:
            for spec, source in batch_sources(archives=args.archives, names=names):
                missing = source_url(source) is None and not Path(source).is_file()
                sha = expected.get(spec.name) if source_url(source) else None
                check = f"  (must have sha256 {sha})" if sha else ""
                print(f"{spec.name:<17} {source} -> {args.out / spec.timm_arch}"
                      f"{'  (missing: this model would fail)' if missing else ''}{check}")
            return 0
        outcomes = convert_all(archives=args.archives, names=names, out_dir=args.out, org=args.org,
                               cache_dir=args.cache_dir, progress=not args.quiet, expected_sha256=expected)
    except RnetHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
