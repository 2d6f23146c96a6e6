"""Batch conversion and publishing against the loopback Hub, through the real clients.

Two small architectures (ResNet18, MobileNetV3Small) stand in for the ten; their archives are
the seed-0 stand-ins without optimizer state (random weights): these tests are about the
publishing mechanics, never about the real RadiologyNET weights.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import runpy
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from safetensors import safe_open

from rnet_hub import architectures
from rnet_hub.architectures import find_arch
from rnet_hub.cli import main
from rnet_hub.converter import convert
from rnet_hub.errors import BadInputError
from rnet_hub.folder import RECORD_NAME
from rnet_hub.publish.batch import convert_all
from rnet_hub.publish.pipeline import model_card, publish_all, read_manifest
from rnet_hub.publish.push import push_folder

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("publish")

NAMES = ("ResNet18", "MobileNetV3Small")
REPOS = {name: find_arch(name).repo_id() for name in NAMES}
CONVERSION = Path(__file__).resolve().parent.parent / "conversion"
CONVERT_ALL = CONVERSION / "convert_all.py"
PUBLISH_ALL = CONVERSION / "publish_all.py"


def _quiet(_: str) -> None:
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _default_org(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNET_HUB_ORG", raising=False)


@pytest.fixture(scope="module")
def archives(sample_archive: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of ``<Name>.tar.gz`` archives, as ``--archives`` expects."""
    folder = tmp_path_factory.mktemp("archives")
    for name in NAMES:
        shutil.copy(sample_archive(name), folder / f"{name}.tar.gz")
    return folder


@pytest.fixture(scope="module")
def converted(archives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``convert_all`` of ``archives`` (each test publishes from its own copy)."""
    out = tmp_path_factory.mktemp("converted")
    outcomes = convert_all(archives=archives, out_dir=out, names=NAMES, progress=False, echo=_quiet)
    assert [o.error for o in outcomes] == [None, None]
    return out


@pytest.fixture
def work(converted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted, tmp_path / "work"))


def _publish_args(archives: Path, work: Path, manifest: Path, *extra: str) -> list[str]:
    return ["publish-all", "--archives", str(archives), "--only", ",".join(NAMES), "--work-dir", str(work),
            "--manifest", str(manifest), "-q", *extra]


def test_convert_all_skips_sources_already_converted(archives: Path, converted: Path, tmp_path: Path, capsys,
                                                    sample_archive: Callable[..., Path]) -> None:
    for name in NAMES:
        folder = converted / find_arch(name).timm_arch
        with safe_open(folder / "model.safetensors", framework="pt") as weights:
            assert weights.metadata()["source_sha256"] == _sha256(archives / f"{name}.tar.gz")
        assert json.loads((folder / RECORD_NAME).read_text())["weights_sha256"] == _sha256(folder /
                                                                                            "model.safetensors")
    work = Path(shutil.copytree(converted, tmp_path / "work"))
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    script_main = runpy.run_path(str(CONVERT_ALL))["main"]
    assert script_main(["--archives", str(archives), "--out", str(work), "--only", ",".join(NAMES), "-q"]) == 0
    assert "summary: 0 converted, 2 up to date, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == stamps  # nothing rewritten

    changed = Path(shutil.copytree(archives, tmp_path / "changed"))
    shutil.copy(sample_archive("MobileNetV3Small", seed=1), changed / "MobileNetV3Small.tar.gz")
    outcomes = convert_all(archives=changed, out_dir=work, names=NAMES, progress=False, echo=_quiet)
    assert [(o.spec.name, o.value.converted) for o in outcomes] == [("ResNet18", False), ("MobileNetV3Small", True)]
    with safe_open(work / "mobilenetv3_small_100" / "model.safetensors", framework="pt") as weights:
        assert weights.metadata()["source_sha256"] == _sha256(changed / "MobileNetV3Small.tar.gz")


def test_convert_all_never_replaces_a_folder_it_did_not_write(archives: Path, tmp_path: Path) -> None:
    notes = tmp_path / "out" / "mobilenetv3_small_100" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my own notes")
    (outcome,) = convert_all(archives=archives, out_dir=tmp_path / "out", names=["MobileNetV3Small"], echo=_quiet)
    assert outcome.error is not None and "exists and is not a converted model folder" in outcome.error
    assert notes.read_text() == "my own notes" and len(list(notes.parent.iterdir())) == 1


def test_dry_run_prints_the_plan_and_touches_no_network(archives: Path, work: Path, tmp_path: Path, hub_server,
                                                        hub_client, capsys) -> None:
    manifest = tmp_path / "manifest.json"
    (work / "resnet18" / RECORD_NAME).unlink()  # as after a plain `rnet-hub convert`: no parity on record
    assert main(_publish_args(archives, work, manifest, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "re-verified: parity PASS" in out and (work / "resnet18" / RECORD_NAME).is_file()
    for name, repo in REPOS.items():
        folder = work / find_arch(name).timm_arch
        assert "would push 3 files" in out and f"to {repo}@main in one commit; nothing uploaded" in out
        for file in ("README.md", "config.json", "model.safetensors"):
            path = folder / file
            assert f"{file:<20} {path.stat().st_size:>12} bytes  sha256 {_sha256(path)}" in out
        assert "## Provenance" in (folder / "README.md").read_text()  # the full card, as it would be pushed
    assert "summary: 2 planned; none failed" in out
    assert hub_server.requests == []
    assert not manifest.exists()


def test_dry_run_from_published_urls_downloads_nothing(tmp_path: Path, hub_server, hub_client, capsys) -> None:
    report = publish_all(names=["VGG16"], work_dir=tmp_path / "work", manifest=tmp_path / "m.json", dry_run=True,
                         cache_dir=tmp_path / "cache", progress=False)
    assert report.exit_code == 0 and report.outcomes[0].value.status == "planned"
    out = capsys.readouterr().out
    assert "would download http://radiologynet.riteh.hr/models/VGG16.tar.gz (1239 MiB as published)" in out
    assert hub_server.requests == [] and not (tmp_path / "cache").exists() and not (tmp_path / "work").exists()


def test_publish_then_rerun_uploads_nothing(archives: Path, work: Path, tmp_path: Path, hub_server, hub_client,
                                            capsys) -> None:
    manifest = tmp_path / "manifest.json"
    hub_server.fail_next(1, path_contains="/commit/", status=503)  # a transient failure on the first commit
    assert main(_publish_args(archives, work, manifest)) == 0
    assert hub_server.pending_faults() == 0
    assert "summary: 2 published; none failed" in capsys.readouterr().out
    api = HfApi(endpoint=hub_client.endpoint)
    entries = read_manifest(manifest)["models"]
    assert sorted(entries) == sorted(NAMES)
    for name, repo in REPOS.items():
        folder, entry = work / find_arch(name).timm_arch, entries[name]
        commits = api.list_repo_commits(repo)
        assert len(commits) == 2 and commits[0].commit_id == entry["commit_sha"]  # repo creation + one commit
        assert entry["source_sha256"] == _sha256(archives / f"{name}.tar.gz")
        assert entry["weights_sha256"] == entry["files"]["model.safetensors"]["sha256"]
        assert 0 <= entry["parity"]["max_abs_diff"] <= entry["parity"]["tolerance"]
        for file, recorded in entry["files"].items():
            remote = Path(hf_hub_download(repo, file, revision=entry["commit_sha"], cache_dir=tmp_path / "dl"))
            assert _sha256(remote) == recorded["sha256"] == _sha256(folder / file), file
        card = ModelCard.load(repo)
        assert "medical-imaging" in card.data.tags and entry["source_sha256"] in card.text
        assert entry["source_name"] == f"{name}.tar.gz" and set(entry["converted_with"]) == {"rnet_hub", "torch",
                                                                                             "timm"}
        # the card rendered from the manifest (as conversion/render_cards.py does) is the card pushed
        assert str(model_card(name, read_manifest(manifest))).encode() == (folder / "README.md").read_bytes()

    commit_posts = len(hub_server.requests_to("/commit/", "POST"))
    script_main = runpy.run_path(str(PUBLISH_ALL))["main"]  # the maintainers' script, over the same library
    assert script_main(_publish_args(archives, work, manifest)[1:]) == 0
    out = capsys.readouterr().out
    assert out.count("already holds identical files (sha256 compared); nothing uploaded") == 2
    assert "summary: 2 unchanged; none failed" in out
    assert len(hub_server.requests_to("/commit/", "POST")) == commit_posts
    assert read_manifest(manifest)["models"] == entries


def test_one_failing_model_does_not_stop_the_others(archives: Path, work: Path, tmp_path: Path, hub_server,
                                                    hub_client, capsys) -> None:
    broken = Path(shutil.copytree(archives, tmp_path / "broken"))
    data = (broken / "ResNet18.tar.gz").read_bytes()
    (broken / "ResNet18.tar.gz").write_bytes(data[: len(data) // 2])  # truncated download
    manifest = tmp_path / "manifest.json"
    args = _publish_args(broken, work, manifest)
    args[args.index("--only") + 1] = "ResNet18,DenseNet121,MobileNetV3Small"  # DenseNet121.tar.gz is missing
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "summary: 1 published; 2 failed (ResNet18, DenseNet121)" in out
    assert "ResNet18.tar.gz is not a complete archive" in out
    assert "no such checkpoint file" in out and "DenseNet121.tar.gz" in out
    assert list(read_manifest(manifest)["models"]) == ["MobileNetV3Small"]
    api = HfApi(endpoint=hub_client.endpoint)
    assert api.repo_exists(REPOS["MobileNetV3Small"]) and not api.repo_exists(REPOS["ResNet18"])


def test_verify_by_pinned_commit_passes_and_a_tampered_remote_fails(archives: Path, work: Path, tmp_path: Path,
                                                                   sample_archive: Callable[..., Path], hub_server,
                                                                   hub_client, capsys) -> None:
    manifest = tmp_path / "manifest.json"
    report = publish_all(archives=archives, names=["ResNet18"], work_dir=work, manifest=manifest, verify_after=True,
                         progress=False, echo=_quiet)
    assert report.exit_code == 0
    entry = read_manifest(manifest)["models"]["ResNet18"]
    assert entry["verified_at_commit"]["passed"] is True
    published = entry["commit_sha"]
    archive = archives / "ResNet18.tar.gz"

    other = convert(sample_archive("ResNet18", seed=1), tmp_path / "other", progress=False).out_dir
    tampered = push_folder(other, repo_id=REPOS["ResNet18"]).commit_sha  # a different model over the published one
    assert tampered != published

    capsys.readouterr()
    assert main(["verify", f"hf-hub:{REPOS['ResNet18']}@{tampered}", "--against", str(archive), "-q"]) == 1
    assert "parity FAIL" in capsys.readouterr().out
    assert main(["verify", f"hf-hub:{REPOS['ResNet18']}@{published}", "--against", str(archive), "-q"]) == 0
    assert "parity PASS" in capsys.readouterr().out  # the pinned commit still verifies after main moved on


@pytest.fixture
def archive_server(archives: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``archives`` served over HTTP on 127.0.0.1, standing in for the authors' download site."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(archives)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(architectures, "ARCHIVE_BASE_URL", base)
    yield base
    server.shutdown()
    server.server_close()


def test_publishing_from_the_published_urls(archives: Path, work: Path, tmp_path: Path, archive_server: str,
                                            hub_server, hub_client) -> None:
    manifest = tmp_path / "manifest.json"
    report = publish_all(names=["ResNet18"], work_dir=work, manifest=manifest, cache_dir=tmp_path / "cache",
                         progress=False, echo=_quiet)
    assert report.exit_code == 0
    entry = read_manifest(manifest)["models"]["ResNet18"]
    url = f"{archive_server}/ResNet18.tar.gz"
    assert entry["source"] == url and entry["source_sha256"] == _sha256(archives / "ResNet18.tar.gz")
    card = " ".join(ModelCard.load(REPOS["ResNet18"]).text.split())
    assert f"`ResNet18.tar.gz` downloaded from <{url}>" in card
    assert f"published by the authors at <{url}>" in card


def test_dry_run_from_urls_shows_an_earlier_conversion(work: Path, tmp_path: Path, hub_server, hub_client,
                                                       capsys) -> None:
    report = publish_all(names=["ResNet18"], work_dir=work, manifest=tmp_path / "m.json", dry_run=True,
                         cache_dir=tmp_path / "cache", progress=False)
    assert report.exit_code == 0
    out = capsys.readouterr().out
    weights = work / "resnet18" / "model.safetensors"
    assert f"model.safetensors    {weights.stat().st_size:>12} bytes  sha256 {_sha256(weights)}" in out
    assert hub_server.requests == [] and not (tmp_path / "cache").exists()


def test_publish_without_a_manifest_records_nothing(archives: Path, work: Path, tmp_path: Path, hub_server,
                                                    hub_client, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    report = publish_all(archives=archives, names=["MobileNetV3Small"], work_dir=work, progress=False)
    assert report.exit_code == 0 and report.manifest is None
    assert "summary: 1 published; none failed" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no manifest anywhere


def test_a_file_that_is_no_manifest_is_refused_before_anything_is_pushed(archives: Path, work: Path,
                                                                         tmp_path: Path, hub_server,
                                                                         hub_client) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"models": {}}')
    with pytest.raises(BadInputError, match="is not an rnet-hub manifest of format 1"):
        publish_all(archives=archives, names=["MobileNetV3Small"], work_dir=work, manifest=manifest, progress=False)
    assert hub_server.requests == []
