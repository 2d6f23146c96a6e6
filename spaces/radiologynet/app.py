"""The RadiologyNET Hugging Face Space: the same app as ``rnet-hub app``, built by ``rnet_hub.app``.

Spaces run ``python app.py`` with ``GRADIO_SERVER_NAME=0.0.0.0``; run locally it serves on
127.0.0.1. Settings (Space variables): ``RNET_HUB_MODELS`` (comma-separated model names or
folders; default: the models listed in README.md), ``RNET_HUB_REFERENCE`` (a folder of
reference images in the Space; default: ``reference/`` next to this file if present, else
none, and users upload reference files), ``RNET_HUB_APP_CACHE`` (where reference embeddings
are cached; default: inside the app's temp folder). Analytics are off and nothing is shared.
"""

from __future__ import annotations

import os
from pathlib import Path

from rnet_hub.app import DEFAULT_MODELS, create_app, make_temp_dir, prepare_environment

HERE = Path(__file__).resolve().parent
TEMP = make_temp_dir()
prepare_environment(TEMP)  # before gradio is imported: no analytics, uploads in TEMP

MODELS = [m.strip() for m in os.environ.get("RNET_HUB_MODELS", ",".join(DEFAULT_MODELS)).split(",") if m.strip()]
_given = os.environ.get("RNET_HUB_REFERENCE", "").strip()
REFERENCE = Path(_given) if _given else (HERE / "reference" if (HERE / "reference").is_dir() else None)
CACHE = Path(os.environ.get("RNET_HUB_APP_CACHE", "").strip() or TEMP / "cache")

demo, analyser = create_app(models=MODELS, reference=REFERENCE, cache_dir=CACHE, temp_dir=TEMP)

if __name__ == "__main__":
    from rnet_hub.app.ui import launch_app

    launch_app(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
               port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), allowed_paths=[str(TEMP)])
