"""Every error rnet_hub raises on purpose, in one hierarchy.

* :class:`RnetHubError` is the base: the CLI prints these as one ``error: ...`` line that
  names the fix. Anything else reaching the CLI is a bug and keeps its traceback.
* :class:`BadInputError` (also a ``ValueError``): the input is wrong; exit status 2.
* :class:`IntegrityError`: a check of the product failed (parity, a key map, a published
  model that does not reproduce its source); exit status 1.
* Environment errors (downloads, the Hub, an incompatible timm) keep the builtin base that
  callers already catch (``OSError``, ``RuntimeError``); exit status 2.

Torch-free: importing this module imports nothing but the standard library.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadInputError",
    "ConvertedFolderError",
    "DownloadError",
    "HeadShapeError",
    "ImageReadError",
    "IncompatibleTimmError",
    "IntegrityError",
    "KeyMapError",
    "LayoutError",
    "MissingExtraError",
    "OutputExistsError",
    "ParityError",
    "PublishedMismatchError",
    "PushError",
    "RnetHubError",
    "SourceError",
    "TransferError",
    "UnknownArchitectureError",
    "UnsafeCheckpointError",
]


class RnetHubError(Exception):
    """Base of every error rnet_hub raises on purpose; ``exit_code`` is the CLI's exit status."""

    exit_code = 2


class BadInputError(RnetHubError, ValueError):
    """The input (a name, a file, an option) is wrong; the message says how to fix it."""


class IntegrityError(RnetHubError):
    """A check of the product failed: the result would not be what it claims to be."""

    exit_code = 1


# ---------------------------------------------------------------- bad input
class UnknownArchitectureError(BadInputError):
    """A name or state dict that matches none of the ten architectures."""


class SourceError(BadInputError):
    """A checkpoint source (archive, ``.pth``, URL) that cannot be read as one."""


class UnsafeCheckpointError(SourceError):
    """A pickle that holds more than tensors and plain containers (it could run code)."""


class LayoutError(SourceError):
    """A torch zip checkpoint whose records are not laid out as torch writes them."""


class HeadShapeError(BadInputError):
    """The classification head has a shape the architecture cannot have."""


class ConvertedFolderError(BadInputError):
    """A folder that is not a converted RadiologyNET/timm model folder."""


class OutputExistsError(BadInputError, FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""


class MissingExtraError(BadInputError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class ImageReadError(BadInputError):
    """A DICOM or image file that cannot be read or decoded."""


class TransferError(BadInputError):
    """A transfer refused by ``strict`` or ``min_coverage``; ``report`` says what would have happened."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------- environment
class DownloadError(RnetHubError, OSError):
    """A download that failed after every retry."""


class PushError(RnetHubError, OSError):
    """A Hub upload that failed; the message says whether anything landed."""


class IncompatibleTimmError(RnetHubError, RuntimeError):
    """The installed timm lays out its registry differently from what rnet_hub knows."""


# ---------------------------------------------------------------- integrity
class ParityError(IntegrityError):
    """The converted model does not reproduce the original logits."""


class KeyMapError(IntegrityError, ValueError):
    """Mapped legacy weights that do not fit the timm model (names or shapes)."""


class PublishedMismatchError(IntegrityError):
    """A converted or published folder that does not reproduce its source checkpoint."""
