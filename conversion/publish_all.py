"""Convert and publish all ten RadiologyNET models to the Hugging Face Hub, with full model cards.

    python conversion/publish_all.py --archives DIR --dry-run   # the plan: repos, files, sizes, sha256
    python conversion/publish_all.py --archives DIR --verify    # push, then re-check each pinned commit
    python conversion/publish_all.py                            # from the authors' published URLs

Re-running after a success uploads nothing; one model's failure does not stop the others, and
the exit status is 1 when any failed. conversion/manifest.json records what was published
(source and file sha256, commit sha, parity, converter versions); then run
conversion/render_cards.py to update model_cards/ from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.errors import RnetHubError
from rnet_hub.publish.pipeline import DEFAULT_WORK_DIR, publish_all

MANIFEST = Path(__file__).resolve().parent / "manifest.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation (default $RNET_HUB_ORG or radiologynet)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="converted folders, kept between runs (default converted/)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST,
                        help="the manifest to update (default conversion/manifest.json)")
    parser.add_argument("--revision", help="branch to commit to (default main)")
    parser.add_argument("--private", action="store_true", help="create new repositories private")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (repository, files, sizes, sha256); no upload, no manifest")
    parser.add_argument("--verify", action="store_true",
                        help="after pushing, download each model by its commit sha and rerun parity")
    parser.add_argument("--cache-dir", type=Path, help="download cache for URLs (default ~/.cache/rnet_hub)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    try:
        report = publish_all(archives=args.archives, names=names, org=args.org, work_dir=args.work_dir,
                             manifest=args.manifest, dry_run=args.dry_run, revision=args.revision,
                             private=args.private, verify_after=args.verify, cache_dir=args.cache_dir,
                             progress=not args.quiet)
    except RnetHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not args.dry_run:
        print("next: python conversion/render_cards.py  (model_cards/ from the updated manifest)")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
