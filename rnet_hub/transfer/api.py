"""Partial weight transfer with a report: any RadiologyNET source into any ``nn.Module``.

The original helper copied a tensor when a target key had the same name (or one of three
renamed forms) and the same shape, and said nothing. :func:`transfer_weights` keeps that
behaviour as its first two rules, adds the conversion key maps and a careful suffix rule,
and always returns a :class:`TransferReport` (and logs one line, a warning when nothing
matched), so a load that matched nothing can no longer pass for success.

Algorithm
---------
1. **Read the source** into one flat state dict (original key names): a legacy archive,
   ``.pth`` or URL, a converted folder (``config.json`` + ``model.safetensors``), a
   ``model.safetensors`` file, a Hub id (``hf-hub:org/name[@rev]`` or ``org/name``), a state
   dict or a module. Source keys that share storage (the DenseNet wrapper's ``features.*``
   and ``model.features.*``) form one *source tensor*.
2. **Name the source in every scheme.** When its keys are exactly (apart from the head and
   a prefix all keys share, like ``module.``) one of the ten architectures in legacy-wrapper,
   torchvision or timm naming, each tensor
   also gets its name in the other two schemes: ``_keymap.legacy_to_timm`` one way, its
   inverse (built once per architecture from a meta-device wrapper, key names only) the
   other. The architecture named by a converted folder's config, a checkpoint's
   ``model_name``, a legacy wrapper or a timm model's ``pretrained_cfg`` is tried first.
   The documented reshapes come with the renames: VGG16 ``classifier.0``/``.3``
   (Linear) <-> ``pre_logits.fc1``/``.fc2`` (7x7 / 1x1 conv), MobileNetV3 ``classifier.0``
   (Linear) <-> ``conv_head`` (1x1 conv). torchvision names are the legacy names without the
   wrapper's ``model.`` prefix.
3. **Match target keys**, each rule over all still-unfilled targets before the next:

   a. *exact*: the same key;
   b. *original fallbacks*, source key by source key as the original helper did: ``model.``
      prepended, ``features`` replaced by ``model``, everything up to the first ``model.`` dropped;
   c. *key maps*: a target key that is ``<prefix><name>`` for a name in one of the schemes
      (source, legacy, torchvision, timm), e.g. ``encoder.`` + ``layer1.0.conv1.weight`` in an
      smp U-Net, ``encoder.model.`` + a timm name in an smp ``tu-`` encoder. timm's feature
      wrappers flatten nested names with ``_`` (``features_denseblock1``), so names are also
      compared with ``_`` read as ``.``. Matches are grouped by (scheme, prefix) and the
      largest groups are applied first, so a stray decoder key can never take a tensor
      that the real backbone matches;
   d. *suffix*: the longest run of trailing name components (at least two, like
      ``conv1.weight``) shared with source names; accepted only when exactly one unused
      source tensor has it; when several do, the target stays untouched.

   A tensor is only ever copied into a target of the same shape (the reshapes of step 2 give
   the source tensor the target's shape first); a same-name, other-shape pair is reported as
   a shape mismatch, and the rest of that layer is left untouched too (no layer is ever
   half-loaded, e.g. a bias without its weight). A source tensor fills at most one target
   tensor; targets that share storage (DenseNet's duplicated modules) are filled together.
4. **Check, then copy.** ``strict`` and ``min_coverage`` are checked before anything is
   written, so a refused transfer leaves the target as it was.

The rule that filled each target is in the report: ``exact``, ``original fallback``,
``prefix`` (the source's own names under a target prefix), ``legacy names``/``torchvision
names``/``timm names`` (a key map), ``... (_ read as .)``, or ``suffix``.

Coverage is the fraction of the target's parameter and persistent buffer *elements* that
were filled, each shared storage counted once. ``num_batches_tracked`` counters are
transferred and listed like any tensor but do not count towards coverage (they are training
step counters, not weights; counting them would let an all-BatchNorm miss look covered).

``strict`` refuses when any target parameter or buffer outside the classifier (counters
excepted) would stay untouched: BatchNorm statistics matter as much as weights. The
*classifier* it allows to stay untouched is: for a timm model, the module
``get_classifier()`` returns (else ``pretrained_cfg['classifier']``); for a legacy wrapper,
its head (``ArchSpec.legacy_head``, both DenseNet copies); otherwise the last ``nn.Linear``.
A segmentation model has no classifier in this sense: pass its encoder (``unet.encoder``)
as the target to demand a complete body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import torch
from torch import nn

from .. import legacy
from ..architectures import ARCHITECTURES, ArchSpec, find_arch
from ..errors import SourceError, TransferError, UnknownArchitectureError
from ..folder import CONFIG_NAME, WEIGHTS_NAME, read_config
from ..legacy.checkpoint import find_state_dict, open_legacy_checkpoint
from ..legacy.keymap import legacy_to_timm

__all__ = ["ShapeMismatch", "TransferReport", "TransferredTensor", "transfer_weights", "transfer_weights_to_model"]

logger = logging.getLogger("rnet_hub.transfer")

StateDict = dict[str, torch.Tensor]
#: A guess at the source's architecture and naming scheme (from a config, checkpoint metadata or module).
Hint = tuple[ArchSpec, str] | None
Source = str | os.PathLike[str] | Mapping[str, Any] | nn.Module

#: The naming schemes a recognised source is expressed in, in the order they are tried.
SCHEMES = ("source", "legacy", "torchvision", "timm")
_COUNTER_SUFFIX = "num_batches_tracked"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar", ".gz", ".tgz", ".safetensors")
_MIN_SUFFIX = 2
_SHOWN = 8




class TransferredTensor(NamedTuple):
    """One filled target tensor: ``target <- source``, and which rule matched them."""

    target: str
    source: str
    rule: str


class ShapeMismatch(NamedTuple):
    """A target left untouched because its name-matched source tensor has another shape."""

    target: str
    source: str
    target_shape: tuple[int, ...]
    source_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.target} {self.target_shape} <- {self.source} {self.source_shape}"


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_weights` did (or, when it raised, would have done).

    Attributes:
        source: what the weights came from, in words.
        source_arch: the recognised architecture and naming (``"ResNet50 (legacy names)"``), or None.
        transferred: the filled target tensors, ``target <- source`` with the matching rule.
        shape_mismatches: untouched targets whose name-matched source has another shape.
        unused_source_keys: source tensors that filled nothing.
        untouched_target_keys: target tensors left as they were.
        classifier_keys: the target keys treated as the classifier (``strict`` ignores them).
        filled_elements: target elements filled (shared storage once, counters excluded).
        total_elements: all target elements counted the same way.
    """

    source: str
    source_arch: str | None
    transferred: list[TransferredTensor]
    shape_mismatches: list[ShapeMismatch]
    unused_source_keys: list[str]
    untouched_target_keys: list[str]
    classifier_keys: list[str] = field(default_factory=list)
    filled_elements: int = 0
    total_elements: int = 0

    @property
    def coverage(self) -> float:
        """Fraction of target parameter and buffer elements filled (0.0 to 1.0)."""
        return self.filled_elements / self.total_elements if self.total_elements else 0.0

    @property
    def untouched_outside_classifier(self) -> list[str]:
        """Untouched target keys that are not part of the classifier."""
        head = set(self.classifier_keys)
        return [k for k in self.untouched_target_keys if k not in head]

    def summary(self) -> str:
        """The one-line summary that is also logged."""
        return (f"transferred {len(self.transferred)} tensors from {self.source}: coverage {_percent(self.coverage)}, "
                f"{len(self.shape_mismatches)} shape mismatches, {len(self.untouched_target_keys)} target tensors "
                f"untouched, {len(self.unused_source_keys)} source tensors unused")

    def __str__(self) -> str:
        rules = Counter(t.rule for t in self.transferred)
        rows = [
            ("source", self.source + (f" [{self.source_arch}]" if self.source_arch else "")),
            ("coverage", f"{_percent(self.coverage)} of target elements ({self.filled_elements:,} / "
                         f"{self.total_elements:,})"),
            ("transferred", f"{len(self.transferred)}" + (" (" + ", ".join(
                f"{rule}: {n}" for rule, n in rules.most_common()) + ")" if rules else "")),
            ("shape mismatches", _examples([str(m) for m in self.shape_mismatches])),
            ("untouched target", _examples(self.untouched_target_keys)
             + f" [{len(self.untouched_target_keys) - len(self.untouched_outside_classifier)} in the classifier]"),
            ("unused source", _examples(self.unused_source_keys)),
        ]
        return "\n".join(f"{name:<17} {value}" for name, value in rows)


def _percent(fraction: float) -> str:
    """One decimal, but never "100.0%" for a partial fill nor "0.0%" for a non-empty one."""
    if 0.0 < fraction < 1.0:
        fraction = min(max(fraction, 0.001), 0.999)
    return f"{fraction:.1%}"


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:3])
    return f"{len(items)}" + (f" (e.g. {shown}{', ...' if len(items) > 3 else ''})" if items else "")


# ----------------------------------------------------------------------------- reading the source
@contextlib.contextmanager
def _open_source(source: Source) -> Iterator[tuple[StateDict, str, Hint]]:
    """Yield ``(state dict, description, hint)``; tensors are valid inside the block."""
    if isinstance(source, nn.Module):
        name = type(source).__name__
        yield _tensors(source.state_dict(), name), f"{name} module", _module_hint(source)
    elif isinstance(source, Mapping):
        state = find_state_dict(source, "the state dict")
        yield state, f"state dict ({len(state)} tensors)", None
    elif isinstance(source, (str, os.PathLike)):
        with _open_path_source(source) as opened:
            yield opened
    else:
        raise TypeError(f"cannot read weights from a {type(source).__name__}; pass a legacy archive or .pth, a "
                        f"converted folder, a model.safetensors file, a Hub id, a state dict or an nn.Module")


def _module_hint(module: nn.Module) -> Hint:
    """A legacy wrapper knows its architecture; a timm model names it in ``pretrained_cfg``."""
    if isinstance(module, legacy.LegacyWrapper):
        return module.spec, "legacy"
    cfg = getattr(module, "pretrained_cfg", None)
    return _spec_hint(cfg.get("architecture") if isinstance(cfg, Mapping) else None, "timm")


def _spec_hint(name: object, scheme: str) -> Hint:
    try:
        return (find_arch(name), scheme) if isinstance(name, str) else None
    except UnknownArchitectureError:
        return None


def _tensors(state: Mapping[str, Any], name: str) -> StateDict:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{name} has no tensors to transfer")
    return tensors


def _looks_like_hub_id(source: str | os.PathLike[str]) -> bool:
    """``hf-hub:...``, or ``org/name`` that is no local path and has no checkpoint file suffix."""
    text = os.fspath(source)
    if text.startswith("hf-hub:"):
        return True
    return (_HUB_ID.match(text) is not None and not text.lower().endswith(_FILE_SUFFIXES)
            and not Path(text).exists())


@contextlib.contextmanager
def _open_path_source(source: str | os.PathLike[str]) -> Iterator[tuple[StateDict, str, Hint]]:
    """A Hub id, a converted folder or ``.safetensors`` file, else a legacy archive/``.pth``/URL."""
    if _looks_like_hub_id(source):
        state, hint = _read_converted(_resolve_hub_source(os.fspath(source)))
        yield state, os.fspath(source), hint
        return
    path = Path(source).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        state, hint = _read_converted(path)
        yield state, path.name, hint
        return
    with open_legacy_checkpoint(source, progress=False) as checkpoint:
        hint = _spec_hint(checkpoint.metadata.get("model_name"), "legacy")
        yield checkpoint.state_dict, checkpoint.source_name, hint



def _resolve_hub_source(name: str) -> Path:
    """Download ``model.safetensors`` and ``config.json`` of a Hub id; return their folder.

    ``name`` is ``hf-hub:org/repo``, ``org/repo`` or either with ``@revision``.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    repo_id, _, revision = name.removeprefix("hf-hub:").partition("@")
    try:
        for filename in (CONFIG_NAME, WEIGHTS_NAME):
            path = hf_hub_download(repo_id, filename, revision=revision or None)
    except (EntryNotFoundError, HfHubHTTPError) as exc:
        raise SourceError(f"could not get {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}); check the repository id and your connection, or pass "
                          f"a local converted folder instead") from exc
    return Path(path).parent


def _read_converted(path: Path) -> tuple[StateDict, Hint]:
    """The weights of a converted folder or ``.safetensors`` file, and the architecture its config names."""
    if path.is_dir():
        config = read_config(path)
        weights = path / WEIGHTS_NAME
    else:
        if not path.is_file():
            raise SourceError(f"no such weights file: {path}")
        config_path = path.parent / CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        weights = path
    return safetensors.torch.load_file(weights, device="cpu"), _spec_hint(config.get("architecture"), "timm")


# ----------------------------------------------------------------------------- naming schemes
class _Row(NamedTuple):
    """One tensor of an architecture under its three names (timm may have none)."""

    legacy: tuple[str, ...]
    torchvision: str
    timm: str | None
    legacy_shape: tuple[int, ...]
    timm_shape: tuple[int, ...] | None


@cache
def _rows(spec: ArchSpec) -> tuple[_Row, ...]:
    """The name table of ``spec``: the legacy wrapper on the meta device run through the key map.

    Tensors are matched by identity (a reshaped timm tensor is a view of its legacy
    parameter), so the inverse map needs nothing but the forward one.
    """
    state = legacy.build_on_meta(spec).state_dict(keep_vars=True)
    by_id: dict[int, list[str]] = defaultdict(list)
    for key, tensor in state.items():
        by_id[id(tensor)].append(key)
    timm_of: dict[int, tuple[str, tuple[int, ...]]] = {}
    for key, tensor in legacy_to_timm(spec, state).items():
        base = tensor if id(tensor) in by_id else tensor._base
        if base is None or id(base) not in by_id:
            raise RuntimeError(f"the {spec.name} key map made a new tensor for {key}; it must pass tensors "
                               f"through or reshape them as views")
        timm_of[id(base)] = (key, tuple(tensor.shape))
    rows = []
    for ident, keys in by_id.items():
        timm_key, timm_shape = timm_of.get(ident, (None, None))
        rows.append(_Row(tuple(keys), keys[0].removeprefix("model."), timm_key,
                         tuple(state[keys[0]].shape), timm_shape))
    return tuple(rows)


def _row_names(row: _Row, scheme: str) -> tuple[str, ...]:
    if scheme == "legacy":
        return row.legacy
    name = row.torchvision if scheme == "torchvision" else row.timm
    return (name,) if name else ()


def _is_counter(key: str) -> bool:
    return key.endswith(_COUNTER_SUFFIX)


@cache
def _signature(spec: ArchSpec, scheme: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``spec`` in ``scheme`` without its classification head and counters.

    timm's keys come from the key map, which conversion checks to be exactly timm's state dict.
    """
    head = _head_names(spec, scheme)
    return {name: (row.timm_shape if scheme == "timm" else row.legacy_shape)
            for row in _rows(spec) for name in _row_names(row, scheme)
            if not _is_counter(name) and name.rpartition(".")[0] not in head}


def _head_names(spec: ArchSpec, scheme: str) -> set[str]:
    """Module names of the classification head of ``spec`` in ``scheme``."""
    if scheme == "timm":
        return {spec.classifier}
    plain = spec.legacy_head.removeprefix("model.")
    return {plain, f"model.{plain}"} if scheme == "legacy" else {plain}


def _candidates(hint: Hint) -> Iterator[tuple[ArchSpec, str]]:
    """(architecture, scheme) pairs to try: the hinted ones first (usually right, and saves building others)."""
    if hint:
        yield hint
        yield from ((hint[0], s) for s in SCHEMES[1:] if s != hint[1])
    yield from ((spec, s) for spec in ARCHITECTURES if not hint or spec != hint[0] for s in SCHEMES[1:])


def _identify(state: StateDict, hint: Hint) -> tuple[ArchSpec, str] | None:
    """The architecture and scheme whose body keys and shapes ``state`` has exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not _is_counter(k)}
    for spec, scheme in _candidates(hint):
        head = _head_names(spec, scheme)
        body = {k: s for k, s in shapes.items() if k.rpartition(".")[0] not in head}
        if body == _signature(spec, scheme):
            return spec, scheme
    return None


class _SourceTensor(NamedTuple):
    """A source tensor under one of its names: original key, storage group, tensor in that scheme's shape."""

    key: str
    group: int
    tensor: torch.Tensor


def _storage_groups(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Number the distinct storages: keys that share one (DenseNet's duplicates) get the same number."""
    numbers: dict[tuple, int] = {}

    def ident(t: torch.Tensor) -> tuple:
        if t.is_meta or t.numel() == 0:
            return ("object", id(t))
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)

    return {k: numbers.setdefault(ident(v), len(numbers)) for k, v in state.items()}


def _in_scheme(tensor: torch.Tensor, row: _Row, scheme: str) -> torch.Tensor:
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
    for prefix in _common_prefixes(list(state)):
        names = {k[len(prefix):]: k for k in state}
        found = _identify({n: state[k] for n, k in names.items()}, hint)
        if found:
            return (*found, names)
    return None


def _name_schemes(state: StateDict, hint: Hint) -> tuple[dict[str, dict[str, _SourceTensor]], str | None]:
    """Every name each source tensor has: its own key, and its legacy/torchvision/timm names when recognised."""
    groups = _storage_groups(state)
    schemes = {"source": {k: _SourceTensor(k, groups[k], v) for k, v in state.items()}}
    recognised = _recognise(state, hint)
    if recognised is None:
        return schemes, None
    spec, naming, keys = recognised
    schemes.update({scheme: {} for scheme in SCHEMES[1:]})
    for row in _rows(spec):
        key = next((keys[n] for n in _row_names(row, naming) if n in keys), None)
        if key is None:
            continue
        for scheme in SCHEMES[1:]:
            tensor = _in_scheme(state[key], row, scheme)
            for name in _row_names(row, scheme):
                schemes[scheme][name] = _SourceTensor(key, groups[key], tensor)
    return schemes, f"{spec.name} ({naming} names)"


# ----------------------------------------------------------------------------- the target
@dataclass
class _Target:
    """The target's state (tensors kept as the module's own objects) and what its keys mean."""

    tensors: dict[str, torch.Tensor]
    groups: dict[str, int]
    members: dict[int, list[str]]
    checked: set[str]
    classifier: set[str]

    @classmethod
    def of(cls, model: nn.Module) -> _Target:
        if not isinstance(model, nn.Module):
            raise TypeError(f"the target must be a torch nn.Module, got {type(model).__name__}")
        tensors = model.state_dict(keep_vars=True)
        if not tensors:
            raise ValueError(f"the target {type(model).__name__} has no parameters or buffers to fill")
        on_meta = [k for k, v in tensors.items() if v.is_meta]
        if on_meta:
            raise ValueError(f"the target has tensors on the meta device (e.g. {on_meta[0]}); materialise it first "
                             f"with model.to_empty(device='cpu')")
        groups = _storage_groups(tensors)
        members: dict[int, list[str]] = defaultdict(list)
        for key, group in groups.items():
            members[group].append(key)
        heads = _classifier_modules(model)
        classifier = {k for k in tensors if any(k.startswith(f"{h}.") for h in heads)}
        checked = {k for k in tensors if not _is_counter(k) and k not in classifier}
        return cls(tensors, groups, dict(members), checked, classifier)


def _classifier_modules(model: nn.Module) -> set[str]:
    """Module names of the target's classifier (see the module docstring for the rule)."""
    if isinstance(model, legacy.LegacyWrapper):
        return _head_names(model.spec, "legacy")
    names: dict[int, list[str]] = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        names[id(module)].append(name)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        heads = head if isinstance(head, (tuple, list)) else (head,)
        return {n for h in heads if isinstance(h, nn.Module) for n in names.get(id(h), [])}
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("classifier"):
        value = cfg["classifier"]
        return {value} if isinstance(value, str) else set(value)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return set(names[id(model.get_submodule(linears[-1]))]) if linears else set()


# ----------------------------------------------------------------------------- matching
class _Plan:
    """Which source tensor fills which target storage; nothing is copied until :meth:`apply`."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.filled: dict[int, tuple[_SourceTensor, str]] = {}
        self.used: set[int] = set()
        self.mismatches: dict[str, ShapeMismatch] = {}

    def unfilled(self) -> list[str]:
        return [k for k, g in self.target.groups.items() if g not in self.filled]

    def offer(self, key: str, candidate: _SourceTensor, rule: str) -> bool:
        """Fill ``key`` (and its storage sharers) from ``candidate`` if both are free and the shapes agree."""
        group = self.target.groups[key]
        if group in self.filled or candidate.group in self.used:
            return False
        shape, source_shape = tuple(self.target.tensors[key].shape), tuple(candidate.tensor.shape)
        if shape != source_shape:
            self.mismatches.setdefault(key, ShapeMismatch(key, candidate.key, shape, source_shape))
            return False
        self.filled[group] = (candidate, rule)
        self.used.add(candidate.group)
        return True

    def release_half_layers(self) -> None:
        """Never fill half a layer: drop the rest of every module that has a shape mismatch."""
        broken = {k.rpartition(".")[0] for k in self.mismatches if self.target.groups[k] not in self.filled}
        for key, group in self.target.groups.items():
            if group in self.filled and key.rpartition(".")[0] in broken:
                candidate, _ = self.filled.pop(group)
                self.used.discard(candidate.group)

    def apply(self) -> None:
        with torch.no_grad():
            for group, (candidate, _) in self.filled.items():
                self.target.tensors[self.target.members[group][0]].copy_(candidate.tensor)


def _match_exact(plan: _Plan, schemes: dict[str, dict[str, _SourceTensor]]) -> None:
    for key in plan.unfilled():
        if key in schemes["source"]:
            plan.offer(key, schemes["source"][key], "exact")


def _fallback_names(key: str) -> list[str]:
    """The original helper's alternatives for a source key, in its order."""
    names = [f"model.{key}", key.replace("features", "model")]
    if "model." in key:
        names.append(key.split("model.", 1)[1])
    return [n for n in dict.fromkeys(names) if n != key]


def _match_fallbacks(plan: _Plan, schemes: dict[str, dict[str, _SourceTensor]]) -> None:
    targets = set(plan.unfilled())
    for key, candidate in schemes["source"].items():
        for name in _fallback_names(key):
            if name in targets and plan.offer(name, candidate, "original fallback"):
                break


def _splits(key: str) -> Iterator[tuple[str, str]]:
    """``(prefix, rest)`` for every split of ``key`` at a dot, the whole key first."""
    yield "", key
    for i, char in enumerate(key):
        if char == ".":
            yield key[: i + 1], key[i + 1:]


def _loose(name: str) -> str:
    return name.replace("_", ".")


def _loose_index(names: dict[str, _SourceTensor]) -> dict[str, _SourceTensor]:
    """Names with ``_`` read as ``.`` (timm's feature wrappers flatten ``features.x`` to ``features_x``)."""
    index: dict[str, _SourceTensor] = {}
    clashes: set[str] = set()
    for name, candidate in names.items():
        loose = _loose(name)
        if loose in index and index[loose].group != candidate.group:
            clashes.add(loose)
        index.setdefault(loose, candidate)
    return {k: v for k, v in index.items() if k not in clashes}


def _prefixed_hit(key: str, names: dict[str, _SourceTensor],
                  loose: dict[str, _SourceTensor]) -> tuple[str, bool, _SourceTensor] | None:
    """The longest scheme name that ``key`` ends with (at a dot), literally or loosely."""
    for prefix, rest in _splits(key):
        if rest in names:
            return prefix, False, names[rest]
    for prefix, rest in _splits(_loose(key)):
        if rest in loose:
            return key[: len(prefix)], True, loose[rest]
    return None


def _match_key_maps(plan: _Plan, schemes: dict[str, dict[str, _SourceTensor]]) -> None:
    """Rule c: target = prefix + scheme name; the largest (scheme, prefix) groups go first."""
    groups: dict[tuple[int, str, bool], list[tuple[str, _SourceTensor]]] = defaultdict(list)
    for index, scheme in enumerate(SCHEMES):
        names = schemes.get(scheme)
        if not names:
            continue
        loose = _loose_index(names)
        for key in plan.unfilled():
            hit = _prefixed_hit(key, names, loose)
            if hit:
                groups[(index, hit[0], hit[1])].append((key, hit[2]))

    def fits(group: tuple[int, str, bool]) -> int:
        return sum(tuple(plan.target.tensors[k].shape) == tuple(c.tensor.shape) for k, c in groups[group])

    for group in sorted(groups, key=lambda g: (-fits(g), g[0], g[2], len(g[1]))):
        rule = ("prefix" if SCHEMES[group[0]] == "source" else f"{SCHEMES[group[0]]} names") + \
            (" (_ read as .)" if group[2] else "")
        for key, candidate in groups[group]:
            plan.offer(key, candidate, rule)


def _match_suffix(plan: _Plan, schemes: dict[str, dict[str, _SourceTensor]]) -> None:
    """Rule d: the longest shared name tail (>= 2 parts) with exactly one unused source tensor."""
    index: dict[tuple[str, ...], dict[int, list[_SourceTensor]]] = defaultdict(lambda: defaultdict(list))
    for names in schemes.values():
        for name, candidate in names.items():
            parts = tuple(name.split("."))
            for length in range(_MIN_SUFFIX, len(parts) + 1):
                index[parts[-length:]][candidate.group].append(candidate)
    unfilled = plan.unfilled()
    longest = max((k.count(".") + 1 for k in unfilled), default=0)
    decided: set[str] = set()
    for length in range(longest, _MIN_SUFFIX - 1, -1):
        for key in plan.unfilled():
            parts = tuple(key.split("."))
            found = index.get(parts[-length:]) if len(parts) >= length and key not in decided else None
            if not found:
                continue
            decided.add(key)
            free = [c for g, c in found.items() if g not in plan.used]
            if len(free) == 1:
                shape = tuple(plan.target.tensors[key].shape)
                plan.offer(key, next((c for c in free[0] if tuple(c.tensor.shape) == shape), free[0][0]), "suffix")


_RULES = (_match_exact, _match_fallbacks, _match_key_maps, _match_suffix)


# ----------------------------------------------------------------------------- the report and the API
def _report(plan: _Plan, state: StateDict, description: str, source_arch: str | None) -> TransferReport:
    target = plan.target
    source_groups = _storage_groups(state)
    transferred, untouched = [], []
    for key, group in target.groups.items():
        if group in plan.filled:
            candidate, rule = plan.filled[group]
            transferred.append(TransferredTensor(key, candidate.key, rule))
        else:
            untouched.append(key)
    left = set(untouched)
    counted = {g: target.tensors[keys[0]].numel() for g, keys in target.members.items() if not _is_counter(keys[0])}
    return TransferReport(
        source=description,
        source_arch=source_arch,
        transferred=transferred,
        shape_mismatches=[m for k, m in plan.mismatches.items() if k in left],
        unused_source_keys=[k for k in state if source_groups[k] not in plan.used],
        untouched_target_keys=untouched,
        classifier_keys=[k for k in target.tensors if k in target.classifier],
        filled_elements=sum(n for g, n in counted.items() if g in plan.filled),
        total_elements=sum(counted.values()),
    )


def _check(report: TransferReport, target: _Target, strict: bool, min_coverage: float | None) -> None:
    if strict:
        missing = [k for k in report.untouched_target_keys if k in target.checked]
        if missing:
            shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
            mismatches = "; ".join(str(m) for m in report.shape_mismatches[:3])
            raise TransferError(
                f"strict transfer refused: {len(missing)} target tensors outside the classifier would stay "
                f"untouched ({shown}); coverage would be {_percent(report.coverage)}"
                + (f"; shape mismatches: {mismatches}" if mismatches else "")
                + ". Pass a target whose layers match the source (for a segmentation model, its encoder), "
                  "or strict=False to accept a partial transfer", report)
    if min_coverage is not None and report.coverage < min_coverage:
        raise TransferError(f"transfer refused: coverage {_percent(report.coverage)} is below min_coverage "
                            f"{min_coverage:.1%} ({report.summary()})", report)


def transfer_weights(source: Source, target: nn.Module, *, strict: bool = False,
                     min_coverage: float | None = None) -> TransferReport:
    """Copy every source tensor that has a counterpart in ``target`` into it and report what happened.

    Args:
        source: a legacy archive, ``.pth`` or URL; a converted folder; a ``model.safetensors``
            file; a Hub id (``hf-hub:org/name[@rev]`` or ``org/name``); a state dict; a module.
        target: any module; it is changed in place (its tensors keep device and dtype).
        strict: refuse (``TransferError``) when any parameter or buffer outside the classifier
            would stay untouched (``num_batches_tracked`` counters excepted).
        min_coverage: refuse when less than this fraction (0-1) of the target's elements would be filled.

    Returns:
        A :class:`TransferReport`; ``print(report)`` shows it as a short table.

    Raises:
        TransferError: ``strict`` or ``min_coverage`` refused; the target was not changed.
    """
    if min_coverage is not None and not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be a fraction between 0 and 1, got {min_coverage}")
    plan = _Plan(_Target.of(target))
    with _open_source(source) as (state, description, hint):
        empty = [k for k, v in state.items() if v.is_meta]
        if empty:
            raise ValueError(f"the source has tensors on the meta device (e.g. {empty[0]}): they hold no weights")
        schemes, source_arch = _name_schemes(state, hint)
        for rule in _RULES:
            rule(plan, schemes)
        plan.release_half_layers()
        report = _report(plan, state, description, source_arch)
        _log(report)
        _check(report, plan.target, strict, min_coverage)
        plan.apply()
    return report


def _log(report: TransferReport) -> None:
    if report.transferred:
        logger.info(report.summary())
    else:
        logger.warning("%s: nothing matched; the source and the target have no tensor name and shape in common "
                       "(is it the right architecture?)", report.summary())


def transfer_weights_to_model(path: Any, target_model: nn.Module, device: str | torch.device = "cpu") -> TransferReport:
    """The original helper's signature: copy matching weights of ``path`` into ``target_model``.

    Unlike the original it returns a :class:`TransferReport` and logs a one-line summary,
    so a load that matched nothing no longer looks like success.
    """
    report = transfer_weights(path, target_model)
    target_model.to(device)
    return report
