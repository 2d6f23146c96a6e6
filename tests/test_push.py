"""``rnet-hub push`` / ``push_folder`` against the loopback Hub, through the real clients.

The pushed folder is the converted seed-0 stand-in ResNet18 (random weights): these tests are
about publishing mechanics, not about the real RadiologyNET weights.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
