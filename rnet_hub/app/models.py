"""The models the app runs: loaded once by name, with their transform, label names and a cache key.

Any name of the one grammar (:func:`rnet_hub.names.parse_model_name`: ``resnet50``,
``radiologynet/resnet50``, ``hf-hub:...@rev``, ``local-dir:...``, a folder) or a fine-tuned
folder as transformers' ``save_pretrained`` writes it (what ``rnet-hub finetune`` writes) is
resolved to a local folder (the Hugging Face cache for Hub names; ``HF_HUB_OFFLINE=1`` works)
and loaded with :func:`rnet_hub.loading.create_model`. A model whose head is not the
pretraining head (other ``num_classes``, or ``label_names`` in its ``config.json``) is a
fine-tuned classifier: the app shows its class probabilities and a Grad-CAM map.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..architectures import PRETRAINING_NUM_CLASSES
from ..folder import CONFIG_NAME, WEIGHTS_NAME
from ..imaging.transforms import ImageTransform, create_transform
from ..loading import create_model, resolve_model_dir
from ..names import parse_model_name

__all__ = ["AppModel", "ModelCache", "load_app_model"]


@dataclass(frozen=True)
class AppModel:
    """A loaded model (eval mode) and what the app needs to show about it."""

    name: str
    folder: Path
    model: nn.Module
    transform: ImageTransform
    key: str
    label_names: tuple[str, ...]

    @property
    def architecture(self) -> str:
        """The timm architecture name."""
        return str(self.model.pretrained_cfg.get("architecture") or type(self.model).__name__)

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier head."""
        return int(self.model.num_classes)

    @property
    def fine_tuned(self) -> bool:
        """True for a classifier with its own labels (not the 36 unnamed pretraining clusters)."""
        named = self.model.pretrained_cfg.get("label_names")
        return self.num_classes != PRETRAINING_NUM_CLASSES or bool(named)

    @property
    def input_size(self) -> tuple[int, int]:
        """The native input size (height, width)."""
        return self.transform.size

    def forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (the embedding, ``num_classes=0`` features) and class probabilities of a batch."""
        with torch.inference_mode():
            features = self.model.forward_features(batch)
            pooled = self.model.forward_head(features, pre_logits=True).flatten(1)
            logits = self.model.forward_head(features)
        return pooled.float().numpy(), torch.softmax(logits.float(), dim=1).numpy()

    def run(self, inputs: list[torch.Tensor], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (float32 rows) and class probabilities of model inputs, in batches."""
        parts = [self.forward(torch.stack(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)]
        if not parts:
            return np.zeros((0, 0), np.float32), np.zeros((0, self.num_classes), np.float32)
        return (np.concatenate([p[0] for p in parts]).astype(np.float32),
                np.concatenate([p[1] for p in parts]).astype(np.float32))


def _model_key(folder: Path) -> str:
    """A cache key for a model folder: its path and the size and modification time of its files."""
    parts: list[Any] = [str(folder.resolve())]
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        stat = (folder / name).stat()
        parts += [name, stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def load_app_model(name: str) -> AppModel:
    """Resolve ``name`` to a local folder (downloading into the Hugging Face cache if needed) and load it.

    Raises:
        BadInputError: an unknown name, a folder that is not a model folder (a ``rnet_hub.errors`` class).
        DownloadError: the Hub could not be reached and the model is not cached.
    """
    name = name.strip()
    folder = resolve_model_dir(parse_model_name(name))
    model = create_model(folder).eval()
    labels = model.pretrained_cfg.get("label_names") or [f"class {i}" for i in range(int(model.num_classes))]
    return AppModel(name=name, folder=Path(folder), model=model, transform=create_transform(model),
                    key=_model_key(Path(folder)), label_names=tuple(str(x) for x in labels))


class ModelCache:
    """Models loaded once per name and kept (thread-safe)."""

    def __init__(self) -> None:
        self._models: dict[str, AppModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> AppModel:
        """The loaded model for ``name`` (loaded on first use)."""
        with self._lock:
            if name.strip() not in self._models:
                self._models[name.strip()] = load_app_model(name)
            return self._models[name.strip()]
