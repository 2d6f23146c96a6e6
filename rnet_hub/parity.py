"""Numerical parity between the original topology and a converted model.

The tolerance is part of the product, not an opinion: a conversion passes only when
``max|Δlogits| <= RELATIVE_TOLERANCE * max(1, max|logits|)`` and top-1 agrees on every
sample of a deterministic batch at the model's native input size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ParityError

__all__ = ["PARITY_BATCH", "RELATIVE_TOLERANCE", "ParityReport", "compare_logits",
           "parity_input", "run_logits"]

RELATIVE_TOLERANCE = 1e-4
PARITY_BATCH = 2
PARITY_SEED = 0




@dataclass(frozen=True)
class ParityReport:
    """How closely two models agree on the parity batch."""

    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top1_agree: bool
    batch: int
    input_size: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agree

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"parity {verdict}: max|Δlogits| = {self.max_abs_diff:.3e} "
                f"(tolerance {self.tolerance:.3e} = {RELATIVE_TOLERANCE:g} x max(1, max|logits| = "
                f"{self.max_abs_logit:.3g})), top-1 {'agrees' if self.top1_agree else 'DIFFERS'} on "
                f"{self.batch} images at {self.input_size}x{self.input_size}")


def parity_input(input_size: int, batch: int = PARITY_BATCH, seed: int = PARITY_SEED) -> torch.Tensor:
    """The deterministic [0, 1] batch every parity check uses."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, input_size, input_size, generator=generator)


def run_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits, computed without oneDNN.

    oneDNN reorders every convolution weight into a private copy on first use; for VGG16's
    7x7 ``pre_logits`` conv that is 400 MB. The parity check compares weights, not kernels,
    so it uses the plain kernels and keeps conversion memory near one copy of the model.
    """
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about TF32 when toggling oneDNN
        with torch.backends.mkldnn.flags(enabled=False):
            return model.eval()(inputs).float()


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, input_size: int) -> ParityReport:
    """Compare ``candidate`` logits with the ``reference`` (original) logits."""
    if reference.shape != candidate.shape:
        raise ParityError(f"logit shapes differ: original {tuple(reference.shape)}, "
                          f"converted {tuple(candidate.shape)}")
    max_abs_logit = reference.abs().max().item()
    return ParityReport(
        max_abs_diff=(reference - candidate).abs().max().item(),
        max_abs_logit=max_abs_logit,
        tolerance=RELATIVE_TOLERANCE * max(1.0, max_abs_logit),
        top1_agree=bool((reference.argmax(1) == candidate.argmax(1)).all()),
        batch=reference.shape[0],
        input_size=input_size,
    )
