"""Reading sources: archive kinds, URLs, key layouts, and bad input that must fail cleanly."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from rnet_hub import legacy
from rnet_hub.cli import main
from rnet_hub.converter import convert, verify
from rnet_hub.errors import (
    HeadShapeError,
    OutputExistsError,
    ParityError,
    SourceError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from rnet_hub.legacy.checkpoint import open_legacy_checkpoint


def _pth_bytes(archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(tar.getmembers()[0]).read()


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path, compress: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


# ------------------------------------------------------------------------------------------------ good sources
def test_plain_tar_nested_member_and_bare_pth(sample_archive, tmp_path):
    pth = _pth_bytes(sample_archive("ResNet18"))
    nested = _tar_with([_file_member("models/v1/ResNet18.pth", pth)], tmp_path / "nested.tar", compress=False)
    tgz = _tar_with([_file_member("README.txt", b"hello"), _file_member("ResNet18.pth", pth)], tmp_path / "x.tgz")
    bare = tmp_path / "ResNet18.pth"
    bare.write_bytes(pth)
    digests = set()
    for source in (nested, tgz, bare):
        with open_legacy_checkpoint(source, progress=False) as checkpoint:
            assert "model.fc.weight" in checkpoint.state_dict
            assert checkpoint.metadata["model_name"] == "ResNet18"
            digests.add(checkpoint.sha256)
    assert len(digests) == 3


def test_other_layouts_module_prefix_and_bare_state_dict(tmp_path):
    state = legacy.build("MobileNetV3Small", num_classes=5).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pth")
    torch.save(state, tmp_path / "bare.pt")
    for name in ("dp.pth", "bare.pt"):
        result = convert(tmp_path / name, tmp_path / f"out-{name}", progress=False)
        assert (result.arch.name, result.num_classes) == ("MobileNetV3Small", 5)
        assert result.parity.passed


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_http_source_is_downloaded_to_the_cache(sample_archive, tmp_path):
    archive = sample_archive("ResNet18")
    handler = lambda *a, **k: _FileHandler(*a, directory=str(archive.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        result = convert(url, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    finally:
        server.shutdown()
    assert result.parity.passed
    cached = list((tmp_path / "cache").rglob("ResNet18.tar.gz"))
    assert len(cached) == 1 and cached[0].read_bytes() == archive.read_bytes()


def test_label_names_reach_config_and_transformers(tmp_path):
    from transformers import AutoConfig

    torch.save({"model_state": legacy.build("res18", num_classes=3).state_dict()}, tmp_path / "ft.pth")
    out = tmp_path / "ft"
    assert main(["convert", str(tmp_path / "ft.pth"), "--out", str(out), "-q",
                 "--label-names", "glioma,meningioma,none"]) == 0
    assert json.loads((out / "config.json").read_text())["label_names"] == ["glioma", "meningioma", "none"]
    assert AutoConfig.from_pretrained(out).id2label == {0: "glioma", 1: "meningioma", 2: "none"}
    with pytest.raises(ValueError, match="2 label names given but the checkpoint's head has 3 classes"):
        convert(tmp_path / "ft.pth", tmp_path / "bad", label_names=["a", "b"], progress=False)
    _assert_nothing_written(tmp_path / "bad")


def test_existing_output_needs_overwrite_and_verify_cli(sample_archive, converted_dir, tmp_path, capsys):
    out = converted_dir("ResNet18")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        convert(sample_archive("ResNet18"), out, progress=False)
    assert verify(out, sample_archive("ResNet18"), progress=False).passed
    assert main(["verify", str(out), "--against", str(sample_archive("ResNet18")), "-q"]) == 0
    assert "parity PASS" in capsys.readouterr().out
    other = sample_archive("ResNet18", seed=1)
    assert main(["verify", str(out), "--against", str(other), "-q"]) == 1
    assert "parity FAIL" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ bad sources
def test_truncated_gzip(sample_archive, tmp_path):
    data = sample_archive("ResNet18").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="not a complete archive.*truncated or corrupt"):
        convert(tmp_path / "cut.tar.gz", tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_member_with_parent_path(sample_archive, tmp_path):
    bad = _tar_with([_file_member("../ResNet18.pth", _pth_bytes(sample_archive("ResNet18")))], tmp_path / "a.tgz")
    with pytest.raises(SourceError, match=r"escapes the archive folder \('../ResNet18.pth'"):
        convert(bad, tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")
    assert not (tmp_path / "ResNet18.pth").exists()


def test_member_with_absolute_path(tmp_path):
    bad = _tar_with([_file_member("/tmp/evil.pth", b"x")], tmp_path / "abs.tgz")
    with pytest.raises(SourceError, match="absolute path"):
        convert(bad, tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_symlink_member(tmp_path):
    link = tarfile.TarInfo("ResNet18.pth")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    bad = _tar_with([(link, None)], tmp_path / "link.tgz")
    with pytest.raises(SourceError, match=r"link member \('ResNet18.pth' -> '/etc/passwd'\)"):
        convert(bad, tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_two_checkpoints_in_one_tar(sample_archive, tmp_path):
    pth = _pth_bytes(sample_archive("ResNet18"))
    bad = _tar_with([_file_member("a/ResNet18.pth", pth), _file_member("b/ResNet18.pth", pth)], tmp_path / "two.tgz")
    with pytest.raises(SourceError, match="more than one checkpoint"):
        convert(bad, tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model_state": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with gzip.open(tmp_path / "evil.tar.gz", "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(tmp_path / "evil.pth", arcname="ResNet18.pth")
    for source in ("evil.pth", "evil.tar.gz"):
        with pytest.raises(UnsafeCheckpointError, match="could run code when unpickled"):
            convert(tmp_path / source, tmp_path / "out", progress=False)
        _assert_nothing_written(tmp_path / "out")
    assert not marker.exists()


def test_unknown_architecture(tmp_path):
    torch.save({"model_state": {"encoder.weight": torch.zeros(4, 4)}}, tmp_path / "x.pth")
    with pytest.raises(UnknownArchitectureError, match="matches none of the ten RadiologyNET architectures"):
        convert(tmp_path / "x.pth", tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_wrong_arch_flag(tmp_path):
    torch.save({"model_state": legacy.build("res18").state_dict()}, tmp_path / "r18.pth")
    with pytest.raises(UnknownArchitectureError, match="not a legacy ResNet34"):
        convert(tmp_path / "r18.pth", tmp_path / "out", arch="res34", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_head_of_impossible_shape(tmp_path):
    state = legacy.build("ResNet50").state_dict()
    state["model.fc.weight"] = torch.zeros(36, 512)
    torch.save({"model_state": state}, tmp_path / "r50.pth")
    with pytest.raises(HeadShapeError, match=r"shape \(36, 512\).*must be \(num_classes, 2048\)"):
        convert(tmp_path / "r50.pth", tmp_path / "out", progress=False)
    _assert_nothing_written(tmp_path / "out")


def test_not_a_checkpoint_and_missing_file(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("hello")
    assert main(["convert", str(tmp_path / "notes.pth"), "--out", str(tmp_path / "out")]) == 2
    assert "neither a .tar.gz/.tar archive nor a PyTorch checkpoint" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.tar.gz")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "out")


def test_failed_parity_leaves_nothing(monkeypatch, sample_archive, tmp_path):
    import rnet_hub.legacy.keymap as keymap

    def broken(state_dict):
        mapped = keymap.map_resnet(state_dict)
        mapped["layer1.0.bn1.running_mean"] = mapped["layer1.0.bn1.running_mean"] + 1.0
        return mapped

    monkeypatch.setitem(keymap._MAPS, "resnet", broken)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(ParityError, match="does not reproduce the original"):
        convert(sample_archive("ResNet18"), out, progress=False)
    assert not (tmp_path / "new").exists()


_PEAK_CHILD = """
import sys
from rnet_hub.legacy.checkpoint import open_legacy_checkpoint

def peak():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size
start = peak()
with open_legacy_checkpoint(sys.argv[1], progress=False) as checkpoint:
    # every tensor is read (its pages count towards the peak); the checksum lets the parent check what was read
    checksum = sum(float(t.double().sum()) for t in checkpoint.state_dict.values())
    count = len(checkpoint.state_dict)
print(peak() - start, count, repr(checksum))
"""


def _plain_checksum(archive: Path) -> tuple[int, float]:
    """What the child must have read: the model weights as plain ``torch.load`` gives them."""
    state = torch.load(io.BytesIO(_pth_bytes(archive)), weights_only=True)["model_state"]
    return len(state), sum(float(t.double().sum()) for t in state.values())


def test_optimizer_state_is_never_read_into_memory(sample_archive):
    """An archive with AdamW state (3x the model) costs no more memory to open than one without."""
    import subprocess
    import sys

    def peak_growth(archive: Path) -> int:
        result = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(archive)], check=True,
                                capture_output=True, text=True)
        growth, count, checksum = result.stdout.strip().splitlines()[-1].split()
        # the reader gave the weights the archive holds, all of them (the optimizer's holes touched none)
        assert (int(count), float(checksum)) == _plain_checksum(archive)
        return int(growth)

    model_bytes = 4 * sum(p.numel() for p in legacy.build_on_meta("ResNet18").parameters())
    with_optimizer = peak_growth(sample_archive("ResNet18", with_optimizer=True))
    without = peak_growth(sample_archive("ResNet18", with_optimizer=False))
    # reading the AdamW moments would add 2 x model_bytes; allow a fifth of one model for noise
    assert with_optimizer - without <= 0.2 * model_bytes, (with_optimizer, without, model_bytes)
