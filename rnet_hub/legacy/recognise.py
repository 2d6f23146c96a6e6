"""The one architecture recogniser, used by conversion and transfer: which of the ten a state dict is.

Every tensor of an architecture has a name in three *naming schemes* (:data:`SCHEMES`):

* ``legacy``: the RadiologyNET wrapper's key (``model.layer1.0.conv1.weight``; DenseNet's
  wrapper holds each tensor under two keys, ``features.*`` and ``model.features.*``);
* ``torchvision``: the legacy key without the wrapper's ``model.`` prefix;
* ``timm``: what :func:`~rnet_hub.legacy.keymap.legacy_to_timm` renames it to (some tensors,
  like Inception's ``AuxLogits``, have none).

:func:`name_rows` is that table, built once per architecture from the legacy wrapper on the
meta device (so it costs no memory) run through the key map. An architecture's *signature*
in a scheme (:func:`signature`) is its key -> shape map there without the classification head
(:func:`head_names`). A state dict is that architecture when its body keys and shapes are
exactly the signature:

* :func:`detect_architecture` (conversion) asks for the legacy scheme, ``num_batches_tracked``
  counters included, and then checks the head: ``[num_classes, in_features]``;
* :func:`identify` (transfer) tries every scheme, counters ignored (a source may drop them),
  with a hinted architecture and scheme first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import NamedTuple

import torch

from ..architectures import ARCHITECTURES, ArchSpec, find_arch
from ..errors import HeadShapeError, KeyMapError, UnknownArchitectureError
from . import topology
from .keymap import legacy_to_timm

__all__ = [
    "SCHEMES",
    "Hint",
    "NameRow",
    "Shapes",
    "detect_architecture",
    "head_keys",
    "head_names",
    "identify",
    "is_counter",
    "name_rows",
    "row_names",
    "signature",
]

#: The naming schemes an architecture's tensors are known under, in the order they are tried.
SCHEMES = ("legacy", "torchvision", "timm")
#: Key -> shape, the only thing recognition looks at.
Shapes = Mapping[str, tuple[int, ...]]
#: A guess at a state dict's architecture and naming scheme (from a config, checkpoint metadata or a module).
Hint = tuple[ArchSpec, str] | None

_COUNTER_SUFFIX = "num_batches_tracked"


class NameRow(NamedTuple):
    """One tensor of an architecture under its names in the three schemes (timm may have none)."""

    legacy: tuple[str, ...]
    torchvision: str
    timm: str | None
    legacy_shape: tuple[int, ...]
    timm_shape: tuple[int, ...] | None


def is_counter(key: str) -> bool:
    """Whether ``key`` is a BatchNorm ``num_batches_tracked`` step counter (not a weight)."""
    return key.endswith(_COUNTER_SUFFIX)


def _timm_names(spec: ArchSpec, state: Mapping[str, torch.Tensor],
                known: Iterable[int]) -> dict[int, tuple[str, tuple[int, ...]]]:
    """``id(legacy tensor) -> (timm key, timm shape)``: the key map's output traced back by identity.

    The key map passes tensors through or reshapes them as views, so each output is (a view
    of) a legacy tensor; anything else would break the inverse map, hence :class:`KeyMapError`.
    """
    known = set(known)
    names: dict[int, tuple[str, tuple[int, ...]]] = {}
    for key, tensor in legacy_to_timm(spec, state).items():
        base = tensor if id(tensor) in known else tensor._base
        if base is None or id(base) not in known:
            raise KeyMapError(f"the {spec.name} key map made a new tensor for {key}; it must pass tensors "
                              f"through or reshape them as views")
        names[id(base)] = (key, tuple(tensor.shape))
    return names


@cache
def _legacy_state(spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The legacy wrapper's state dict on the meta device (no memory), in the wrapper's own key order."""
    return topology.build_on_meta(spec).state_dict(keep_vars=True)


@cache
def name_rows(spec: ArchSpec) -> tuple[NameRow, ...]:
    """The name table of ``spec``: every tensor of its legacy wrapper under its three names.

    Built from the wrapper on the meta device and the forward key map only: tensors are
    matched by identity, so the inverse map (timm/torchvision -> legacy) needs nothing else.
    """
    state = _legacy_state(spec)
    by_id: dict[int, list[str]] = defaultdict(list)
    for key, tensor in state.items():
        by_id[id(tensor)].append(key)
    timm_of = _timm_names(spec, state, by_id)
    rows = []
    for ident, keys in by_id.items():
        timm_key, timm_shape = timm_of.get(ident, (None, None))
        rows.append(NameRow(tuple(keys), keys[0].removeprefix("model."), timm_key,
                            tuple(state[keys[0]].shape), timm_shape))
    return tuple(rows)


def row_names(row: NameRow, scheme: str) -> tuple[str, ...]:
    """The names of ``row``'s tensor in ``scheme`` (two for DenseNet's duplicated legacy keys, none for no timm)."""
    if scheme == "legacy":
        return row.legacy
    name = row.torchvision if scheme == "torchvision" else row.timm
    return (name,) if name else ()


def head_names(spec: ArchSpec, scheme: str) -> set[str]:
    """Module names of the classification head of ``spec`` in ``scheme`` (the legacy wrapper has two spellings)."""
    if scheme == "timm":
        return {spec.classifier}
    plain = spec.legacy_head.removeprefix("model.")
    return {plain, f"model.{plain}"} if scheme == "legacy" else {plain}


def head_keys(spec: ArchSpec, keys: Iterable[str]) -> list[str]:
    """The legacy keys of ``keys`` that belong to the classification head (DenseNet has two copies)."""
    head = head_names(spec, "legacy")
    return [k for k in keys if k.rpartition(".")[0] in head]


@cache
def signature(spec: ArchSpec, scheme: str, *, counters: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``spec``'s body in ``scheme``: no classification head, counters only when asked.

    timm's keys come from the key map, which conversion checks to be exactly timm's state
    dict. Legacy keys keep the wrapper's order (error messages list differences in it). The
    dict is cached and shared: do not change it.
    """
    shapes = {name: (row.timm_shape if scheme == "timm" else row.legacy_shape)
              for row in name_rows(spec) for name in row_names(row, scheme)}
    if scheme == "legacy":
        shapes = {k: shapes[k] for k in _legacy_state(spec)}
    return _body(spec, scheme, shapes, counters=counters)


def _body(spec: ArchSpec, scheme: str, shapes: Shapes, *, counters: bool) -> dict[str, tuple[int, ...]]:
    """``shapes`` without ``spec``'s classification head in ``scheme`` (and without counters unless asked)."""
    head = head_names(spec, scheme)
    return {k: s for k, s in shapes.items()
            if (counters or not is_counter(k)) and k.rpartition(".")[0] not in head}


def _candidates(hint: Hint) -> Iterator[tuple[ArchSpec, str]]:
    """(architecture, scheme) pairs to try: the hinted ones first (usually right, and saves building others)."""
    if hint:
        yield hint
        yield from ((hint[0], s) for s in SCHEMES if s != hint[1])
    yield from ((spec, s) for spec in ARCHITECTURES if not hint or spec != hint[0] for s in SCHEMES)


def identify(shapes: Shapes, hint: Hint = None) -> tuple[ArchSpec, str] | None:
    """The architecture and scheme whose body keys and shapes ``shapes`` has exactly, if any.

    Counters are ignored (a re-saved state dict may lack them) and so is the head (its class
    count is the fine-tuner's choice). ``hint`` is tried first.
    """
    for spec, scheme in _candidates(hint):
        if _body(spec, scheme, shapes, counters=False) == signature(spec, scheme):
            return spec, scheme
    return None


def _legacy_differences(spec: ArchSpec, shapes: Shapes) -> list[str]:
    """Human-readable differences between ``shapes`` and the legacy body of ``spec`` (empty: a match)."""
    expected = signature(spec, "legacy", counters=True)
    body = _body(spec, "legacy", shapes, counters=True)
    problems = [f"missing {k}" for k in expected if k not in body]
    problems += [f"unexpected {k}" for k in body if k not in expected]
    problems += [f"{k} has shape {body[k]}, expected {expected[k]}"
                 for k in expected if k in body and body[k] != expected[k]]
    return problems


def _num_classes(spec: ArchSpec, shapes: Shapes) -> int:
    """The class count of the legacy head, checked to be ``[num_classes, in_features]`` (both DenseNet copies)."""
    keys = head_keys(spec, shapes)
    weight = shapes.get(f"{spec.legacy_head}.weight")
    bias = shapes.get(f"{spec.legacy_head}.bias")
    if weight is None or bias is None:
        raise HeadShapeError(f"{spec.name} state dict has no classification head "
                             f"({spec.legacy_head}.weight/.bias; found {keys or 'nothing'})")
    ok = len(weight) == 2 and weight[1] == spec.head_in_features and tuple(bias) == (weight[0],)
    if not ok or any(shapes[k] != shapes[f"{spec.legacy_head}.{k.rpartition('.')[2]}"] for k in keys):
        raise HeadShapeError(
            f"{spec.name} head {spec.legacy_head}.weight has shape {tuple(weight)} and bias {tuple(bias)}; "
            f"a {spec.name} head must be (num_classes, {spec.head_in_features}) with bias (num_classes,): "
            f"the checkpoint is damaged or not a {spec.name}")
    return int(weight[0])


def _check_named(spec: ArchSpec, shapes: Shapes) -> tuple[ArchSpec, int]:
    """``(spec, num_classes)`` when ``shapes`` is a legacy ``spec`` (the user named it), else why not."""
    problems = _legacy_differences(spec, shapes)
    if problems:
        raise UnknownArchitectureError(
            f"this state dict is not a legacy {spec.name}: {len(problems)} differences, e.g. "
            f"{'; '.join(problems[:3])}. Drop --arch to detect the architecture from the keys")
    return spec, _num_classes(spec, shapes)


def detect_architecture(state_dict: Mapping[str, torch.Tensor],
                        arch: str | ArchSpec | None = None) -> tuple[ArchSpec, int]:
    """Return ``(spec, num_classes)`` for a legacy state dict, checking ``arch`` when given.

    Legacy names only, counters included: conversion accepts the original wrapper
    checkpoints exactly (for anything else there is ``rnet_hub.transfer_weights``).
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if arch is not None:
        return _check_named(arch if isinstance(arch, ArchSpec) else find_arch(arch), shapes)
    # Architectures whose head key is present are tried first: building a signature costs a
    # meta-device model, so a VGG16 checkpoint should not pay for the other nine.
    ordered = sorted(ARCHITECTURES, key=lambda s: f"{s.legacy_head}.weight" not in shapes)
    differences: dict[ArchSpec, list[str]] = {}
    for spec in ordered:
        differences[spec] = _legacy_differences(spec, shapes)
        if not differences[spec]:
            return spec, _num_classes(spec, shapes)
    closest = min(differences, key=lambda s: len(differences[s]))
    raise UnknownArchitectureError(
        f"the state dict ({len(shapes)} tensors) matches none of the ten RadiologyNET architectures; "
        f"closest is {closest.name} with {len(differences[closest])} differences "
        f"(e.g. {'; '.join(differences[closest][:2])}). rnet_hub converts the original wrapper "
        f"checkpoints only; for other topologies use rnet_hub.transfer_weights")
