"""The target side of a transfer and the matching rules: which source tensor fills which target tensor.

The rules (exact, original fallbacks, key maps, suffix) are described in the
:mod:`rnet_hub.transfer` docstring; each runs over all still-unfilled targets before the
next. A :class:`Plan` records the matches and copies nothing until :meth:`Plan.apply`, so a
refused transfer leaves the target as it was.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BadInputError
from ..legacy.recognise import head_names, is_counter
from ..legacy.topology import LegacyWrapper
from .report import ShapeMismatch, TransferredTensor, TransferReport
from .sources import NAMINGS, Schemes, SourceTensor, StateDict, storage_groups

__all__ = ["Plan", "Target", "match"]

_MIN_SUFFIX = 2


# ----------------------------------------------------------------------------- the target
@dataclass
class Target:
    """The target's state (tensors kept as the module's own objects) and what its keys mean.

    ``groups`` numbers the storages (shared ones are filled together), ``members`` lists the
    keys of each, ``checked`` are the keys ``strict`` demands and ``classifier`` those it spares.
    """

    tensors: dict[str, torch.Tensor]
    groups: dict[str, int]
    members: dict[int, list[str]]
    checked: set[str]
    classifier: set[str]

    @classmethod
    def of(cls, model: nn.Module) -> Target:
        """Read ``model``'s parameters and persistent buffers; it must have some, none on the meta device."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"the target must be a torch nn.Module, got {type(model).__name__}")
        tensors = model.state_dict(keep_vars=True)
        if not tensors:
            raise BadInputError(f"the target {type(model).__name__} has no parameters or buffers to fill")
        on_meta = [k for k, v in tensors.items() if v.is_meta]
        if on_meta:
            raise BadInputError(f"the target has tensors on the meta device (e.g. {on_meta[0]}); materialise it "
                                f"first with model.to_empty(device='cpu')")
        groups = storage_groups(tensors)
        members: dict[int, list[str]] = defaultdict(list)
        for key, group in groups.items():
            members[group].append(key)
        heads = _classifier_modules(model)
        classifier = {k for k in tensors if any(k.startswith(f"{h}.") for h in heads)}
        checked = {k for k in tensors if not is_counter(k) and k not in classifier}
        return cls(tensors, groups, dict(members), checked, classifier)


def _classifier_modules(model: nn.Module) -> set[str]:
    """Module names of the target's classifier (see the :mod:`rnet_hub.transfer` docstring for the rule)."""
    if isinstance(model, LegacyWrapper):
        return head_names(model.spec, "legacy")
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


# ----------------------------------------------------------------------------- the plan
class Plan:
    """Which source tensor fills which target storage; nothing is copied until :meth:`apply`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.filled: dict[int, tuple[SourceTensor, str]] = {}
        self.used: set[int] = set()
        self.mismatches: dict[str, ShapeMismatch] = {}

    def unfilled(self) -> list[str]:
        """Target keys whose storage no rule has filled yet."""
        return [k for k, g in self.target.groups.items() if g not in self.filled]

    def offer(self, key: str, candidate: SourceTensor, rule: str) -> bool:
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
        """Copy every planned source tensor into its target storage (in place, keeping device and dtype)."""
        with torch.no_grad():
            for group, (candidate, _) in self.filled.items():
                self.target.tensors[self.target.members[group][0]].copy_(candidate.tensor)

    def report(self, state: StateDict, description: str, source_arch: str | None) -> TransferReport:
        """What the plan would do (or did), in a :class:`TransferReport`."""
        target = self.target
        source_groups = storage_groups(state)
        transferred, untouched = [], []
        for key, group in target.groups.items():
            if group in self.filled:
                candidate, rule = self.filled[group]
                transferred.append(TransferredTensor(key, candidate.key, rule))
            else:
                untouched.append(key)
        left = set(untouched)
        counted = {g: target.tensors[keys[0]].numel() for g, keys in target.members.items()
                   if not is_counter(keys[0])}
        return TransferReport(
            source=description,
            source_arch=source_arch,
            transferred=transferred,
            shape_mismatches=[m for k, m in self.mismatches.items() if k in left],
            unused_source_keys=[k for k in state if source_groups[k] not in self.used],
            untouched_target_keys=untouched,
            classifier_keys=[k for k in target.tensors if k in target.classifier],
            filled_elements=sum(n for g, n in counted.items() if g in self.filled),
            total_elements=sum(counted.values()),
        )


# ----------------------------------------------------------------------------- the rules
def _match_exact(plan: Plan, schemes: Schemes) -> None:
    """Rule a: the same key."""
    for key in plan.unfilled():
        if key in schemes["source"]:
            plan.offer(key, schemes["source"][key], "exact")


def _fallback_names(key: str) -> list[str]:
    """The original helper's alternatives for a source key, in its order."""
    names = [f"model.{key}", key.replace("features", "model")]
    if "model." in key:
        names.append(key.split("model.", 1)[1])
    return [n for n in dict.fromkeys(names) if n != key]


def _match_fallbacks(plan: Plan, schemes: Schemes) -> None:
    """Rule b: the original helper's renamed forms, source key by source key."""
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
    """``name`` with ``_`` read as ``.``."""
    return name.replace("_", ".")


def _loose_index(names: dict[str, SourceTensor]) -> dict[str, SourceTensor]:
    """Names with ``_`` read as ``.`` (timm's feature wrappers flatten ``features.x`` to ``features_x``)."""
    index: dict[str, SourceTensor] = {}
    clashes: set[str] = set()
    for name, candidate in names.items():
        loose = _loose(name)
        if loose in index and index[loose].group != candidate.group:
            clashes.add(loose)
        index.setdefault(loose, candidate)
    return {k: v for k, v in index.items() if k not in clashes}


def _prefixed_hit(key: str, names: dict[str, SourceTensor],
                  loose: dict[str, SourceTensor]) -> tuple[str, bool, SourceTensor] | None:
    """The longest scheme name that ``key`` ends with (at a dot), literally or loosely."""
    for prefix, rest in _splits(key):
        if rest in names:
            return prefix, False, names[rest]
    for prefix, rest in _splits(_loose(key)):
        if rest in loose:
            return key[: len(prefix)], True, loose[rest]
    return None


_Group = tuple[int, str, bool]  # (naming index, target prefix, loose)


def _key_map_groups(plan: Plan, schemes: Schemes) -> dict[_Group, list[tuple[str, SourceTensor]]]:
    """Unfilled target keys that are ``prefix + name`` for a name in a naming, grouped by (naming, prefix, loose)."""
    groups: dict[_Group, list[tuple[str, SourceTensor]]] = defaultdict(list)
    for index, naming in enumerate(NAMINGS):
        names = schemes.get(naming)
        if not names:
            continue
        loose = _loose_index(names)
        for key in plan.unfilled():
            hit = _prefixed_hit(key, names, loose)
            if hit:
                groups[(index, hit[0], hit[1])].append((key, hit[2]))
    return groups


def _match_key_maps(plan: Plan, schemes: Schemes) -> None:
    """Rule c: target = prefix + scheme name; the groups with the most same-shape pairs go first."""
    groups = _key_map_groups(plan, schemes)

    def fits(group: _Group) -> int:
        return sum(tuple(plan.target.tensors[k].shape) == tuple(c.tensor.shape) for k, c in groups[group])

    for group in sorted(groups, key=lambda g: (-fits(g), g[0], g[2], len(g[1]))):
        naming = NAMINGS[group[0]]
        rule = ("prefix" if naming == "source" else f"{naming} names") + (" (_ read as .)" if group[2] else "")
        for key, candidate in groups[group]:
            plan.offer(key, candidate, rule)


def _suffix_index(schemes: Schemes) -> dict[tuple[str, ...], dict[int, list[SourceTensor]]]:
    """Every name tail of at least two components -> source storage group -> its tensors with that tail."""
    index: dict[tuple[str, ...], dict[int, list[SourceTensor]]] = defaultdict(lambda: defaultdict(list))
    for names in schemes.values():
        for name, candidate in names.items():
            parts = tuple(name.split("."))
            for length in range(_MIN_SUFFIX, len(parts) + 1):
                index[parts[-length:]][candidate.group].append(candidate)
    return index


def _match_suffix(plan: Plan, schemes: Schemes) -> None:
    """Rule d: the longest shared name tail (>= 2 parts) with exactly one unused source tensor."""
    index = _suffix_index(schemes)
    longest = max((k.count(".") + 1 for k in plan.unfilled()), default=0)
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


_RULES: tuple[Callable[[Plan, Schemes], None], ...] = (_match_exact, _match_fallbacks, _match_key_maps, _match_suffix)


def match(target: Target, schemes: Schemes) -> Plan:
    """Run every rule in order, then release half-filled layers; the plan is not applied yet."""
    plan = Plan(target)
    for rule in _RULES:
        rule(plan, schemes)
    plan.release_half_layers()
    return plan
