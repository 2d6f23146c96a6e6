"""What a transfer did, as data and as a short table: :class:`TransferReport` and its rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["ShapeMismatch", "TransferReport", "TransferredTensor", "examples", "percent"]


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
    """What :func:`~rnet_hub.transfer.transfer_weights` did (or, when it raised, would have done).

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
        return (f"transferred {len(self.transferred)} tensors from {self.source}: coverage {percent(self.coverage)}, "
                f"{len(self.shape_mismatches)} shape mismatches, {len(self.untouched_target_keys)} target tensors "
                f"untouched, {len(self.unused_source_keys)} source tensors unused")

    def __str__(self) -> str:
        """A short table: one row each for source, coverage, transferred, mismatches, untouched, unused."""
        return "\n".join(f"{name:<17} {value}" for name, value in self._rows())

    def _rows(self) -> list[tuple[str, str]]:
        rules = Counter(t.rule for t in self.transferred)
        by_rule = ", ".join(f"{rule}: {n}" for rule, n in rules.most_common())
        in_classifier = len(self.untouched_target_keys) - len(self.untouched_outside_classifier)
        return [
            ("source", self.source + (f" [{self.source_arch}]" if self.source_arch else "")),
            ("coverage", f"{percent(self.coverage)} of target elements ({self.filled_elements:,} / "
                         f"{self.total_elements:,})"),
            ("transferred", f"{len(self.transferred)}" + (f" ({by_rule})" if rules else "")),
            ("shape mismatches", examples([str(m) for m in self.shape_mismatches])),
            ("untouched target", examples(self.untouched_target_keys) + f" [{in_classifier} in the classifier]"),
            ("unused source", examples(self.unused_source_keys)),
        ]


def percent(fraction: float) -> str:
    """One decimal, but never "100.0%" for a partial fill nor "0.0%" for a non-empty one."""
    if 0.0 < fraction < 1.0:
        fraction = min(max(fraction, 0.001), 0.999)
    return f"{fraction:.1%}"


def examples(items: list[str]) -> str:
    """``"N (e.g. a, b, c, ...)"``: a count and the first three items."""
    shown = ", ".join(items[:3])
    return f"{len(items)}" + (f" (e.g. {shown}{', ...' if len(items) > 3 else ''})" if items else "")
