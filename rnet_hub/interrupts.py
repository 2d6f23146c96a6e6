"""Ctrl-C and SIGTERM: both stop a command the same way, and neither can be lost.

:func:`handled` (the CLI wraps every command in it) makes SIGTERM raise :class:`Terminated`, a
``KeyboardInterrupt``, so every clean-up made for Ctrl-C (the extraction child and its folder, the
staging folder) runs for it too; a second SIGTERM is ignored so as not to cut that clean-up short.

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""


_received: list[type[KeyboardInterrupt]] = []


def requested() -> type[KeyboardInterrupt] | None:
    """``Terminated`` or ``KeyboardInterrupt`` if such a signal arrived while :func:`handled` was active."""
    return _received[0] if _received else None


def check() -> None:
    """Raise the interrupt that arrived, in case the code it first landed in swallowed it."""
    kind = requested()
    if kind is not None:
        raise kind


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _received:  # a second one: the first is being handled, let its clean-up finish
        return
    _received.append(Terminated)
    raise Terminated


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if not _received:
        _received.append(KeyboardInterrupt)
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` and both signals are remembered, in this block (main thread only).

    A SIGINT that its starter ignores (a background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        _received.clear()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def follow_parent(parent: int, die_with_parent: bool, abandon: Callable[[int], object]) -> None:
    """In a child process: call ``abandon(exit status)`` (which must exit) when the process ``parent`` ends.

    Three ways, for every way a parent can end: SIGTERM (on Linux, with ``die_with_parent``, the kernel
    sends it when the parent dies: ``PR_SET_PDEATHSIG``, which follows the parent *thread* that started
    the child, so only a child started from the main thread may ask for it); the end of standard input
    (a pipe that only the parent holds: EOF when it closes it or dies, on any system); and the parent
    already gone by the time this runs. Also SIGTERM sent by anyone else abandons the work.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: abandon(128 + signal.SIGTERM))
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
