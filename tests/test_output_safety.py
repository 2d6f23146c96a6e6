"""What a conversion may write over (issue 12): never a folder it did not make, never an output that appeared meanwhile.

* ``--out .``, ``--out ""``, a parent of the current directory, the root and the home folder are
  refused up front, even with ``--overwrite`` (``--out . --overwrite`` used to empty the current
  directory);
* ``--overwrite`` replaces only an earlier output (``config.json`` + ``model.safetensors`` and
  nothing but the files a conversion writes) or an empty folder; a file or a symbolic link at
  ``--out`` is refused before anything is read or written;
* of two conversions to one folder at once, the second to finish fails with
  :class:`OutputExistsError` and leaves nothing behind; the first output stays intact.

Most tests drive :func:`refuse_existing` and :func:`atomic_output` directly (no torch).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rnet_hub import staging as folder
from rnet_hub.cli import main
from rnet_hub.errors import BadInputError, OutputExistsError
from rnet_hub.folder import CARD_NAME, CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME
from rnet_hub.staging import atomic_output, refuse_existing

SCRIPT = Path(sys.executable).parent / "rnet-hub"


@pytest.fixture(params=["renameat2", "fallback"])
def rename_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with Linux's ``renameat2(RENAME_NOREPLACE)`` and with the check-then-rename fallback."""
    if request.param == "renameat2" and folder._libc_renameat2() is None:
        pytest.skip("no renameat2 here")
    if request.param == "fallback":
        monkeypatch.setattr(folder, "_libc_renameat2", lambda: None)
    return request.param


def _output(path: Path, marker: str = "old", *, record: bool = True) -> Path:
    """A folder laid out as an earlier conversion output (the batch's record included)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(f'{{"marker": "{marker}"}}\n')
    (path / WEIGHTS_NAME).write_bytes(marker.encode())
    (path / CARD_NAME).write_text(f"# {marker}\n")
    if record:
        (path / RECORD_NAME).write_text("{}\n")
    return path


def _write(staging: Path, marker: str) -> None:
    (staging / CONFIG_NAME).write_text(f'{{"marker": "{marker}"}}\n')
    (staging / WEIGHTS_NAME).write_bytes(marker.encode())


def _marker(path: Path) -> str:
    return (path / WEIGHTS_NAME).read_text()


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (hidden ones too) with its content (or link target)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "<dir>"
    return found


def _never_runs(out: Path, overwrite: bool) -> None:
    """``atomic_output`` refuses ``out`` before its block (or anything else) runs."""
    with pytest.raises(OutputExistsError), atomic_output(out, overwrite):
        pytest.fail("the block ran")


# ------------------------------------------------------------------ folders that are never an output
@pytest.mark.parametrize("out", [".", "", "CWD", "missing/..", "sub/.."])
@pytest.mark.parametrize("overwrite", [True, False])
def test_the_current_directory_is_never_an_output(out: str, overwrite: bool, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "notes.txt").write_text("my notes")
    monkeypatch.chdir(cwd)
    target = Path(str(cwd) if out == "CWD" else out)
    before = _snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=r"is the current directory; .*not even with --overwrite"):
        refuse_existing(target, overwrite)
    _never_runs(target, overwrite)
    assert _snapshot(tmp_path) == before


def test_parents_of_the_current_directory_the_root_and_home_are_never_an_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "h" / "home").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    monkeypatch.setenv("HOME", str(tmp_path / "h" / "home"))
    cases = {tmp_path / "a": "a parent of the current directory", Path(".."): "a parent of the current directory",
             Path("/"): "the filesystem root", tmp_path / "h" / "home": "your home folder",
             tmp_path / "h": "a parent of your home folder"}
    before = _snapshot(tmp_path)
    for out, reason in cases.items():
        for overwrite in (True, False):
            with pytest.raises(OutputExistsError, match=f"is {reason}; "):
                refuse_existing(out, overwrite)
            _never_runs(out, overwrite)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content", ["notes", "subfolder", "linked config", "card only", "output and notes"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_that_is_not_an_earlier_output_is_never_replaced(content: str, overwrite: bool,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    expected = {"notes": "it holds notes.txt", "subfolder": "it holds data", "linked config": f"it holds {CONFIG_NAME}",
                "card only": f"it has no {CONFIG_NAME} or {WEIGHTS_NAME}", "output and notes": "it holds notes.txt"}
    if content in ("notes", "output and notes"):
        (out / "notes.txt").write_text("my notes")
    if content == "output and notes":
        _output(out)
    if content == "subfolder":
        (out / "data").mkdir()
    if content == "linked config":
        (tmp_path / "elsewhere.json").write_text("{}")
        (out / CONFIG_NAME).symlink_to(tmp_path / "elsewhere.json")
        (out / WEIGHTS_NAME).write_bytes(b"w")
    if content == "card only":
        (out / CARD_NAME).write_text("# mine")
    before = _snapshot(tmp_path)
    pattern = rf"exists and is not an earlier conversion output \({expected[content]}"
    with pytest.raises(OutputExistsError, match=pattern):
        refuse_existing(out, overwrite)
    _never_runs(out, overwrite)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "link to an output", "link to a file", "dangling link"])
def test_a_file_or_link_at_out_is_refused_before_anything_is_written(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("my file")
    elif kind == "link to an output":
        out.symlink_to(_output(tmp_path / "real"), target_is_directory=True)
    elif kind == "link to a file":
        (tmp_path / "file").write_text("my file")
        out.symlink_to(tmp_path / "file")
    else:
        out.symlink_to(tmp_path / "nowhere")
    message = "is a file, not a folder; choose another --out" if kind == "file" else \
        "is a symbolic link, not a folder; it is never followed or replaced"
    before = _snapshot(tmp_path)
    for overwrite in (True, False):
        with pytest.raises(OutputExistsError, match=message):
            refuse_existing(out, overwrite)
        _never_runs(out, overwrite)
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------ what --overwrite may replace
def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path: Path, rename_mode: str) -> None:
    out = _output(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="already exists; choose another --out or pass --overwrite"):
        refuse_existing(out, False)
    _never_runs(out, False)
    refuse_existing(out, True)
    with atomic_output(out, True) as staging:
        _write(staging, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or moved-aside folder left
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME] and _marker(out) == "new"


def test_an_empty_folder_is_used_only_with_overwrite(tmp_path: Path, rename_mode: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="already exists; choose another --out or pass --overwrite"):
        refuse_existing(out, False)
    with atomic_output(out, True) as staging:
        _write(staging, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and _marker(out) == "new"


def test_the_finished_folder_follows_the_umask(tmp_path: Path) -> None:
    out = _output(tmp_path / "out")
    old = os.umask(0o027)
    try:
        with atomic_output(out, True) as staging:
            _write(staging, "new")
            (staging / WEIGHTS_NAME).chmod(0o600)  # safetensors and mkdtemp create private files
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}


def test_a_failed_overwrite_leaves_the_earlier_output_and_no_parents(tmp_path: Path) -> None:
    out = _output(tmp_path / "out")
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="parity"), atomic_output(out, True) as staging:
        _write(staging, "new")
        raise RuntimeError("parity")
    assert _snapshot(tmp_path) == before
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "new" / "deeper" / "out", False) as staging:
        _write(staging, "new")
        raise KeyboardInterrupt
    assert _snapshot(tmp_path) == before


def test_the_earlier_output_is_put_back_when_the_new_one_cannot_go_into_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _output(tmp_path / "out")
    before = _snapshot(tmp_path)
    rename = folder._rename_noreplace

    def failing(source: Path, destination: Path) -> None:
        if ".partial-" in source.name:
            raise PermissionError(13, "Permission denied", str(destination))
        rename(source, destination)

    monkeypatch.setattr(folder, "_rename_noreplace", failing)
    with pytest.raises(PermissionError), atomic_output(out, True) as staging:
        _write(staging, "new")
    assert _snapshot(tmp_path) == before  # the old output back in place, nothing else left


def test_an_output_changed_while_converting_is_not_replaced(tmp_path: Path) -> None:
    out = _output(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="changed while converting"), atomic_output(out, True) as staging:
        _write(staging, "new")
        (out / "notes.txt").write_text("written meanwhile")
    assert (out / "notes.txt").read_text() == "written meanwhile" and _marker(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]



@pytest.mark.parametrize("when", ["while converting", "while moving it aside"])
def test_overwrite_replaces_only_the_output_found_at_the_start(when: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = _output(tmp_path / "out")
    rename = folder._rename_noreplace

    def swapping(source: Path, destination: Path) -> None:
        if ".old-" in destination.name and _marker(source) == "old":  # another writer swaps its output in
            theirs = _output(tmp_path / ".theirs", "theirs")
            folder.shutil.rmtree(source)
            theirs.rename(source)
        rename(source, destination)

    if when == "while moving it aside":
        monkeypatch.setattr(folder, "_rename_noreplace", swapping)
    with pytest.raises(OutputExistsError, match="appeared while converting"), atomic_output(out, True) as staging:
        _write(staging, "new")
        if when == "while converting":  # another conversion renames its output into place
            theirs = _output(tmp_path / ".theirs", "theirs")
            folder.shutil.rmtree(out)
            theirs.rename(out)
    assert _marker(out) == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

# ------------------------------------------------------------------ two conversions to one folder at once
@pytest.mark.parametrize("overwrite", [False, True])
def test_the_second_to_finish_loses_and_leaves_nothing(overwrite: bool, tmp_path: Path, rename_mode: str) -> None:
    out = tmp_path / "out"
    if overwrite:
        _output(out)
    first, second = atomic_output(out, overwrite), atomic_output(out, overwrite)
    _write(first.__enter__(), "first")
    _write(second.__enter__(), "second")  # entered before the first finishes
    assert first.__exit__(None, None, None) is False
    with pytest.raises(OutputExistsError, match="appeared while converting .* output was discarded"):
        second.__exit__(None, None, None)
    assert _marker(out) == "first" and sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("appeared", ["empty folder", "file", "output"])
def test_nothing_that_appeared_meanwhile_is_replaced(appeared: str, tmp_path: Path, rename_mode: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared while converting"), atomic_output(out, True) as staging:
        _write(staging, "new")
        if appeared == "empty folder":
            out.mkdir()
        elif appeared == "file":
            out.write_text("my file")
        else:
            _output(out, "theirs")
    assert out.exists() and (appeared != "output" or _marker(out) == "theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_racing_threads_exactly_one_wins(overwrite: bool, tmp_path: Path, rename_mode: str) -> None:
    out = tmp_path / "out"
    if overwrite:
        _output(out)
    ready = threading.Barrier(2)
    results: dict[str, BaseException | None] = {}

    def convert(name: str) -> None:
        try:
            with atomic_output(out, overwrite) as staging:
                _write(staging, name)
                ready.wait(timeout=30)  # both are converting before either finishes
        except BaseException as exc:
            results[name] = exc
        else:
            results[name] = None

    threads = [threading.Thread(target=convert, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [name for name, error in results.items() if error is None]
    losers = [error for error in results.values() if error is not None]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], OutputExistsError) and "appeared while converting" in str(losers[0])
    assert _marker(out) == winners[0] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------ through the CLI
@pytest.mark.parametrize("out", [".", ""])
def test_console_script_refuses_the_current_directory_with_overwrite(out: str, sample_archive: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    """``rnet-hub convert ARCHIVE --out . --overwrite`` used to run the whole conversion, then empty ``.``."""
    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("my notes")
    before = _snapshot(tmp_path)
    environment = {k: v for k, v in os.environ.items() if k != "RNET_HUB_DEBUG"}
    done = subprocess.run([str(SCRIPT), "convert", str(sample_archive("ResNet18")), "--out", out, "--overwrite",
                           "-q"], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: . ") and "is the current directory" in lines[0], lines
    assert done.stdout == "" and _snapshot(tmp_path) == before


def test_cli_refuses_a_file_at_out_before_reading_the_source(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").write_text("my file")
    assert main(["convert", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "out"), "--overwrite"]) == 2
    assert "is a file, not a folder; choose another --out" in capsys.readouterr().err  # not the missing source
    assert main(["convert", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "out" / "sub")]) == 2
    assert "cannot be a folder: part of its path is a file" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "my file"
    assert issubclass(OutputExistsError, BadInputError) and issubclass(OutputExistsError, FileExistsError)


def test_convert_overwrites_an_earlier_output(sample_archive: Callable[..., Path], tmp_path: Path) -> None:
    from rnet_hub.converter import convert

    out = _output(tmp_path / "out")
    result = convert(sample_archive("ResNet18"), out, overwrite=True, progress=False)
    assert result.parity.passed and (out / WEIGHTS_NAME).read_bytes() != b"old"
    assert sorted(p.name for p in out.iterdir()) == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
