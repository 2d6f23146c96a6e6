"""Reading legacy checkpoints safely: archives, bare ``.pth`` files and URLs.

Safe by construction:

* every ``torch.load`` uses ``weights_only=True`` (a pickle that would run code is refused);
* archives are read by :class:`~rnet_hub.archives.extract.ArchiveExtraction`, which validates every
  tar member before reading it and copies the one checkpoint into a private folder, leaving
  holes where the optimizer state (about two thirds of every published archive) would be;
* the ``.pth`` is loaded with ``mmap=True``, so the optimizer state is never read into memory.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..archives.download import download_to_cache, is_url
from ..archives.extract import ArchiveExtraction, file_sha256, sniff
from ..archives.torchzip import STATE_DICT_KEYS, first_corrupt_record
from ..errors import SourceError, UnsafeCheckpointError
from ..files import regular_file_problem

__all__ = ["LegacyCheckpoint", "find_state_dict", "first_non_finite", "open_legacy_checkpoint", "resolve_source",
           "safe_torch_load"]

METADATA_KEYS = ("model_name", "epoch", "time", "optimizer_name")
#: What :func:`open_legacy_checkpoint` reads: a path, an http(s) URL, or an archive already being extracted.
Source = str | os.PathLike[str] | ArchiveExtraction




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


def safe_torch_load(path: Path, *, display_name: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (and ``mmap`` for zip checkpoints), errors explained."""
    name = display_name or path.name
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=sniff(path) == "zip")
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {name}: it contains Python objects other than tensors and plain containers, "
            f"which could run code when unpickled (torch.load weights_only=True said: "
            f"{str(exc).splitlines()[0][:200]}). Only a checkpoint from a source you trust should be "
            f"re-saved as a plain state dict; rnet_hub never unpickles code"
        ) from exc
    except (RuntimeError, EOFError, zlib.error, UnicodeDecodeError) as exc:
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


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or +/-Inf, or ``None`` when all are finite.

    One ``aminmax`` per tensor (NaN propagates into both, an infinity shows in one): no copy of
    the tensor is made, so it is cheap on a memory-mapped checkpoint too. Meta tensors hold no values: skipped.
    """
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel() and not tensor.is_meta:
            low, high = torch.aminmax(tensor.detach())
            if not (torch.isfinite(low) and torch.isfinite(high)):
                return name
    return None


def resolve_source(source: str | os.PathLike[str], *, cache_dir: Path | None = None, progress: bool = True,
                   expected_sha256: str | None = None) -> Path:
    """A local path for ``source``: URLs are downloaded into the cache first (and verified).

    ``expected_sha256`` is checked for downloads (a wrong file is moved aside, see
    :func:`~rnet_hub.archives.download.download_to_cache`); a local file is the caller's choice.
    """
    if isinstance(source, str) and is_url(source):
        return download_to_cache(source, cache_dir=cache_dir, progress=progress, expected_sha256=expected_sha256)
    path = Path(source).expanduser()
    if not path.exists() and not path.is_symlink():
        raise SourceError(f"no such checkpoint file: {path} (pass a .tar.gz/.tar archive, a .pth/.pt file, "
                          f"or an http(s) URL)")
    problem = regular_file_problem(path)
    if problem is not None:  # a folder, a FIFO, a device, a dangling link: never opened
        raise SourceError(f"{problem}; pass a .tar.gz/.tar archive or a .pth/.pt file")
    return path


def _archive_extraction(source: Source, cache_dir: Path | None,
                        progress: bool) -> contextlib.AbstractContextManager[ArchiveExtraction | Path]:
    """An extraction for archives (the caller's own when given one), else the checkpoint's path."""
    if isinstance(source, ArchiveExtraction):
        return contextlib.nullcontext(source)  # the caller started it and closes it
    path = resolve_source(source, cache_dir=cache_dir, progress=progress)
    if sniff(path) in ("gzip", "tar"):
        return ArchiveExtraction(path, progress=progress)
    return contextlib.nullcontext(path)


def _refuse_corrupt_records(path: Path) -> None:
    """A zip checkpoint must match its own CRC-32s (torch.load does not check them); other kinds pass."""
    if sniff(path) != "zip":
        return
    try:
        record = first_corrupt_record(path)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        return  # not a readable zip at all: safe_torch_load explains that in its own words
    if record is not None:
        raise SourceError(f"{path.name} is corrupt: its record {record} does not match the CRC-32 stored for it "
                          f"(the file was damaged after torch saved it); download or copy it again")


@contextlib.contextmanager
def open_legacy_checkpoint(source: Source, *, cache_dir: Path | None = None,
                           progress: bool = True) -> Iterator[LegacyCheckpoint]:
    """Open a legacy checkpoint (archive, ``.pth``, URL or started extraction) for a ``with`` block.

    The state dict's tensors are memory-mapped from a private extracted copy, which is
    deleted when the block ends: copy what must outlive it.
    """
    with _archive_extraction(source, cache_dir, progress) as opened:
        if isinstance(opened, ArchiveExtraction):
            path = opened.archive
            extracted, digest = opened.result()
            loaded = safe_torch_load(extracted, display_name=f"{path.name}:{extracted.name}")
        else:
            path, digest = opened, file_sha256(opened)
            _refuse_corrupt_records(path)
            loaded = safe_torch_load(path)
        state_dict = find_state_dict(loaded, path.name)
        metadata = {k: loaded[k] for k in METADATA_KEYS if isinstance(loaded, Mapping) and k in loaded}
        del loaded
        yield LegacyCheckpoint(source=path, sha256=digest, state_dict=state_dict, metadata=metadata)
        state_dict.clear()
