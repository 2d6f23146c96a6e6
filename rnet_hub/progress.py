"""Progress bars: huggingface_hub's tqdm, which honours ``HF_HUB_DISABLE_PROGRESS_BARS``."""

from __future__ import annotations

from typing import Any

from huggingface_hub.utils import tqdm as _hf_tqdm

__all__ = ["progress_bar"]


def progress_bar(*, total: int | None, desc: str, disable: bool = False, unit: str = "B", **kwargs: Any) -> Any:
    """A byte-counting progress bar (or a silent one when ``disable``)."""
    scale = unit == "B"
    return _hf_tqdm(total=total, desc=desc, disable=disable, unit=unit, unit_scale=scale,
                    unit_divisor=1024 if scale else 1000, leave=False, **kwargs)
