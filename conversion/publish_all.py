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

import sys
from collections.abc import Sequence
from pathlib import Path

from rnet_hub.cli import main as rnet_hub_main

MANIFEST = Path(__file__).resolve().parent / "manifest.json"


def main(argv: Sequence[str] | None = None) -> int:
    """``rnet-hub publish-all`` with this folder's manifest unless ``--manifest`` is given (``--help`` lists all)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--manifest" or a.startswith("--manifest=") for a in args):
        args = ["--manifest", str(MANIFEST), *args]
    code = rnet_hub_main(["publish-all", *args])
    if code == 0 and "--dry-run" not in args:
        print("next: python conversion/render_cards.py  (model_cards/ from the updated manifest)")
    return code


if __name__ == "__main__":
    sys.exit(main())
