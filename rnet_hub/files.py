"""Files: what kind of file a path is (only regular files, or symlinks to one, are ever opened), and
writing one file atomically.

Opening a named pipe blocks until a writer comes, and reading a device such as ``/dev/zero``
never ends, so every reader asks :func:`regular_file_problem` first and turns its answer into
its own error. Every single-file output that must never be seen half-written (JSON records, CSV
tables, reports, cache entries) goes through :func:`write_atomic`. Torch-free.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["regular_file_problem", "write_atomic", "write_text_atomic"]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file (or a symlink to one), as ``"<path> is ..."``; ``None`` when it is one.

    Nothing is opened: the answer comes from ``stat``.
    """
    where = os.fspath(path)
    try:
        mode = os.stat(where).st_mode
    except OSError as exc:
        if not os.path.islink(where):
            return f"{where} cannot be read: {exc.strerror or exc}"
        if exc.errno == errno.ENOENT:
            return f"{where} is a symlink to {os.readlink(where)}, which does not exist"
        return f"{where} is a symlink to {os.readlink(where)} that cannot be followed ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    link = f" (a symlink to {os.readlink(where)})" if os.path.islink(where) else ""
    return f"{where} is {kind}{link}, not a regular file"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` for a new file beside ``path``, then rename it into place.

    Readers, and a run killed meanwhile, find the old file or the whole new one, never half of it. The
    temporary name carries the process and thread, so concurrent writers never share one; it is removed
    when ``write`` fails. The file gets the usual permissions (the umask's), as a plain write would.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomic`."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
