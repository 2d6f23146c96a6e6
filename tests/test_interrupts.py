"""Interrupted conversions leave nothing behind (issue 12, items 4 and 6).

* Ctrl-C, SIGTERM and SIGHUP stop ``rnet-hub convert`` with 130, 143 and 129 and one line, after removing the
  extraction folder and the staging folder; a signal that lands where it is swallowed (torch's
  import) still stops the command at its next step;
* the extraction child dies with its parent and never prints a traceback for a broken pipe;
* the leftovers of a SIGKILLed run (told by their run lock, :mod:`rnet_hub.leftovers`) are removed
  by the next conversion and by ``rnet-hub clean``; a live run's are never touched; an earlier
  output that a killed ``--overwrite`` had moved aside is put back;
* a gzip stream corrupt in the middle or in its header is a :class:`SourceError`, never a traceback.

The end-to-end cases run the installed console script with ``TMPDIR`` pointed at a folder of the
test's own and time each signal by watching that folder and the output's parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rnet_hub import interrupts
from rnet_hub.archives.extract import ArchiveExtraction, remove_dead_extractions
from rnet_hub.cli import main
from rnet_hub.errors import OutputExistsError, SourceError
from rnet_hub.folder import CONFIG_NAME, WEIGHTS_NAME
from rnet_hub.leftovers import RunLock
from rnet_hub.staging import refuse_existing, remove_dead_runs

SCRIPT = Path(sys.executable).with_name("rnet-hub")
#: Runs the console script with SIGINT and SIGHUP at their defaults (a background job's starter, or
#: nohup, may ignore them; an ignored signal stays ignored across exec).
SIGNALS_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])")


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("rnet-hub-"))


def _extraction_children(temp: Path) -> list[int]:
    """Live (not zombie) processes extracting into ``temp``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{temp}/rnet-hub-extract-".encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ corrupt gzip
def _damaged(source: Path, folder: Path, where: str) -> Path:
    data = bytearray(source.read_bytes())
    if where == "middle":
        middle = len(data) // 2
        data[middle: middle + 4096] = bytes(b ^ 0x5A for b in data[middle: middle + 4096])
    else:
        data[3] = 0xE0  # FLG with reserved bits set: no valid gzip header
    path = folder / f"{where}.tar.gz"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("where", ["middle", "header"])
@pytest.mark.parametrize("how", ["isal", "zlib", "child"])
def test_a_corrupt_gzip_stream_is_a_source_error(where, how, sample_archive, tmp_path, private_tmp, monkeypatch):
    bad = _damaged(sample_archive("ResNet18"), tmp_path, where)
    if how == "zlib":
        monkeypatch.setitem(sys.modules, "isal", None)  # the standard library's decoder
    message = rf"{where}.tar.gz is not a valid gzip archive \(.+\); .*download it again"
    with ArchiveExtraction(bad, progress=False) as extraction, pytest.raises(SourceError, match=message):
        if how == "child":
            extraction.start()
        extraction.result()
    assert _ours(private_tmp) == []


def test_the_cli_reports_a_corrupt_archive_in_one_line(sample_archive, tmp_path, private_tmp, capsys):
    bad = _damaged(sample_archive("ResNet18"), tmp_path, "middle")
    assert main(["convert", str(bad), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "error: middle.tar.gz is not a valid gzip archive" in capsys.readouterr().err
    assert _ours(private_tmp) == [] and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the extraction child
def test_the_child_exits_quietly_when_nobody_reads_its_answer(sample_archive, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    child = subprocess.Popen([sys.executable, "-m", "rnet_hub.archives.extract", str(sample_archive("ResNet18")),
                              str(workdir), "--parent", str(os.getpid())],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the answer will find no reader
    try:
        errors = child.stderr.read()  # until the child ends; stdin stays open (its end would stop the child)
        child.wait(timeout=120)
    finally:
        child.kill()
        child.stdin.close()
        child.wait()
    assert b"Traceback" not in errors and b"BrokenPipeError" not in errors, errors.decode()
    assert not workdir.exists()  # nobody will use the extracted file: deleted


def test_the_child_dies_with_its_parent(sample_archive, private_tmp):
    slow_archive = sample_archive("ResNet50", with_optimizer=True)  # 250 MB: extracting it takes seconds
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rnet_hub.archives.extract import ArchiveExtraction; "
                               "e = ArchiveExtraction(Path(sys.argv[1]), progress=False).start(); "
                               "print(e._process.pid, flush=True); time.sleep(120)", str(slow_archive)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(private_tmp)})
    try:
        child = int(parent.stdout.readline())
        _wait_for(lambda: any(p.stat().st_size for p in private_tmp.glob("rnet-hub-extract-*/*")), 60,
                  "the extraction to begin")
    finally:
        parent.kill()
        parent.wait()
    _wait_for(lambda: not _extraction_children(private_tmp), 10, f"the extraction child {child} to end")
    _wait_for(lambda: not _ours(private_tmp), 5, "the child to delete its folder")


# ------------------------------------------------------------------------------------------ leftovers
def _dead_lock(path: Path) -> None:
    """A run lock whose owner is gone: a lock file that nobody holds."""
    path.write_text("1\n")


def test_only_dead_runs_extractions_are_removed(private_tmp):
    dead = private_tmp / "rnet-hub-extract-deadbeef"
    (dead / "sub").mkdir(parents=True)
    (dead / "ResNet50.pth").write_bytes(b"x" * 10_000)
    _dead_lock(private_tmp / "rnet-hub-extract-deadbeef.lock")
    unmarked = private_tmp / "rnet-hub-extract-oldstyle"  # an older rnet-hub's: no lock file
    unmarked.mkdir()
    live = RunLock.create(private_tmp, lambda token: f"rnet-hub-extract-{token}.lock")
    (private_tmp / f"rnet-hub-extract-{live.token}").mkdir()
    try:
        found = {(f.action, f.path.name) for f in remove_dead_extractions(private_tmp)}
        assert found == {("remove", dead.name), ("keep", unmarked.name),
                         ("in use", f"rnet-hub-extract-{live.token}")}
        assert _ours(private_tmp) == sorted([unmarked.name, f"rnet-hub-extract-{live.token}", live.path.name])
    finally:
        live.release()


def _earlier_output(folder: Path, marker: str) -> Path:
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(f'{{"marker": "{marker}"}}\n')
    (folder / WEIGHTS_NAME).write_bytes(marker.encode())
    return folder


def test_a_killed_overwrite_gives_the_earlier_output_back(tmp_path):
    out = tmp_path / "out"
    _dead_lock(tmp_path / ".out.lock-0a1b2c3d")
    _earlier_output(tmp_path / ".out.old-0a1b2c3d", "earlier")  # moved aside, the new one not yet in place
    (tmp_path / ".out.partial-0a1b2c3d").mkdir()
    with pytest.raises(OutputExistsError, match="already exists; choose another --out or pass --overwrite"):
        refuse_existing(out, False)  # the check of the next conversion clears them first
    assert (out / CONFIG_NAME).read_text() == '{"marker": "earlier"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_moved_aside_output_is_deleted_behind_a_new_one_and_kept_behind_anything_else(tmp_path):
    _earlier_output(tmp_path / "a", "new")  # the killed run had put its output in place
    _dead_lock(tmp_path / ".a.lock-0a1b2c3d")
    _earlier_output(tmp_path / ".a.old-0a1b2c3d", "earlier")
    (tmp_path / "b").write_text("someone's file")  # something else took the place
    _dead_lock(tmp_path / ".b.lock-0a1b2c3d")
    _earlier_output(tmp_path / ".b.old-0a1b2c3d", "earlier")
    found = {(f.action, f.path.name) for f in remove_dead_runs(tmp_path)}
    assert found == {("remove", ".a.old-0a1b2c3d"), ("keep", ".b.old-0a1b2c3d")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.lock-0a1b2c3d", ".b.old-0a1b2c3d", "a", "b"]


def test_clean_lists_with_dry_run_then_removes(private_tmp, tmp_path, capsys, monkeypatch):
    dead = private_tmp / "rnet-hub-extract-deadbeef"
    dead.mkdir()
    _dead_lock(private_tmp / "rnet-hub-extract-deadbeef.lock")
    outs = tmp_path / "outs"
    (outs / ".model.partial-12345678").mkdir(parents=True)
    _dead_lock(outs / ".model.lock-12345678")
    monkeypatch.chdir(outs)
    assert main(["clean", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"would remove {dead} (" in printed and f"would remove {outs / '.model.partial-12345678'} (" in printed
    assert dead.exists() and (outs / ".model.partial-12345678").exists()
    assert main(["clean"]) == 0
    assert printed.replace("would remove", "removed") == capsys.readouterr().out
    assert _ours(private_tmp) == [] and list(outs.iterdir()) == []
    assert main(["clean", str(outs)]) == 0
    assert capsys.readouterr().out.startswith("nothing to clean: no leftovers of killed conversions in ")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_swallowed_sigterm_or_sighup_still_ends_the_command(sig, status, monkeypatch, capsys):
    from rnet_hub.cli import clean

    def swallowing(args):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises in here
        except BaseException:  # as torch's C++ import of numpy does
            pass
        return 0

    monkeypatch.setattr(clean, "_cmd_clean", swallowing)
    started_with = signal.signal(sig, signal.SIG_DFL)  # as from a terminal (not under nohup)
    try:
        assert main(["clean"]) == status
        assert capsys.readouterr().err == f"terminated ({sig.name}); nothing was left half-written\n"
        assert interrupts.requested() is None and signal.getsignal(sig) == signal.SIG_DFL  # all as it was
    finally:
        signal.signal(sig, started_with)


def test_an_ignored_sighup_stays_ignored_under_nohup(monkeypatch):
    monkeypatch.setattr(interrupts, "_received", [])
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts.handled():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM is still handled
            os.kill(os.getpid(), signal.SIGHUP)  # nohup: the terminal closing must not stop the command
            time.sleep(0.05)
            assert interrupts.requested() is None
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


# ------------------------------------------------------------------------------------------ the real console script
#: When to send the signal: what has to be there first.
POINTS: dict[str, Callable[[Path, Path], bool]] = {
    "right after start": lambda temp, outs: bool(_ours(temp)),
    "while extracting": lambda temp, outs: any(p.stat().st_size for p in temp.glob("rnet-hub-extract-*/*.pth")),
    "after the extraction": lambda temp, outs: any(outs.glob(".out.partial-*")),
}


def _convert(archive: Path, tmp_path: Path, out: str = "out") -> tuple[subprocess.Popen[str], Path, Path]:
    temp, outs = tmp_path / "tmp", tmp_path / "outs"
    temp.mkdir(exist_ok=True)
    outs.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temp), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    env.pop("RNET_HUB_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-c", SIGNALS_DEFAULT, str(SCRIPT), "convert", str(archive),
                                "--out", str(outs / out), "-q"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, temp, outs


def _interrupt(process: subprocess.Popen[str], temp: Path, outs: Path, point: str, sig: signal.Signals) -> str:
    try:
        _wait_for(lambda: POINTS[point](temp, outs) or process.poll() is not None, 120, point)
        assert process.poll() is None, f"the conversion ended before {point}: {process.stderr.read()}"
        process.send_signal(sig)
        _, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return errors


def _archive_for(point: str, sample_archive: Callable[..., Path]) -> Path:
    """A slow extraction to signal during it; the small archive to signal after it (sooner there)."""
    if point == "after the extraction":
        return sample_archive("ResNet18")
    return sample_archive("ResNet50", with_optimizer=True)


@pytest.mark.parametrize(("sig", "point"), [("SIGINT", "while extracting"),
                                            ("SIGTERM", "right after start"),
                                            ("SIGTERM", "while extracting"),
                                            ("SIGTERM", "after the extraction"),
                                            ("SIGHUP", "while extracting")])
def test_ctrl_c_sigterm_and_sighup_leave_nothing(sig, point, sample_archive, tmp_path):
    process, temp, outs = _convert(_archive_for(point, sample_archive), tmp_path)
    errors = _interrupt(process, temp, outs, point, getattr(signal, sig))
    status, word = {"SIGINT": (130, "interrupted"), "SIGTERM": (143, "terminated (SIGTERM)"),
                    "SIGHUP": (129, "terminated (SIGHUP)")}[sig]
    assert process.returncode == status, errors
    assert errors.endswith(f"{word}; nothing was left half-written\n") and "Traceback" not in errors, errors
    assert _ours(temp) == [] and list(outs.iterdir()) == []
    _wait_for(lambda: not _extraction_children(temp), 10, "the extraction child to end")


@pytest.mark.parametrize("point", ["while extracting", "after the extraction"])
def test_after_sigkill_the_child_ends_and_the_next_run_removes_the_rest(point, sample_archive, tmp_path):
    process, temp, outs = _convert(_archive_for(point, sample_archive), tmp_path)
    errors = _interrupt(process, temp, outs, point, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL and "Traceback" not in errors, errors
    _wait_for(lambda: not _extraction_children(temp), 10, "the extraction child to end")
    if point == "while extracting":  # the child deletes its folder as it goes
        _wait_for(lambda: not _ours(temp), 5, "the child to delete its folder")
        return
    assert _ours(temp) and [p.name for p in outs.iterdir() if p.name.startswith(".out.partial-")]  # the leftovers
    env = {**os.environ, "TMPDIR": str(temp)}
    # The next conversion (of a corrupt archive here: it fails quickly) clears them before it starts.
    bad = _damaged(sample_archive("ResNet18"), tmp_path, "middle")
    done = subprocess.run([str(SCRIPT), "convert", str(bad), "--out", str(outs / "other"), "-q"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "middle.tar.gz is not a valid gzip archive" in done.stderr, done.stderr
    assert _ours(temp) == [] and list(outs.iterdir()) == []
