"""The one place that calls huggingface_hub to download or to talk to the Hub.

Every request identifies itself with this package's library name and version, and the
usual huggingface_hub rules apply: the HF cache, ``HF_ENDPOINT``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE``. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .folder import CONFIG_NAME, WEIGHTS_NAME
from .version import __version__

__all__ = ["LIBRARY_NAME", "download_model_files", "hf_api"]

#: How this package names itself to the Hub (``user-agent``).
LIBRARY_NAME = "rnet_hub"
#: The files of a converted folder that loading needs (the card is not needed to load).
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)


def download_model_files(repo_id: str, *, revision: str | None = None,
                         cache_dir: str | os.PathLike[str] | None = None,
                         local_dir: str | os.PathLike[str] | None = None,
                         token: str | None = None, endpoint: str | None = None,
                         allow_patterns: list[str] | None = None) -> Path:
    """Download ``config.json`` + ``model.safetensors`` of ``repo_id`` at ``revision``; return their folder.

    ``allow_patterns`` widens or narrows the files (``None``: the two model files).
    """
    from huggingface_hub import snapshot_download

    patterns = list(MODEL_FILES) if allow_patterns is None else allow_patterns
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir, token=token,
                                  endpoint=endpoint, allow_patterns=patterns, library_name=LIBRARY_NAME,
                                  library_version=__version__))


def hf_api(*, endpoint: str | None = None, token: str | None = None) -> Any:
    """An ``HfApi`` client that names this package in its requests."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
