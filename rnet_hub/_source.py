"""Reading legacy checkpoints safely: archives, bare ``.pth`` files and URLs.

Safe by construction:

* every ``torch.load`` uses ``weights_only=True`` (a pickle that would run code is refused);
* tar members are validated one by one, *before* their data is read: no absolute paths,
  no ``..``, no links or devices, exactly one checkpoint member (at any depth). The one
  checkpoint is copied into a private temporary folder that is removed afterwards;
  ``tarfile.extract`` is never used, so nothing is ever written where the archive says;
* the extracted ``.pth`` is loaded with ``mmap=True``, so the optimizer state (about two
  thirds of every published archive) is never read into memory.

The archive is read once, as a stream: the sha256 of the source file is computed from the
same bytes that are decompressed. ``isal`` (the ``fast-gzip`` extra) decompresses gzip in
a second thread, several times faster than the standard library.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import torch

from ._download import download_to_cache, is_url
from ._progress import progress_bar

__all__ = ["LegacyCheckpoint", "SourceError", "UnsafeCheckpointError", "open_legacy_checkpoint"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
STATE_DICT_KEYS = ("model_state", "state_dict", "model_state_dict", "model", "net", "weights")
METADATA_KEYS = ("model_name", "epoch", "time", "optimizer_name")
_CHUNK = 8 * 1024 * 1024


class SourceError(ValueError):
    """A checkpoint source that cannot be read; the message says what is wrong and what to do."""


class UnsafeCheckpointError(SourceError):
    """A pickle that holds more than tensors and plain containers (it could run code)."""


@dataclass
class LegacyCheckpoint:
    """A legacy checkpoint opened for reading; valid inside :func:`open_legacy_checkpoint`."""

    source: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def source_name(self) -> str:
        return self.source.name


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
        while chunk := self._raw.read(_CHUNK):
            self.hash.update(chunk)
        return self.hash.hexdigest()


def _sniff(path: Path) -> str:
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


def _copy_member(stream: BinaryIO, target: Path, size: int, label: str, progress: bool) -> None:
    with open(target, "wb") as out, progress_bar(total=size, desc=label, disable=not progress) as bar:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _extract_checkpoint(archive: Path, compressed: bool, workdir: Path, progress: bool) -> tuple[Path, str]:
    """Stream the archive once: validate each member, copy the single checkpoint out.

    Returns the extracted checkpoint path and the sha256 of the archive file.
    """
    found: Path | None = None
    with open(archive, "rb") as raw_file:
        hashing = _HashingReader(raw_file)
        buffered = io.BufferedReader(hashing, _CHUNK)
        stream = _open_gzip(buffered) if compressed else buffered
        try:
            with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
                for member in tar:
                    name = _checked_member_name(member, archive.name)
                    if not member.isfile() or not name.name.lower().endswith(CHECKPOINT_SUFFIXES):
                        continue
                    if found is not None:
                        raise SourceError(
                            f"{archive.name} holds more than one checkpoint ({found.name!r} and "
                            f"{member.name!r}); extract the one you want and pass that .pth instead")
                    found = workdir / name.name
                    _copy_member(tar.extractfile(member), found, member.size, f"extract {name.name}", progress)
            while stream.read(_CHUNK):  # read to the end so the gzip CRC is checked
                pass
        except (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile) as exc:
            raise SourceError(f"{archive.name} is not a complete archive ({exc}); it is probably truncated or "
                              f"corrupt: delete it and download it again") from exc
        except OSError as exc:
            if exc.errno is not None:  # a real I/O error (disk full, ...), not a bad gzip stream
                raise
            raise SourceError(f"{archive.name} is not a valid gzip file ({exc}); download it again") from exc
        finally:
            if stream is not buffered:
                stream.close()
        digest = hashing.drain()
    if found is None:
        raise SourceError(f"{archive.name} contains no checkpoint (no member ending in "
                          f"{', '.join(CHECKPOINT_SUFFIXES)}); is it a RadiologyNET model archive?")
    return found, digest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_torch_load(path: Path, *, display_name: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (and ``mmap`` for zip checkpoints), errors explained."""
    name = display_name or path.name
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_sniff(path) == "zip")
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {name}: it contains Python objects other than tensors and plain containers, "
            f"which could run code when unpickled (torch.load weights_only=True said: "
            f"{str(exc).splitlines()[0][:200]}). Only a checkpoint from a source you trust should be "
            f"re-saved as a plain state dict; rnet_hub never unpickles code"
        ) from exc
    except (RuntimeError, EOFError, zlib.error) as exc:
        raise SourceError(f"{name} is not a readable PyTorch checkpoint ({exc}); it may be truncated: "
                          f"download or extract it again") from exc


def find_state_dict(checkpoint: Any, name: str) -> dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint, with ``module.`` (DataParallel) prefixes stripped."""
    if not isinstance(checkpoint, Mapping):
        raise SourceError(f"{name} holds a {type(checkpoint).__name__}, not a checkpoint dict or state dict")
    state = next((checkpoint[k] for k in STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(state):
        raise SourceError(f"{name} has no state dict under any of {', '.join(STATE_DICT_KEYS)} and is not a "
                          f"bare state dict either (top-level keys: {sorted(map(str, checkpoint))[:8]})")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def resolve_source(source: str | os.PathLike[str], *, cache_dir: Path | None = None,
                   progress: bool = True) -> Path:
    """A local path for ``source``: URLs are downloaded into the cache first."""
    if isinstance(source, str) and is_url(source):
        return download_to_cache(source, cache_dir=cache_dir, progress=progress)
    path = Path(source).expanduser()
    if not path.is_file():
        raise SourceError(f"no such checkpoint file: {path} (pass a .tar.gz/.tar archive, a .pth/.pt file, "
                          f"or an http(s) URL)")
    return path


@contextlib.contextmanager
def open_legacy_checkpoint(source: str | os.PathLike[str], *, cache_dir: Path | None = None,
                           progress: bool = True) -> Iterator[LegacyCheckpoint]:
    """Open a legacy checkpoint (archive, ``.pth`` or URL) for the duration of a ``with`` block.

    The state dict's tensors are memory-mapped from a private extracted copy, which is
    deleted when the block ends: copy what must outlive it.
    """
    path = resolve_source(source, cache_dir=cache_dir, progress=progress)
    kind = _sniff(path)
    with tempfile.TemporaryDirectory(prefix="rnet-hub-extract-") as workdir:
        if kind in ("gzip", "tar"):
            extracted, digest = _extract_checkpoint(path, kind == "gzip", Path(workdir), progress)
            loaded = safe_torch_load(extracted, display_name=f"{path.name}:{extracted.name}")
        else:
            digest = _file_sha256(path)
            loaded = safe_torch_load(path)
        state_dict = find_state_dict(loaded, path.name)
        metadata = {k: loaded[k] for k in METADATA_KEYS if isinstance(loaded, Mapping) and k in loaded}
        del loaded
        yield LegacyCheckpoint(source=path, sha256=digest, state_dict=state_dict, metadata=metadata)
        state_dict.clear()
