"""Convert and publish all ten RadiologyNET models to the Hugging Face Hub, with full model cards.

    python conversion/publish_all.py --archives DIR --dry-run   # the plan: repos, files, sizes, sha256
    python conversion/publish_all.py --archives DIR --verify    # push, then re-check each pinned commit
    python conversion/publish_all.py                            # from the authors' published URLs

The same as ``rnet-hub publish-all`` (run ``--help`` for every option). Re-running after a
success uploads nothing; one model's failure does not stop the others, and the exit status
is 1 when any failed. ``conversion/manifest.json`` records what was published.
"""

from __future__ import annotations

import sys

from rnet_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish-all", *sys.argv[1:]]))
