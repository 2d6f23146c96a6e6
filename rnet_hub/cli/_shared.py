"""What the command modules share: the architecture help text and output-path errors.

Torch-free, like every command module at import time: ``rnet-hub --help`` builds the whole
parser without importing torch or timm.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..architectures import ARCHITECTURES
from ..errors import BadInputError, RnetHubError

__all__ = ["ARCH_HELP", "SubParsers", "writing_to"]

#: The ``add_subparsers`` object each command module's ``add_parser(sub)`` adds its command(s) to.
SubParsers = argparse._SubParsersAction

ARCH_HELP = "one of " + ", ".join(s.name for s in ARCHITECTURES) + " (aliases and timm names work too)"


def _concerns(filename: str | bytes | os.PathLike[str] | None, target: Path, beside: tuple[str, ...]) -> bool:
    """Whether an OSError's file is ``target``, inside it, one of its parents, or a file next to it whose
    name starts with one of the ``beside`` prefixes."""
    if filename is None or isinstance(filename, bytes):
        return False
    path, target = Path(filename).absolute(), target.absolute()
    next_to = path.parent == target.parent and path.name.startswith(beside)
    return path == target or path in target.parents or target in path.parents or next_to


@contextlib.contextmanager
def writing_to(target: Path, option: str, *, beside: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn an ``OSError`` about the output path the user chose (permission denied, not a folder, disk
    full, ...) into a :class:`BadInputError` naming the option and the path; other errors pass unchanged.

    ``beside``: name prefixes of the files the writer puts next to ``target`` (temporary files, other
    extensions); the hidden staging folder of :func:`rnet_hub.staging.atomic_output`, ``.<name>.*``,
    always counts.
    """
    try:
        yield
    except OSError as exc:
        if isinstance(exc, RnetHubError) or not _concerns(exc.filename, target, (f".{target.name}.", *beside)):
            raise
        raise BadInputError(f"cannot write {option} {target}: {exc.strerror or exc} ({exc.filename}); "
                            f"choose another {option}") from exc
