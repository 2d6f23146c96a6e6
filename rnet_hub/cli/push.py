"""``rnet-hub push`` (one converted folder) and ``rnet-hub publish-all`` (all ten models) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import SubParsers

__all__ = ["add_parser"]


def _cmd_push(args: argparse.Namespace) -> int:
    """Push DIR in one commit (or list the files with ``--dry-run``) and print the result."""
    from ..publish.push import push_folder

    result = push_folder(args.folder, repo_id=args.repo_id, revision=args.revision, private=args.private,
                         create_pr=args.create_pr, dry_run=args.dry_run, commit_message=args.commit_message)
    print(result)
    return 0


def _add_push(sub: SubParsers) -> None:
    """Add the ``push`` command."""
    parser = sub.add_parser(
        "push", help="upload a converted folder to the Hugging Face Hub in one commit",
        description="Create the repository if missing and upload every file of DIR in one commit, then print "
                    "the commit URL. Transient failures are retried and never give a second commit; a folder "
                    "the remote already holds uploads nothing. The token comes from HF_TOKEN or `hf auth login` "
                    "and is never printed; HF_ENDPOINT selects another Hub.")
    parser.add_argument("folder", type=Path, metavar="DIR", help="converted folder (config.json + model.safetensors)")
    parser.add_argument("--repo-id", required=True, help="repository, e.g. radiologynet/resnet50")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repository private (when it is new)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request against main instead")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files (path, size, sha256) that would be pushed; no network")
    parser.add_argument("--commit-message", help="commit title (default names the architecture)")
    parser.set_defaults(func=_cmd_push)


def _cmd_publish_all(args: argparse.Namespace) -> int:
    """Convert and push the models; the exit status is the report's (1 when any model failed)."""
    from ..publish.pipeline import publish_all

    names = [name.strip() for name in args.only.split(",")] if args.only else None
    paths = {key: value for key, value in (("work_dir", args.work_dir), ("manifest", args.manifest)) if value}
    report = publish_all(archives=args.archives, names=names, org=args.org, dry_run=args.dry_run,
                         revision=args.revision, private=args.private, verify_after=args.verify,
                         cache_dir=args.cache_dir, progress=not args.quiet, **paths)
    return report.exit_code


def _add_publish_all(sub: SubParsers) -> None:
    """Add the ``publish-all`` command."""
    parser = sub.add_parser(
        "publish-all", help="convert and push all ten models with full model cards",
        description="For each model: convert its archive (or reuse an earlier conversion of the same source), "
                    "write the full model card and push the folder in one commit. Re-running after a success "
                    "uploads nothing. A failing model does not stop the others; the summary names it and the "
                    "exit status is 1. The manifest records source and file sha256, commit sha and parity.")
    parser.add_argument("--archives", type=Path, help="folder with <Name>.tar.gz (default: the published URLs)")
    parser.add_argument("--only", help="comma-separated model names (default: all ten)")
    parser.add_argument("--org", help="Hub organisation (default $RNET_HUB_ORG or radiologynet)")
    parser.add_argument("--work-dir", type=Path, help="converted folders, kept between runs (default converted/)")
    parser.add_argument("--manifest", type=Path,
                        help="the manifest to record what landed in (default: none; "
                             "python conversion/publish_all.py uses conversion/manifest.json)")
    parser.add_argument("--revision", help="branch to commit to (default main)")
    parser.add_argument("--private", action="store_true", help="create new repositories private")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (repository, files, sizes, sha256); no network, no manifest")
    parser.add_argument("--verify", action="store_true",
                        help="after pushing, download each model by its commit sha and rerun parity")
    parser.add_argument("--cache-dir", type=Path,
                        help="download cache for URLs (default $RNET_HUB_CACHE, $HF_HOME/rnet_hub, ~/.cache/rnet_hub)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_publish_all)


def add_parser(sub: SubParsers) -> None:
    """Add the ``push`` and ``publish-all`` commands."""
    _add_push(sub)
    _add_publish_all(sub)
