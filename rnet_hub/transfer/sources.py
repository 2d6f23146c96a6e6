"""The source side of a transfer: any source read into one flat state dict, then named in every scheme.

Reading (:func:`open_source`): a module or a state dict as it is; a path-like source that is
an http(s) URL or a file (an archive, ``.pth``, ``model.safetensors``; a missing file with
such a suffix is reported as a missing file) is read as one; everything else is a model name
read by :func:`rnet_hub.names.parse_model_name`: a converted folder (``local-dir:DIR`` or an
existing folder) or a Hub repository (``hf-hub:org/x@rev``, ``org/x``, ``resnet50.radiologynet``,
``ResNet50``, ``res50``, ``resnet50``), downloaded by :func:`rnet_hub.hub.download_model_files`.

Naming (:func:`name_schemes`): every source tensor under its own key and, when the
recogniser (:mod:`rnet_hub.legacy.recognise`) knows the architecture, under its legacy,
torchvision and timm names too, in each scheme's shape.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import torch
from torch import nn

from ..architectures import ArchSpec, find_arch
from ..archives.download import is_url
from ..errors import BadInputError, SourceError, UnknownArchitectureError
from ..folder import CONFIG_NAME, WEIGHTS_NAME, is_converted_folder, read_config
from ..hub import download_model_files
from ..legacy.checkpoint import find_state_dict, open_legacy_checkpoint
from ..legacy.recognise import SCHEMES, Hint, NameRow, identify, name_rows, row_names
from ..legacy.topology import LegacyWrapper
from ..names import ModelRef, parse_model_name

__all__ = ["NAMINGS", "Schemes", "Source", "SourceTensor", "StateDict", "name_schemes", "open_source",
           "storage_groups"]

StateDict = dict[str, torch.Tensor]
Source = str | os.PathLike[str] | Mapping[str, Any] | nn.Module
#: The names a source tensor can be matched under: its own key, then the recogniser's schemes.
NAMINGS = ("source", *SCHEMES)

_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar", ".gz", ".tgz", ".safetensors")


class SourceTensor(NamedTuple):
    """A source tensor under one of its names: original key, storage group, tensor in that scheme's shape."""

    key: str
    group: int
    tensor: torch.Tensor


#: naming ("source", "legacy", "torchvision", "timm") -> name -> source tensor.
Schemes = dict[str, dict[str, SourceTensor]]


# ----------------------------------------------------------------------------- reading
@contextlib.contextmanager
def open_source(source: Source) -> Iterator[tuple[StateDict, str, Hint]]:
    """Yield ``(state dict, description, hint)``; tensors are valid inside the block only.

    Archives are extracted into a private folder that the block's end deletes, so the
    caller copies what it needs before leaving.
    """
    if isinstance(source, nn.Module):
        name = type(source).__name__
        yield _tensors(source.state_dict(), name), f"{name} module", _module_hint(source)
    elif isinstance(source, Mapping):
        state = find_state_dict(source, "the state dict")
        yield state, f"state dict ({len(state)} tensors)", None
    elif isinstance(source, (str, os.PathLike)):
        with _open_path_source(os.fspath(source)) as opened:
            yield opened
    else:
        raise TypeError(f"cannot read weights from a {type(source).__name__}; pass a legacy archive or .pth, a "
                        f"converted folder, a model.safetensors file, a Hub id, a state dict or an nn.Module")


def _module_hint(module: nn.Module) -> Hint:
    """A legacy wrapper knows its architecture; a timm model names it in ``pretrained_cfg``."""
    if isinstance(module, LegacyWrapper):
        return module.spec, "legacy"
    cfg = getattr(module, "pretrained_cfg", None)
    return _spec_hint(cfg.get("architecture") if isinstance(cfg, Mapping) else None, "timm")


def _spec_hint(name: object, scheme: str) -> Hint:
    """``(spec, scheme)`` when ``name`` is one of the ten architectures, else None (a hint is never required)."""
    try:
        return (find_arch(name), scheme) if isinstance(name, str) else None
    except UnknownArchitectureError:
        return None


def _tensors(state: Mapping[str, Any], name: str) -> StateDict:
    """The tensors of a module's state dict; an empty one is an error (nothing could be transferred)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BadInputError(f"{name} has no tensors to transfer")
    return tensors


def _is_file_source(text: str) -> bool:
    """A URL, an existing file, or a checkpoint file name (so a missing one is reported as a missing file)."""
    if is_url(text):
        return True
    path = Path(text).expanduser()
    return not path.is_dir() and (path.is_file() or text.lower().endswith(_FILE_SUFFIXES))


@contextlib.contextmanager
def _open_path_source(text: str) -> Iterator[tuple[StateDict, str, Hint]]:
    """A ``.safetensors`` file, a legacy archive/``.pth``/URL, else a model name (folder or Hub repository)."""
    if not _is_file_source(text):
        ref = parse_model_name(text)
        folder = ref.folder if ref.folder is not None else _download(ref, text)
        state, hint = _read_folder(folder)
        hint = hint or ((ref.arch, "timm") if ref.arch else None)
        yield state, folder.name if ref.is_local else text, hint
        return
    path = Path(text).expanduser()
    if not is_url(text) and path.suffix == ".safetensors":
        state, hint = _read_safetensors(path)
        yield state, path.name, hint
        return
    with open_legacy_checkpoint(text, progress=False) as checkpoint:
        hint = _spec_hint(checkpoint.metadata.get("model_name"), "legacy")
        yield checkpoint.state_dict, checkpoint.source_name, hint


def _download(ref: ModelRef, name: str) -> Path:
    """The folder of ``config.json`` + ``model.safetensors`` of a Hub reference, downloaded (or cached).

    Hub failures become :class:`SourceError` naming the fix, like every other unreadable source.
    """
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    what = repr(name) if name.removeprefix("hf-hub:") == str(ref) else f"{name!r} ({ref})"
    try:
        folder = download_model_files(str(ref.repo_id), revision=ref.revision)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, HFValidationError) as exc:
        raise SourceError(f"could not get {what} from the Hugging Face Hub ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}); check the repository id and your connection, or pass "
                          f"a local converted folder instead") from exc
    if not is_converted_folder(folder):
        raise SourceError(f"{what} on the Hugging Face Hub has no {CONFIG_NAME} + {WEIGHTS_NAME}, so it is no "
                          f"converted model; check the repository id, or pass a local converted folder instead")
    return folder


def _read_folder(folder: Path) -> tuple[StateDict, Hint]:
    """The weights of a converted folder (checked to be one), and the architecture its config names."""
    hint = _spec_hint(read_config(folder).get("architecture"), "timm")
    return _load_safetensors(folder / WEIGHTS_NAME), hint


def _read_safetensors(path: Path) -> tuple[StateDict, Hint]:
    """The weights of a ``.safetensors`` file, and the architecture a ``config.json`` beside it names."""
    if not path.is_file():
        raise SourceError(f"no such weights file: {path}")
    config_path = path.parent / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        config = {}  # only a hint: the weights' own names are matched anyway
    return _load_safetensors(path), _spec_hint(config.get("architecture") if isinstance(config, dict) else None,
                                               "timm")


def _load_safetensors(path: Path) -> StateDict:
    """The tensors of a safetensors file; a truncated or damaged one is named by the loaders' own error."""
    from ..loading import damaged_weights

    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (OSError, safetensors.SafetensorError) as exc:
        raise damaged_weights(path, exc) from exc


# ----------------------------------------------------------------------------- naming
def storage_groups(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Number the distinct storages: keys that share one (DenseNet's duplicates) get the same number."""
    numbers: dict[tuple, int] = {}

    def ident(t: torch.Tensor) -> tuple:
        if t.is_meta or t.numel() == 0:
            return ("object", id(t))
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)

    return {k: numbers.setdefault(ident(v), len(numbers)) for k, v in state.items()}


def _in_scheme(tensor: torch.Tensor, row: NameRow, scheme: str) -> torch.Tensor:
    """``tensor`` in ``scheme``'s shape: only the documented Linear <-> conv reshapes differ."""
    if row.timm_shape is None or row.timm_shape == row.legacy_shape:
        return tensor
    shape = row.timm_shape if scheme == "timm" else row.legacy_shape
    return tensor.reshape(shape) if tensor.numel() == torch.Size(shape).numel() else tensor


def _common_prefixes(keys: list[str]) -> Iterator[str]:
    """``""``, then each longer dotted prefix that every key shares (``module.``, ``backbone.``)."""
    prefix = ""
    while True:
        yield prefix
        heads = {k[len(prefix):].partition(".")[0] for k in keys}
        if len(heads) != 1 or not all(k[len(prefix):].count(".") for k in keys):
            return
        prefix += f"{heads.pop()}."


def _recognise(state: StateDict, hint: Hint) -> tuple[ArchSpec, str, dict[str, str]] | None:
    """``(spec, scheme, name -> source key)`` of the recognised architecture, after stripping a shared prefix."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for prefix in _common_prefixes(list(state)):
        names = {k[len(prefix):]: k for k in state}
        found = identify({n: shapes[k] for n, k in names.items()}, hint)
        if found:
            return (*found, names)
    return None


def name_schemes(state: StateDict, hint: Hint) -> tuple[Schemes, str | None]:
    """Every name each source tensor has: its own key, and its legacy/torchvision/timm names when recognised.

    Also returns the recognised architecture and naming in words (``"ResNet50 (legacy names)"``), or None.
    """
    groups = storage_groups(state)
    schemes: Schemes = {"source": {k: SourceTensor(k, groups[k], v) for k, v in state.items()}}
    recognised = _recognise(state, hint)
    if recognised is None:
        return schemes, None
    spec, naming, keys = recognised
    schemes.update({scheme: {} for scheme in SCHEMES})
    for row in name_rows(spec):
        key = next((keys[n] for n in row_names(row, naming) if n in keys), None)
        if key is None:
            continue
        for scheme in SCHEMES:
            tensor = _in_scheme(state[key], row, scheme)
            for name in row_names(row, scheme):
                schemes[scheme][name] = SourceTensor(key, groups[key], tensor)
    return schemes, f"{spec.name} ({naming} names)"
