"""``rnet-hub clean``: remove what killed conversions left behind (never what a live one is using).

A conversion killed with SIGKILL (or by the machine running out of memory) leaves its extraction
folder in the temp folder (hundreds of MB) and perhaps its hidden staging folder next to ``--out``.
Each comes with a run lock (see :mod:`rnet_hub.leftovers`) that tells whether its run is over; the
next conversion clears those of its own temp folder and ``--out`` parent by itself, ``clean`` does
it for the temp folder and the folders given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..errors import BadInputError
from ._shared import SubParsers

__all__ = ["add_parser"]


def _cmd_clean(args: argparse.Namespace) -> int:
    """Remove (or with ``--dry-run`` list) the leftovers of killed runs; print one line for each."""
    from ..archives.extract import remove_dead_extractions
    from ..staging import remove_dead_runs

    folders = [Path(path) for path in args.paths] or [Path.cwd()]
    for folder in folders:
        if not folder.is_dir():
            raise BadInputError(f"clean: {folder} is not a folder; pass the folders that hold the outputs "
                                f"(the parents of --out)")
    temp = Path(tempfile.gettempdir())
    findings = remove_dead_extractions(temp, dry_run=args.dry_run)
    for folder in dict.fromkeys(folder.resolve() for folder in folders):  # each once
        findings += remove_dead_runs(folder, dry_run=args.dry_run)
    for finding in findings:
        print(finding.line(args.dry_run))
    if not findings:
        looked = ", ".join(str(path) for path in (temp, *folders))
        print(f"nothing to clean: no leftovers of killed conversions in {looked}")
    elif not any(finding.action in ("remove", "put back") for finding in findings):
        print("nothing removed: no folder above is a leftover of a run that is over")
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``clean`` command."""
    parser = sub.add_parser(
        "clean", help="remove what killed conversions left (extraction and staging folders)",
        description="Remove the leftovers of conversions that were killed (SIGKILL, out of memory): their "
                    "extraction folders in the temp folder (rnet-hub-extract-*) and their hidden staging "
                    "folders (.NAME.partial-*) in the given folders. An earlier output that a killed "
                    "--overwrite had moved aside (.NAME.old-*) is put back when its place is empty. A folder "
                    "whose conversion is still running is never touched: each has a lock file that tells.")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="folders that hold conversion outputs (the parents of --out; default: the current "
                             "folder); the temp folder is always cleaned")
    parser.add_argument("-n", "--dry-run", action="store_true", help="only list what would be removed")
    parser.set_defaults(func=_cmd_clean)
