"""The LFS half of the loopback Hub (``hub_server.py``): how large and binary files get there.

As on the Hub, with ``huggingface_hub``'s LFS protocol (``lfs.py``, ``_commit_api.py``):

1. ``POST /api/{type}s/{repo}/preupload/{rev}`` answers each file's ``uploadMode``: "lfs" when it is
   large (10 MB or more), binary (its first 512 bytes hold a NUL byte or are not UTF-8) or routed
   through LFS by the revision's ``.gitattributes``; "regular" otherwise. ``oid`` is the remote
   file's (sha256 for an LFS file, the git blob id otherwise), so unchanged files are skipped.
2. ``POST /{repo}.git/info/lfs/objects/batch`` (git-lfs batch API, ``basic`` transfer) answers each
   object not yet in the repository with an ``upload`` action, a signed URL on this server, and a
   ``verify`` action; objects already there get no actions.
3. ``PUT /lfs-upload/{type}/{repo}/{sha256}?size=..&signature=..`` stores the object (no token, like a
   presigned S3 URL; 403 on a bad signature) after checking its sha256 and size (400 on mismatch).
4. ``POST /{repo}.git/info/lfs/objects/verify`` says whether the object arrived (404 if not).
5. The commit's ``lfsFile`` lines name the object by sha256; ``hub_server`` refuses a commit that
   names one never uploaded to the repository.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import hmac
import re
from typing import Any

from hub_server import _API, _REPO, LoopbackHub, _HttpError, _is_lfs, _json, _Repo, _Request, _Response, _route

#: The Hub's threshold: files of 10 MB or more are stored with LFS whatever their content.
LFS_SIZE_THRESHOLD = 10 * 1000 * 1000
_GIT = r"^/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"\.git/info/lfs/objects"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LFS_JSON = "application/vnd.git-lfs+json"


def upload_mode(path: str, sample: bytes, size: int, gitattributes: bytes) -> str:
    """ "lfs" or "regular", as the Hub decides it from the file's size, first bytes and ``.gitattributes``."""
    if size >= LFS_SIZE_THRESHOLD or _is_lfs(gitattributes, path):
        return "lfs"
    return "lfs" if _is_binary(sample) else "regular"


def _is_binary(sample: bytes) -> bool:
    """A NUL byte, or bytes that are not UTF-8 (a character cut at the end of the sample is fine)."""
    if b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


def _remote_oid(hub: LoopbackHub, tree: dict[str, str], path: str) -> str | None:
    """What preupload reports for a file already in the revision: sha256 for LFS, else the git blob id."""
    if path not in tree:
        return None
    meta = hub._file_meta(tree, path)
    return meta["lfs"]["sha256"] if meta["lfs"] else meta["oid"]


@_route("POST", _API + r"/preupload/(?P<rev>[^/]+)$", write=True)
def preupload(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    head = hub._resolve(repo, req.rev())
    tree = repo.commits[head].tree
    gitattributes = hub._blobs.get(tree.get(".gitattributes", ""), b"")
    files = []
    for entry in req.json().get("files", []):
        path = entry["path"]
        sample = _base64(entry.get("sample", ""))
        files.append({"path": path, "uploadMode": upload_mode(path, sample, int(entry.get("size", 0)), gitattributes),
                      "shouldIgnore": False, "oid": _remote_oid(hub, tree, path)})
    return _json({"files": files, "commitOid": head})


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise _HttpError(400, f"preupload: the sample is not base64 ({exc})") from exc


def _lfs_response(payload: Any, status: int = 200) -> _Response:
    response = _json(payload, status)
    response.headers["Content-Type"] = _LFS_JSON
    return response


@_route("POST", _GIT + r"/batch$", write=True)
def lfs_batch(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    payload = req.json()
    if payload.get("operation") != "upload":
        raise _HttpError(422, f"the loopback hub's LFS batch API only uploads, not {payload.get('operation')!r}")
    if payload.get("hash_algo", "sha256") != "sha256":
        raise _HttpError(422, f"unsupported hash algorithm {payload.get('hash_algo')!r}")
    if "basic" not in (payload.get("transfers") or ["basic"]):
        raise _HttpError(422, f"the loopback hub only offers the basic transfer, not {payload.get('transfers')}")
    ref = (payload.get("ref") or {}).get("name")
    if ref is not None:
        hub._resolve(repo, ref)  # 404 for a revision that does not exist
    return _lfs_response({"transfer": "basic", "hash_algo": "sha256",
                          "objects": [_batch_object(hub, repo, obj) for obj in payload.get("objects", [])]})


def _batch_object(hub: LoopbackHub, repo: _Repo, obj: dict[str, Any]) -> dict[str, Any]:
    """One object's answer: no actions when the repository has it, else where to upload and verify it."""
    oid, size = obj.get("oid"), obj.get("size")
    answer = {"oid": oid, "size": size}
    if not (isinstance(oid, str) and _SHA256.fullmatch(oid) and isinstance(size, int) and size >= 0):
        return {**answer, "error": {"code": 422, "message": "an object needs a sha256 oid and a size"}}
    if oid in repo.lfs_oids and len(hub._lfs_objects[oid]) == size:
        return {**answer, "authenticated": True}
    kind = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
    return {**answer, "authenticated": True,
            "actions": {"upload": {"href": hub._upload_url(repo, oid, size), "expires_in": 86400},
                        "verify": {"href": f"{hub.endpoint}/{kind}{repo.repo_id}.git/info/lfs/objects/verify",
                                   "header": {}}}}


@_route("PUT", r"^/lfs-upload/(?P<kind>model|dataset|space)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})$")
def lfs_upload(req: _Request) -> _Response:
    """The object PUT: signed by the batch answer (no token), checked by sha256 and size."""
    hub, oid = req.hub, req.groups["oid"]
    repo = hub._repos.get((req.groups["kind"], req.groups["repo"]))
    size = req.query.get("size", [""])[0]
    signature = req.query.get("signature", [""])[0]
    if repo is None or not size.isdigit() or not hmac.compare_digest(signature, hub._signature(repo, oid, int(size))):
        raise _HttpError(403, "SignatureDoesNotMatch: the upload URL is not one the LFS batch API handed out")
    if len(req.body) != int(size):
        raise _HttpError(400, f"IncompleteBody: got {len(req.body)} bytes, the upload was announced with {size}")
    if hashlib.sha256(req.body).hexdigest() != oid:
        raise _HttpError(400, f"BadDigest: the uploaded content's sha256 is not {oid}")
    hub._lfs_objects[oid] = req.body
    repo.lfs_oids.add(oid)
    return _Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})  # S3 answers the MD5 as ETag


@_route("POST", _GIT + r"/verify$", write=True)
def lfs_verify(req: _Request) -> _Response:
    hub, repo = req.hub, req.repo()
    payload = req.json()
    oid, size = payload.get("oid"), payload.get("size")
    if oid not in repo.lfs_oids:
        raise _HttpError(404, f"LFS object {oid} was not uploaded to {repo.repo_id}")
    if len(hub._lfs_objects[oid]) != size:
        raise _HttpError(422, f"LFS object {oid} has {len(hub._lfs_objects[oid])} bytes, not {size}")
    return _lfs_response({"oid": oid, "size": size})
