"""Copying a PyTorch zip checkpoint out of a stream without writing its optimizer state.

A published archive's ``.pth`` is two thirds AdamW moments that a conversion never reads.
The extraction (:mod:`rnet_hub.archives.extract`) still has to decompress them, but writing them
costs as much again in system time. This module copies the checkpoint record by record and
leaves a *hole* (a sparse region of zeros) where a storage that the model weights do not use
would be. The file keeps its size and layout, so ``torch.load(..., mmap=True)`` reads it as
before; only the optimizer tensors read as zeros, and nothing reads them.

Which storages the weights use comes from ``data.pkl``, the first record torch writes. It is
read by :class:`_SkeletonUnpickler`, the "restricting globals" unpickler of the ``pickle``
documentation: every global resolves to a harmless stand-in from a short allow-list (anything
else stops it) and tensors become references to their storage records, so no code from the
file runs and torch is not needed. It decides only what to write; loading is still done by
``torch.load(..., weights_only=True)``. Any record layout other than the one torch writes
(compressed records, records without sizes, an unknown global) turns the holes off and the
rest is copied byte for byte.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import LayoutError

__all__ = ["STATE_DICT_KEYS", "copy_checkpoint", "first_corrupt_record", "storages_to_write"]

#: Where a checkpoint keeps its model weights, in the order they are looked for.
STATE_DICT_KEYS = ("model_state", "state_dict", "model_state_dict", "model", "net", "weights")

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_DESCRIPTOR = struct.Struct("<4sIII")  # signature, crc32, compressed size, size (no zip64 below 4 GiB)
_HAS_DESCRIPTOR = 0x08
_STORED = 0
#: The most a small record (``data.pkl``, ``byteorder``, ...) may hold before the holes are given up.
_SMALL_RECORD_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
_ITEM_SIZES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
               "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
               "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1}




@dataclass(frozen=True)
class _StorageRef:
    key: str
    nbytes: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef


def _tensor_ref(storage: _StorageRef, *args: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: remembers only the storage."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor without a storage record")
    return _TensorRef(storage)


class _SkeletonUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` into plain containers and :class:`_TensorRef`, running nothing from the file."""

    _GLOBALS: Mapping[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _tensor_ref,
    }

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _ITEM_SIZES:
            return name  # a storage type, kept as its name
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[module, name]
        raise pickle.UnpicklingError(f"{module}.{name} is not on the allow-list")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _ITEM_SIZES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        return self.storages.setdefault(str(key), _StorageRef(str(key), int(numel) * _ITEM_SIZES[storage_type]))


def storages_to_write(data_pkl: bytes) -> dict[str, tuple[int, bool]] | None:
    """Storage key -> (bytes, used by the model weights); ``None`` when ``data.pkl`` is not understood."""
    unpickler = _SkeletonUnpickler(data_pkl)
    try:
        root = unpickler.load()
    except Exception:  # anything unexpected only turns the holes off; torch.load judges the file
        return None
    if not isinstance(root, Mapping):
        return None
    weights = next((root[k] for k in STATE_DICT_KEYS if isinstance(root.get(k), Mapping)), root)
    used = {value.storage.key for value in weights.values() if isinstance(value, _TensorRef)}
    return {key: (ref.nbytes, key in used) for key, ref in unpickler.storages.items()}


def first_corrupt_record(path: Path) -> str | None:
    """The first record of a zip checkpoint whose bytes do not match the CRC-32 stored for it, else ``None``.

    ``torch.load`` never checks these checksums, so a checkpoint whose tensor bytes were damaged (a bad
    copy, a flipped bit on disk) would load, convert and even pass parity, since both sides read the same
    damaged weights. Only for a checkpoint as the user gave it: an extracted copy has holes where the
    optimizer state was (see the module docstring) and its checksums do not hold there.
    """
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()


class _Copier:
    """Reads exactly ``size`` bytes of ``source`` and writes them to ``out``, or leaves holes."""

    def __init__(self, source: BinaryIO, out: BinaryIO, size: int, progress: Callable[[int], object]) -> None:
        self._source, self._out, self._left, self._progress = source, out, size, progress
        self._unread = b""  # bytes read ahead, handed out again before the source is read on
        self._buffer = bytearray(_CHUNK)
        self.skipped = 0

    def read(self, count: int) -> bytes:
        """The next ``count`` bytes (fewer only at the end of the member), not yet written."""
        data, self._unread = self._unread[:count], self._unread[count:]
        if len(data) < count and self._left:
            more = self._source.read(min(count - len(data), self._left))
            self._left -= len(more)
            self._progress(len(more))
            data += more
        return data

    def unread(self, data: bytes) -> None:
        self._unread = data + self._unread

    def write(self, data: bytes) -> None:
        self._out.write(data)

    def pass_through(self, count: int, *, keep: bool) -> None:
        """Copy the next ``count`` bytes, or skip them leaving a hole in the output."""
        if self._unread:
            head = self.read(count)
            self._emit(head, keep)
            count -= len(head)
        view = memoryview(self._buffer)
        while count > 0:
            got = self._source.readinto(view[:min(count, len(view), self._left)])
            if not got:
                raise EOFError("the checkpoint member ended inside a record")
            self._emit(view[:got], keep)
            count -= got
            self._left -= got
            self._progress(got)

    def copy_rest(self) -> None:
        self.pass_through(len(self._unread) + self._left, keep=True)

    def _emit(self, data: bytes | memoryview, keep: bool) -> None:
        if keep:
            self._out.write(data)
        else:
            self._out.seek(len(data), io.SEEK_CUR)
            self.skipped += len(data)


def _read_small_record(copier: _Copier) -> bytes | None:
    """Copy a record whose size only its data descriptor gives; returns its data, ``None`` if not found."""
    data = bytearray()
    start = 0
    while len(data) < _SMALL_RECORD_LIMIT and (chunk := copier.read(64 * 1024)):
        data += chunk
        while (found := data.find(_DESCRIPTOR_SIGNATURE, start)) >= 0 and found + _DESCRIPTOR.size <= len(data):
            _, crc, packed, size = _DESCRIPTOR.unpack_from(data, found)
            if packed == size == found and zlib.crc32(data[:found]) == crc:
                end = found + _DESCRIPTOR.size
                copier.write(bytes(data[:end]))
                copier.unread(bytes(data[end:]))
                return bytes(data[:found])
            start = found + 1
        start = max(start, len(data) - _DESCRIPTOR.size)
    copier.unread(bytes(data))
    return None


def copy_checkpoint(source: BinaryIO, out: BinaryIO, size: int,
                    progress: Callable[[int], object] = lambda count: None) -> int:
    """Copy a ``size``-byte checkpoint from ``source`` to ``out``; returns the bytes left as holes.

    Non-zip checkpoints, and zip files not laid out as torch writes them, are copied whole.
    """
    copier = _Copier(source, out, size, progress)
    storages: dict[str, tuple[int, bool]] | None = None
    while True:
        head = copier.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_SIGNATURE:
            copier.unread(head)  # the central directory (or not a zip at all): the rest as it is
            break
        _, _, flags, method, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack(head)
        name = copier.read(name_length)
        copier.write(head + name + copier.read(extra_length))
        if method != _STORED or not flags & _HAS_DESCRIPTOR:
            break
        record = name.decode("utf-8", "replace").split("/", 1)[-1]
        key = record.removeprefix("data/")
        if storages is not None and record.startswith("data/") and key in storages:
            _copy_storage(copier, record, *storages[key])
            continue
        data = _read_small_record(copier)
        if data is None:
            break
        if record == "data.pkl":
            storages = storages_to_write(data)
    copier.copy_rest()
    return copier.skipped


def _copy_storage(copier: _Copier, record: str, nbytes: int, keep: bool) -> None:
    copier.pass_through(nbytes, keep=keep)
    descriptor = copier.read(_DESCRIPTOR.size)
    copier.write(descriptor)
    if len(descriptor) < _DESCRIPTOR.size or _DESCRIPTOR.unpack(descriptor)[2] != nbytes:
        raise LayoutError(f"the checkpoint's record {record!r} is not the {nbytes} bytes its pickle gives")
