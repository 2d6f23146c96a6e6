"""The loopback Hub works with the real ``huggingface_hub`` client over HTTP.

Everything here goes through the public client API (``HfApi``, ``hf_hub_download``,
``snapshot_download``); the server is only inspected for what a client cannot see
(the Authorization headers it received, injected faults).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
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


def test_offline_mode_serves_the_cache_with_the_server_stopped(api: HfApi, hub_client, hub_server, tmp_path) -> None:
    local = _folder(tmp_path / "v1")
    api.create_repo(REPO)
    sha = api.upload_folder(folder_path=local, repo_id=REPO, commit_message="v1").oid
    snapshot_download(REPO)  # into hub_client.hf_home/hub, the cache a subprocess with HF_HOME reads
    hub_server.stop()
    script = (
        "import sys, pathlib; from huggingface_hub import hf_hub_download, snapshot_download\n"
        f"p = pathlib.Path(snapshot_download({REPO!r}))\n"
        f"w = pathlib.Path(hf_hub_download({REPO!r}, 'model.safetensors', revision={sha!r}))\n"
        "print(p.name, w.read_bytes().hex(), (p / 'sub' / 'notes.txt').read_text())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=hub_client.env(offline=True), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name, weights_hex, notes = done.stdout.split(maxsplit=2)
    assert name == sha and bytes.fromhex(weights_hex) == _files(local)["model.safetensors"]
    assert notes.strip() == "nested file"


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
