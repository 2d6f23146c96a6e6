"""Render the model cards of the ten published models into model_cards/, exactly as they are pushed.

    python conversion/render_cards.py            # (re)write model_cards/<timm architecture>.md
    python conversion/render_cards.py --check    # exit 1 listing stale cards; writes nothing

A model recorded in conversion/manifest.json (by conversion/publish_all.py) gets the card its
publication pushed; any other gets its card with the provenance marked pending. Rerun this
after each publication and after any change to the card template.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.errors import RnetHubError
from rnet_hub.publish.pipeline import model_cards, read_manifest

HERE = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=HERE / "manifest.json",
                        help="the publication manifest (default conversion/manifest.json)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "model_cards",
                        help="folder of the cards (default model_cards/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the cards that are missing, stale or extra")
    return parser.parse_args(argv)


def stale_cards(cards: dict[str, str], out: Path) -> list[str]:
    """The card files under ``out`` that differ from ``cards`` (missing, stale, or not one of the ten)."""
    stale = [name for name, text in cards.items()
             if not (out / name).is_file() or (out / name).read_bytes() != text.encode("utf-8")]
    extra = sorted(path.name for path in out.glob("*.md") if path.name not in cards) if out.is_dir() else []
    return stale + [f"{name} (not one of the ten; remove it)" for name in extra]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cards = model_cards(read_manifest(args.manifest))
    except RnetHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    stale = stale_cards(cards, args.out)
    if args.check:
        for name in stale:
            print(f"stale: {args.out / name}")
        print(f"{len(stale)} of {len(cards)} cards stale; run python conversion/render_cards.py" if stale
              else f"all {len(cards)} cards up to date")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        if name in cards:
            (args.out / name).write_bytes(cards[name].encode("utf-8"))
            print(f"wrote {args.out / name}")
        else:
            print(f"extra: {args.out / name}", file=sys.stderr)
    return 1 if any(name not in cards for name in stale) else 0


if __name__ == "__main__":
    sys.exit(main())
