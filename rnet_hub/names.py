"""The one grammar of model names: every entry point reads a model name through :func:`parse_model_name`.

Accepted, in this order:

* ``local-dir:DIR``, or the path of an existing folder: a converted folder on disk;
* ``hf-hub:org/name[@revision]`` or ``org/name[@revision]``: a Hub repository (at a branch,
  tag or commit sha);
* ``resnet50.radiologynet`` (the timm tag), ``ResNet50`` (the legacy name), ``res50`` (its
  alias) or ``resnet50`` (the timm name), any case, optionally ``@revision``: the official
  repository ``radiologynet/<timm name>`` (``$RNET_HUB_ORG`` replaces the organisation).

A name that looks like a path (``./x``, ``/x``, ``~/x``, ``x/y/z``) but is no folder is
reported as a missing folder, not as a bad repository id. Torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .architectures import ArchSpec, find_arch
from .errors import BadInputError, UnknownArchitectureError

__all__ = ["HUB_PREFIX", "LOCAL_PREFIX", "ModelRef", "architecture_of", "local_folder", "parse_model_name"]

LOCAL_PREFIX = "local-dir:"
HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """What a model name designates: a local ``folder``, or a Hub ``repo_id`` at ``revision``.

    ``arch`` is the architecture when the name itself says it (a tag, a legacy name, or a
    repository whose name is a timm architecture); otherwise the folder's config says it.
    """

    name: str
    folder: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    arch: ArchSpec | None = None

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)


def _known_arch(name: str) -> ArchSpec | None:
    try:
        return find_arch(name)
    except UnknownArchitectureError:
        return None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)


def parse_model_name(name: str | os.PathLike[str]) -> ModelRef:
    """The folder or Hub repository (and revision) that ``name`` designates; see the module docstring."""
    text = os.fspath(name).strip()
    if text.startswith(LOCAL_PREFIX):
        return ModelRef(text, folder=Path(text.removeprefix(LOCAL_PREFIX)).expanduser())
    if Path(text).expanduser().is_dir():
        return ModelRef(text, folder=Path(text).expanduser())
    hub = text.startswith(HUB_PREFIX)
    body, _, revision = text.removeprefix(HUB_PREFIX).partition("@")
    if not hub and _looks_like_path(body):
        raise BadInputError(f"no such folder: {body} (a model name is a converted folder, a Hub id such as "
                            f"radiologynet/resnet50, or an architecture name such as resnet50)")
    if "/" in body:
        if not _REPO_ID.match(body):
            raise BadInputError(f"{text!r} is not a Hub repository id; write org/name[@revision], e.g. "
                                f"radiologynet/resnet50@main")
        return ModelRef(text, repo_id=body, revision=revision or None, arch=_known_arch(body.rsplit("/", 1)[1]))
    spec = find_arch(body)  # legacy name, alias, timm name or '.radiologynet' tag; names the fix otherwise
    return ModelRef(text, repo_id=spec.repo_id(), revision=revision or None, arch=spec)


def architecture_of(name: str | os.PathLike[str] | ModelRef) -> ArchSpec:
    """The architecture a model name designates: said by the name itself, else by a local folder's config.

    A Hub repository whose name is not an architecture is not downloaded to find out: load it
    (``rnet_hub.create_model``) or pass the architecture.
    """
    ref = name if isinstance(name, ModelRef) else parse_model_name(name)
    if ref.arch is not None:
        return ref.arch
    if ref.folder is not None:
        from .folder import read_config

        return find_arch(str(read_config(ref.folder).get("architecture")))
    raise UnknownArchitectureError(f"{ref} does not name its architecture; pass one of the ten (e.g. resnet50)")


def local_folder(name: str | os.PathLike[str]) -> Path:
    """The folder a local model name (a path, or ``local-dir:PATH``) designates, for commands that need
    one on disk, like ``push``."""
    folder = Path(os.fspath(name).removeprefix(LOCAL_PREFIX)).expanduser()
    if not folder.is_dir():
        raise BadInputError(f"{os.fspath(name)} is not a folder; pass the output folder of `rnet-hub convert` "
                            f"(a path or local-dir:PATH)")
    return folder
