"""Extracting the one checkpoint of a ``.tar.gz``/``.tar`` archive, safely, in one pass.

This module needs neither torch nor timm, on purpose: the CLI starts an
:class:`ArchiveExtraction` in a child process *before* it imports them, so the
decompression (most of a conversion's time) overlaps the 4-6 s import. A process, not a
thread: the import holds the GIL for seconds, and a thread would wait for it on every block.

Safe by construction:

* tar members are validated one by one, *before* their data is read: no absolute paths,
  no ``..``, no links or devices, exactly one checkpoint member (at any depth);
* the one checkpoint is copied into a private temporary folder that the extraction deletes
  when it is closed; ``tarfile.extract`` is never used, so nothing is ever written where
  the archive says. Storages that the model weights do not use (the optimizer state) are
  left as holes in that copy (see :mod:`rnet_hub.archives.torchzip`).

The archive is read as a stream, once for decompression and once, in a second thread and
through a second handle of the same file (which must not change meanwhile), for its sha256.
``isal`` (the ``fast-gzip`` extra) decompresses gzip in a third thread, about twice as fast
as the standard library.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, NoReturn, cast

from huggingface_hub.utils.sha import sha_fileobj

from .. import interrupts
from ..architectures import max_checkpoint_bytes
from ..errors import LayoutError, SourceError
from ..leftovers import Finding, Run, RunLock, disk_usage, remove, sweep
from ..progress import progress_bar
from .torchzip import copy_checkpoint

__all__ = ["CHECKPOINT_SUFFIXES", "ArchiveExtraction", "extract_checkpoint", "file_sha256", "remove_dead_extractions",
           "sniff"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: Read size for the archive stream and the member copy. Larger reads cost more than they
#: save: tarfile's stream mode copies every read two or three times into fresh buffers.
_CHUNK = 1024 * 1024
#: The extraction folders in the temp folder: ``rnet-hub-extract-<token>`` and its run lock, ``<that>.lock``.
_PREFIX = "rnet-hub-extract-"
_LEFTOVER = re.compile(rf"{_PREFIX}(?P<token>[a-z0-9_]{{8}})(?P<lock>\.lock)?")

logger = logging.getLogger(__name__)


def sniff(path: Path) -> str:
    """The kind of a source file from its first bytes: ``gzip``, ``tar``, ``zip`` or ``pickle``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:  # no permission, a folder, gone meanwhile
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:1] == b"\x80":
        return "pickle"
    raise SourceError(
        f"{path.name} is neither a .tar.gz/.tar archive nor a PyTorch checkpoint (unknown file header); "
        f"pass a RadiologyNET archive, the .pth extracted from one, or its URL"
    )


def file_sha256(path: Path, *, identity: tuple[int, ...] | None = None) -> str:
    """The sha256 of a file; with ``identity`` (see :func:`_identity`), only if it is still that file."""
    with open(path, "rb") as handle:
        if identity is not None and _identity(handle.fileno()) != identity:
            raise _changed_while_read(path)
        return sha_fileobj(handle, 8 * _CHUNK).hex()


def _changed_while_read(path: Path) -> SourceError:
    return SourceError(f"{path.name} changed while it was being read; wait until it is complete "
                       f"(a download or copy in progress?) and run again")


def _identity(fd: int) -> tuple[int, ...]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _open_gzip(raw: BinaryIO, archive: str) -> BinaryIO:
    """A gzip decoder over ``raw`` (``isal``'s, in a thread, when installed), see :class:`_Decompressed`."""
    try:
        from isal import igzip_threaded
        from isal.igzip_lib import IsalError
    except ImportError:
        return cast(BinaryIO, _Decompressed(gzip.GzipFile(fileobj=raw, mode="rb"), archive, (zlib.error, OSError)))
    return cast(BinaryIO, _Decompressed(igzip_threaded.open(raw, "rb", threads=1), archive, (IsalError, OSError)))


class _Decompressed:
    """A decoder's stream (``read``, ``close``: what tarfile's stream mode uses) whose decompression errors
    become one :class:`SourceError` naming the archive; truncation (``EOFError``) and real I/O errors
    (an ``OSError`` with an ``errno``, unlike ``BadGzipFile``) pass unchanged."""

    def __init__(self, stream: BinaryIO, archive: str, errors: tuple[type[Exception], ...]) -> None:
        self._stream, self._archive, self._errors = stream, archive, errors

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except self._errors as exc:
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
                raise
            raise SourceError(f"{self._archive} is not a valid gzip archive ({type(exc).__name__}: {exc}); it is "
                              f"corrupt (a damaged download or copy?): delete it and download it again") from exc

    def close(self) -> None:
        self._stream.close()


def _checked_member_name(member: tarfile.TarInfo, archive: str) -> PurePosixPath:
    """Refuse members that could write outside a target folder or are not plain data."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ":" in name.parts[0]:
        raise SourceError(f"{archive} has a member with an absolute path ({member.name!r}); refusing to read it")
    if ".." in name.parts:
        raise SourceError(f"{archive} has a member that escapes the archive folder ({member.name!r}, "
                          f"contains '..'); refusing to read it")
    if member.issym() or member.islnk():
        raise SourceError(f"{archive} has a link member ({member.name!r} -> {member.linkname!r}); "
                          f"links can point outside the archive, so it is refused")
    if member.isdev() or not (member.isfile() or member.isdir()):
        raise SourceError(f"{archive} has a member that is not a regular file or folder ({member.name!r}); "
                          f"refusing to read it")
    return name


def extract_checkpoint(archive: Path, workdir: Path, *, progress: bool = True) -> tuple[Path, str]:
    """Stream the archive once: validate each member, copy the single checkpoint into ``workdir``.

    Returns the extracted checkpoint's path and the sha256 of the archive file.
    """
    with open(archive, "rb") as raw_file, ThreadPoolExecutor(max_workers=1) as hasher:
        # The hash runs beside the decompression (off its critical path), on a second handle of the file.
        identity = _identity(raw_file.fileno())
        digest = hasher.submit(file_sha256, archive, identity=identity)
        buffered = io.BufferedReader(raw_file, _CHUNK)
        stream = _open_gzip(buffered, archive.name) if sniff(archive) == "gzip" else buffered
        try:
            found = _copy_checkpoint_member(stream, archive.name, workdir, progress)
            while stream.read(_CHUNK):  # read to the end so the gzip CRC is checked
                pass
        except (EOFError, tarfile.TarError, LayoutError) as exc:
            # Garbage in the tar stream may be a gzip stream that decodes to wrong bytes: its CRC tells.
            corrupt = _rest_of(stream) if stream is not buffered and not isinstance(exc, EOFError) else None
            if corrupt is not None:
                raise corrupt from exc
            if isinstance(exc, LayoutError):
                raise SourceError(f"{archive.name} holds a checkpoint that is not laid out as torch writes it "
                                  f"({exc}); extract the .pth yourself and pass that instead") from exc
            raise SourceError(f"{archive.name} is not a complete archive ({exc}); it is probably truncated or "
                              f"corrupt: delete it and download it again") from exc
        except SourceError as exc:
            if exc.__cause__ is not None and _identity(raw_file.fileno()) != identity:  # a bad read of a changing file
                raise _changed_while_read(archive) from exc
            raise
        finally:
            if stream is not buffered:
                stream.close()
        if _identity(raw_file.fileno()) != identity:
            raise _changed_while_read(archive)
        sha256 = digest.result()
    if found is None:
        raise SourceError(f"{archive.name} contains no checkpoint (no member ending in "
                          f"{', '.join(CHECKPOINT_SUFFIXES)}); is it a RadiologyNET model archive?")
    return found, sha256


def _rest_of(stream: BinaryIO) -> SourceError | None:
    """Read a gzip stream to its end: the error of its decoder or CRC check, if any."""
    try:
        while stream.read(_CHUNK):
            pass
    except SourceError as exc:
        return exc
    except EOFError:
        pass
    return None


def _check_member_size(member: tarfile.TarInfo, name: str, archive: str) -> None:
    """Refuse, from its tar header and before a byte is written, a member larger than any checkpoint can be
    (a small archive can hold gigabytes of zeros)."""
    limit, what = max_checkpoint_bytes(name)
    if member.size > limit:
        raise SourceError(f"{name} in {archive} is {member.size / 2**30:.1f} GiB, more than {what} can be (at most "
                          f"{limit / 2**20:.0f} MiB: twice the published archive); it is not a RadiologyNET "
                          f"checkpoint, or the archive is damaged: refusing to extract it")


def _copy_checkpoint_member(stream: BinaryIO, archive: str, workdir: Path, progress: bool) -> Path | None:
    """Walk the tar stream, checking every member; copy the one checkpoint out."""
    found: Path | None = None
    with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
        for member in tar:
            name = _checked_member_name(member, archive)
            if not member.isfile() or not name.name.lower().endswith(CHECKPOINT_SUFFIXES):
                continue
            _check_member_size(member, name.name, archive)
            if found is not None:
                raise SourceError(f"{archive} holds more than one checkpoint ({found.name!r} and "
                                  f"{member.name!r}); extract the one you want and pass that .pth instead")
            found = workdir / name.name
            with open(found, "wb") as out, progress_bar(total=member.size, desc=f"extract {name.name}",
                                                        disable=not progress) as bar:
                copy_checkpoint(tar.extractfile(member), out, member.size, bar.update)
                out.truncate(member.size)  # in case the file ends in a hole
    return found


class ArchiveExtraction:
    """The single checkpoint of a tar(.gz) archive, extracted into a private temporary folder.

    Use it as a context manager. :meth:`start` runs :func:`extract_checkpoint` in a child
    process (``python -m rnet_hub.archives.extract``, which imports only this module) so that the
    caller can do other work meanwhile; :meth:`result` waits for it (or runs it in the
    calling process when it was never started) and raises its error. Leaving the ``with``
    block stops an unfinished extraction and deletes the folder.

    The folder, ``rnet-hub-extract-<token>`` in the temp folder, has a run lock beside it (see
    :mod:`rnet_hub.leftovers`), which the child shares: the folders of killed runs are removed by
    the next extraction (:func:`remove_dead_extractions`) and by ``rnet-hub clean``. The child dies
    with its parent: on Linux the kernel sends it SIGTERM when the parent ends (``PR_SET_PDEATHSIG``),
    elsewhere it sees the end of its standard input (a pipe the parent holds); either way it deletes
    the folder and exits quietly, as it does when its answer can no longer be delivered.
    """

    def __init__(self, archive: Path, *, progress: bool = True) -> None:
        sniff(archive)  # a clear error for files that are no archive or checkpoint at all
        self.archive = archive
        self._progress = progress
        self._process: subprocess.Popen[bytes] | None = None
        self._outcome: tuple[Path, str] | None = None
        temp = Path(tempfile.gettempdir())
        for finding in remove_dead_extractions(temp):
            if finding.action == "remove":
                logger.info("%s", finding.line(dry_run=False))
        self._lock = RunLock.create(temp, lambda token: f"{_PREFIX}{token}.lock")
        self._workdir = temp / f"{_PREFIX}{self._lock.token}"
        try:
            self._workdir.mkdir(mode=0o700)
        except BaseException:
            self._lock.release()
            raise

    def __enter__(self) -> ArchiveExtraction:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def start(self) -> ArchiveExtraction:
        """Begin extracting in a child process; returns ``self``."""
        if self._process is None and self._outcome is None:
            command = [sys.executable, "-m", __name__, str(self.archive), str(self._workdir),
                       "--lock", str(self._lock.path), "--parent", str(os.getpid())]
            if self._progress:
                command.append("--progress")
            if threading.current_thread() is threading.main_thread():  # PDEATHSIG follows the starting thread
                command.append("--die-with-parent")
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 pass_fds=(self._lock.fileno(),))
            except BaseException:  # the caller gets no object to close
                self.close()
                raise
        return self

    def result(self) -> tuple[Path, str]:
        """The extracted checkpoint's path and the archive's sha256; raises what the extraction raised."""
        interrupts.check()  # a Ctrl-C or SIGTERM swallowed meanwhile (by torch's import, say) stops here
        if self._outcome is None:
            if self._process is None:
                self._outcome = extract_checkpoint(self.archive, self._workdir, progress=self._progress)
            else:
                self._outcome = self._receive()
        return self._outcome

    def close(self) -> None:
        """Stop an unfinished extraction and delete the extracted file (and the run lock). Idempotent."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._lock.release()

    def _receive(self) -> tuple[Path, str]:
        assert self._process is not None and self._process.stdout is not None
        answer = self._process.stdout.read()  # not communicate(): that closes stdin, which tells the child to quit
        self._process.wait()
        try:
            reply = json.loads(answer.splitlines()[-1])  # the last line: the answer, whatever came before
        except (ValueError, IndexError):
            raise SourceError(f"extracting {self.archive.name} stopped without an answer (exit status "
                              f"{self._process.returncode}); run again, or pass the extracted .pth") from None
        if "error" in reply:
            raise _ERROR_TYPES.get(reply["type"], RuntimeError)(reply["error"])
        return Path(reply["path"]), reply["sha256"]


#: Errors that cross from the child process by name (anything else arrives as RuntimeError).
_ERROR_TYPES: dict[str, type[Exception]] = {"SourceError": SourceError, "OSError": OSError}


def _parse_leftover(name: str) -> tuple[str, str] | None:
    match = _LEFTOVER.fullmatch(name)
    return None if match is None else (match["token"], "lock" if match["lock"] else "folder")


def _remove_dead(run: Run, dry_run: bool) -> list[Finding]:
    found = []
    for path in run.parts.values():
        found.append(Finding("remove", path, "the extraction of a conversion that was killed", disk_usage(path)))
        if not dry_run:
            remove(path)
    return found


def remove_dead_extractions(folder: Path | None = None, *, dry_run: bool = False) -> list[Finding]:
    """Delete the extraction folders of killed runs in ``folder`` (the temp folder); what was found.

    Only ``rnet-hub-extract-*`` folders whose run lock shows their run is over (see :mod:`rnet_hub.leftovers`).
    """
    return sweep(Path(folder or tempfile.gettempdir()), _parse_leftover, _remove_dead, dry_run=dry_run)


def _abandon(workdir: Path, lock: Path | None, code: int) -> NoReturn:
    """The parent is gone (or stopping us): delete the folder and its lock, exit at once and quietly."""
    shutil.rmtree(workdir, ignore_errors=True)
    if lock is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock)
    os._exit(code)


def _child_main(argv: list[str]) -> int:
    """``python -m rnet_hub.archives.extract ARCHIVE WORKDIR [--lock PATH] [--parent PID [--die-with-parent]]
    [--progress]``, for :meth:`ArchiveExtraction.start`.

    Extracts, then prints one JSON line: ``{"path", "sha256"}`` or ``{"error", "type"}``. With
    ``--parent``, ends when that process does (:func:`~rnet_hub.interrupts.follow_parent`), deleting WORKDIR
    and the lock.
    """
    archive, workdir, options = Path(argv[0]), Path(argv[1]), argv[2:]
    lock = Path(options[options.index("--lock") + 1]) if "--lock" in options else None
    if "--parent" in options:
        interrupts.follow_parent(int(options[options.index("--parent") + 1]), "--die-with-parent" in options,
                                 lambda code: _abandon(workdir, lock, code))
    try:
        path, digest = extract_checkpoint(archive, workdir, progress="--progress" in options)
        answer = {"path": str(path), "sha256": digest}
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    except BrokenPipeError:  # the progress bar's terminal is gone
        _abandon(workdir, lock, 0)
    except (SourceError, OSError) as exc:
        answer = {"error": str(exc), "type": "SourceError" if isinstance(exc, SourceError) else "OSError"}
    except Exception as exc:  # reported to the parent, which raises it
        answer = {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}
    try:
        print(json.dumps(answer), flush=True)
    except BrokenPipeError:  # nobody reads the answer: the parent is gone
        _abandon(workdir, lock, 0)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
