"""Which of the ten architectures a legacy state dict is, and how many classes its head has.

Each architecture's *signature* is the key -> shape map of its legacy wrapper (built on
the meta device, so it costs no memory), without the classification head. A state dict
is an architecture when its body keys and shapes are exactly that signature; the head
must then be ``[num_classes, in_features]`` with the architecture's ``in_features``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import torch

from ..architectures import ARCHITECTURES, ArchSpec, find_arch
from ..errors import HeadShapeError, UnknownArchitectureError
from . import topology

__all__ = ["detect_architecture", "head_keys"]

Shapes = Mapping[str, tuple[int, ...]]




def _is_head_key(spec: ArchSpec, key: str) -> bool:
    prefix = key.rpartition(".")[0]
    return prefix.removeprefix("model.") == spec.legacy_head.removeprefix("model.")


def head_keys(spec: ArchSpec, keys: list[str] | Mapping[str, object]) -> list[str]:
    """The keys of ``keys`` that belong to the classification head (DenseNet has two copies)."""
    return [k for k in keys if _is_head_key(spec, k)]


@cache
def _body_signature(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    state = topology.build_on_meta(spec).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if not _is_head_key(spec, k)}


def _body_mismatch(spec: ArchSpec, shapes: Shapes) -> list[str]:
    """Human-readable differences between ``shapes`` and the architecture's body (empty: match)."""
    expected = _body_signature(spec)
    body = {k: v for k, v in shapes.items() if not _is_head_key(spec, k)}
    problems = [f"missing {k}" for k in expected if k not in body]
    problems += [f"unexpected {k}" for k in body if k not in expected]
    problems += [f"{k} has shape {body[k]}, expected {expected[k]}"
                 for k in expected if k in body and body[k] != expected[k]]
    return problems


def _num_classes(spec: ArchSpec, shapes: Shapes) -> int:
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


def detect_architecture(state_dict: Mapping[str, torch.Tensor],
                        arch: str | ArchSpec | None = None) -> tuple[ArchSpec, int]:
    """Return ``(spec, num_classes)`` for a legacy state dict, checking ``arch`` when given."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if arch is not None:
        spec = arch if isinstance(arch, ArchSpec) else find_arch(arch)
        problems = _body_mismatch(spec, shapes)
        if problems:
            raise UnknownArchitectureError(
                f"this state dict is not a legacy {spec.name}: {len(problems)} differences, e.g. "
                f"{'; '.join(problems[:3])}. Drop --arch to detect the architecture from the keys")
        return spec, _num_classes(spec, shapes)
    # Architectures whose head key is present are tried first: building a signature costs a
    # meta-device model, so a VGG16 checkpoint should not pay for the other nine.
    ordered = sorted(ARCHITECTURES, key=lambda s: f"{s.legacy_head}.weight" not in shapes)
    differences: dict[ArchSpec, list[str]] = {}
    for spec in ordered:
        differences[spec] = _body_mismatch(spec, shapes)
        if not differences[spec]:
            return spec, _num_classes(spec, shapes)
    closest = min(differences, key=lambda s: len(differences[s]))
    raise UnknownArchitectureError(
        f"the state dict ({len(shapes)} tensors) matches none of the ten RadiologyNET architectures; "
        f"closest is {closest.name} with {len(differences[closest])} differences "
        f"(e.g. {'; '.join(differences[closest][:2])}). rnet_hub converts the original wrapper "
        f"checkpoints only; for other topologies use rnet_hub.transfer_weights")
