"""Leftovers of killed runs: told apart from live ones by a lock file, never by age.

A run that makes a temporary folder (an extraction in the temp folder, the hidden staging folder
of an output, an earlier output moved aside) first takes a *run lock* (:class:`RunLock`): a lock
file, created with ``O_EXCL`` and locked with ``fcntl.flock`` (exclusive), whose name carries a
random token that the run's folders share:

* ``rnet-hub-extract-<token>.lock`` beside ``rnet-hub-extract-<token>/`` (the temp folder);
* ``.<name>.lock-<token>`` beside ``.<name>.partial-<token>/`` and ``.<name>.old-<token>/``
  (next to the output folder ``<name>``).

The lock file is made before the folders and unlinked after they are gone. The kernel releases an
``flock`` when the last descriptor of the open file is closed: when the run (and the extraction
child that inherited the descriptor) has ended, however it ended (SIGKILL, out of memory, a crash).
So a lock file that *can* be locked belongs to a dead run and its folders are leftovers; one that
cannot be locked belongs to a live run (of any user, any machine sharing the lock), whose folders are
never touched. A reused process id cannot fool it, and a slow run is never taken for a dead one.
Folders with no lock file (made by an older rnet-hub, or being made this instant) are never removed,
only named by ``rnet-hub clean``. The file also holds the owner's process id, for people only.

Where ``fcntl.flock`` does not exist or the file system refuses it, runs go on without a lock and
nothing of theirs is ever judged dead. Torch-free: the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so nothing is ever judged dead
    fcntl = None  # type: ignore[assignment]

__all__ = ["UNMARKED", "Finding", "Run", "RunLock", "claimed", "disk_usage", "lock_owner", "remove", "runs_in", "sweep"]

#: flock errors that mean "someone holds it".
_HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (not unlinked, not replaced)."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (status.st_dev, status.st_ino) == (opened.st_dev, opened.st_ino)


class RunLock:
    """A run lock held by this process (see the module): ``path``, ``token``; :meth:`release` when done.

    Pass :meth:`fileno` to a child process (``pass_fds``) to keep the run alive until the child ends too.
    """

    def __init__(self, path: Path, token: str, fd: int) -> None:
        self.path, self.token, self._fd = path, token, fd

    @classmethod
    def create(cls, folder: Path, name: Callable[[str], str]) -> RunLock:
        """Create and lock ``folder / name(token)`` for a fresh random ``token``."""
        for _ in range(100):
            token = secrets.token_hex(4)
            path = folder / name(token)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            except FileExistsError:
                continue
            try:
                if cls._lock(fd) and _same_file(path, fd):
                    os.write(fd, f"{os.getpid()}\n".encode())
                    return cls(path, token, fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            # A cleaner took this new file for a dead run's (between our open and our lock) and removes it.
            os.close(fd)
        raise FileExistsError(errno.EEXIST, "no free name for a run lock", str(folder))

    @staticmethod
    def _lock(fd: int) -> bool:
        """Lock ``fd``; ``False`` when someone else holds it. Without flock support: ``True``, unlocked."""
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno not in _HELD  # a file system without flock: run on, never judged dead
        return True

    def fileno(self) -> int:
        return self._fd

    def release(self) -> None:
        """Unlink the lock file (the run's folders must be gone by now), then unlock. Idempotent."""
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            if _same_file(self.path, self._fd):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


@dataclass
class Run:
    """The entries of one run found in a folder: its lock file (if any) and its folders by role."""

    lock: Path | None = None
    parts: dict[str, Path] = field(default_factory=dict)


def runs_in(folder: Path, parse: Callable[[str], tuple[str, str] | None]) -> list[Run]:
    """The runs whose entries are in ``folder``; ``parse(name)`` gives ``(run key, role)`` or ``None``.

    The role ``"lock"`` is the lock file. A folder that cannot be listed has none.
    """
    runs: dict[str, Run] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        parsed = parse(name)
        if parsed is None:
            continue
        key, role = parsed
        run = runs.setdefault(key, Run())
        if role == "lock":
            run.lock = folder / name
        else:
            run.parts[role] = folder / name
    return list(runs.values())


@contextlib.contextmanager
def claimed(lock: Path) -> Iterator[bool]:
    """Hold the run lock ``lock`` while its run's leftovers are handled; ``True`` when its run is dead.

    ``False`` (nothing may be touched) when the lock is held, cannot be opened or locked, is not a
    plain file, or was removed meanwhile.
    """
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # gone, another user's, a link
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield stat.S_ISREG(os.fstat(fd).st_mode) and _same_file(lock, fd)
    finally:
        os.close(fd)


def lock_owner(lock: Path) -> str:
    """The process id written in a lock file, for messages (``"?"`` when unreadable)."""
    try:
        with open(lock, encoding="ascii") as handle:
            return handle.read(20).strip() or "?"
    except (OSError, ValueError):
        return "?"


def disk_usage(path: Path) -> int:
    """Bytes that ``path`` takes on disk (holes not counted), its contents included; links not followed."""
    total = 0
    try:
        status = os.lstat(path)
    except OSError:
        return 0
    total += getattr(status, "st_blocks", 0) * 512
    if stat.S_ISDIR(status.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    total += getattr(os.lstat(os.path.join(root, name)), "st_blocks", 0) * 512
    return total


def remove(path: Path) -> None:
    """Delete a folder (with its contents) or a file; what is already gone is fine."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class Finding:
    """One leftover and what was (or, in a dry run, would be) done with it.

    ``action``: ``"remove"``, ``"put back"`` (to ``target``), ``"keep"`` (named, never removed) or
    ``"in use"`` (its run is alive).
    """

    action: str
    path: Path
    note: str
    size: int = 0
    target: Path | None = None

    def line(self, dry_run: bool) -> str:
        """The report line of ``rnet-hub clean``."""
        if self.action == "remove":
            return f"{'would remove' if dry_run else 'removed'} {self.path} ({_size(self.size)}; {self.note})"
        if self.action == "put back":
            return f"{'would put back' if dry_run else 'put back'} {self.target} from {self.path} ({self.note})"
        if self.action == "in use":
            return f"left alone {self.path} ({self.note})"
        return f"kept {self.path}: {self.note}"


#: What ``clean`` says of a folder without a lock file.
UNMARKED = ("no lock file, so whether its run is over cannot be told (left by an rnet-hub older than its lock "
            "files?): delete it yourself once no conversion is running")


def sweep(folder: Path, parse: Callable[[str], tuple[str, str] | None],
          handle: Callable[[Run, bool], list[Finding]], *, dry_run: bool = False) -> list[Finding]:
    """Handle the leftovers of every dead run in ``folder``; what was found, live and unmarked runs' included.

    ``handle(run, dry_run)`` deals with one dead run's folders while its lock is held, and says what it
    did; its lock file is removed afterwards unless something was kept (the next sweep judges it again).
    """
    findings: list[Finding] = []
    for run in runs_in(folder, parse):
        if run.lock is None:
            findings += [Finding("keep", part, UNMARKED) for part in run.parts.values()]
            continue
        with claimed(run.lock) as dead:
            if not dead:
                owner = lock_owner(run.lock)
                findings += [Finding("in use", part, f"a run still holds its lock, pid {owner}")
                             for part in run.parts.values()]
                continue
            done = handle(run, dry_run)
            findings += done
            if not dry_run and not any(f.action == "keep" for f in done):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(run.lock)
    return findings
