"""Hostile inputs to ``rnet-hub embed`` (issue 12): nothing in a folder can hang a run or make it
ask for gigabytes.

* Only regular files (and symlinks to them) are opened: a FIFO (whose open blocks), a symlink to
  ``/dev/zero`` (which pydicom reads forever), a socket, a dangling symlink and a symlink to a
  folder are skipped with their reason, also when named on the command line.
* A file that takes longer than ``file_timeout`` to read is skipped, reading inline or in workers.
* A DICOM header claiming more pixels than the file holds (or, compressed, than the ceiling) is
  refused before pydicom allocates them.

Runs that could hang without the fixes happen in a child process under a hard time limit, or with
a watchdog that unblocks them, so that a regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager, suppress

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from rnet_hub.errors import BadInputError, ImageReadError
from rnet_hub.imaging import embed as embed_module
from rnet_hub.imaging.dicom import is_dicom, load_dicom, load_frames
from rnet_hub.imaging.embed import collect_inputs, embed

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "setitimer"),
                                reason="FIFOs and SIGALRM timers are POSIX")


def huge_dicom(path, source="MR_small.dcm", *, rows=65535, columns=65535, frames=1_000_000):
    """A small valid DICOM whose header claims (by default) a million 65535 x 65535 frames."""
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return path


def png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50), dtype=np.uint8)).save(path)
    return path


@contextmanager
def unblocking(fifo, after=20.0):
    """A watchdog that opens ``fifo`` for writing after ``after`` s: a reader blocked in ``open`` (the
    bug) is released, so that the test fails on its assertions instead of hanging."""
    done = threading.Event()

    def release():
        while not done.wait(after):
            with suppress(OSError):  # ENXIO: no reader waiting
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


@contextmanager
def deadline(seconds=30.0):
    """Fail (rather than hang) when the block takes longer than ``seconds``; ``Failed`` is a BaseException
    that no reader's ``except Exception`` swallows."""
    def expired(*_):
        pytest.fail(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "hostile"
    root.mkdir()
    png(root / "good.png")
    (root / "link.png").symlink_to(root / "good.png")  # a symlink to a regular file is read
    os.mkfifo(root / "pipe")
    (root / "zero").symlink_to("/dev/zero")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "elsewhere").mkdir()
    png(tmp_path / "elsewhere" / "other.png", seed=1)
    (root / "folder-link").symlink_to(tmp_path / "elsewhere")  # not followed: reported
    huge_dicom(root / "huge.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    with closing(sock):
        yield root


EXPECTED = {  # file name -> what its reason says
    "pipe": ["is a named pipe (FIFO), not a regular file"],
    "zero": ["is a character device (a symlink to /dev/zero)", "not a regular file"],
    "dangling": ["is a symlink to", "nowhere, which does not exist"],
    "folder-link": ["is a folder (a symlink to", "not a regular file"],
    "huge.dcm": ["claims 1000000 frames of 65535 x 65535 x 1 sample at 16 bits = 7,999,",
                 "GiB, more than the file holds"],
    "sock": ["is a socket, not a regular file"],
}

_CHILD = """
import json, sys
from rnet_hub.imaging.embed import embed
report = embed(**json.loads(sys.argv[1]))
print(json.dumps({"files": report.files, "images": report.images, "failed": report.failed,
                  "errors_csv": str(report.errors_csv)}))
"""


def embed_in_child(timeout=120, **kwargs):
    """``embed(**kwargs)`` in a child process that is killed after ``timeout`` s (a hang fails the test)."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps({"progress": False, "device": "cpu", **kwargs})],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and its loader workers
        child.communicate()
        pytest.fail(f"embed did not finish within {timeout} s")
    assert child.returncode == 0, err
    return json.loads(out.splitlines()[-1]), time.monotonic() - started


def check_reasons(failed, root, names):
    reasons = dict(failed)
    assert set(reasons) == {str(root / name) for name in names}
    for name in names:
        for part in EXPECTED[name]:
            assert part in reasons[str(root / name)], (name, reasons[str(root / name)])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_hostile_folder_finishes_and_embeds_only_the_regular_files(hostile, tmp_path, converted_dir, workers):
    stem = tmp_path / "out" / "emb"
    result, took = embed_in_child(inputs=[str(hostile)], model=str(converted_dir("ResNet18")), out=str(stem),
                                  num_workers=workers)
    assert (result["files"], result["images"]) == (2, 2)
    with open(f"{stem}.csv", newline="") as fh:
        assert [row["path"] for row in csv.DictReader(fh)] == [str(hostile / "good.png"), str(hostile / "link.png")]
    check_reasons(result["failed"], hostile, EXPECTED)
    with open(f"{stem}.errors.csv", newline="") as fh:
        assert [(row["path"], row["error"]) for row in csv.DictReader(fh)] == [tuple(f) for f in result["failed"]]
    assert all(error.startswith("ImageReadError: ") for _, error in result["failed"])
    assert took < 100


def test_explicit_inputs_that_are_not_regular_files_are_skipped(hostile, tmp_path, converted_dir):
    given = [hostile / n for n in ("good.png", "pipe", "zero", "dangling", "sock")]
    assert collect_inputs(given) == given  # listed, not opened (collecting a FIFO would otherwise not block)
    with pytest.raises(BadInputError, match="input not found"):
        collect_inputs([hostile / "good.png", tmp_path / "missing.png"])
    result, _ = embed_in_child(inputs=[str(p) for p in given], model=str(converted_dir("ResNet18")),
                               out=str(tmp_path / "emb"), num_workers=0)
    assert (result["files"], result["images"]) == (1, 1)
    check_reasons(result["failed"], hostile, ["pipe", "zero", "dangling", "sock"])


def test_readers_refuse_what_is_not_a_regular_file_without_opening_it(hostile):
    with unblocking(hostile / "pipe"), deadline():
        for name in ("pipe", "zero", "dangling", "sock", "folder-link"):
            for reader in (load_frames, load_dicom):
                with pytest.raises(ImageReadError, match=EXPECTED[name][0].replace("(", r"\(").replace(")", r"\)")):
                    reader(hostile / name)
            if name != "dangling":
                assert not is_dicom(hostile / name)
    assert load_frames(hostile / "link.png")[0].pixels.shape == (40, 50)


# ---------------------------------------------------------------------------------------
# Time limit
# ---------------------------------------------------------------------------------------

def slow_reader(kind, fifo):
    """A ``load_frames`` that takes ~20 s on ``slow.png`` (sleeping, spinning, or blocked in ``open``)."""
    real = embed_module.load_frames

    def load(path):
        if os.path.basename(path) == "slow.png":
            if kind == "sleep":
                time.sleep(20)
            elif kind == "spin":
                end = time.monotonic() + 20
                while time.monotonic() < end:
                    pass
            else:
                with open(fifo, "rb") as fh:  # blocks until a writer comes
                    fh.read()
        return real(path)

    return load


@pytest.mark.parametrize(("kind", "workers"), [("sleep", 0), ("spin", 0), ("blocking-open", 0), ("sleep", 1),
                                               ("blocking-open", 1)])
def test_a_slow_file_is_skipped_after_the_time_limit(tmp_path, converted_dir, monkeypatch, kind, workers):
    root = tmp_path / "in"
    root.mkdir()
    png(root / "fast.png")
    png(root / "slow.png", seed=1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(embed_module, "load_frames", slow_reader(kind, fifo))  # workers fork: they see it too
    handler = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with unblocking(fifo):
        report = embed([root], model=converted_dir("ResNet18"), out=tmp_path / "emb", num_workers=workers,
                       progress=False, device="cpu", file_timeout=0.5)
    assert time.monotonic() - started < 15
    assert (report.files, report.images) == (1, 1)
    assert report.failed == [(str(root / "slow.png"),
                              f"TimeoutError: {root / 'slow.png'} took longer than 0.5 s to read; skipped")]
    with open(report.errors_csv, newline="") as fh:
        assert [row["path"] for row in csv.DictReader(fh)] == [str(root / "slow.png")]
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_time_limit_holds_when_embed_is_called_from_another_thread(tmp_path, converted_dir, monkeypatch):
    """No SIGALRM outside the main thread: reading moves to a worker process, where the limit works."""
    png(tmp_path / "slow.png")
    monkeypatch.setattr(embed_module, "load_frames", slow_reader("sleep", None))
    reports = []
    thread = threading.Thread(target=lambda: reports.append(embed(
        [tmp_path / "slow.png"], model=converted_dir("ResNet18"), out=tmp_path / "emb", num_workers=0,
        progress=False, device="cpu", file_timeout=0.5)), daemon=True)
    thread.start()
    thread.join(timeout=15)
    assert not thread.is_alive() and reports, "embed did not finish within 15 s"
    assert [error for _, error in reports[0].failed] == [
        f"TimeoutError: {tmp_path / 'slow.png'} took longer than 0.5 s to read; skipped"]


def test_the_time_limit_keeps_an_outer_alarm(tmp_path, converted_dir):
    """A caller's own SIGALRM timer (pytest-timeout's, say) survives the per-file limit."""
    png(tmp_path / "a.png")
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 3600)
        embed([tmp_path / "a.png"], model=converted_dir("ResNet18"), out=tmp_path / "emb", num_workers=0,
              progress=False, device="cpu", file_timeout=30)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3000 < left <= 3600 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_bad_time_limit_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="--file-timeout must be 0"):
        embed([tmp_path], model="ResNet18", out=tmp_path / "emb", file_timeout=-1)


# ---------------------------------------------------------------------------------------
# Pixel size claims
# ---------------------------------------------------------------------------------------

def test_huge_uncompressed_claims_are_refused_before_decoding(tmp_path):
    path = huge_dicom(tmp_path / "huge.dcm")
    with pytest.raises(ImageReadError, match=r"claims 1000000 frames of 65535 x 65535 x 1 sample at 16 bits = "
                                             r"7,999,[\d.]+ GiB, more than the file holds \(9\.\d KiB\)"):
        load_frames(path)
    one = huge_dicom(tmp_path / "one.dcm", frames=None)  # a single frame, 8 GiB claimed
    with pytest.raises(ImageReadError, match=r"claims 1 frame of 65535 x 65535 x 1 sample at 16 bits = 8\.0 GiB"):
        load_dicom(one)
    ds = pydicom.dcmread(one)
    with pytest.raises(ImageReadError, match="more than the file holds"):
        load_dicom(ds)


def test_huge_compressed_claims_are_refused_at_the_ceiling(tmp_path, monkeypatch):
    path = huge_dicom(tmp_path / "rle.dcm", source="MR_small_RLE.dcm", frames=None)
    with pytest.raises(ImageReadError, match=r"claims 1 frame of 65535 x 65535 x 1 sample at 16 bits = 8\.0 GiB "
                                             r"decoded, more than the 2\.0 GiB allowed .*RNET_HUB_MAX_PIXEL_BYTES"):
        load_dicom(path)
    monkeypatch.setenv("RNET_HUB_MAX_PIXEL_BYTES", "8000")
    with pytest.raises(ImageReadError, match=r"= 8\.0 KiB decoded, more than the 7\.8 KiB allowed"):
        load_dicom(get_testdata_file("MR_small_RLE.dcm"))  # 64 x 64 x 16 bits = 8192 bytes
    monkeypatch.setenv("RNET_HUB_MAX_PIXEL_BYTES", "8192")
    assert load_dicom(get_testdata_file("MR_small_RLE.dcm"))[0].pixels.shape == (64, 64)


@pytest.mark.parametrize("name", ["MR_small.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "liver_1frame.dcm"])
def test_honest_files_still_decode(name):
    frames = load_dicom(get_testdata_file(name))
    assert frames and all(f.pixels.dtype == np.uint8 for f in frames)
