"""``rnet-hub push`` / ``push_folder`` against the loopback Hub, through the real clients.

The pushed folder is the converted seed-0 stand-in ResNet18 (random weights): these tests are
about publishing mechanics, not about the real RadiologyNET weights. Its 45 MB ``model.safetensors``
goes through the LFS batch upload (preupload says "lfs"), ``config.json`` and ``README.md`` ride the
commit as regular files.

``test_a_fault_on_any_call_ends_in_one_commit_or_one_clear_error`` injects one fault at a time on
every call a push makes (repository creation, preupload, LFS batch, object PUT, LFS verify,
commit): a push either ends in exactly one complete commit, or raises ``PushError`` with nothing
committed. ``huggingface_hub``'s own retries (``http_backoff``) sleep 1, 2, 4 ... s; the
``no_backoff_sleep`` fixture records those waits instead of sleeping them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hub_server import LoopbackHub
from huggingface_hub import HfApi, hf_hub_download

from rnet_hub.cli import main
from rnet_hub.errors import PushError
from rnet_hub.loading import load_timm_from_dir
from rnet_hub.publish.push import RetryPolicy, push_folder, remote_differences, remote_matches_local

REPO = "radiologynet/resnet18"
FAST = RetryPolicy(attempts=4, base_wait_s=0.01, max_wait_s=0.05)


@pytest.fixture
def folder(converted_dir, tmp_path: Path) -> Path:
    """A private copy of the converted ResNet18 folder (tests may change it)."""
    return Path(shutil.copytree(converted_dir("ResNet18"), tmp_path / "resnet18"))


def _local(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_remote_is(api: HfApi, sha: str, folder: Path, cache: Path) -> None:
    """Every local file downloads back byte for byte from commit ``sha``."""
    for name, data in _local(folder).items():
        assert Path(hf_hub_download(REPO, name, revision=sha, cache_dir=cache)).read_bytes() == data, name


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``huggingface_hub``'s ``http_backoff`` records its waits here instead of sleeping them."""
    import huggingface_hub.utils._http as http

    waits: list[float] = []
    monkeypatch.setattr(http, "time", SimpleNamespace(sleep=waits.append))
    return waits


def _our_commits(hub: LoopbackHub) -> list:
    """The repository's commits newest first, without its initial commit (none if it was never created)."""
    if not hub.has_repo(REPO):
        return []
    return [c for c in hub.history(REPO) if c.title != "initial commit"]


def _assert_one_complete_commit(hub: LoopbackHub, folder: Path, sha: str | None, cache: Path) -> None:
    """One new commit on main holding every file (the weights as an LFS object), downloads equal to the folder."""
    ours = _our_commits(hub)
    assert [c.oid for c in ours] == [sha]
    assert set(ours[0].tree) == {".gitattributes", *_local(folder)} and ours[0].lfs == {"model.safetensors"}
    assert ("lfsFile", "model.safetensors") in ours[0].operations
    assert set(hub.refs(REPO)) == {"main"}  # no stray branch or pull request
    _assert_remote_is(HfApi(endpoint=hub.endpoint), sha, folder, cache)


def test_cli_push_makes_one_commit_prints_its_url_and_never_the_token(folder, hub_client, hub_server, tmp_path,
                                                                       capfd, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx2", "httpcore2", "rnet_hub"):
        caplog.set_level(logging.DEBUG, logger=name)
    assert main(["-v", "push", str(folder), "--repo-id", REPO]) == 0
    out, err = capfd.readouterr()
    api = HfApi(endpoint=hub_client.endpoint)
    head = api.model_info(REPO).sha
    assert out.strip().splitlines()[-1] == f"{hub_client.endpoint}/{REPO}/commit/{head}"
    assert [c.commit_id for c in api.list_repo_commits(REPO)][:1] == [head]
    assert len(api.list_repo_commits(REPO)) == 2  # the repository's initial commit + ours
    _assert_remote_is(api, head, folder, tmp_path / "cache")
    assert caplog.records  # the debug logs were captured ...
    assert hub_client.token not in out + err + caplog.text  # ... and none of them, nor the output, shows the token
    writes = [r for r in hub_server.requests if r.method == "POST"]
    assert writes and all(r.headers.get("authorization") == f"Bearer {hub_client.token}" for r in writes)


def test_second_push_uploads_nothing_and_says_so(folder, hub_client, hub_server, capsys):
    assert main(["push", str(folder), "--repo-id", REPO]) == 0
    first = capsys.readouterr().out
    assert remote_matches_local(folder, REPO)
    commits_before = len(hub_server.requests_to("/commit/"))
    assert main(["push", str(folder), "--repo-id", REPO]) == 0
    second = capsys.readouterr().out
    assert "nothing uploaded" in second
    assert second.splitlines()[-1] == first.splitlines()[-1]  # same commit URL
    assert len(hub_server.requests_to("/commit/")) == commits_before
    assert len(hub_server.requests_to("/preupload/")) == 1  # only the first push prepared an upload


def test_changed_file_is_detected_and_pushed(folder, hub_client):
    push_folder(folder, repo_id=REPO, retry=FAST)
    (folder / "README.md").write_text("# changed card\n")
    assert remote_differences(folder, REPO) == ["README.md"]
    result = push_folder(folder, repo_id=REPO, retry=FAST)
    assert result.changed and remote_matches_local(folder, REPO, result.commit_sha)


def test_dry_run_lists_files_and_touches_no_network(folder, hub_server, hub_client, capsys):
    assert main(["push", str(folder), "--repo-id", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name, data in _local(folder).items():
        assert f"{name}  {len(data)} bytes  sha256:{hashlib.sha256(data).hexdigest()}" in out
    assert "nothing was uploaded" in out
    assert hub_server.requests == []


def test_not_a_converted_folder_is_refused_before_any_request(tmp_path, hub_server, hub_client, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["push", str(tmp_path), "--repo-id", REPO]) == 2
    assert "is not a converted model folder" in capsys.readouterr().err
    assert hub_server.requests == []
    with pytest.raises(ValueError, match="Repo id must"):
        push_folder(tmp_path, repo_id="not a/valid/id")


@pytest.mark.parametrize("after_handling", [False, True], ids=["dropped-request", "lost-response"])
def test_503_then_dropped_connection_still_gives_exactly_one_commit(folder, hub_client, hub_server, tmp_path,
                                                                    after_handling):
    hub_server.fail_next(1, path_contains="/commit/", status=503)
    hub_server.drop_next(1, path_contains="/commit/", after_handling=after_handling)
    result = push_folder(folder, repo_id=REPO, retry=FAST)
    assert hub_server.pending_faults() == 0
    assert result.attempts == (2 if after_handling else 3)  # a landed commit is recognised, not repeated
    api = HfApi(endpoint=hub_client.endpoint)
    commits = api.list_repo_commits(REPO)
    assert len(commits) == 2 and commits[0].commit_id == result.commit_sha
    _assert_remote_is(api, result.commit_sha, folder, tmp_path / "cache")


# (call, path fragment, method) of every request a push makes that changes something or uploads
CALLS = {
    "create_repo": ("/api/repos/create", "POST"),
    "preupload": ("/preupload/", "POST"),
    "lfs_batch": (".git/info/lfs/objects/batch", "POST"),
    "lfs_put": ("/lfs-upload/", "PUT"),
    "lfs_verify": (".git/info/lfs/objects/verify", "POST"),
    "commit": ("/commit/", "POST"),
}
# fault kind -> what the push must end in: "commit" (exactly one complete commit) or "error" (PushError, no commit)
FAULTS = {
    "503-once": "commit",  # a transient answer
    "reset": "commit",  # the connection closed before the request was handled
    "lost-response": "commit",  # handled (a commit made, an object stored), the response lost
    "500-after-effect": "commit",  # handled, then a proxy's 500 instead of the answer
    "503-always": "error",  # never recovers: retries end in one clear error
    "403": "error",  # refused: no retry
}
# ... except: the object was stored before its verify kept failing, so the retried push finds it there (the batch
# answers without actions, nothing to upload or verify) and commits
EXCEPTIONS = {("lfs_verify", "503-always"): "commit"}


def _inject(hub: LoopbackHub, call: str, fault: str) -> None:
    path, method = CALLS[call]
    if fault == "503-once":
        hub.fail_next(1, path_contains=path, method=method, status=503)
    elif fault == "reset":
        hub.drop_next(1, path_contains=path, method=method)
    elif fault == "lost-response":
        hub.drop_next(1, path_contains=path, method=method, after_handling=True)
    elif fault == "500-after-effect":
        hub.fail_next(1, path_contains=path, method=method, status=500, after_handling=True)
    elif fault == "503-always":
        hub.fail_next(10_000, path_contains=path, method=method, status=503)
    else:
        hub.fail_next(10_000, path_contains=path, method=method, status=int(fault))


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("call", list(CALLS))
def test_a_fault_on_any_call_ends_in_one_commit_or_one_clear_error(folder, hub_client, hub_server, tmp_path,
                                                                    no_backoff_sleep, call, fault):
    path, method = CALLS[call]
    _inject(hub_server, call, fault)
    if EXCEPTIONS.get((call, fault), FAULTS[fault]) == "commit":
        result = push_folder(folder, repo_id=REPO, retry=FAST)
        assert hub_server.pending_faults() == 0 or fault == "503-always"  # the fault fired
        _assert_one_complete_commit(hub_server, folder, result.commit_sha, tmp_path / "cache")
        if call == "commit":  # a landed commit is recognised, not repeated; a failed one is tried again
            assert result.attempts == (2 if fault in ("503-once", "reset") else 1)
    else:
        with pytest.raises(PushError, match=REPO) as raised:
            push_folder(folder, repo_id=REPO, retry=FAST)
        message = str(raised.value)
        if fault == "403":
            assert "refused to let this token write" in message and "HTTP 403" in message
        else:
            assert "failed after retries: HTTP 503" in message and "run the same command again" in message
        hub_server.clear_faults()
        assert _our_commits(hub_server) == []
        if hub_server.has_repo(REPO):
            assert set(hub_server.refs(REPO)) == {"main"}
    assert hub_server.requests_to(path, method), f"the push never made the {call} call"


@pytest.mark.parametrize("how", ["injected-412", "concurrent-commit"])
def test_a_commit_that_lost_a_race_is_one_clear_error_and_commits_nothing(folder, hub_client, hub_server, how):
    """The branch moved after the push read its head: the commit names a stale parent and the Hub answers 412."""
    if how == "injected-412":
        hub_server.fail_next(1, path_contains="/commit/", method="POST", status=412)
    else:  # another client commits while this push is uploading: the parent check is the server's, not injected
        hub_server.before_next(lambda hub: hub.commit_files(REPO, {"notes.txt": b"someone else"}, title="theirs"),
                               path_contains="/commit/", method="POST")
    with pytest.raises(PushError, match=rf"{REPO} changed while pushing .*run the same command again"):
        push_folder(folder, repo_id=REPO, retry=FAST)
    assert len(hub_server.requests_to("/commit/", "POST")) == 1  # never retried blindly
    titles = [c.title for c in hub_server.history(REPO)]
    assert titles == (["initial commit"] if how == "injected-412" else ["theirs", "initial commit"])
    assert "model.safetensors" not in hub_server.history(REPO)[0].tree


def test_weights_go_through_lfs_and_small_text_files_ride_the_commit(folder, hub_client, hub_server, tmp_path):
    result = push_folder(folder, repo_id=REPO, retry=FAST)
    puts = hub_server.requests_to("/lfs-upload/", "PUT")
    assert len(puts) == 1 and "authorization" not in puts[0].headers  # a signed URL: the token stays with the Hub
    assert len(hub_server.requests_to(".git/info/lfs/objects/batch", "POST")) == 1
    commit = hub_server.history(REPO)[0]
    assert sorted(commit.operations) == [("file", "README.md"), ("file", "config.json"),
                                         ("lfsFile", "model.safetensors")]
    weights = (folder / "model.safetensors").read_bytes()
    assert hub_server.lfs_objects(REPO) == {hashlib.sha256(weights).hexdigest()}
    _assert_one_complete_commit(hub_server, folder, result.commit_sha, tmp_path / "cache")
    (folder / "README.md").write_text("# changed card\n")
    second = push_folder(folder, repo_id=REPO, retry=FAST)  # the weights are already there: no second upload
    assert len(hub_server.requests_to("/lfs-upload/", "PUT")) == 1
    assert hub_server.history(REPO)[0].operations == (("file", "README.md"),)
    assert remote_matches_local(folder, REPO, second.commit_sha)


def test_create_pr_after_a_lost_response_opens_one_pull_request(folder, hub_client, hub_server):
    push_folder(folder, repo_id=REPO, retry=FAST)
    main_sha = HfApi(endpoint=hub_client.endpoint).model_info(REPO).sha
    (folder / "README.md").write_text("# proposed card\n")
    hub_server.drop_next(1, path_contains="/commit/", after_handling=True)
    result = push_folder(folder, repo_id=REPO, create_pr=True, retry=FAST)
    api = HfApi(endpoint=hub_client.endpoint)
    prs = api.list_repo_refs(REPO, include_pull_requests=True).pull_requests
    assert [(p.ref, p.target_commit) for p in prs] == [("refs/pr/1", result.commit_sha)]
    assert result.revision == "refs/pr/1" and result.pr_url.endswith("/discussions/1")
    assert api.model_info(REPO).sha == main_sha
    assert remote_matches_local(folder, REPO, "refs/pr/1") and not remote_matches_local(folder, REPO)


def test_revision_creates_the_branch(folder, hub_client):
    result = push_folder(folder, repo_id=REPO, revision="v1.0", private=True, retry=FAST)
    api = HfApi(endpoint=hub_client.endpoint)
    assert api.model_info(REPO, revision="v1.0").sha == result.commit_sha
    assert api.model_info(REPO).private is True
    assert not remote_matches_local(folder, REPO, "main") and remote_matches_local(folder, REPO, "v1.0")


def test_persistent_failure_is_one_clear_error_and_no_commit(folder, hub_client, hub_server):
    hub_server.fail_next(10, path_contains="/commit/", status=502)
    with pytest.raises(PushError, match=r"failed after retries: HTTP 502.*run the same command again"):
        push_folder(folder, repo_id=REPO, retry=RetryPolicy(attempts=3, base_wait_s=0.01))
    assert len(hub_server.requests_to("/commit/")) == 3
    assert len(HfApi(endpoint=hub_client.endpoint).list_repo_commits(REPO)) == 1


def test_timm_loads_the_pushed_folder_from_the_hub_in_a_fresh_process(folder, hub_client, tmp_path):
    push_folder(folder, repo_id=REPO, retry=FAST)
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 224, 224)
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import sys, torch, timm\n"
        f"m = timm.create_model('hf-hub:{REPO}', pretrained=True).eval()\n"
        "x = torch.load(sys.argv[1], weights_only=True)\n"
        "with torch.no_grad():\n    torch.save(m(x), sys.argv[2])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "batch.pt"), str(tmp_path / "hub.pt")],
                          env=hub_client.env(token=False), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = load_timm_from_dir(folder)(batch)
    from_hub = torch.load(tmp_path / "hub.pt", weights_only=True)
    assert from_hub.shape == (2, 36)
    assert torch.allclose(from_hub, expected, rtol=0, atol=1e-6), (from_hub - expected).abs().max()


def test_token_comes_from_the_token_file_when_hf_token_is_unset(folder, hub_client, hub_server, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    (hub_client.hf_home / "token").write_text("hf_fromTheTokenFile\n")
    push_folder(folder, repo_id=REPO, retry=FAST)
    assert set(hub_server.authorizations()) == {"Bearer hf_fromTheTokenFile"}


def test_without_any_token_the_error_says_how_to_log_in(folder, hub_client, hub_server, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(folder), "--repo-id", REPO]) == 2
    assert "refused to let this token write" in capsys.readouterr().err
    assert hub_server.authorizations() == []


def test_retry_waits_grow_exponentially_up_to_the_cap():
    assert list(RetryPolicy(attempts=6, base_wait_s=1, max_wait_s=8).waits()) == [1, 2, 4, 8, 8, None]


def test_offline_mode_refuses_to_push_without_trying(folder, hub_client, hub_server, capsys):
    with hub_client.offline():
        assert main(["push", str(folder), "--repo-id", REPO]) == 2
        assert main(["push", str(folder), "--repo-id", REPO, "--dry-run"]) == 0
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert hub_server.requests == []
