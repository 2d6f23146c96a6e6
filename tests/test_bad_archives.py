"""Bad sources fail with a clear error from ``rnet_hub.errors`` and leave nothing behind.

Each case runs through ``rnet_hub.convert`` (the API) with the temp folder pointed at a folder
of the test's own, and asserts the error class, a fragment of its message, that ``out`` was not
created (nor a staging folder beside it) and that the temp folder is empty afterwards. Some
also run through the ``rnet-hub convert`` console script: exit status 2 and exactly one
``error:`` line, no traceback.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reference_topologies import build_reference

from rnet_hub import convert
from rnet_hub.errors import HeadShapeError, RnetHubError, SourceError

CLI = Path(sys.executable).with_name("rnet-hub")
#: the stand-in whose gzip stream the corrupt-gzip cases damage (small: 6 MB)
GZIP_BASE = "MobileNetV3Small"
#: gives the stand-in archive of GZIP_BASE (made on first use)
Base = Callable[[], Path]


# ------------------------------------------------------------------------------------------ writing bad sources
def _tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers; writing the header needs no privilege
    return info, None


def _hard_link(tmp: Path, _base: Base) -> Path:
    return _tgz(tmp / "hardlink.tar.gz", [_file("other.txt", b"x"), _special("ResNet18.pth", tarfile.LNKTYPE,
                                                                             "other.txt")])


def _char_device(tmp: Path, _base: Base) -> Path:
    return _tgz(tmp / "chr.tar.gz", [_special("ResNet18.pth", tarfile.CHRTYPE)])


def _block_device(tmp: Path, _base: Base) -> Path:
    return _tgz(tmp / "blk.tar.gz", [_special("ResNet18.pth", tarfile.BLKTYPE)])


def _fifo(tmp: Path, _base: Base) -> Path:
    return _tgz(tmp / "fifo.tar.gz", [_special("ResNet18.pth", tarfile.FIFOTYPE)])


def _no_checkpoint(tmp: Path, _base: Base) -> Path:
    return _tgz(tmp / "empty.tar.gz", [_file("README.txt", b"hello"), _file("weights/notes.md", b"# none")])


def _random_bytes(tmp: Path, _base: Base) -> Path:
    path = tmp / "random.pth"
    path.write_bytes(random.Random(0).randbytes(64 * 1024))
    return path


def _pickle_header_then_garbage(tmp: Path, _base: Base) -> Path:
    path = tmp / "garbage.pth"  # a legacy (non-zip) torch file starts with a pickle protocol opcode
    path.write_bytes(b"\x80\x02" + random.Random(1).randbytes(64 * 1024))
    return path


def _torch_zip(tmp: Path) -> tuple[Path, bytes, zipfile.ZipFile]:
    path = tmp / "good.pth"
    torch.save({"model_state": build_reference("MobileNetV3Small").state_dict(), "epoch": 1}, path)
    return path, path.read_bytes(), zipfile.ZipFile(path)


def _zip_without_central_directory(tmp: Path, _base: Base) -> Path:
    _, data, _ = _torch_zip(tmp)
    path = tmp / "no-directory.pth"
    path.write_bytes(data[:-30])  # the end-of-central-directory record is 22 bytes; cut into it
    return path


def _zip_with_broken_pickle_record(tmp: Path, _base: Base) -> Path:
    _, data, archive = _torch_zip(tmp)
    record = archive.getinfo(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26: record.header_offset + 30])
    middle = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
    broken = bytearray(data)
    broken[middle: middle + 32] = b"\xff" * 32
    path = tmp / "broken-record.pth"
    path.write_bytes(bytes(broken))
    return path


def _zip_with_damaged_tensor_bytes(tmp: Path, _base: Base) -> Path:
    """Bytes of a weight storage overwritten: torch.load would read them without a word."""
    _, data, archive = _torch_zip(tmp)
    storages = [info for info in archive.infolist() if "/data/" in info.filename and info.file_size >= 64]
    record = max(storages, key=lambda info: info.file_size)
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26: record.header_offset + 30])
    middle = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
    damaged = bytearray(data)
    damaged[middle: middle + 4] = bytes(b ^ 0xFF for b in damaged[middle: middle + 4])
    path = tmp / "damaged.pth"
    path.write_bytes(bytes(damaged))
    return path


def _saved(tmp: Path, name: str, obj: object) -> Path:
    torch.save(obj, tmp / name)
    return tmp / name


def _a_list(tmp: Path, _base: Base) -> Path:
    return _saved(tmp, "list.pth", [1, 2, 3])


def _no_tensors(tmp: Path, _base: Base) -> Path:
    return _saved(tmp, "foo.pth", {"foo": "bar"})


def _no_head(tmp: Path, _base: Base) -> Path:
    state = {k: v for k, v in build_reference("ResNet18").state_dict().items() if not k.startswith("model.fc.")}
    return _saved(tmp, "headless.pth", {"model_state": state, "model_name": "ResNet18", "epoch": 3})


def _damaged(tmp: Path, base: Base, name: str, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray(base().read_bytes())
    edit(data)
    path = tmp / name
    path.write_bytes(bytes(data))
    return path


def _bad_magic(tmp: Path, base: Base) -> Path:
    return _damaged(tmp, base, "magic.tar.gz", lambda d: d.__setitem__(slice(0, 2), b"\x1f\x8c"))


def _bad_method(tmp: Path, base: Base) -> Path:  # right magic, compression method 9 (only 8, deflate, exists)
    return _damaged(tmp, base, "method.tar.gz", lambda d: d.__setitem__(2, 9))


def _invalid_deflate_block(tmp: Path, base: Base) -> Path:
    def edit(data: bytearray) -> None:
        middle = len(data) // 2
        data[middle: middle + 1024] = b"\xff" * 1024  # block type 3 does not exist

    return _damaged(tmp, base, "deflate.tar.gz", edit)


def _flipped_bit(tmp: Path, base: Base) -> Path:
    def edit(data: bytearray) -> None:
        data[len(data) // 2] ^= 0x55  # still decodes, to wrong bytes: only the content or the CRC can tell

    return _damaged(tmp, base, "flipped.tar.gz", edit)


#: id -> (writer, error class, message fragment (a regex))
CASES: dict[str, tuple[Callable[[Path, Base], Path], type[RnetHubError], str]] = {
    "hard-link": (_hard_link, SourceError, r"link member \('ResNet18.pth' -> 'other.txt'\)"),
    "char-device": (_char_device, SourceError, r"not a regular file or folder \('ResNet18.pth'\)"),
    "block-device": (_block_device, SourceError, r"not a regular file or folder \('ResNet18.pth'\)"),
    "fifo": (_fifo, SourceError, r"not a regular file or folder \('ResNet18.pth'\)"),
    "no-checkpoint-member": (_no_checkpoint, SourceError, r"empty.tar.gz contains no checkpoint"),
    "random-bytes": (_random_bytes, SourceError, r"random.pth is neither a .tar.gz/.tar archive nor a PyTorch"),
    "pickle-header-then-garbage": (_pickle_header_then_garbage, SourceError, r"garbage.pth"),
    "zip-without-central-directory": (_zip_without_central_directory, SourceError,
                                      r"no-directory.pth is not a readable PyTorch checkpoint"),
    "zip-broken-pickle-record": (_zip_with_broken_pickle_record, SourceError, r"broken-record.pth"),
    "zip-damaged-tensor-bytes": (_zip_with_damaged_tensor_bytes, SourceError,
                                 r"damaged.pth is corrupt: its record \S+/data/\d+ does not match the CRC-32"),
    "pickled-list": (_a_list, SourceError, r"list.pth holds a list, not a checkpoint dict or state dict"),
    "dict-without-tensors": (_no_tensors, SourceError, r"foo.pth has no state dict under any of"),
    "state-dict-without-head": (_no_head, HeadShapeError, r"ResNet18 state dict has no classification head"),
    "gzip-bad-magic": (_bad_magic, SourceError, r"magic.tar.gz is neither a .tar.gz/.tar archive"),
    "gzip-bad-method": (_bad_method, SourceError, r"method.tar.gz .*corrupt"),
    "gzip-invalid-deflate-block": (_invalid_deflate_block, SourceError, r"deflate.tar.gz .*corrupt"),
    "gzip-flipped-bit": (_flipped_bit, SourceError, r"flipped.tar.gz .*corrupt"),
}
CLI_CASES = ("hard-link", "gzip-invalid-deflate-block", "pickled-list")


# ------------------------------------------------------------------------------------------ checks
@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder of this test's own, for tempfile (in process) and TMPDIR (child processes)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def _make(case: str, sample_archive: Callable[..., Path], tmp_path: Path) -> Path:
    sources = tmp_path / "sources"
    sources.mkdir()
    return CASES[case][0](sources, lambda: sample_archive(GZIP_BASE))


def _assert_left_nothing(out: Path, private_tmp: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "staging left beside out"
    assert not list(private_tmp.iterdir()), f"left in the temp folder: {sorted(p.name for p in private_tmp.iterdir())}"


@pytest.mark.parametrize("case", list(CASES))
def test_convert_refuses_with_a_clear_error(case, sample_archive, tmp_path, private_tmp):
    source = _make(case, sample_archive, tmp_path)
    _, error, fragment = CASES[case]
    out = tmp_path / "out"
    with pytest.raises(error, match=fragment):
        convert(source, out, progress=False)
    _assert_left_nothing(out, private_tmp)
    assert source.is_file()  # the source is only read


@pytest.mark.parametrize("case", CLI_CASES)
def test_console_script_exits_2_with_one_error_line(case, sample_archive, tmp_path, private_tmp):
    source = _make(case, sample_archive, tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    env.pop("RNET_HUB_DEBUG", None)
    done = subprocess.run([str(CLI), "convert", str(source), "--out", str(out), "-q"], env=env,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert source.name in errors[0]
    _assert_left_nothing(out, private_tmp)


def test_the_temp_folder_check_sees_extractions(sample_archive, private_tmp):
    """The checks above are not vacuous: an archive's extraction does live in the redirected temp folder."""
    from rnet_hub.legacy import open_legacy_checkpoint

    with open_legacy_checkpoint(sample_archive(GZIP_BASE), progress=False) as checkpoint:
        assert checkpoint.state_dict
        assert list(private_tmp.iterdir()), "the extraction did not use the temp folder"
    assert not list(private_tmp.iterdir())


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling symlink"])
def test_a_source_that_is_no_regular_file_is_named_for_what_it_is(kind: str, tmp_path: Path) -> None:
    source = tmp_path / "ResNet18.tar.gz"
    if kind == "folder":
        source.mkdir()
    elif kind == "fifo":
        os.mkfifo(source)
    else:
        source.symlink_to(tmp_path / "gone.tar.gz")
    expected = {"folder": "is a folder, not a regular file", "fifo": r"is a named pipe \(FIFO\), not a regular file",
                "dangling symlink": "is a symlink to .*gone.tar.gz, which does not exist"}[kind]
    with pytest.raises(SourceError, match=expected):  # never opened: a FIFO would block here
        convert(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_member_larger_than_any_checkpoint_is_refused_from_its_header(private_tmp: Path, tmp_path: Path) -> None:
    """A 3 GiB member (a zip bomb of zeros, or a lying header) is refused before a byte of it is written."""
    header = tarfile.TarInfo("ResNet18.pth")
    header.size = 3 * 2**30
    archive = tmp_path / "ResNet18.tar.gz"
    with gzip.open(archive, "wb") as out:  # the header and a little data: enough for the reader to decide
        out.write(header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    with pytest.raises(SourceError, match=r"ResNet18.pth in ResNet18.tar.gz is 3.0 GiB, more than a ResNet18 "
                                          r"checkpoint can be \(at most 234 MiB"):
        convert(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert list(private_tmp.iterdir()) == []
