"""The app's private, offline environment: set before gradio is imported, torch-free.

Gradio and the Hugging Face libraries phone home unless told not to (usage analytics, a
version check, Hub telemetry) and write uploads under the system temp folder. The app sets
these environment variables before it imports gradio (the CLI and the Space both call
:func:`prepare_environment` first), so that nothing leaves the machine and every file the app
writes goes into its own temp folder (uploads, gradio's processed images) or its cache folder
(reference embeddings). A Space never runs with ``share=True``; neither does the local app.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["PRIVACY_ENV", "default_cache_dir", "make_temp_dir", "prepare_environment"]

#: Environment variables that switch off everything gradio and huggingface_hub would send out.
PRIVACY_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # usage analytics and the PyPI version check
    "GRADIO_SSR_MODE": "False",  # no Node server
    "GRADIO_SHARE": "False",  # never a public *.gradio.live tunnel
    "GRADIO_MCP_SERVER": "False",
    "GRADIO_RUN_HISTORY": "False",  # no run history of medical images kept in the browser
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DO_NOT_TRACK": "1",
}


def default_cache_dir() -> Path:
    """Where reference embeddings are cached: ``$RNET_HUB_APP_CACHE``, else ``$XDG_CACHE_HOME/rnet-hub/app``
    (``~/.cache/rnet-hub/app``)."""
    given = os.environ.get("RNET_HUB_APP_CACHE", "").strip()
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnet-hub" / "app"


def make_temp_dir() -> Path:
    """A new private temp folder for one run of the app (uploads, gradio's files, downloads offered)."""
    return Path(tempfile.mkdtemp(prefix="rnet-hub-app-"))


def prepare_environment(temp_dir: str | os.PathLike[str]) -> Path:
    """Set :data:`PRIVACY_ENV` and point gradio's upload/cache folder (``GRADIO_TEMP_DIR``) at ``temp_dir``
    (and matplotlib's, ``MPLCONFIGDIR``, unless set).

    Call it before gradio is imported: gradio reads some of these at import time. Returns the
    ``gradio`` sub-folder of ``temp_dir`` that gradio will write into.
    """
    for key, value in PRIVACY_ENV.items():
        os.environ[key] = value
    gradio_dir = Path(temp_dir) / "gradio"
    gradio_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir)
    os.environ.setdefault("MPLCONFIGDIR", str(Path(temp_dir) / "matplotlib"))  # grad-cam imports matplotlib
    return gradio_dir
