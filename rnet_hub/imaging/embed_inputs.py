"""What ``rnet-hub embed`` reads: files, folders, glob patterns and manifests, local or on any filesystem.

An input is one of:

* a file (opened later, by the engine; nothing is opened here);
* a folder, walked recursively (hidden names skipped, symlinked folders listed but not followed);
* a glob pattern (``scans/*/IM*``, ``**`` for any depth), used when no file has that exact name;
* a manifest: a ``.csv`` (a ``path`` column, else the first column) or ``.parquet``/``.pq`` file
  (a ``path`` column) listing files; relative entries are relative to the manifest's folder.

Local paths and ``file://`` URIs are listed by :func:`collect_inputs` (both engines). Any other
URI that pyarrow can open (``s3://``, ``gs://``, ``hdfs://``, ...; ``pyarrow.fs.FileSystem.from_uri``)
is listed by :func:`list_inputs`, which only the Ray engine uses: it reads files through pyarrow.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import BadInputError

__all__ = ["MANIFEST_SUFFIXES", "collect_inputs", "is_remote", "list_inputs", "local_path"]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_GLOB_CHARS = frozenset("*?[")


def is_remote(text: str) -> bool:
    """Whether ``text`` is a URI of a filesystem other than the local one (``s3://...``; not ``file://``)."""
    scheme = urlparse(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def local_path(text: str | os.PathLike[str]) -> Path:
    """The absolute, normalised (``..`` and ``.`` removed, symlinks kept) local path of a path or ``file://`` URI."""
    text = os.fspath(text)
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    return Path(os.path.normpath(Path(text).expanduser().absolute()))


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # reported, not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        found += [Path(root) / n for n in sorted(names + links) if not n.startswith(".")]
    return found


def _read_manifest(source: str, filesystem: object | None = None) -> list[str]:
    """The entries of a CSV or Parquet manifest (``path`` column, or a CSV's first column)."""
    try:
        if source.lower().endswith(".csv"):
            import pyarrow.csv as pcsv

            stream = filesystem.open_input_stream(source) if filesystem is not None else source  # type: ignore[attr-defined]
            table = pcsv.read_csv(stream)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(source, filesystem=filesystem)
    except ImportError as exc:
        from ..errors import MissingExtraError

        raise MissingExtraError(f"reading the manifest {source} needs pyarrow: pip install 'rnet-hub[parquet]'") \
            from exc
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError, ...
        raise BadInputError(f"cannot read the manifest {source} ({exc}); give a CSV or Parquet file with a "
                            f"'path' column") from exc
    if "path" in table.column_names:
        column = table.column("path")
    elif source.lower().endswith(".csv") and table.num_columns == 1:
        column = table.column(0)
    else:
        raise BadInputError(f"the manifest {source} has no 'path' column (columns: {table.column_names})")
    return [str(v) for v in column.to_pylist() if v not in (None, "")]


def _relative_to(entry: str, base: str) -> str:
    """A manifest entry as a path or URI: absolute entries and URIs as they are, others under ``base``."""
    if "://" in entry or os.path.isabs(entry):
        return entry
    return f"{base.rstrip('/')}/{entry}"


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Absolute paths of the given local files, of every file under the given folders, of the files
    matching the given glob patterns and of the files listed in the given manifests (folders sorted,
    hidden names skipped, duplicates dropped). A missing input raises before anything runs.

    Nothing is opened but manifests: entries that are not regular files (FIFOs, devices, dangling
    symlinks, symlinks to folders inside a walked folder, which are not followed) are listed too,
    and reading refuses them with the reason, so that the run reports them as skipped."""
    files: dict[Path, None] = {}
    for given in inputs:
        text = os.fspath(given)
        if is_remote(text):
            raise BadInputError(f"{text} is not on this machine: the local engine reads local files; use "
                                f"--engine ray, which reads any filesystem pyarrow opens")
        path = local_path(text)
        if path.is_dir():
            files.update((p, None) for p in _walk(path))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            entries = [_relative_to(e, str(path.parent)) for e in _read_manifest(str(path))]
            remote = [e for e in entries if is_remote(e)]
            if remote:
                raise BadInputError(f"the manifest {text} lists {remote[0]}, not on this machine; use --engine ray")
            files.update((local_path(e), None) for e in entries)
        elif os.path.lexists(path):  # a file, or something that reading will refuse with the reason
            files[path] = None
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise BadInputError(f"no file matches the pattern {given}")
            for match in map(Path, matches):
                files.update((p, None) for p in (_walk(match) if match.is_dir() else [match]))
        else:
            raise BadInputError(f"input not found: {given}")
    return list(files)


def _list_remote(uri: str) -> list[str]:
    """Files of one remote input (file, folder, glob or manifest), as URIs."""
    try:
        from pyarrow import fs
    except ImportError as exc:
        from ..errors import MissingExtraError

        raise MissingExtraError(f"reading {uri} needs pyarrow: pip install 'rnet-hub[ray]'") from exc
    scheme = urlparse(uri).scheme
    pattern = _GLOB_CHARS & set(uri)
    static = uri
    if pattern:  # list the folder before the first wildcard, then match
        cut = min(uri.index(c) for c in pattern)
        static = uri[:cut].rsplit("/", 1)[0]
    try:
        filesystem, root = fs.FileSystem.from_uri(static)
        info = filesystem.get_file_info(root)
    except Exception as exc:  # unknown scheme, no credentials, no such bucket
        raise BadInputError(f"cannot open {uri} ({exc}); check the URI and the filesystem's credentials") from exc

    def as_uri(path: str) -> str:
        return f"{scheme}://{path.lstrip('/')}" if scheme != "file" else f"file://{path}"

    if info.type == fs.FileType.Directory:
        selected = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        found = sorted(i.path for i in selected if i.type == fs.FileType.File
                       and not any(part.startswith(".") for part in i.path[len(root):].split("/")))
        if pattern:
            wanted = urlparse(uri)
            match = (wanted.netloc + wanted.path).lstrip("/")
            found = [p for p in found if fnmatch.fnmatchcase(p.lstrip("/"), match)]
            if not found:
                raise BadInputError(f"no file matches the pattern {uri}")
        return [as_uri(p) for p in found]
    if info.type == fs.FileType.NotFound or pattern:
        raise BadInputError(f"input not found: {uri}")
    if root.lower().endswith(MANIFEST_SUFFIXES):
        base = uri.rsplit("/", 1)[0]
        return [_relative_to(e, base) for e in _read_manifest(root, filesystem)]
    return [uri]


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Every file the inputs name, for the Ray engine: local files as absolute paths (``file://`` URIs
    too), files on other filesystems as URIs (``s3://bucket/key``). Manifests may mix both."""
    files: dict[str, None] = {}
    for given in inputs:
        text = os.fspath(given)
        if not is_remote(text):
            path = local_path(text)
            if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():  # entries are files, read later
                entries = [_relative_to(e, str(path.parent)) for e in _read_manifest(str(path))]
                files.update((e if is_remote(e) else str(local_path(e)), None) for e in entries)
            else:
                files.update((str(p), None) for p in collect_inputs([text]))
        else:
            files.update((e, None) for e in _list_remote(text))
    return list(files)
