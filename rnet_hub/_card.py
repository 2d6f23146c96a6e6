"""The short model card written by every conversion (the full Hub card is built by ``cards``)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from huggingface_hub import ModelCard, ModelCardData

from . import __version__
from ._parity import ParityReport
from ._table import ArchSpec

__all__ = ["CARD_TAGS", "card_data", "write_short_card"]

CARD_TAGS = ["timm", "transformers", "image-classification", "image-feature-extraction", "medical-imaging",
             "radiology", "transfer-learning", "radiologynet"]

_SHORT_CARD = """---
{card_data}
---

# RadiologyNET {name} ({timm_arch})

{name} pretrained on about 1.9 M DICOM-derived radiology images (RadiologyNET, 36 unnamed
pseudo-label clusters), converted to timm/transformers format by rnet_hub {version}.
Research use only; not for clinical use.

```python
import timm
model = timm.create_model("hf-hub:{repo_id}", pretrained=True, num_classes=4)
```

Input: grey images letterboxed to {size}x{size} (zero padding), scaled to [0, 1], grey replicated
to 3 channels (no mean/std normalisation).

## Provenance

| | |
|---|---|
| source file | `{source_name}` |
| source sha256 | `{source_sha256}` |
| parity | max abs logit difference {max_abs_diff:.3e} (tolerance {tolerance:.3e}) |
| converter | rnet_hub {version}, torch {torch}, timm {timm} |

License GPL-3.0. Cite Napravnik et al., Scientific Reports 15, 21622 (2025), doi:10.1038/s41598-025-05009-w.
"""


def card_data(spec: ArchSpec, **extra: object) -> ModelCardData:
    """The YAML metadata every RadiologyNET card carries."""
    return ModelCardData(license="gpl-3.0", library_name="timm", pipeline_tag="image-classification",
                         tags=list(CARD_TAGS), **extra)


def write_short_card(folder: Path, spec: ArchSpec, *, repo_id: str, source_name: str, source_sha256: str,
                     parity: ParityReport, num_classes: int) -> None:
    text = _SHORT_CARD.format(
        card_data=card_data(spec).to_yaml(), name=spec.name, timm_arch=spec.timm_arch, repo_id=repo_id,
        version=__version__, size=spec.input_size, source_name=source_name, source_sha256=source_sha256,
        max_abs_diff=parity.max_abs_diff, tolerance=parity.tolerance, torch=torch.__version__,
        timm=timm.__version__)
    ModelCard(text).save(folder / "README.md")
