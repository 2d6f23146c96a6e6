"""``rnet-hub study`` / ``rnet_hub.study(...)``: does RadiologyNET initialisation help on my data?

The original study's comparison of initialisations (RadiologyNET, ImageNet, random) as one command:
every model x init x training fraction x learning rate x run is one fine-tuning run, and the study
writes per-epoch and final tables, mean ± std across runs, paired tests between inits, learning-curve
pictures and a report. Modules: :mod:`.grid` (cells, seeds, nested fractions), :mod:`.runner`
(sequential, parallel processes, Ray), :mod:`.state` (resumable state), :mod:`.results` (tables),
:mod:`.stats` (paired tests), :mod:`.plots` (pictures and their data), :mod:`.report`.

This package is callable: ``rnet_hub.study(data, models=..., out_dir=...)`` is
:func:`rnet_hub.study.core.study` (``rnet_hub.study.study`` too). Importing it imports neither torch nor
pandas.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from .core import StudyResult, study

__all__ = ["StudyResult", "study"]


class _CallableModule(ModuleType):
    """The package itself: calling it calls :func:`study` (``rnet_hub.study`` names the package and the function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> StudyResult:
        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
