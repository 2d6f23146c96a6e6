"""Copying a checkpoint without its optimizer state: holes only where nothing reads, else a byte copy."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import torch

from rnet_hub.archives.torchzip import copy_checkpoint, storages_to_write


def _member_bytes(archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(next(m for m in tar.getmembers() if m.isfile())).read()


def _copy(data: bytes, target: Path) -> int:
    with open(target, "wb") as out:
        skipped = copy_checkpoint(io.BytesIO(data), out, len(data))
        out.truncate(len(data))
    return skipped


def test_optimizer_storages_become_holes_and_the_weights_stay_exact(sample_archive, tmp_path):
    data = _member_bytes(sample_archive("ResNet18", with_optimizer=True))
    (tmp_path / "full.pth").write_bytes(data)
    skipped = _copy(data, tmp_path / "sparse.pth")
    full = torch.load(tmp_path / "full.pth", weights_only=True, mmap=True)
    sparse = torch.load(tmp_path / "sparse.pth", weights_only=True, mmap=True)

    assert (tmp_path / "sparse.pth").stat().st_size == len(data)
    assert sparse["model_state"].keys() == full["model_state"].keys()
    assert all(torch.equal(sparse["model_state"][k], full["model_state"][k]) for k in full["model_state"])
    assert {k: v for k, v in sparse.items() if "state" not in k} == {k: v for k, v in full.items() if "state" not in k}
    moments = [t for s in full["optimizer_state"]["state"].values() for n, t in s.items() if n != "step"]
    moment_bytes = sum(t.numel() * t.element_size() for t in moments)
    assert skipped >= moment_bytes  # both AdamW moments (and the step counters) were not written
    allocated = os.stat(tmp_path / "sparse.pth").st_blocks * 512
    assert allocated < len(data) - moment_bytes * 0.9, (allocated, len(data), moment_bytes)
    assert all(not t.any() for s in sparse["optimizer_state"]["state"].values() for t in s.values())


def test_bare_state_dicts_and_old_format_checkpoints_are_copied_byte_for_byte(tmp_path):
    weights = {"fc.weight": torch.randn(8, 4), "fc.bias": torch.randn(8)}
    for name, kwargs in (("bare.pth", {}), ("old.pth", {"_use_new_zipfile_serialization": False})):
        torch.save(weights, tmp_path / name, **kwargs)
        data = (tmp_path / name).read_bytes()
        assert _copy(data, tmp_path / f"copy-{name}") == 0
        assert (tmp_path / f"copy-{name}").read_bytes() == data


class _RunsCode:
    """Unpickled unsafely, this creates the folder named by $RNET_TEST_MARKER."""

    def __reduce__(self):
        return (os.mkdir, (os.environ["RNET_TEST_MARKER"],))


def test_a_pickle_that_would_run_code_runs_nothing_and_turns_holes_off(tmp_path, monkeypatch):
    marker = tmp_path / "was-run"
    monkeypatch.setenv("RNET_TEST_MARKER", str(marker))
    payload = pickle.dumps({"model_state": {"w": 1}, "trap": _RunsCode()}, protocol=2)
    assert storages_to_write(payload) is None
    assert not marker.exists()

    torch.save({"model_state": {"w": torch.ones(3)}, "optimizer_state": {"m": torch.ones(1000)},
                "trap": _RunsCode()}, tmp_path / "trap.pth")
    data = (tmp_path / "trap.pth").read_bytes()
    assert _copy(data, tmp_path / "copy.pth") == 0
    assert (tmp_path / "copy.pth").read_bytes() == data
    assert not marker.exists()
