"""The loopback Hub works with the real ``huggingface_hub`` client over HTTP.

Everything here goes through the public client API (``HfApi``, ``hf_hub_download``,
``snapshot_download``); the server is only inspected for what a client cannot see
(the Authorization headers it received, injected faults, how a commit stored its files).
The LFS endpoints are also called directly over HTTP, to check the answers the client
never provokes (bad signatures, wrong sizes, objects that were never uploaded).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from hub_lfs import LFS_SIZE_THRESHOLD
from hub_server import lfs_pointer
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils.sha import git_hash

REPO = "radiologynet/tiny"


def _folder(root: Path, weights: bytes = b"\x00\x01" * 5000) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 36}))
    (root / "README.md").write_text("---\nlicense: gpl-3.0\nlibrary_name: timm\ntags: [timm, radiology]\n---\n# tiny\n")
    (root / "model.safetensors").write_bytes(weights)
    (root / "sub" / "notes.txt").write_text("nested file")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def api(hub_client) -> HfApi:
    return HfApi(endpoint=hub_client.endpoint, token=hub_client.token)


def test_create_repo_answers_409_when_it_exists_and_exist_ok_accepts_it(api: HfApi) -> None:
    url = api.create_repo(REPO)
    assert url == f"{api.endpoint}/{REPO}"
    assert api.create_repo(REPO, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError, match="409") as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409


def test_upload_then_download_by_branch_and_by_commit_sha(api: HfApi, hub_client, tmp_path: Path) -> None:
    local = _folder(tmp_path / "v1")
    api.create_repo(REPO)
    first = api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1")
    assert len(first.oid) == 40 and int(first.oid, 16) >= 0

    info = api.model_info(REPO)
    assert info.sha == first.oid
    assert {s.rfilename for s in info.siblings} == {".gitattributes", *_files(local)}
    assert info.card_data.license == "gpl-3.0" and info.library_name == "timm" and "radiology" in info.tags
    assert api.model_info(REPO, revision=first.oid).sha == first.oid
    assert [c.title for c in api.list_repo_commits(REPO)] == ["v1", "initial commit"]

    # A second commit changes the weights; the first stays downloadable by its sha.
    api.upload_file(path_or_fileobj=b"new weights", path_in_repo="model.safetensors", repo_id=REPO,
                    commit_message="v2")
    cache = tmp_path / "cache"
    by_sha = hf_hub_download(REPO, "model.safetensors", revision=first.oid, cache_dir=cache)
    by_branch = hf_hub_download(REPO, "model.safetensors", cache_dir=cache)
    assert Path(by_sha).read_bytes() == _files(local)["model.safetensors"]
    assert Path(by_branch).read_bytes() == b"new weights"
    assert api.model_info(REPO).sha != first.oid

    snapshot = Path(snapshot_download(REPO, revision=first.oid, cache_dir=cache))
    assert snapshot.name == first.oid
    assert {k: v for k, v in _files(snapshot).items() if k != ".gitattributes"} == _files(local)


def test_tree_and_paths_info_report_lfs_sha256_and_git_blob_ids(api: HfApi, tmp_path: Path) -> None:
    local = _folder(tmp_path / "v1")
    api.create_repo(REPO)
    api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1")
    entries = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert set(entries) == {".gitattributes", "README.md", "config.json", "model.safetensors", "sub", "sub/notes.txt"}
    weights = _files(local)["model.safetensors"]
    assert entries["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert entries["model.safetensors"].size == len(weights)
    assert entries["config.json"].lfs is None
    assert entries["config.json"].blob_id == git_hash(_files(local)["config.json"])
    infos = api.get_paths_info(REPO, ["config.json", "missing.txt"])
    assert [i.path for i in infos] == ["config.json"]


def test_commit_deletes_files_and_refuses_a_stale_parent_commit(api: HfApi, tmp_path: Path) -> None:
    api.create_repo(REPO)
    first = api.upload_folder(folder_path=_folder(tmp_path / "v1"), repo_id=REPO, commit_message="v1")
    second = api.create_commit(REPO, [CommitOperationDelete("sub/"), CommitOperationDelete("README.md")],
                               commit_message="tidy", parent_commit=first.oid)
    assert set(api.list_repo_files(REPO)) == {".gitattributes", "config.json", "model.safetensors"}
    assert "sub/notes.txt" in api.list_repo_files(REPO, revision=first.oid)
    with pytest.raises(HfHubHTTPError, match="A commit has happened since"):
        api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="late", parent_commit=first.oid)
    assert api.model_info(REPO).sha == second.oid


def test_create_pr_opens_a_pull_request_ref_and_leaves_main_alone(api: HfApi, tmp_path: Path) -> None:
    api.create_repo(REPO)
    main = api.upload_folder(folder_path=_folder(tmp_path / "v1"), repo_id=REPO, commit_message="v1")
    pr = api.create_commit(REPO, [CommitOperationAdd("config.json", b"{}")], commit_message="proposal",
                           create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_url.endswith(f"/{REPO}/discussions/1")
    assert api.model_info(REPO).sha == main.oid
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", pr.oid)]
    assert Path(hf_hub_download(REPO, "config.json", revision="refs/pr/1", cache_dir=tmp_path / "c")).read_bytes() \
        == b"{}"


def test_private_repo_needs_a_token_and_the_token_is_sent(api: HfApi, hub_client, hub_server, tmp_path) -> None:
    api.create_repo(REPO, private=True)
    api.upload_folder(folder_path=_folder(tmp_path / "v1"), repo_id=REPO, commit_message="v1")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "anon", token=False)
    assert hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "c")  # HF_TOKEN from the environment
    assert api.model_info(REPO).private is True
    sent = hub_server.authorizations()
    assert sent and set(sent) == {f"Bearer {hub_client.token}"}


def test_missing_file_and_revision_raise_the_typed_errors(api: HfApi, tmp_path: Path) -> None:
    api.create_repo(REPO)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.json", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError, match="Revision Not Found"):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)


def test_offline_mode_serves_the_cache_and_asks_the_running_server_nothing(api: HfApi, hub_client, hub_server,
                                                                          tmp_path) -> None:
    local = _folder(tmp_path / "v1")
    api.create_repo(REPO)
    sha = api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1").oid
    snapshot_download(REPO)  # into hub_client.hf_home/hub, the cache a subprocess with HF_HOME reads
    script = (
        "import sys, pathlib; from huggingface_hub import hf_hub_download, snapshot_download\n"
        f"p = pathlib.Path(snapshot_download({REPO!r}))\n"
        f"w = pathlib.Path(hf_hub_download({REPO!r}, 'model.safetensors', revision={sha!r}))\n"
        "print(p.name, w.read_bytes().hex(), (p / 'sub' / 'notes.txt').read_text())\n"
    )

    def run(*, offline: bool) -> list[str]:
        before = len(hub_server.requests)
        done = subprocess.run([sys.executable, "-c", script], env=hub_client.env(offline=offline),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        name, weights_hex, notes = done.stdout.split(maxsplit=2)
        assert name == sha and bytes.fromhex(weights_hex) == _files(local)["model.safetensors"]
        assert notes.strip() == "nested file"
        return [f"{r.method} {r.path}" for r in hub_server.requests[before:]]

    assert run(offline=True) == []  # the server is up and answering: offline mode alone kept the client away
    assert run(offline=False)  # the same script online does ask it (the check above can fail)


def test_injected_503_and_dropped_connection_reach_the_client(api: HfApi, hub_server) -> None:
    api.create_repo(REPO)
    hub_server.fail_next(1, path_contains=f"/api/models/{REPO}")
    with pytest.raises(HfHubHTTPError) as info:
        api.model_info(REPO)
    assert info.value.response.status_code == 503
    hub_server.drop_next(1, path_contains=f"/api/models/{REPO}")
    with pytest.raises(httpx2.RemoteProtocolError):
        api.model_info(REPO)
    assert hub_server.pending_faults() == 0
    assert api.model_info(REPO).id == REPO


# ----------------------------------------------------------------------------------------------- LFS
def _post(hub_client, path: str, payload: object, *, token: bool = True, **headers: str) -> httpx2.Response:
    auth = {"authorization": f"Bearer {hub_client.token}"} if token else {}
    return httpx2.post(hub_client.endpoint + path, json=payload, headers={**auth, **headers}, timeout=30)


def test_preupload_answers_lfs_for_large_binary_and_gitattributes_routed_files(api: HfApi, hub_client) -> None:
    api.create_repo(REPO)
    text = b"plain text\n" * 40
    cases = {
        "notes.txt": (text, len(text), "regular"),
        "empty.txt": (b"", 0, "regular"),
        "accents.md": ("\u00e9t\u00e9 ".encode() * 102 + "\u00e9".encode()[:1], 512, "regular"),  # a character cut
        "weights.safetensors": (text, len(text), "lfs"),  # .gitattributes: *.safetensors
        "nested/model.bin": (text, len(text), "lfs"),  # .gitattributes: *.bin, in a folder
        "huge.txt": (text, LFS_SIZE_THRESHOLD, "lfs"),  # 10 MB of text
        "just-under.txt": (text, LFS_SIZE_THRESHOLD - 1, "regular"),
        "zeros.dat": (b"\x00\x01" * 100, 200, "lfs"),  # a NUL byte: binary
        "latin1.txt": ("caf\u00e9 cr\u00e8me".encode("latin-1"), 11, "lfs"),  # not UTF-8: binary
    }
    files = [{"path": path, "sample": base64.b64encode(sample).decode(), "size": size}
             for path, (sample, size, _) in cases.items()]
    answer = _post(hub_client, f"/api/models/{REPO}/preupload/main", {"files": files})
    assert answer.status_code == 200, answer.text
    modes = {f["path"]: f["uploadMode"] for f in answer.json()["files"]}
    assert modes == {path: mode for path, (_, _, mode) in cases.items()}
    assert _post(hub_client, f"/api/models/{REPO}/preupload/main", {"files": files}, token=False).status_code == 401


def test_preupload_reports_the_remote_oid_so_unchanged_files_are_skipped(api: HfApi, hub_client, hub_server,
                                                                         tmp_path: Path) -> None:
    local = _folder(tmp_path / "v1")
    api.create_repo(REPO)
    api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1")
    files = [{"path": p, "sample": "", "size": 1} for p in ("config.json", "model.safetensors", "new.txt")]
    oids = {f["path"]: f["oid"] for f in _post(hub_client, f"/api/models/{REPO}/preupload/main",
                                                {"files": files}).json()["files"]}
    content = _files(local)
    assert oids == {"config.json": git_hash(content["config.json"]),  # regular: the git blob id
                    "model.safetensors": hashlib.sha256(content["model.safetensors"]).hexdigest(),  # LFS: sha256
                    "new.txt": None}
    puts = len(hub_server.requests_to("/lfs-upload/", "PUT"))
    api.upload_folder(folder_path=local, repo_id=REPO, commit_message="same files")  # nothing changed: no commit
    assert [c.title for c in api.list_repo_commits(REPO)] == ["v1", "initial commit"]
    assert len(hub_server.requests_to("/lfs-upload/", "PUT")) == puts


def test_lfs_files_are_uploaded_through_the_batch_api_and_committed_as_pointers(api: HfApi, hub_client, hub_server,
                                                                                tmp_path: Path) -> None:
    local = _folder(tmp_path / "v1")
    big = "".join(f"line {i}\n" for i in range(LFS_SIZE_THRESHOLD // 8 + 1)).encode()  # 10 MB of text
    (local / "big.txt").write_bytes(big)
    api.create_repo(REPO)
    api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1")
    commit = hub_server.history(REPO)[0]
    assert commit.lfs == {"model.safetensors", "big.txt"}
    assert sorted(commit.operations) == [("file", "README.md"), ("file", "config.json"), ("file", "sub/notes.txt"),
                                         ("lfsFile", "big.txt"), ("lfsFile", "model.safetensors")]
    assert len(hub_server.requests_to(f"/{REPO}.git/info/lfs/objects/batch", "POST")) == 1
    assert len(hub_server.requests_to("/lfs-upload/", "PUT")) == 2
    assert len(hub_server.requests_to(f"/{REPO}.git/info/lfs/objects/verify", "POST")) == 2

    weights = _files(local)["model.safetensors"]
    sha256 = hashlib.sha256(weights).hexdigest()
    entry = {e.path: e for e in api.get_paths_info(REPO, ["model.safetensors", "big.txt"])}
    assert entry["model.safetensors"].lfs.sha256 == sha256
    assert entry["model.safetensors"].blob_id == git_hash(lfs_pointer(sha256, len(weights)))  # the pointer's oid
    assert entry["big.txt"].lfs.size == len(big)
    path = hf_hub_download(REPO, "big.txt", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == big
    head = httpx2.head(f"{hub_client.endpoint}/{REPO}/resolve/main/model.safetensors")
    assert head.headers["x-linked-etag"] == f'"{sha256}"' and head.headers["x-linked-size"] == str(len(weights))

    # the same content again: the batch API knows the object, nothing is uploaded
    api.upload_file(path_or_fileobj=weights, path_in_repo="copy.safetensors", repo_id=REPO)
    assert len(hub_server.requests_to("/lfs-upload/", "PUT")) == 2
    assert hub_server.file(REPO, "copy.safetensors") == weights


def test_lfs_batch_put_and_verify_check_what_they_are_given(api: HfApi, hub_client, hub_server) -> None:
    api.create_repo(REPO)
    data = b"\x00weights" * 1000
    oid = hashlib.sha256(data).hexdigest()
    batch_path = f"/{REPO}.git/info/lfs/objects/batch"
    request = {"operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
               "objects": [{"oid": oid, "size": len(data)}, {"oid": "not-a-sha", "size": 1}], "ref": {"name": "main"}}
    lfs = {"accept": "application/vnd.git-lfs+json"}
    assert _post(hub_client, batch_path, request, token=False, **lfs).status_code == 401
    answer = _post(hub_client, batch_path, request, **lfs)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/vnd.git-lfs+json"
    first, bad = answer.json()["objects"]
    assert bad["error"]["code"] == 422
    upload, verify = first["actions"]["upload"]["href"], first["actions"]["verify"]["href"]
    assert upload.startswith(hub_client.endpoint + "/lfs-upload/") and verify == hub_client.endpoint + \
        f"/{REPO}.git/info/lfs/objects/verify"
    assert _post(hub_client, batch_path, {**request, "ref": {"name": "nope"}}, **lfs).status_code == 404

    assert _post(hub_client, verify.removeprefix(hub_client.endpoint), {"oid": oid, "size": len(data)}).status_code \
        == 404  # not uploaded yet
    tampered = upload.replace("signature=", "signature=0")
    assert httpx2.put(tampered, content=data).status_code == 403
    assert httpx2.put(upload, content=data[:-1]).status_code == 400  # short
    assert httpx2.put(upload, content=data[:-1] + b"!").status_code == 400  # same size, other sha256
    assert hub_server.lfs_objects(REPO) == set()
    assert httpx2.put(upload, content=data).status_code == 200
    assert hub_server.lfs_objects(REPO) == {oid}
    verify_path = urlsplit(verify).path
    assert _post(hub_client, verify_path, {"oid": oid, "size": len(data)}).status_code == 200
    assert _post(hub_client, verify_path, {"oid": oid, "size": len(data) + 1}).status_code == 422
    again = _post(hub_client, batch_path, request, **lfs).json()["objects"][0]
    assert again["oid"] == oid and "actions" not in again  # already there: nothing to upload


def test_a_commit_naming_an_lfs_object_that_was_never_uploaded_is_refused(api: HfApi, hub_client,
                                                                          hub_server) -> None:
    api.create_repo(REPO)
    data = b"\x00weights"
    header = {"key": "header", "value": {"summary": "pointer only", "description": ""}}
    line = {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256",
                                        "oid": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    body = b"".join(json.dumps(item).encode() + b"\n" for item in (header, line))
    answer = httpx2.post(f"{hub_client.endpoint}/api/models/{REPO}/commit/main", content=body, timeout=30,
                         headers={"authorization": f"Bearer {hub_client.token}",
                                  "content-type": "application/x-ndjson"})
    assert answer.status_code == 400
    assert "an LFS pointer pointed to a file that does not exist" in answer.json()["error"]
    assert "Offending file: - model.safetensors" in answer.json()["error"]
    assert [c.title for c in hub_server.history(REPO)] == ["initial commit"]

    other = "radiologynet/other"  # an object uploaded to another repository does not count either
    api.create_repo(other)
    api.upload_file(path_or_fileobj=data, path_in_repo="model.safetensors", repo_id=other)
    again = httpx2.post(f"{hub_client.endpoint}/api/models/{REPO}/commit/main", content=body, timeout=30,
                        headers={"authorization": f"Bearer {hub_client.token}", "content-type": "application/x-ndjson"})
    assert again.status_code == 400 and [c.title for c in hub_server.history(REPO)] == ["initial commit"]


def test_fail_after_handling_and_a_concurrent_commit_before_handling(api: HfApi, hub_server) -> None:
    api.create_repo(REPO)
    hub_server.fail_next(1, path_contains="/commit/", status=500, after_handling=True)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    assert info.value.response.status_code == 500
    head = api.model_info(REPO).sha  # ... and yet the commit was made
    assert [c.title for c in api.list_repo_commits(REPO)] == ["a", "initial commit"]

    hub_server.before_next(lambda hub: hub.commit_files(REPO, {"b.txt": b"b"}, title="theirs"),
                           path_contains="/commit/")
    with pytest.raises(HfHubHTTPError, match="A commit has happened since") as info:
        api.create_commit(REPO, [CommitOperationAdd("c.txt", b"c")], commit_message="ours", parent_commit=head)
    assert info.value.response.status_code == 412
    assert [c.title for c in api.list_repo_commits(REPO)] == ["theirs", "a", "initial commit"]
    assert hub_server.pending_faults() == 0
