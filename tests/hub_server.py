"""A loopback Hugging Face Hub for tests: the real clients talk to it over HTTP on 127.0.0.1.

It speaks the part of the Hub HTTP API that ``huggingface_hub`` (and through it timm and
transformers) uses to create repositories, commit files and download them again:

- ``POST /api/repos/create`` (409 when the repository exists, which ``exist_ok=True`` accepts),
  ``POST /api/validate-yaml``, ``GET /api/whoami-v2``;
- ``POST /api/{type}s/{repo}/preupload/{rev}``, the LFS batch API and the object uploads it hands
  out (in ``hub_lfs.py``), and ``POST /api/{type}s/{repo}/commit/{rev}`` with the NDJSON payload
  (header, base64 ``file``s, ``lfsFile`` references to uploaded objects, deleted files and folders,
  ``parentCommit`` (412 when stale), ``?create_pr=1`` opening ``refs/pr/N``);
- ``POST /api/{type}s/{repo}/branch/{branch}``, ``GET .../refs``, ``GET .../commits/{rev}``,
  ``POST .../discussions`` and ``GET .../discussions/{num}`` (pull requests, as ``upload_folder`` opens them);
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (info with ``sha``, ``siblings``, card data),
  ``GET .../tree/{rev}[/{path}]`` and ``POST .../paths-info/{rev}``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``, ``Content-Length``
  and byte ranges, and the ``X-Error-Code`` headers the client turns into its typed errors.

Files are stored as git stores them: a regular file is a blob, an LFS file is a pointer blob
(``version``/``oid sha256:``/``size``) whose content lives in the repository's LFS objects. As on the
Hub, ``preupload`` answers "lfs" for large or binary files and those ``.gitattributes`` routes
through LFS (a new repository starts with ``*.safetensors`` and ``*.bin``); the client uploads
them through the LFS batch API and commits ``lfsFile`` entries, and a commit naming an object
that was never uploaded to the repository is refused. LFS files are reported with an ``lfs``
entry (sha256, size, pointer size) in tree/paths-info/siblings, the pointer's git oid as ``oid``,
and ``X-Linked-Etag``/``X-Linked-Size`` on resolve. (Xet storage is not spoken: the fixtures set
``HF_HUB_DISABLE_XET=1`` so that the client uses the LFS protocol.)

Every commit is kept, so files can be downloaded again by branch, pull-request ref or commit
sha (40 hex digits). Private repositories answer 401 without a token; any bearer token is
accepted, and every request (with its headers) is recorded so tests can check that the token
was sent, or that nothing was asked at all. Faults can be injected on any request: the next N
matching requests answer an HTTP error (``fail_next``, before or after the request took effect),
the next N matching connections are closed without a response, either before the request is
handled or after it has taken effect (``drop_next``), which is how a lost response looks to a
client, or an action runs just before the next matching request is handled (``before_next``,
e.g. a concurrent commit through :meth:`LoopbackHub.commit_files`).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

__all__ = ["Commit", "LoopbackHub", "RecordedRequest"]

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_API = rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid``/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(gitattributes: bytes, path: str) -> bool:
    """Whether ``.gitattributes`` routes ``path`` through LFS (``PATTERN filter=lfs ...`` lines)."""
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, *attributes = line.split()
        if "filter=lfs" in attributes and fnmatch.fnmatchcase(path if "/" in pattern else path.rsplit("/", 1)[-1],
                                                                 pattern):
            return True
    return False


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git blob that stands for an LFS object in a tree (the git-lfs pointer file)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Commit:
    """One commit: the full tree (path -> blob oid) after it, and its place in history.

    ``lfs``: the paths of the tree stored as LFS pointers; ``operations``: the ``(key, path)`` of
    each line of the NDJSON payload that made it (``("file", ...)``, ``("lfsFile", ...)``, ...).
    """

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, str]
    lfs: frozenset[str] = frozenset()
    operations: tuple[tuple[str, str], ...] = ()


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: dict[int, dict[str, Any]] = field(default_factory=dict)  # num -> title, is_pr, created_at
    lfs_oids: set[str] = field(default_factory=set)  # sha256 of the LFS objects uploaded to (or committed in) it

    def open_discussion(self, title: str, *, pull_request: bool, base: str) -> int:
        """A new discussion number; a pull request also gets ``refs/pr/N`` pointing at ``base``."""
        num = len(self.discussions) + 1
        self.discussions[num] = {"title": title, "is_pr": pull_request, "created_at": _now()}
        if pull_request:
            self.refs[f"refs/pr/{num}"] = base
        return num


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received: method, raw path (with query) and headers (lower-case names)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Fault:
    kind: str  # "fail", "drop" or "before" (run ``action``, then handle the request)
    remaining: int
    path_contains: str
    method: str | None
    status: int = 503
    after_handling: bool = False
    action: Callable[[LoopbackHub], None] | None = None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 extra_headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra_headers = extra_headers or {}


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None  # for HEAD: the length of the body a GET would send


def _json(payload: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


class LoopbackHub:
    """The server and its state. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, bytes] = {}  # git blobs: regular files and LFS pointers
        self._pointers: dict[str, str] = {}  # LFS pointer blob oid -> sha256 of the object it stands for
        self._lfs_objects: dict[str, bytes] = {}  # sha256 -> content (the Hub's LFS storage)
        self._secret = secrets.token_bytes(16)  # signs the upload URLs the LFS batch API hands out
        self._faults: list[_Fault] = []
        self.requests: list[RecordedRequest] = []
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHub:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering; afterwards connections to the endpoint are refused."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- fault injection
    def fail_next(self, n: int = 1, *, path_contains: str, status: int = 503, method: str | None = None,
                  after_handling: bool = False) -> None:
        """Answer the next ``n`` requests whose path contains ``path_contains`` with ``status``.

        With ``after_handling=True`` the request takes effect first (a commit is made) and the
        client gets the error anyway, as from a proxy that timed out waiting for the answer.
        """
        with self._lock:
            self._faults.append(_Fault("fail", n, path_contains, method, status=status,
                                       after_handling=after_handling))

    def drop_next(self, n: int = 1, *, path_contains: str, after_handling: bool = False,
                  method: str | None = None) -> None:
        """Close the next ``n`` matching connections without any response.

        With ``after_handling=True`` the request takes effect first (a commit is made) and only
        the response is lost.
        """
        with self._lock:
            self._faults.append(_Fault("drop", n, path_contains, method, after_handling=after_handling))

    def before_next(self, action: Callable[[LoopbackHub], None], *, path_contains: str, n: int = 1,
                    method: str | None = None) -> None:
        """Run ``action(hub)`` just before the next ``n`` matching requests are handled (a concurrent client)."""
        with self._lock:
            self._faults.append(_Fault("before", n, path_contains, method, action=action))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many injected faults have not fired yet."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.path_contains in path and fault.method in (None, method):
                    fault.remaining -= 1
                    return fault
        return None

    # ----------------------------------------------------------- test inspection
    def authorizations(self) -> list[str]:
        """Every ``Authorization`` header received, in order."""
        return [r.headers["authorization"] for r in self.requests if "authorization" in r.headers]

    def requests_to(self, path_contains: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if path_contains in r.path and method in (None, r.method)]

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``revision``, newest first (server-side view, for assertions)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return self._history(repo, self._resolve(repo, revision))

    def has_repo(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """Every ref (branches and ``refs/pr/N``) -> commit oid."""
        with self._lock:
            return dict(self._repo(repo_type, repo_id).refs)

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """The content of ``path`` at ``revision`` (the LFS object, for an LFS file)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return self._content(repo.commits[self._resolve(repo, revision)].tree[path])

    def lfs_objects(self, repo_id: str, repo_type: str = "model") -> set[str]:
        """The sha256 of the LFS objects uploaded to (or committed in) the repository."""
        with self._lock:
            return set(self._repo(repo_type, repo_id).lfs_oids)

    def commit_files(self, repo_id: str, files: dict[str, bytes], *, revision: str = "main", title: str = "",
                     repo_type: str = "model") -> str:
        """Commit ``files`` on ``revision`` server-side, as another client would; returns the commit oid."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            tree = dict(repo.commits[repo.refs[revision]].tree)
            for path, data in files.items():
                tree[path] = self._store_file(repo, tree, path, data)
            oid = self._new_commit(repo, repo.refs[revision], tree, title or f"concurrent commit of {len(files)} "
                                   "files", "", tuple(("file", path) for path in files))
            repo.refs[revision] = oid
            return oid

    # ------------------------------------------------------------------ state
    def _repo(self, repo_type: str, repo_id: str, *, authorized: bool = True) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise _HttpError(404 if repo is None else 401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _history(repo: _Repo, oid: str | None) -> list[Commit]:
        out = []
        while oid is not None:
            commit = repo.commits[oid]
            out.append(commit)
            oid = commit.parent
        return out

    def _new_commit(self, repo: _Repo, parent: str | None, tree: dict[str, str], title: str, message: str,
                    operations: tuple[tuple[str, str], ...] = ()) -> str:
        seed = f"{repo.repo_id}\n{parent}\n{sorted(tree.items())}\n{title}\n{time.time_ns()}\n{len(repo.commits)}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        lfs = frozenset(path for path, blob in tree.items() if blob in self._pointers)
        repo.commits[oid] = Commit(oid, parent, title, message, _now(), dict(tree), lfs, operations)
        return oid

    def _store(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        self._blobs[oid] = data
        return oid

    def _store_lfs(self, repo: _Repo, data: bytes) -> str:
        """Keep ``data`` as an LFS object of ``repo``; returns the oid of its pointer blob."""
        sha256 = hashlib.sha256(data).hexdigest()
        self._lfs_objects[sha256] = data
        repo.lfs_oids.add(sha256)
        return self._pointer_blob(sha256)

    def _pointer_blob(self, sha256: str) -> str:
        oid = self._store(lfs_pointer(sha256, len(self._lfs_objects[sha256])))
        self._pointers[oid] = sha256
        return oid

    def _store_file(self, repo: _Repo, tree: dict[str, str], path: str, data: bytes) -> str:
        """A file sent as content: an LFS object when ``.gitattributes`` routes it there (git's clean filter)."""
        if _is_lfs(self._blobs.get(tree.get(".gitattributes", ""), b""), path):
            return self._store_lfs(repo, data)
        return self._store(data)

    def _content(self, blob: str) -> bytes:
        """A file's content: the blob itself, or the LFS object its pointer stands for."""
        sha256 = self._pointers.get(blob)
        return self._blobs[blob] if sha256 is None else self._lfs_objects[sha256]

    def _file_meta(self, tree: dict[str, str], path: str) -> dict[str, Any]:
        """What git stores for ``path``: a blob, or an LFS pointer (then ``lfs`` holds the object's sha256 and size)."""
        blob = tree[path]
        sha256 = self._pointers.get(blob)
        if sha256 is None:
            return {"size": len(self._blobs[blob]), "oid": blob, "lfs": None}
        size = len(self._lfs_objects[sha256])
        lfs = {"sha256": sha256, "size": size, "pointerSize": len(self._blobs[blob])}
        return {"size": size, "oid": blob, "lfs": lfs}

    def _upload_url(self, repo: _Repo, sha256: str, size: int) -> str:
        """Where the LFS batch API tells the client to PUT an object (a signed URL, like S3's)."""
        return f"{self.endpoint}/lfs-upload/{repo.repo_type}/{repo.repo_id}/{sha256}?size={size}" \
               f"&signature={self._signature(repo, sha256, size)}"

    def _signature(self, repo: _Repo, sha256: str, size: int) -> str:
        message = f"{repo.repo_type}/{repo.repo_id}/{sha256}/{size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _url_prefix(self, repo: _Repo) -> str:
        kind = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{kind}{repo.repo_id}"


# --------------------------------------------------------------------- routes
_ROUTES: list[tuple[str, re.Pattern[str], Any, bool]] = []


def _route(method: str, pattern: str, *, write: bool = False) -> Any:
    """Register a handler for ``method`` (``"GET|HEAD"`` for several) and a path regex.

    ``write=True``: the request needs a bearer token (401 without one), as the Hub's write calls do.
    """
    def register(fn: Any) -> Any:
        _ROUTES.append((method, re.compile(pattern), fn, write))
        return fn
    return register


@dataclass
class _Request:
    hub: LoopbackHub
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    groups: dict[str, str]

    @property
    def authorized(self) -> bool:
        return self.headers.get("authorization", "").startswith("Bearer ") and len(self.headers["authorization"]) > 7

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["0"])[0].lower() in ("1", "true")

    def repo(self) -> _Repo:
        """The repository the path names (``type`` group: models, datasets or spaces; models when absent)."""
        repo_type = self.groups.get("type", "models").rstrip("s")
        return self.hub._repo(repo_type, self.groups["repo"], authorized=self.authorized)

    def rev(self) -> str:
        return unquote(self.groups["rev"])


@_route("POST", r"^/api/repos/create$", write=True)
def create_repo(req: _Request) -> _Response:
    payload = req.json()
    name, org = payload["name"], payload.get("organization")
    repo_id = f"{org}/{name}" if org else f"loopback-user/{name}"
    repo_type = payload.get("type") or "model"
    private = payload.get("visibility") == "private" or bool(payload.get("private"))
    hub = req.hub
    if (repo_type, repo_id) in hub._repos:
        existing = hub._repos[(repo_type, repo_id)]
        return _json({"error": "You already created this model repo", "url": hub._url_prefix(existing)}, 409)
    repo = _Repo(repo_id, repo_type, private, _now())
    gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
    repo.refs["main"] = hub._new_commit(repo, None, {".gitattributes": hub._store(gitattributes)}, "initial commit", "")
    hub._repos[(repo_type, repo_id)] = repo
    return _json({"url": hub._url_prefix(repo), "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})


# ------------------------------------------------------------------ card metadata, checked as the Hub checks it
# A subset of the Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses).
_HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "eupl-1.2",
    "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "mpl-2.0", "odc-by",
    "odbl", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "wtfpl", "llama2", "llama3",
    "gemma", "unknown", "other",
})
# The Hub's pipeline tags (its task list, https://huggingface.co/tasks), as of 2025: a subset if tasks were added.
_HUB_PIPELINE_TAGS = frozenset({
    "text-classification", "token-classification", "table-question-answering", "question-answering",
    "zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation",
    "fill-mask", "sentence-similarity", "text-to-speech", "text-to-audio", "automatic-speech-recognition",
    "audio-to-audio", "audio-classification", "voice-activity-detection", "depth-estimation",
    "image-classification", "object-detection", "image-segmentation", "text-to-image", "image-to-text",
    "image-to-image", "image-to-video", "unconditional-image-generation", "video-classification",
    "reinforcement-learning", "robotics", "tabular-classification", "tabular-regression", "time-series-forecasting",
    "text-to-video", "image-text-to-text", "visual-question-answering", "document-question-answering",
    "zero-shot-image-classification", "graph-ml", "mask-generation", "zero-shot-object-detection", "text-to-3d",
    "image-to-3d", "image-feature-extraction", "video-text-to-text", "keypoint-detection", "any-to-any", "other",
})
_HUB_BASE_MODEL = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name: no hf-hub: prefix, no @revision
_HUB_BASE_MODEL_RELATIONS = frozenset({"adapter", "merge", "quantized", "finetune"})


def _card_metadata_errors(readme: str) -> list[str]:
    """Why the Hub would refuse this README's metadata (empty: accepted); only the fields it constrains."""
    try:
        data = _front_matter(readme)
    except yaml.YAMLError as exc:
        return [f"invalid YAML front matter: {exc}"]
    errors = []
    if "license" in data and data["license"] not in _HUB_LICENSES:
        errors.append(f'"license" must be one of the Hub\'s license identifiers, got {data["license"]!r}')
    if "pipeline_tag" in data and data["pipeline_tag"] not in _HUB_PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be one of the Hub\'s tasks, got {data["pipeline_tag"]!r}')
    if "library_name" in data and not isinstance(data["library_name"], str):
        errors.append(f'"library_name" must be a string, got {data["library_name"]!r}')
    if "tags" in data and not (isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])):
        errors.append(f'"tags" must be a list of strings, got {data["tags"]!r}')
    if "base_model" in data:
        base = data["base_model"]
        bases = base if isinstance(base, list) else [base]
        if not bases or not all(isinstance(b, str) and _HUB_BASE_MODEL.match(b) for b in bases):
            errors.append(f'"base_model" must be a model id (org/name) or a list of them, got {base!r}')
    if "base_model_relation" in data and data["base_model_relation"] not in _HUB_BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {sorted(_HUB_BASE_MODEL_RELATIONS)}, '
                      f'got {data["base_model_relation"]!r}')
    return errors


def _check_card(hub: LoopbackHub, repo: _Repo, before: dict[str, str], after: dict[str, str]) -> None:
    """A commit that adds or changes a model's README.md with metadata the Hub refuses is answered 400, as there."""
    blob = after.get("README.md")
    if repo.repo_type != "model" or blob is None or blob == before.get("README.md"):
        return
    errors = _card_metadata_errors(hub._blobs[blob].decode("utf-8", "replace"))
    if errors:
        raise _HttpError(400, " ".join(("Invalid metadata in README.md. " + "; ".join(errors)).split()))  # one line


@_route("POST", r"^/api/validate-yaml$")
def validate_yaml(req: _Request) -> _Response:
    errors = _card_metadata_errors(req.json().get("content", ""))
    return _json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)


@_route("GET", r"^/api/whoami-v2$")
def whoami(req: _Request) -> _Response:
    if not req.authorized:
        raise _HttpError(401, "Invalid credentials in Authorization header")
    return _json({"type": "user", "name": "loopback-user", "orgs": [], "auth": {"type": "access_token"}})


def _front_matter(readme: str) -> dict[str, Any]:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else {}


def _info(req: _Request, revision: str) -> _Response:
    hub, repo = req.hub, req.repo()
    oid = hub._resolve(repo, revision)
    commit = repo.commits[oid]
    blobs = req.flag("blobs")
    siblings = [{"rfilename": p, **(_sibling_meta(hub._file_meta(commit.tree, p)) if blobs else {})}
                for p in sorted(commit.tree)]
    card = _front_matter(hub._content(commit.tree["README.md"]).decode("utf-8", "replace")) \
        if "README.md" in commit.tree else {}
    tags = [str(t) for t in card.get("tags", []) or []]
    info = {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": oid, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": tags, "siblings": siblings,
            "usedStorage": sum(len(hub._content(b)) for b in commit.tree.values())}
    if card:
        info["cardData"] = card
        for key in ("library_name", "pipeline_tag"):
            if key in card:
                info[key] = card[key]
    return _json(info)


@_route("GET", _API + r"$")
def repo_info(req: _Request) -> _Response:
    return _info(req, "main")


@_route("GET", _API + r"/revision/(?P<rev>[^/]+)$")
def repo_info_at(req: _Request) -> _Response:
    return _info(req, req.rev())


def _sibling_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {"size": meta["size"], "blobId": meta["oid"], **({"lfs": meta["lfs"]} if meta["lfs"] else {})}


def _entry(hub: LoopbackHub, repo: _Repo, tree: dict[str, str], path: str, expand: bool, head: str) -> dict[str, Any]:
    if path in tree:
        meta = hub._file_meta(tree, path)
        entry: dict[str, Any] = {"type": "file", "oid": meta["oid"], "size": meta["size"], "path": path}
        if meta["lfs"]:
            lfs = meta["lfs"]
            entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
    else:
        children = sorted((p, b) for p, b in tree.items() if p.startswith(path + "/"))
        entry = {"type": "directory", "oid": hashlib.sha1(repr(children).encode()).hexdigest(), "size": 0,
                 "path": path}
    if expand:
        last = _last_change(repo, head, path)
        entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
    return entry


def _last_change(repo: _Repo, head: str, path: str) -> Commit:
    def view(c: Commit) -> list[tuple[str, str]]:
        return sorted((p, b) for p, b in c.tree.items() if p == path or p.startswith(path + "/"))

    history = LoopbackHub._history(repo, head)
    for newer, older in itertools.pairwise(history):
        if view(newer) != view(older):
            return newer
    return history[-1]


def _paths_in(tree: dict[str, str]) -> set[str]:
    paths = set(tree)
    for p in tree:
        parts = p.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return paths


@_route("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
def list_tree(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    head = hub._resolve(repo, req.rev())
    tree = repo.commits[head].tree
    base = unquote(req.groups.get("path") or "").strip("/")
    if base and not any(p.startswith(base + "/") for p in tree):
        raise _HttpError(404, f"{base} does not exist on {req.rev()}", "EntryNotFound")
    prefix = f"{base}/" if base else ""
    under = [p for p in sorted(_paths_in(tree)) if p.startswith(prefix) and p != base]
    if not req.flag("recursive"):
        under = [p for p in under if "/" not in p[len(prefix):]]
    return _json([_entry(hub, repo, tree, p, req.flag("expand"), head) for p in under])


@_route("POST", _API + r"/paths-info/(?P<rev>[^/]+)$")
def paths_info(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    head = hub._resolve(repo, req.rev())
    tree = repo.commits[head].tree
    form = parse_qs(req.body.decode())
    expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
    known = _paths_in(tree)
    wanted = [p.strip("/") for p in form.get("paths", [])]
    return _json([_entry(hub, repo, tree, p, expand, head) for p in wanted if p in known])


@_route("GET", _API + r"/refs$")
def list_refs(req: _Request) -> _Response:
    repo = req.repo()

    def ref(name: str, oid: str) -> dict[str, str]:
        full = name if name.startswith("refs/") else f"refs/heads/{name}"
        return {"name": name, "ref": full, "targetCommit": oid}

    out: dict[str, Any] = {"branches": [ref(n, o) for n, o in repo.refs.items() if not n.startswith("refs/pr/")],
                           "converts": [], "tags": []}
    if req.flag("include_prs"):
        out["pullRequests"] = [ref(n, o) for n, o in repo.refs.items() if n.startswith("refs/pr/")]
    return _json(out)


@_route("GET", _API + r"/commits/(?P<rev>[^/]+)$")
def list_commits(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    history = LoopbackHub._history(repo, hub._resolve(repo, req.rev()))
    return _json([{"id": c.oid, "authors": [{"user": "loopback-user"}], "date": c.date, "title": c.title,
                   "message": c.message} for c in history])


@_route("POST", _API + r"/branch/(?P<rev>[^/]+)$", write=True)
def create_branch(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    branch = req.rev()
    if branch in repo.refs:
        raise _HttpError(409, f"Reference already exists: refs/heads/{branch}")
    repo.refs[branch] = hub._resolve(repo, req.json().get("startingPoint") or "main")
    return _json({})


@_route("POST", _API + r"/discussions$", write=True)
def create_discussion(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    payload = req.json()
    num = repo.open_discussion(payload.get("title", ""), pull_request=bool(payload.get("pullRequest")),
                               base=repo.refs["main"])
    return _json({"num": num, "url": f"{hub._url_prefix(repo)}/discussions/{num}"})


@_route("GET", _API + r"/discussions/(?P<num>\d+)$")
def discussion_details(req: _Request) -> _Response:
    repo = req.repo()
    found = repo.discussions.get(int(req.groups["num"]))
    if found is None:
        raise _HttpError(404, f"discussion {req.groups['num']} not found")
    return _json({"num": int(req.groups["num"]), "title": found["title"], "author": {"name": "loopback-user"},
                  "createdAt": found["created_at"], "status": "draft" if found["is_pr"] else "open",
                  "repo": {"name": repo.repo_id, "type": repo.repo_type}, "isPullRequest": found["is_pr"],
                  "events": [], "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})


@_route("POST", _API + r"/commit/(?P<rev>[^/]+)$", write=True)
def commit(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise _HttpError(400, "the commit payload must start with a header line")
    header, operations = lines[0]["value"], lines[1:]
    revision = req.rev()
    if revision not in repo.refs:
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    parent_commit = header.get("parentCommit")
    if req.flag("create_pr"):
        base = hub._resolve(repo, parent_commit) if parent_commit else repo.refs[revision]
    else:
        base = repo.refs[revision]
        if parent_commit and parent_commit != base:
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
    tree = _apply(hub, repo, dict(repo.commits[base].tree), operations)
    _check_card(hub, repo, repo.commits[base].tree, tree)
    oid = hub._new_commit(repo, base, tree, header.get("summary", ""), header.get("description", ""),
                          tuple((op.get("key", ""), op.get("value", {}).get("path", "")) for op in operations))
    pr_url = None
    if req.flag("create_pr"):
        number = repo.open_discussion(header.get("summary", ""), pull_request=True, base=oid)
        pr_url = f"{hub._url_prefix(repo)}/discussions/{number}"
    else:
        repo.refs[revision] = oid
    return _json({"success": True, "commitOid": oid, "commitUrl": f"{hub._url_prefix(repo)}/commit/{oid}",
                  "hookOutput": "", "pullRequestUrl": pr_url})


def _apply(hub: LoopbackHub, repo: _Repo, tree: dict[str, str], operations: list[dict[str, Any]]) -> dict[str, str]:
    for op in operations:
        key, value = op.get("key"), op.get("value", {})
        path = value.get("path", "").strip("/")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise _HttpError(400, f"unsupported encoding {value.get('encoding')!r}")
            tree[path] = hub._store_file(repo, tree, path, base64.b64decode(value["content"]))
        elif key == "lfsFile":
            tree[path] = _lfs_file(hub, repo, path, value)
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in tree if p.startswith(path + "/")]
            if not doomed:
                raise _HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise _HttpError(400, f"the loopback hub does not support the commit operation {key!r}")
    return tree


def _lfs_file(hub: LoopbackHub, repo: _Repo, path: str, value: dict[str, Any]) -> str:
    """The pointer blob of an ``lfsFile`` line: the object must have been uploaded to this repository."""
    sha256, size = value.get("oid"), value.get("size")
    if value.get("algo", "sha256") != "sha256":
        raise _HttpError(400, f"unsupported LFS hash algorithm {value.get('algo')!r} for {path}")
    if sha256 not in repo.lfs_oids:  # the Hub's words for a pointer to an object that was never uploaded
        raise _HttpError(400, "Your push was rejected because an LFS pointer pointed to a file that does not exist. "
                              f"For instance, this can happen if you used git push --no-verify to push your changes. "
                              f"Offending file: - {path}")
    if size is not None and size != len(hub._lfs_objects[sha256]):
        raise _HttpError(400, f"LFS object {sha256} of {path} has {len(hub._lfs_objects[sha256])} bytes, not {size}")
    return hub._pointer_blob(sha256)


@_route("GET|HEAD", r"^/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
def resolve(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    oid = hub._resolve(repo, req.rev())
    path = unquote(req.groups["path"])
    tree = repo.commits[oid].tree
    if path not in tree:
        raise _HttpError(404, f"{path} does not exist at {req.rev()}", "EntryNotFound", {"X-Repo-Commit": oid})
    data, meta = hub._content(tree[path]), hub._file_meta(tree, path)
    headers = {"ETag": f'"{meta["oid"]}"', "X-Repo-Commit": oid, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream",
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
    if meta["lfs"]:  # as the Hub does for LFS files: the content's sha256 and size ride extra headers
        headers.update({"X-Linked-Etag": f'"{meta["lfs"]["sha256"]}"', "X-Linked-Size": str(len(data))})
    status, body = 200, data
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("range", ""))
    if match and int(match.group(1)) < len(data):
        start, end = int(match.group(1)), int(match.group(2) or len(data) - 1)
        status, body = 206, data[start:end + 1]
        headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
    if req.method == "HEAD":
        return _Response(status, b"", headers, content_length=len(body))
    return _Response(status, body, headers)


# -------------------------------------------------------------------- handler
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is in hub.requests
        pass

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        hub: LoopbackHub = self.server.hub  # type: ignore[attr-defined]
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub.requests.append(RecordedRequest(self.command, self.path, headers))
        body = self._read_body()
        fault = hub._take_fault(self.command, self.path)
        if fault is not None and fault.kind == "before" and fault.action is not None:
            fault.action(hub)
            fault = None
        if fault is not None and not fault.after_handling:
            return self._fault(fault)
        response = self._dispatch(hub, headers, body)
        if fault is not None:
            return self._fault(fault)
        self._send(response)

    def _fault(self, fault: _Fault) -> None:
        if fault.kind == "fail":
            return self._send(_json({"error": f"injected HTTP {fault.status}"}, fault.status))
        return self._drop()

    def _dispatch(self, hub: LoopbackHub, headers: dict[str, str], body: bytes) -> _Response:
        split = urlsplit(self.path)
        for method, pattern, handler, write in _ROUTES:
            match = pattern.match(split.path)
            if match and self.command in method.split("|"):
                req = _Request(hub, self.command, split.path, parse_qs(split.query), headers, body,
                               {k: v for k, v in match.groupdict().items() if v is not None})
                if write and not req.authorized:
                    return _error(_HttpError(401, "Invalid credentials in Authorization header"), self.command)
                try:
                    with hub._lock:
                        return handler(req)
                except _HttpError as exc:
                    return _error(exc, self.command)
        return _error(_HttpError(404, f"the loopback hub has no route for {self.command} {split.path}"),
                      self.command)

    def _drop(self) -> None:
        """Close the connection without a response (a reset connection, or a lost response)."""
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        length = response.content_length if response.content_length is not None else len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


def _error(exc: _HttpError, method: str) -> _Response:
    response = _json({"error": exc.message}, exc.status)
    response.headers["X-Error-Message"] = exc.message
    if exc.code:
        response.headers["X-Error-Code"] = exc.code
    response.headers.update(exc.extra_headers)
    return response


@contextmanager
def running_hub() -> Iterator[LoopbackHub]:
    """A started :class:`LoopbackHub` on a free port of 127.0.0.1, stopped on exit."""
    hub = LoopbackHub()
    with hub:
        yield hub


import hub_lfs  # noqa: E402,F401  (registers the preupload and LFS routes; it imports this module)
