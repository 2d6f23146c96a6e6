"""Pushing a converted folder to the Hub: one commit, retried safely, never a duplicate.

``huggingface_hub`` retries its idempotent calls (preupload, downloads) itself with
``http_backoff``, but deliberately not the commit POST of ``create_commit``: a commit whose
response was lost would be made twice. So the commit is retried here, and before every retry
the remote is asked whether the lost attempt landed after all (the branch moved from the
commit we started from and now holds exactly our files). The commit also names that starting
commit as ``parent_commit``, so an attempt that raced a landed one is refused by the Hub
instead of stacking a second commit. The token comes from the usual sources (``token=``,
``HF_TOKEN``, the token file of ``hf auth login``) and is never printed or logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadInputError, PushError
from ..folder import read_config
from ..hub import hf_api
from ..names import local_folder

__all__ = ["LocalFile", "PushResult", "RetryPolicy", "plan_upload", "push_folder",
           "remote_differences", "remote_matches_local"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})




@dataclass(frozen=True)
class LocalFile:
    """One file of the folder as it will be stored in the repository."""

    path: str  # path in the repository, posix separators
    size: int
    sha256: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient failures (5xx, 408/429, dropped or reset connections)."""

    attempts: int = 5
    base_wait_s: float = 1.0
    max_wait_s: float = 8.0

    def waits(self) -> Iterator[float | None]:
        """The wait after each failed attempt; ``None`` after the last one."""
        for attempt in range(self.attempts):
            yield None if attempt == self.attempts - 1 else min(self.max_wait_s, self.base_wait_s * 2**attempt)


@dataclass(frozen=True)
class PushResult:
    """What a push did (or, for a dry run, would do)."""

    repo_id: str
    revision: str
    files: tuple[LocalFile, ...]
    dry_run: bool = False
    changed: bool = True
    commit_url: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    attempts: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def __str__(self) -> str:
        where = f"{self.repo_id}@{self.revision}"
        size = f"{len(self.files)} files, {self.total_bytes / 2**20:.1f} MiB"
        if self.dry_run:
            rows = [f"  {f.path}  {f.size} bytes  sha256:{f.sha256}" for f in self.files]
            return "\n".join([f"dry run: would push {size} to {where} in one commit", *rows,
                              "nothing was uploaded"])
        if not self.changed:
            return f"{where} already holds these {size}; nothing uploaded\n{self.commit_url}"
        pr = f", pull request {self.pr_url}" if self.pr_url else ""
        return f"pushed {size} to {where} in one commit{pr}\n{self.commit_url}"


def plan_upload(folder: str | os.PathLike[str]) -> tuple[LocalFile, ...]:
    """The files a push of ``folder`` uploads (hidden files and folders left out), with sha256.

    ``folder`` is a local model name (a folder, or ``local-dir:DIR``; see :mod:`rnet_hub.names`).
    Raises :class:`~rnet_hub.errors.BadInputError` unless it is a converted model folder.
    """
    from huggingface_hub.utils.sha import sha_fileobj

    root = local_folder(folder)
    read_config(root)  # config.json + model.safetensors, or a clear error
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        with path.open("rb") as fh:
            files.append(LocalFile(relative.as_posix(), path.stat().st_size, sha_fileobj(fh).hex()))
    return tuple(files)


def push_folder(folder: str | os.PathLike[str], *, repo_id: str, revision: str | None = None,
                private: bool = False, create_pr: bool = False, dry_run: bool = False, token: str | None = None,
                commit_message: str | None = None, endpoint: str | None = None,
                retry: RetryPolicy = RetryPolicy()) -> PushResult:
    """Push a converted folder to ``repo_id`` in one commit, creating the repository if missing.

    ``revision`` names a branch (created from main if missing) or an open ``refs/pr/N``;
    ``create_pr`` opens a pull request against main instead. When the target already holds
    identical files nothing is uploaded (``PushResult.changed`` is False). ``dry_run`` only
    lists the files and touches no network.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise BadInputError(f"--repo-id {repo_id!r} is not a Hub repository id ({exc}); write org/name") from exc
    folder = local_folder(folder)
    files = plan_upload(folder)
    if create_pr and revision not in (None, "main"):
        raise BadInputError(f"--create-pr opens a pull request against main; leave out --revision {revision}")
    target = revision or "main"
    if dry_run:
        return PushResult(repo_id, target, files, dry_run=True, changed=False)
    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or use --dry-run to see the plan")
    message = commit_message or f"Upload {read_config(folder)['architecture']} converted with rnet-hub"
    with _hub_errors(repo_id):
        return _push(Path(folder), files, _api(endpoint, token), repo_id=repo_id, target=target,
                     private=private, create_pr=create_pr, message=message, retry=retry)


def remote_differences(folder: str | os.PathLike[str], repo_id: str, revision: str | None = None, *,
                       token: str | None = None, endpoint: str | None = None,
                       files: tuple[LocalFile, ...] | None = None) -> list[str]:
    """Paths of the folder whose content the remote ``revision`` lacks (all of them if it does not exist).

    Compares what the Hub reports (LFS sha256, else the git blob sha1) with the local files;
    remote files that are not in the folder are ignored.
    """
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    files = files if files is not None else plan_upload(folder)
    api = _api(endpoint, token)
    try:
        return _differences(api, Path(folder), files, repo_id, revision or "main")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return [f.path for f in files]


def remote_matches_local(folder: str | os.PathLike[str], repo_id: str, revision: str | None = None, *,
                         token: str | None = None, endpoint: str | None = None) -> bool:
    """Whether the remote ``revision`` already holds every file of the folder, byte for byte."""
    return not remote_differences(folder, repo_id, revision, token=token, endpoint=endpoint)


# ------------------------------------------------------------------ internals
def _api(endpoint: str | None, token: str | None) -> Any:
    return hf_api(endpoint=endpoint, token=token)


def _push(folder: Path, files: tuple[LocalFile, ...], api: Any, *, repo_id: str, target: str, private: bool,
          create_pr: bool, message: str, retry: RetryPolicy) -> PushResult:
    _retrying(retry, "create the repository", lambda: api.create_repo(repo_id, private=private or None,
                                                                      exist_ok=True))
    if target != "main" and not target.startswith("refs/pr/"):
        _retrying(retry, "create the branch", lambda: api.create_branch(repo_id, branch=target, exist_ok=True))
    parent = _retrying(retry, "read the branch head", lambda: api.repo_info(repo_id, revision=target).sha)
    if not _retrying(retry, "compare files", lambda: _differences(api, folder, files, repo_id, parent)):
        return PushResult(repo_id, target, files, changed=False, commit_sha=parent,
                          commit_url=_commit_url(api, repo_id, parent))
    info, attempts = _commit_once(api, folder, files, repo_id=repo_id, target=target, create_pr=create_pr,
                                  message=message, parent=parent, retry=retry)
    return PushResult(repo_id, (info.pr_revision or target) if create_pr else target, files,
                      commit_url=info.commit_url, commit_sha=info.oid, pr_url=info.pr_url, attempts=attempts)


def _commit_once(api: Any, folder: Path, files: tuple[LocalFile, ...], *, repo_id: str, target: str,
                 create_pr: bool, message: str, parent: str, retry: RetryPolicy) -> tuple[Any, int]:
    """``create_commit`` retried with backoff; an attempt that landed despite an error is not repeated."""
    from huggingface_hub import CommitOperationAdd

    prs_before = _retrying(retry, "list pull requests", lambda: _pull_requests(api, repo_id)) if create_pr else None
    for attempt, wait in enumerate(retry.waits(), start=1):
        operations = [CommitOperationAdd(f.path, str(folder / f.path)) for f in files]  # not reusable
        try:
            return api.create_commit(repo_id, operations, commit_message=message, revision=target,
                                     create_pr=create_pr, parent_commit=parent), attempt
        except Exception as exc:
            if not (_is_transient(exc) or _status(exc) == 412):
                raise
            landed = _landed(api, folder, files, repo_id=repo_id, target=target, parent=parent,
                             prs_before=prs_before)
            if landed is not None:
                logger.info("push to %s: the commit landed although the response was lost", repo_id)
                return landed, attempt
            if wait is None or _status(exc) == 412:
                raise
            logger.warning("push to %s: %s; retrying in %.1f s (attempt %d of %d)", repo_id, _describe(exc),
                           wait, attempt + 1, retry.attempts)
            time.sleep(wait)
    raise AssertionError("unreachable: RetryPolicy.waits() ends with None")


def _landed(api: Any, folder: Path, files: tuple[LocalFile, ...], *, repo_id: str, target: str, parent: str,
            prs_before: dict[str, str] | None) -> Any | None:
    """The commit that a failed-looking attempt made after all, if the remote shows one.

    For a branch: its head moved from ``parent`` and holds our files. For a pull request
    (``prs_before`` is the set of PR refs before the first attempt): a new PR holds our files.
    """
    from huggingface_hub import CommitInfo

    try:
        if prs_before is not None:
            candidates = [(sha, ref) for ref, sha in _pull_requests(api, repo_id).items() if ref not in prs_before]
        else:
            head = api.repo_info(repo_id, revision=target).sha
            candidates = [(head, None)] if head != parent else []
        for sha, ref in candidates:
            if not _differences(api, folder, files, repo_id, sha):
                pr_url = f"{api.endpoint}/{repo_id}/discussions/{ref.rsplit('/', 1)[-1]}" if ref else None
                return CommitInfo(commit_url=_commit_url(api, repo_id, sha), commit_message="",
                                  commit_description="", oid=sha, pr_url=pr_url, _endpoint=api.endpoint)
    except Exception as exc:  # the remote could not be read now: count the attempt as not landed
        if not _is_transient(exc):
            raise
    return None


def _pull_requests(api: Any, repo_id: str) -> dict[str, str]:
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    return {ref.ref: ref.target_commit for ref in refs.pull_requests or []}


def _differences(api: Any, folder: Path, files: tuple[LocalFile, ...], repo_id: str, revision: str) -> list[str]:
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash

    remote = {entry.path: entry for entry in api.get_paths_info(repo_id, [f.path for f in files], revision=revision)
              if isinstance(entry, RepoFile)}

    def same(local: LocalFile) -> bool:
        entry = remote.get(local.path)
        if entry is None or entry.size != local.size:
            return False
        if entry.lfs is not None:
            return entry.lfs.sha256 == local.sha256
        return entry.blob_id == git_hash((folder / local.path).read_bytes())

    return [f.path for f in files if not same(f)]


def _retrying(retry: RetryPolicy, what: str, call: Callable[[], _T]) -> _T:
    """Run an idempotent Hub call, retrying transient failures with exponential backoff."""
    for attempt, wait in enumerate(retry.waits(), start=1):
        try:
            return call()
        except Exception as exc:
            if wait is None or not _is_transient(exc):
                raise
            logger.warning("could not %s: %s; retrying in %.1f s (attempt %d of %d)", what, _describe(exc), wait,
                           attempt + 1, retry.attempts)
            time.sleep(wait)
    raise AssertionError("unreachable: RetryPolicy.waits() ends with None")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from: huggingface_hub wraps a failed LFS upload in a
    ``RuntimeError("Error while uploading ...")`` raised from the HTTP or network error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _http_error(exc: BaseException) -> Any | None:
    """The ``HfHubHTTPError`` (with a response) behind ``exc``, if any."""
    from huggingface_hub.errors import HfHubHTTPError

    return next((e for e in _causes(exc) if isinstance(e, HfHubHTTPError) and e.response is not None), None)


def _status(exc: BaseException) -> int | None:
    error = _http_error(exc)
    return error.response.status_code if error is not None else None


def _is_transient(exc: BaseException) -> bool:
    """5xx/408/429 answers and dropped, reset or timed-out connections: worth another attempt."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    network = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, ConnectionError,
               TimeoutError)
    return _status(exc) in _RETRY_STATUS or any(isinstance(e, network) and not isinstance(e, OfflineModeIsEnabled)
                                                for e in _causes(exc))


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    root = list(_causes(exc))[-1]  # the network error itself, not huggingface_hub's wrapper around it
    return f"HTTP {status}" if status is not None else f"{type(root).__name__}: {root}"


def _commit_url(api: Any, repo_id: str, sha: str) -> str:
    return f"{api.endpoint}/{repo_id}/commit/{sha}"


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turn Hub and network failures into one ``PushError`` that says what to do (never naming the token)."""
    try:
        yield
    except PushError:
        raise
    except Exception as exc:
        status = _status(exc)
        if status in (401, 403):
            raise PushError(f"the Hub refused to let this token write to {repo_id} (HTTP {status}); set HF_TOKEN or "
                            "run `hf auth login` with a token that has write access") from exc
        if status == 412:
            raise PushError(f"{repo_id} changed while pushing (someone else committed); run the same command "
                            "again") from exc
        if _is_transient(exc):
            raise PushError(f"pushing to {repo_id} failed after retries: {_describe(exc)}; check the network and "
                            "HF_ENDPOINT, then run the same command again (it never makes a second commit)") from exc
        if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):  # the client's own check
            raise PushError(f"nothing was pushed to {repo_id}: {' '.join(str(exc).split())}; fix the YAML header "
                            f"of README.md (rnet_hub.build_card writes one the Hub accepts)") from exc
        if _http_error(exc) is not None:
            raise PushError(f"pushing to {repo_id} failed: {_http_error(exc)}") from exc
        raise
