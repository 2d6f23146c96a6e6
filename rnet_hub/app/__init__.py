"""The RadiologyNET app: see a DICOM as the model sees it, find similar images, explain a fine-tuned model.

Runs locally (``rnet-hub app``) and as a Hugging Face Space (``spaces/radiologynet/app.py``),
both through :func:`create_app`. The pieces, usable without the UI:

* :mod:`.views`: every image the exporter rules make of a file, its metadata, its model input;
* :mod:`.models`: models loaded by any name of the one grammar, fine-tuned folders included;
* :mod:`.reference`: the reference set's embeddings, cached on disk, searched by cosine;
* :mod:`.saliency`: Grad-CAM on a fine-tuned classifier;
* :mod:`.analysis`: one analysis of an upload (:class:`Analyser`), what every panel shows;
* :mod:`.ui`: the ``gr.Blocks`` UI and its launch; :mod:`.environment`: offline, private settings.

Gradio is optional (``pip install 'rnet-hub[app]'``). Importing this package imports neither
gradio nor torch; the names below import their modules on first use.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .environment import default_cache_dir, make_temp_dir, prepare_environment

if TYPE_CHECKING:
    from .analysis import Analyser, Analysis
    from .ui import build_app, launch_app

__all__ = ["DEFAULT_MODELS", "Analyser", "Analysis", "build_app", "create_app", "default_cache_dir", "launch_app",
           "make_temp_dir", "prepare_environment"]

#: The models the app offers when none are named: the two smallest first (fast on a CPU Space).
DEFAULT_MODELS = ("radiologynet/mobilenetv3_small_100", "radiologynet/resnet18", "radiologynet/resnet50",
                  "radiologynet/densenet121", "radiologynet/efficientnet_b3")

_LAZY = {"Analyser": ".analysis", "Analysis": ".analysis", "build_app": ".ui", "launch_app": ".ui"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rnet_hub.app' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def create_app(*, models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
               reference: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
               temp_dir: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """The app's ``gr.Blocks`` and its :class:`Analyser`, with the private environment set up first.

    ``temp_dir`` (default: a new private folder) receives uploads and downloads, ``cache_dir``
    (default :func:`default_cache_dir`) the reference embeddings; nothing else is written.
    """
    temp = Path(temp_dir) if temp_dir is not None else make_temp_dir()
    if "gradio" in sys.modules and os.environ.get("GRADIO_TEMP_DIR") != str(temp / "gradio"):
        logging.getLogger(__name__).warning("gradio was imported before the app set GRADIO_TEMP_DIR: uploads go to "
                                            "%s, but gradio keeps some files where it chose at import", temp)
    prepare_environment(temp)
    from .analysis import Analyser
    from .ui import build_app

    analyser = Analyser(models=list(models), reference=reference, temp_dir=temp / "outputs",
                        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir())
    return build_app(analyser), analyser
