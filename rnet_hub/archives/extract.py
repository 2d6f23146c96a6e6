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

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from huggingface_hub.utils.sha import sha_fileobj

from ..errors import LayoutError, SourceError
from ..progress import progress_bar
from .torchzip import copy_checkpoint

__all__ = ["CHECKPOINT_SUFFIXES", "ArchiveExtraction", "extract_checkpoint", "file_sha256", "sniff"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: Read size for the archive stream and the member copy. Larger reads cost more than they
#: save: tarfile's stream mode copies every read two or three times into fresh buffers.
_CHUNK = 1024 * 1024




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


def _open_gzip(raw: BinaryIO) -> BinaryIO:
    try:
        from isal import igzip_threaded
    except ImportError:
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return igzip_threaded.open(raw, "rb", threads=1)


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
        stream = _open_gzip(buffered) if sniff(archive) == "gzip" else buffered
        try:
            found = _copy_checkpoint_member(stream, archive.name, workdir, progress)
            while stream.read(_CHUNK):  # read to the end so the gzip CRC is checked
                pass
        except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as exc:
            raise SourceError(f"{archive.name} is not a complete archive ({exc}); it is probably truncated or "
                              f"corrupt: delete it and download it again") from exc
        except LayoutError as exc:
            raise SourceError(f"{archive.name} holds a checkpoint that is not laid out as torch writes it "
                              f"({exc}); extract the .pth yourself and pass that instead") from exc
        except OSError as exc:
            if exc.errno is not None:  # a real I/O error (disk full, ...), not a bad gzip stream
                raise
            raise SourceError(f"{archive.name} is not a valid gzip file ({exc}); download it again") from exc
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


def _copy_checkpoint_member(stream: BinaryIO, archive: str, workdir: Path, progress: bool) -> Path | None:
    """Walk the tar stream, checking every member; copy the one checkpoint out."""
    found: Path | None = None
    with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
        for member in tar:
            name = _checked_member_name(member, archive)
            if not member.isfile() or not name.name.lower().endswith(CHECKPOINT_SUFFIXES):
                continue
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
    """

    def __init__(self, archive: Path, *, progress: bool = True) -> None:
        sniff(archive)  # a clear error for files that are no archive or checkpoint at all
        self.archive = archive
        self._progress = progress
        self._workdir = Path(tempfile.mkdtemp(prefix="rnet-hub-extract-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._outcome: tuple[Path, str] | None = None

    def __enter__(self) -> ArchiveExtraction:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def start(self) -> ArchiveExtraction:
        """Begin extracting in a child process; returns ``self``."""
        if self._process is None and self._outcome is None:
            command = [sys.executable, "-m", __name__, str(self.archive), str(self._workdir)]
            self._process = subprocess.Popen(command + (["--progress"] if self._progress else []),
                                             stdout=subprocess.PIPE)
        return self

    def result(self) -> tuple[Path, str]:
        """The extracted checkpoint's path and the archive's sha256; raises what the extraction raised."""
        if self._outcome is None:
            if self._process is None:
                self._outcome = extract_checkpoint(self.archive, self._workdir, progress=self._progress)
            else:
                self._outcome = self._receive()
        return self._outcome

    def close(self) -> None:
        """Stop an unfinished extraction and delete the extracted file."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            assert self._process.stdout is not None
            self._process.stdout.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _receive(self) -> tuple[Path, str]:
        assert self._process is not None
        answer, _ = self._process.communicate()
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


def _child_main(argv: list[str]) -> int:
    """``python -m rnet_hub.archives.extract ARCHIVE WORKDIR [--progress]``, for :meth:`ArchiveExtraction.start`.

    Extracts, then prints one JSON line: ``{"path", "sha256"}`` or ``{"error", "type"}``.
    """
    archive, workdir, progress = Path(argv[0]), Path(argv[1]), "--progress" in argv[2:]
    try:
        path, digest = extract_checkpoint(archive, workdir, progress=progress)
        answer = {"path": str(path), "sha256": digest}
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    except (SourceError, OSError) as exc:
        answer = {"error": str(exc), "type": "SourceError" if isinstance(exc, SourceError) else "OSError"}
    except Exception as exc:  # reported to the parent, which raises it
        answer = {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
