"""What kind of file a path is: only regular files (or symlinks to one) are ever opened.

Opening a named pipe blocks until a writer comes, and reading a device such as ``/dev/zero``
never ends, so every reader asks :func:`regular_file_problem` first and turns its answer into
its own error. Torch-free.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["regular_file_problem"]

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
