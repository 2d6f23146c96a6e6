"""Seeded, stratified train/val/test splits that never put one study (or file) on two sides.

Examples are grouped (``Example.group``: the StudyInstanceUID of a DICOM file, else the file);
groups are stratified by their label (single-label: the class; multi-label: the 0/1 pattern;
regression: the quartile of the target), shuffled with the seed inside each stratum, and dealt
out in turn to the split furthest below its share of images. So the split is deterministic for a
seed, close to the requested fractions overall and within every class, and group-pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BadInputError
from .examples import Example

__all__ = ["split_groups"]


def _strata(groups: dict[str, list[Example]], task: str) -> dict[str, Any]:
    """The stratum of every group: its most common target (regression: the quartile of its mean)."""
    if task != "regression":
        return {g: Counter(e.target for e in members).most_common(1)[0][0] for g, members in groups.items()}
    means = {g: float(np.mean([float(e.target) for e in members])) for g, members in groups.items()}  # type: ignore[arg-type]
    ranked = sorted(means, key=lambda g: (means[g], g))
    return {g: 4 * rank // len(ranked) for rank, g in enumerate(ranked)}


def split_groups(examples: Sequence[Example], shares: Mapping[str, float], *, task: str, seed: int,
                 where: str) -> dict[str, list[Example]]:
    """Deal ``examples`` into the splits named in ``shares`` (fractions of images; normalised here),
    whole groups at a time, stratified and seeded (see the module docstring). Each split ends up
    non-empty, or a :class:`~rnet_hub.errors.BadInputError` says there are too few groups."""
    names = [s for s, share in shares.items() if share > 0]
    total_share = sum(shares[s] for s in names)
    fraction = {s: shares[s] / total_share for s in names}
    groups: dict[str, list[Example]] = {}
    for example in sorted(examples, key=lambda e: (e.group, e.source, e.frame)):
        groups.setdefault(example.group, []).append(example)
    if len(groups) < len(names):
        raise BadInputError(f"{where} has {len(groups)} studies/files, too few to split into "
                            f"{', '.join(names)}: add data, or give the splits yourself (val/ and test/ folders "
                            "or a 'split' column)")
    strata = _strata(groups, task)
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for stratum in sorted(set(strata.values()), key=repr):
        members = sorted(g for g in groups if strata[g] == stratum)
        order.extend(members[i] for i in rng.permutation(len(members)))
    counts = dict.fromkeys(names, 0)
    dealt: dict[str, list[str]] = {s: [] for s in names}
    done = 0
    for group in order:
        size = len(groups[group])
        target = max(names, key=lambda s: fraction[s] * (done + size) - counts[s])  # first of ties: train
        dealt[target].append(group)
        counts[target] += size
        done += size
    for empty in [s for s in names if not dealt[s]]:
        donor = max(names, key=lambda s: len(dealt[s]))
        dealt[empty].append(dealt[donor].pop())
    return {s: [e for g in dealt[s] for e in groups[g]] for s in names}
