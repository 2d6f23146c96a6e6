"""The fast path of ``rnet-hub convert``: archive extraction in a child process, a lazy package
import (torch and timm load on first use) and the CLI process around them."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import safetensors

from rnet_hub.archives.extract import ArchiveExtraction
from rnet_hub.cli import main
from rnet_hub.errors import SourceError


def _bad_archive(sample_archive, path: Path) -> Path:
    with tarfile.open(sample_archive("ResNet18")) as tar:
        data = tar.extractfile(tar.getmembers()[0]).read()
    info = tarfile.TarInfo("../ResNet18.pth")
    info.size = len(data)
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(info, io.BytesIO(data))
    return path


def test_child_process_extraction_equals_the_inline_one(sample_archive, private_tmp):
    archive = sample_archive("ResNet18")
    with ArchiveExtraction(archive, progress=False) as inline:
        inline_path, inline_sha = inline.result()
        inline_bytes = inline_path.read_bytes()
    with ArchiveExtraction(archive, progress=False).start() as child:
        child_path, child_sha = child.result()
        assert child_path.read_bytes() == inline_bytes
    assert child_sha == inline_sha == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert list(private_tmp.iterdir()) == []  # both folders removed on close


def test_child_process_reports_bad_archives_like_the_inline_path(sample_archive, private_tmp, tmp_path):
    bad = _bad_archive(sample_archive, tmp_path / "bad.tar.gz")
    for start in (False, True):
        extraction = ArchiveExtraction(bad, progress=False)
        with extraction.start() if start else extraction, \
                pytest.raises(SourceError, match=r"escapes the archive folder \('../ResNet18.pth'"):
            extraction.result()
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "ResNet18.pth").exists()


def test_an_archive_that_changes_while_read_is_refused(sample_archive, private_tmp, monkeypatch):
    from rnet_hub.archives import extract as _archive

    first = iter([(1, 2, 3, 4)])  # every later look sees a new modification time
    monkeypatch.setattr(_archive, "_identity", lambda fd: next(first, (1, 2, 3, 5)))
    with ArchiveExtraction(sample_archive("ResNet18"), progress=False) as extraction, \
            pytest.raises(SourceError, match="changed while it was being read; wait until it is complete"):
        extraction.result()


def test_a_record_of_the_wrong_size_is_refused(sample_archive, private_tmp, monkeypatch):
    from rnet_hub.archives import torchzip

    understood = torchzip.storages_to_write
    monkeypatch.setattr(torchzip, "storages_to_write",
                        lambda data: {k: (n + 4, keep) for k, (n, keep) in understood(data).items()})
    with ArchiveExtraction(sample_archive("ResNet18"), progress=False) as extraction, \
            pytest.raises(SourceError, match=r"not laid out as torch writes it \(the checkpoint's record "):
        extraction.result()
    assert list(private_tmp.iterdir()) == []


def test_a_child_that_dies_gives_a_clear_error(sample_archive, private_tmp):
    with ArchiveExtraction(sample_archive("ResNet50", with_optimizer=True), progress=False).start() as extraction:
        assert extraction._process is not None
        extraction._process.kill()  # as if the machine ran out of memory
        with pytest.raises(SourceError, match=r"stopped without an answer \(exit status -9\); run again"):
            extraction.result()
    assert list(private_tmp.iterdir()) == []


def test_closing_an_unfinished_extraction_stops_it_and_leaves_nothing(sample_archive, private_tmp):
    extraction = ArchiveExtraction(sample_archive("ResNet50", with_optimizer=True), progress=False).start()
    extraction.close()  # long before the 250 MB archive is read
    assert extraction._process is not None and extraction._process.returncode is not None
    assert list(private_tmp.iterdir()) == []


def test_cli_convert_of_an_archive_and_early_refusal_of_an_existing_output(sample_archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(sample_archive("ResNet18")), "--out", str(out), "-q"]) == 0
    assert "parity PASS" in capsys.readouterr().out
    with safetensors.safe_open(out / "model.safetensors", "pt") as weights:
        source_sha = weights.metadata()["source_sha256"]
    assert source_sha == hashlib.sha256(sample_archive("ResNet18").read_bytes()).hexdigest()
    assert main(["convert", str(sample_archive("ResNet18")), "--out", str(out), "-q"]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_import_is_lazy_and_tags_register_when_timm_is_imported():
    result = _python(
        "import json, sys, rnet_hub, rnet_hub.cli\n"
        "print(json.dumps(sorted(m for m in ('torch', 'timm') if m in sys.modules)))\n"
        "import timm\n"
        "print(json.dumps(sorted(timm.list_pretrained('*radiologynet*'))))\n"
        "print(json.dumps([rnet_hub.ARCHITECTURES[2].name, rnet_hub.convert.__module__]))\n")
    loaded, tags, names = (json.loads(line) for line in result.stdout.splitlines())
    assert loaded == []
    assert len(tags) == 10 and "resnet50.radiologynet" in tags
    assert names == ["ResNet50", "rnet_hub.converter"]


def test_tags_register_at_once_when_timm_came_first():
    result = _python("import timm, rnet_hub; print(timm.models.get_pretrained_cfg('vgg16.radiologynet').hf_hub_id)")
    assert result.stdout.strip() == "radiologynet/vgg16"


def test_unknown_attribute_error_names_the_package():
    import rnet_hub

    with pytest.raises(AttributeError, match="module 'rnet_hub' has no attribute 'nope'"):
        rnet_hub.nope  # noqa: B018


def test_console_entry_flushes_output_and_keeps_exit_status(sample_archive, tmp_path):
    """``run()`` leaves with ``os._exit``: the output must still arrive, and the status must be kept."""
    command = [sys.executable, "-m", "rnet_hub.cli", "convert", str(sample_archive("ResNet18")), "--out",
               str(tmp_path / "out"), "-q"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "parity PASS" in done.stdout and done.stdout.endswith("\n")
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2
    assert "already exists; choose another --out or pass --overwrite" in again.stderr
