"""Ctrl-C, SIGTERM and SIGHUP: all stop a command the same way, and none can be lost.

:func:`handled` (the CLI wraps every command in it) makes SIGTERM and SIGHUP (the terminal was
closed) raise :class:`Terminated`, a ``KeyboardInterrupt``, so every clean-up made for Ctrl-C (the
extraction child and its folder, the staging folder) runs for them too; a second such signal is
ignored so as not to cut that clean-up short.

An exception raised by a signal handler can be swallowed by the code it lands in: a signal that
arrives while torch's C++ initialisation imports numpy is reported as a warning and dropped. So each
signal is also remembered, and :func:`check` raises it again; the long steps call it where they
begin (the extraction's result, the output's staging and commit), and the CLI exits with 130 or 143
even when a command finished despite a signal.

:func:`follow_parent`: a helper process (the archive extraction) that ends with its parent, however
the parent ends. Torch-free: the standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["Terminated", "check", "follow_parent", "handled", "requested"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


#: the signals that end a command like Ctrl-C does, as :class:`Terminated`
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal: 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        """``SIGTERM`` or ``SIGHUP``."""
        return signal.Signals(self.signum).name


_received: list[KeyboardInterrupt] = []


def requested() -> KeyboardInterrupt | None:
    """The ``Terminated`` or ``KeyboardInterrupt`` of a signal that arrived while :func:`handled` was active."""
    return _received[0] if _received else None


def check() -> None:
    """Raise the interrupt that arrived again, in case the code it first landed in swallowed it."""
    first = requested()
    if first is not None:
        raise type(first)(*first.args)


def _on_terminating(signum: int, frame: FrameType | None) -> None:
    if _received:  # a second one: the first is being handled, let its clean-up finish
        return
    _received.append(Terminated(signum))
    raise Terminated(signum)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(KeyboardInterrupt())
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated`, and every such signal and Ctrl-C is remembered, in this block.

    Main thread only. A SIGINT or SIGHUP that its starter ignores (a background job, ``nohup``) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.getsignal(signum) for signum in (*TERMINATING, signal.SIGINT)}
    for signum in TERMINATING:
        if previous[signum] is not signal.SIG_IGN:
            signal.signal(signum, _on_terminating)
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        _received.clear()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def follow_parent(parent: int, die_with_parent: bool, abandon: Callable[[int], object]) -> None:
    """In a child process: call ``abandon(exit status)`` (which must exit) when the process ``parent`` ends.

    Three ways, for every way a parent can end: SIGTERM (on Linux, with ``die_with_parent``, the kernel
    sends it when the parent dies: ``PR_SET_PDEATHSIG``, which follows the parent *thread* that started
    the child, so only a child started from the main thread may ask for it); the end of standard input
    (a pipe that only the parent holds: EOF when it closes it or dies, on any system); and the parent
    already gone by the time this runs. Also SIGTERM sent by anyone else, or SIGHUP (the terminal closed,
    which signals the whole foreground group), abandons the work, unless the parent ignores it (``nohup``).
    """
    for terminating in TERMINATING:
        if signal.getsignal(terminating) is not signal.SIG_IGN:
            signal.signal(terminating, lambda signum, frame: abandon(128 + signum))
    if die_with_parent and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the death signal was set up
        abandon(0)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        abandon(0)  # EOF: the parent closed the pipe, or died

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
