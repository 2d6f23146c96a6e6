"""Extracting the one checkpoint of a ``.tar.gz``/``.tar`` archive, safely, in one pass.

This module needs neither torch nor timm, on purpose: the CLI starts an
:class:`ArchiveExtraction` in a background thread *before* it imports them, so the
decompression (most of a conversion's time) overlaps the 5-7 s import.

Safe by construction:

* tar members are validated one by one, *before* their data is read: no absolute paths,
  no ``..``, no links or devices, exactly one checkpoint member (at any depth);
* the one checkpoint is copied into a private temporary folder that the extraction deletes
  when it is closed; ``tarfile.extract`` is never used, so nothing is ever written where
  the archive says.

The archive is read once, as a stream: the sha256 of the source file is computed from the
same bytes that are decompressed. ``isal`` (the ``fast-gzip`` extra) decompresses gzip in
a second thread, about twice as fast as the standard library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO

from ._progress import progress_bar

__all__ = ["CHECKPOINT_SUFFIXES", "ArchiveExtraction", "SourceError", "file_sha256", "sniff"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: Read size for the archive stream and the member copy. Larger reads cost more than they
#: save: tarfile's stream mode copies every read two or three times into fresh buffers.
_CHUNK = 1024 * 1024


class SourceError(ValueError):
    """A checkpoint source that cannot be read; the message says what is wrong and what to do."""


class _Cancelled(Exception):
    """The extraction was closed before it finished."""


def sniff(path: Path) -> str:
    """The kind of a source file from its first bytes: ``gzip``, ``tar``, ``zip`` or ``pickle``."""
    with open(path, "rb") as handle:
        head = handle.read(512)
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * _CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _HashingReader(io.RawIOBase):
    """Wraps a binary file and hashes every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self.hash.update(memoryview(buffer)[:count])
        return count or 0

    def drain(self) -> str:
        """Hash whatever the consumer did not read and return the hex digest."""
        while chunk := self._raw.read(8 * _CHUNK):
            self.hash.update(chunk)
        return self.hash.hexdigest()


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


class ArchiveExtraction:
    """The single checkpoint of a tar(.gz) archive, extracted into a private temporary folder.

    Use it as a context manager. :meth:`start` runs the extraction in a background thread so
    the caller can do other work meanwhile; :meth:`result` waits for it (or runs it in the
    calling thread when it was never started) and re-raises its error. Leaving the ``with``
    block stops an unfinished extraction and deletes the folder.
    """

    def __init__(self, archive: Path, *, progress: bool = True) -> None:
        self.archive = archive
        self._compressed = sniff(archive) == "gzip"
        self._progress = progress
        self._workdir = Path(tempfile.mkdtemp(prefix="rnet-hub-extract-"))
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcome: tuple[Path, str] | BaseException | None = None

    def __enter__(self) -> ArchiveExtraction:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def start(self) -> ArchiveExtraction:
        """Begin extracting in a background (daemon) thread; returns ``self``."""
        if self._thread is None and self._outcome is None:
            self._thread = threading.Thread(target=self._run, name="rnet-hub-extract", daemon=True)
            self._thread.start()
        return self

    def result(self) -> tuple[Path, str]:
        """The extracted checkpoint's path and the archive's sha256; raises what the extraction raised."""
        if self._thread is not None:
            self._thread.join()
        elif self._outcome is None:
            self._run()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def close(self) -> None:
        """Stop an unfinished extraction and delete the extracted file."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _run(self) -> None:
        try:
            self._outcome = self._extract()
        except BaseException as exc:  # handed to result(), in the caller's thread
            self._outcome = exc

    def _extract(self) -> tuple[Path, str]:
        """Stream the archive once: validate each member, copy the single checkpoint out."""
        name = self.archive.name
        with open(self.archive, "rb") as raw_file:
            hashing = _HashingReader(raw_file)
            buffered = io.BufferedReader(hashing, _CHUNK)
            stream = _open_gzip(buffered) if self._compressed else buffered
            try:
                found = self._extract_from_tar(stream)
                while stream.read(_CHUNK):  # read to the end so the gzip CRC is checked
                    self._check_cancelled()
            except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as exc:
                raise SourceError(f"{name} is not a complete archive ({exc}); it is probably truncated or "
                                  f"corrupt: delete it and download it again") from exc
            except OSError as exc:
                if exc.errno is not None:  # a real I/O error (disk full, ...), not a bad gzip stream
                    raise
                raise SourceError(f"{name} is not a valid gzip file ({exc}); download it again") from exc
            finally:
                if stream is not buffered:
                    stream.close()
            digest = hashing.drain()
        if found is None:
            raise SourceError(f"{name} contains no checkpoint (no member ending in "
                              f"{', '.join(CHECKPOINT_SUFFIXES)}); is it a RadiologyNET model archive?")
        return found, digest

    def _extract_from_tar(self, stream: BinaryIO) -> Path | None:
        found: Path | None = None
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                name = _checked_member_name(member, self.archive.name)
                if not member.isfile() or not name.name.lower().endswith(CHECKPOINT_SUFFIXES):
                    continue
                if found is not None:
                    raise SourceError(
                        f"{self.archive.name} holds more than one checkpoint ({found.name!r} and "
                        f"{member.name!r}); extract the one you want and pass that .pth instead")
                found = self._workdir / name.name
                self._copy_member(tar.extractfile(member), found, member.size, f"extract {name.name}")
        return found

    def _copy_member(self, source: BinaryIO, target: Path, size: int, label: str) -> None:
        with open(target, "wb") as out, progress_bar(total=size, desc=label, disable=not self._progress) as bar:
            while chunk := source.read(_CHUNK):
                self._check_cancelled()
                out.write(chunk)
                bar.update(len(chunk))

    def _check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled(f"extraction of {self.archive.name} was stopped")
