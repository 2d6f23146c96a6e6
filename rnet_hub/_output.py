"""The output folder of a conversion, written atomically.

Everything goes into a hidden temporary sibling that is renamed into place only when the
block succeeds, so a failed or interrupted conversion leaves nothing behind. No torch here:
the CLI checks the output folder before it imports torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputExistsError", "atomic_output", "refuse_existing"]


class OutputExistsError(FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` unless ``out_dir`` is free (or may be replaced)."""
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists; choose another --out or pass --overwrite")


@contextlib.contextmanager
def atomic_output(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; rename it into place only on success."""
    refuse_existing(out_dir, overwrite)
    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        _apply_umask(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
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

