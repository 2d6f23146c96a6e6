"""Writing an output folder atomically, and never where it could destroy anything.

The folder is written atomically (:func:`atomic_output`): everything goes into a hidden temporary
sibling that is renamed into place only when the block succeeds, so a failed or interrupted
conversion leaves nothing behind. What may be an output folder (:func:`refuse_existing`):

* a new folder; never a file or a symbolic link (not followed, not replaced), nor the current
  directory, one of its parents, the root, the home folder or one of its parents;
* with ``overwrite``, also an existing folder that is empty or is an earlier output: ``config.json``
  and ``model.safetensors`` and nothing but the files a conversion writes (:data:`OUTPUT_NAMES`,
  plain files). Any other folder is never replaced. Without ``overwrite`` no existing folder is used.

The rename into place never replaces an output that appeared meanwhile (Linux ``renameat2`` with
``RENAME_NOREPLACE``; elsewhere a check then ``os.rename``, which cannot replace a non-empty
folder): of two conversions to one folder at once, the second to finish fails with
:class:`OutputExistsError`. ``overwrite`` replaces only the folder found at the start: it is moved
to a hidden sibling, the new one renamed into place, then the old one deleted (or put back if the
new one cannot go into place). Torch-free: the CLI checks the output folder before it imports torch.

Killed runs: the staging folder ``.<name>.partial-<token>`` and the moved-aside ``.<name>.old-<token>``
share the token of a run lock ``.<name>.lock-<token>`` beside them (:mod:`rnet_hub.leftovers`), taken
before they exist and removed after they are gone. :func:`remove_dead_runs` (run by every check of
an output folder on its parent, and by ``rnet-hub clean``) deletes a dead run's staging folder, and
puts its moved-aside earlier output back where its place is empty; where an output stands there
(the dead run's new one, or a later one) the earlier output is deleted, as the overwrite asked;
where something else stands there it is kept, and named.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from . import interrupts
from .errors import OutputExistsError
from .folder import CONFIG_NAME, OUTPUT_NAMES, WEIGHTS_NAME
from .leftovers import Finding, Run, RunLock, disk_usage, remove, sweep

__all__ = ["atomic_output", "refuse_existing", "remove_dead_runs"]

logger = logging.getLogger(__name__)
#: A run's entries beside an output folder ``<name>``: its lock, its staging folder, the earlier output moved aside.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<role>lock|partial|old)-(?P<token>[a-z0-9_]{8})")

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the current directory
_RENAME_NOREPLACE = 1  # <linux/fs.h>: fail with EEXIST instead of replacing the destination
#: renameat2 errors that mean "this kernel or file system cannot do RENAME_NOREPLACE": use the fallback.
_NOREPLACE_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})
#: rename errors that mean "something is at the destination".
_OCCUPIED = frozenset({errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR})


def _located(out_dir: Path) -> Path:
    """``out_dir`` absolute, its parent resolved (links followed) and its last part a plain name.

    The checks and the renames then concern the same entry, and the last part itself (a link,
    perhaps) is never followed. ``.``, ``..`` and the root are resolved whole.
    """
    if out_dir.name in ("", ".", ".."):
        return Path(os.path.realpath(out_dir))
    return Path(os.path.realpath(out_dir.parent)) / out_dir.name


def _protected(real: Path) -> str | None:
    """Why the resolved folder ``real`` may never be an output folder, or ``None``."""
    if real == Path(real.anchor):
        return "the filesystem root"
    with contextlib.suppress(OSError):  # the current directory may have been removed
        cwd = Path(os.path.realpath(os.getcwd()))
        if real == cwd:
            return "the current directory"
        if real in cwd.parents:
            return "a parent of the current directory"
    home = os.path.expanduser("~")
    if home != "~":
        home_real = Path(os.path.realpath(home))
        if real == home_real:
            return "your home folder"
        if real in home_real.parents:
            return "a parent of your home folder"
    return None


def _not_an_output(folder: Path, shown: str) -> str | None:
    """What makes the existing folder ``folder`` something other than an earlier output, or ``None``.

    ``None`` also for an empty folder. Sub-folders, links and files of other names are foreign.
    """
    try:
        with os.scandir(folder) as entries:
            found = {entry.name: entry.is_file(follow_symlinks=False) for entry in entries}
    except OSError as exc:
        raise OutputExistsError(f"{shown} exists and cannot be listed ({exc.strerror or exc}); it will not be "
                                f"replaced: choose another --out") from exc
    foreign = sorted(name for name, plain in found.items() if name not in OUTPUT_NAMES or not plain)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"it holds {listed}"
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if found and name not in found]
    return f"it has no {' or '.join(missing)}" if missing else None


def _check_target(out_dir: Path, overwrite: bool) -> os.stat_result | None:
    """:func:`refuse_existing`; returns the ``lstat`` of the existing folder ``overwrite`` may replace."""
    shown = str(out_dir)
    target = _located(out_dir)
    for finding in remove_dead_runs(target.parent):  # a killed run's earlier output goes back first
        if finding.action in ("remove", "put back"):
            (logger.warning if finding.action == "put back" else logger.info)("%s", finding.line(dry_run=False))
    try:
        found: os.stat_result | None = os.lstat(target)
    except NotADirectoryError as exc:
        raise OutputExistsError(f"{shown} cannot be a folder: part of its path is a file; "
                                f"choose another --out") from exc
    except OSError:  # absent (or in a locked folder: creating it will say so)
        found = None
    if found is not None and stat.S_ISLNK(found.st_mode):
        raise OutputExistsError(f"{shown} is a symbolic link, not a folder; it is never followed or replaced: "
                                f"choose another --out")
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise OutputExistsError(f"{shown} is a file, not a folder; choose another --out")
    real = Path(os.path.realpath(target))
    reason = _protected(real)
    if reason is not None:
        where = f" ({real})" if str(real) != shown else ""
        raise OutputExistsError(f"{shown}{where} is {reason}; an output folder is replaced as a whole, so it must be "
                                f"a folder of its own, never this one (not even with --overwrite): choose another "
                                f"--out, e.g. {os.path.join(shown, 'converted')}")
    if found is None:
        return None
    foreign = _not_an_output(target, shown)
    if foreign is not None:
        raise OutputExistsError(f"{shown} exists and is not an earlier conversion output ({foreign}), so it is never "
                                f"replaced, not even with --overwrite: choose another --out")
    if not overwrite:
        raise OutputExistsError(f"{shown} already exists; choose another --out or pass --overwrite")
    return found


def refuse_existing(out_dir: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` unless ``out_dir`` is free or ``overwrite`` may replace it.

    Refused whatever ``overwrite`` says: a file or a symbolic link at ``out_dir`` (never followed or
    replaced); the current directory, one of its parents, the filesystem root, the home folder or
    one of its parents; an existing folder that holds anything a conversion does not write
    (:data:`OUTPUT_NAMES`, all plain files, ``config.json`` and ``model.safetensors`` among them).
    Any existing folder is refused without ``overwrite``; with it, an earlier output or an empty
    folder (one made ready for the output) is accepted. Reads nothing but the folder's listing; first
    clears the leftovers of killed conversions beside it (:func:`remove_dead_runs`).
    """
    _check_target(Path(out_dir), overwrite)


@functools.cache
def _libc_renameat2() -> Callable[..., int] | None:
    """Linux's ``renameat2`` from the C library, or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such symbol (glibc < 2.28, some libcs)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _rename_noreplace(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``; raise an ``OSError`` (``EEXIST`` mostly) if anything is there.

    Linux's ``renameat2(..., RENAME_NOREPLACE)`` checks and renames in one step. Where the kernel, the C
    library or the file system lacks it: check, then ``os.rename``. A directory renamed onto a
    non-empty directory, a file or a link fails, so in the instant between the two steps only an
    empty folder could be replaced, never an output (a conversion never renames an empty one).
    """
    renameat2 = _libc_renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _NOREPLACE_UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(source), None, str(destination))
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(source), None, str(destination))
    os.rename(source, destination)


def _appeared(shown: str) -> OutputExistsError:
    return OutputExistsError(f"{shown} appeared while converting (another conversion or program wrote it) and was "
                             f"left as it is; this conversion's output was discarded: choose another --out, or "
                             f"check {shown} and run again with --overwrite to replace it")


def _changed(shown: str) -> OutputExistsError:
    return OutputExistsError(f"{shown} changed while converting, so it was not replaced; this conversion's output "
                             f"was discarded: check {shown}, then choose another --out or run again")


def _same(a: os.stat_result, b: os.stat_result, *, untouched: bool = False) -> bool:
    """Whether two ``lstat`` results are of one folder (``untouched``: whose entries did not change since)."""
    keys = ("st_dev", "st_ino", "st_mtime_ns", "st_ctime_ns") if untouched else ("st_dev", "st_ino")
    return all(getattr(a, key) == getattr(b, key) for key in keys)


def _move_aside(target: Path, expected: os.stat_result, shown: str, token: str) -> Path | None:
    """Rename the earlier output ``target`` to a hidden sibling (returned); ``None`` when it is gone.

    Checked once moved (nothing writes there by its old name): when it is no longer the folder
    accepted at the start, or no longer an earlier output, it is put back and the commit refused.
    """
    aside = target.with_name(f".{target.name}.old-{token}")
    try:
        _rename_noreplace(target, aside)
    except FileNotFoundError:
        return None
    # Swapped in the instant between the check and the rename? (The rename changed its ctime.)
    if not _same(os.lstat(aside), expected):
        problem = _appeared(shown)
    elif _not_an_output(aside, shown) is not None:  # files were added in the instant before the rename
        problem = _changed(shown)
    else:
        return aside
    if not _put_back(aside, target, discard=False):
        problem = OutputExistsError(f"{problem}; {shown} was taken meanwhile, so what was there is now {aside}")
    raise problem


def _put_back(aside: Path, target: Path, *, discard: bool) -> bool:
    """Return a moved-aside folder to ``target``; whether it went back.

    Where something took ``target`` meanwhile, the folder stays at ``aside``, or with ``discard``
    (an earlier output ``overwrite`` was asked to replace, and a newer output stands in its place)
    is deleted.
    """
    try:
        _rename_noreplace(aside, target)
    except OSError as exc:
        if exc.errno not in _OCCUPIED:
            raise
        if discard:
            shutil.rmtree(aside, ignore_errors=True)
        return False
    return True


def _commit(staging: Path, target: Path, shown: str, replaced: os.stat_result | None, token: str) -> None:
    """Rename ``staging`` to ``target`` without replacing anything but the folder ``replaced`` (``lstat``).

    The folder to replace is moved aside, the new one renamed into place (no-replace), then the old
    one deleted; if the new one cannot go into place, the old one is put back.
    """
    aside = None
    try:
        now: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        now = None
    if now is not None:
        if replaced is None or not _same(now, replaced):
            raise _appeared(shown)
        if not _same(now, replaced, untouched=True):  # entries added or removed (or made anew, same inode number)
            raise _changed(shown)
        aside = _move_aside(target, replaced, shown, token)
    try:
        _rename_noreplace(staging, target)
    except BaseException as exc:
        if aside is not None:
            _put_back(aside, target, discard=True)
        if isinstance(exc, OSError) and exc.errno in _OCCUPIED:
            raise _appeared(shown) from exc
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(out_dir: str | os.PathLike[str], overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``out_dir``; rename it into place only when the block succeeds.

    ``out_dir`` is checked first (:func:`refuse_existing`). The rename never replaces an output that
    appeared meanwhile (:func:`_rename_noreplace`): the conversion finishing second raises
    :class:`OutputExistsError`. With ``overwrite`` only the folder found at the start is replaced,
    and only if it is still an earlier output (or empty). On any failure the staging folder and the
    parent folders made for it are removed.
    """
    out_dir = Path(out_dir)
    replaced = _check_target(out_dir, overwrite)
    target = _located(out_dir)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        run = RunLock.create(target.parent, lambda token: f".{target.name}.lock-{token}")
        try:
            staging = target.with_name(f".{target.name}.partial-{run.token}")
            staging.mkdir(mode=0o700)
            try:
                interrupts.check()
                yield staging
                interrupts.check()  # never commit after a Ctrl-C or SIGTERM, even one that was swallowed
                _apply_umask(staging)
                _commit(staging, target, str(out_dir), replaced, run.token)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            run.release()
    except BaseException:
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _apply_umask(folder: Path) -> None:
    """Give the staged folder ordinary permissions (mkdtemp and safetensors create private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _parse_leftover(name: str) -> tuple[str, str] | None:
    match = _LEFTOVER.fullmatch(name)
    return None if match is None else (f"{match['name']}/{match['token']}", match["role"])


def _is_output(folder: Path, *, or_empty: bool = False) -> bool:
    """Whether ``folder`` is a folder laid out as a conversion output (``or_empty``: or an empty folder)."""
    try:
        return (stat.S_ISDIR(os.lstat(folder).st_mode) and (or_empty or any(folder.iterdir()))
                and _not_an_output(folder, "") is None)
    except (OSError, OutputExistsError):
        return False


def _handle_dead(run: Run, dry_run: bool) -> list[Finding]:
    """A dead run's leftovers: its staging folder goes; its moved-aside earlier output goes back, or goes."""
    found: list[Finding] = []
    if "partial" in run.parts:
        staging = run.parts["partial"]
        found.append(Finding("remove", staging, "the unfinished output of a conversion that was killed",
                             disk_usage(staging)))
        if not dry_run:
            remove(staging)
    if "old" in run.parts:
        aside = run.parts["old"]
        target = aside.with_name(_LEFTOVER.fullmatch(aside.name)["name"])  # type: ignore[index]
        found.append(_handle_aside(aside, target, dry_run))
    return found


def _handle_aside(aside: Path, target: Path, dry_run: bool) -> Finding:
    """The earlier output a killed ``--overwrite`` run moved aside: back into an empty place, else deleted or kept."""
    killed = "a conversion that was killed"
    if _is_output(target):  # the run's new output (or a later one) stands there, as the overwrite asked
        finding = Finding("remove", aside, f"the earlier output of {target}, replaced by {killed} (--overwrite) "
                                           f"before it deleted this", disk_usage(aside))
    elif os.path.lexists(target):
        return Finding("keep", aside, f"the earlier output of {target}, moved aside by {killed}; {target} is now "
                                      f"something else: move it back or delete it yourself")
    elif not _is_output(aside, or_empty=True):  # half deleted: the run had put its output in place, deleted since
        finding = Finding("remove", aside, f"what remained of an earlier output that {killed} was deleting",
                          disk_usage(aside))
    else:
        finding = Finding("put back", aside, f"the earlier output, moved aside by {killed}", target=target)
        if not dry_run:
            try:
                _rename_noreplace(aside, target)
            except OSError as exc:  # judged again by the next sweep
                return Finding("keep", aside, f"the earlier output of {target}, moved aside by {killed}; it could "
                                              f"not be put back ({exc.strerror or exc})")
        return finding
    if not dry_run:
        remove(aside)
    return finding


def remove_dead_runs(folder: str | os.PathLike[str], *, dry_run: bool = False) -> list[Finding]:
    """Clear the leftovers of killed conversions among the hidden folders in ``folder``; what was found.

    Only folders whose run lock shows their run is over (see :mod:`rnet_hub.leftovers`); a live run's
    and unmarked folders are only reported.
    """
    return sweep(Path(folder), _parse_leftover, _handle_dead, dry_run=dry_run)
