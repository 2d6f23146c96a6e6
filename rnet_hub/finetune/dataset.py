"""One split of fine-tuning data as a torch ``Dataset`` of model inputs, with a decode cache.

Each item is ``{"pixel_values": float32 [C, S, S], "labels": tensor}``. An image is decoded
(:func:`decode_source`: DICOM through :func:`rnet_hub.imaging.dicom.load_frames`, every frame and
window one image), letterboxed to the model's native size by the pretraining transform's own
geometry (:class:`rnet_hub.imaging.transforms.ImageTransform`, zero padding) and kept as uint8:
in memory, and as ``.npy`` files under ``cache_dir`` (written to a temporary name and renamed, so
ranks writing at once never corrupt them) that another process (a DDP rank, a resumed run) reuses.
So every image is decoded once, not every epoch. Then, for training only, the original study's
augmentation (torchvision ``transforms.v2``: horizontal flip, rotation +-15 degrees, brightness
0.8-1.2, contrast 0.8-1.3), /255 and the normalisation of the initialisation: the model's
``pretrained_cfg`` mean/std (0 and 1 for RadiologyNET and scratch) or ImageNet's.
Without augmentation the output equals :func:`rnet_hub.imaging.transforms.create_transform`'s for
the same 8-bit image. 16-bit images are rounded to 8 bits first (as the pretraining export did).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import BadInputError, ImageReadError
from ..files import write_atomic
from ..imaging.dicom import load_dicom, load_frames, pil_to_array
from ..imaging.transforms import ImageTransform, resolve_input_config
from .examples import SPLITS, DatasetRows, Example, FinetuneData
from .options import INITS

__all__ = ["INITS", "FinetuneDataset", "decode_source", "make_dataset"]

_CACHE_VERSION = "1"


def _row_image(rows: DatasetRows, index: int) -> list[np.ndarray]:
    value = rows.table[index][rows.column]
    where = f"dataset row {index}"
    try:
        if isinstance(value, Mapping) and value.get("bytes"):
            data = value["bytes"]
            if data[128:132] == b"DICM":
                import pydicom

                return [f.pixels for f in load_dicom(pydicom.dcmread(io.BytesIO(data)))]
            with Image.open(io.BytesIO(data)) as image:
                return [pil_to_array(image)]
        if isinstance(value, Mapping) and value.get("path"):
            return [f.pixels for f in load_frames(value["path"])]
        if isinstance(value, Image.Image):
            return [pil_to_array(value)]
        return [np.asarray(value)]
    except ImageReadError:
        raise
    except Exception as exc:  # PIL and pydicom raise many kinds on broken data
        raise ImageReadError(f"{where}: the image cannot be decoded ({type(exc).__name__}: {exc})") from exc


def decode_source(example: Example, rows: DatasetRows | None = None) -> list[np.ndarray]:
    """Every image of ``example.source`` (all frames/windows of a DICOM file), decoded: uint8 or
    uint16 (H, W) grey or (H, W, 3) colour arrays. The one place fine-tuning decodes pixels."""
    if example.source.startswith("dataset:"):
        if rows is None:
            raise BadInputError(f"{example.source} needs the dataset it came from (FinetuneData.rows)")
        return _row_image(rows, int(example.source.split(":", 1)[1]))
    return [frame.pixels for frame in load_frames(example.source)]


def _eight_bit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    return array


class FinetuneDataset(Dataset):
    """Model inputs of one split (see the module docstring); ``decodes`` counts files decoded by this
    instance (in this process), ``cache_hits`` images read back from ``cache_dir``."""

    def __init__(self, data: FinetuneData, split: str, *, model_config: Mapping[str, Any],
                 init: str = "radiologynet", train: bool | None = None, flip: bool = True,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if split not in SPLITS:
            raise BadInputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if init not in INITS:
            raise BadInputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.data, self.split, self.init = data, split, init
        self.examples = data.splits[split]
        self.train = split == "train" if train is None else bool(train)
        config = resolve_input_config(model_config)
        self.channels = int(config["input_size"][0])
        # the pretraining geometry (letterbox, zero padding), read back as uint8 from [0, 1]
        self._geometry = ImageTransform({**config, "mean": (0.0,) * 3, "std": (1.0,) * 3})
        if init == "imagenet":
            from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        else:
            mean, std = config["mean"], config["std"]
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        mean, std = (mean * 3 if len(mean) == 1 else mean)[:3], (std * 3 if len(std) == 1 else std)[:3]
        self.mean = np.array(mean[:self.channels], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.array(std[:self.channels], dtype=np.float32).reshape(-1, 1, 1)
        self._namespace = hashlib.sha256(repr((_CACHE_VERSION, tuple(config["input_size"]), config["interpolation"],
                                               config["crop_pct"], config["crop_mode"])).encode()).hexdigest()[:16]
        self.cache_dir = Path(cache_dir) / self._namespace if cache_dir is not None else None
        self._frame_counts: dict[str, int] = {}  # images per source, for caching every frame of a file at once
        for examples in data.splits.values():
            for e in examples:
                self._frame_counts[e.source] = max(self._frame_counts.get(e.source, 0), e.frame + 1)
        self._memory: dict[tuple[str, int], np.ndarray] = {}
        self._augment = _augmentation(flip) if self.train else None
        self.decodes = 0
        self.cache_hits = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        return {"pixel_values": self.pixel_values(example), "labels": self.label(example)}

    def label(self, example: Example) -> torch.Tensor:
        """The target as the loss wants it: int64 scalar, float32 vector or float32 scalar."""
        if self.data.task == "single_label":
            return torch.tensor(example.target, dtype=torch.int64)
        return torch.tensor(example.target, dtype=torch.float32)

    def pixel_values(self, example: Example) -> torch.Tensor:
        """The model input of one example: letterboxed (cached), augmented when training, normalised."""
        image = self.letterboxed(example)
        planes = (image[None] if image.ndim == 2 else image.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
        if self._augment is not None:
            planes = self._augment(torch.from_numpy(planes)).numpy()
        if planes.shape[0] != self.channels:
            planes = np.broadcast_to(planes, (self.channels, *planes.shape[1:])) if planes.shape[0] == 1 \
                else planes.mean(axis=0, keepdims=True)
        return torch.from_numpy(np.ascontiguousarray((planes - self.mean) / self.std, dtype=np.float32))

    # ------------------------------------------------------------------ cache
    def letterboxed(self, example: Example) -> np.ndarray:
        """The example's image letterboxed to the native size: uint8 (S, S) grey or (S, S, 3) colour,
        from memory, else from ``cache_dir``, else decoded (every frame of the file cached at once)."""
        key = (example.source, example.frame)
        if key in self._memory:
            return self._memory[key]
        paths = self._cache_paths(example)
        if paths is not None and paths[example.frame].is_file():
            try:
                image = np.load(paths[example.frame], allow_pickle=False)
                self.cache_hits += 1
                self._memory[key] = image
                return image
            except (OSError, ValueError):
                pass  # unreadable cache entry: decode again and replace it
        frames = decode_source(example, self.data.rows)
        self.decodes += 1
        if example.frame >= len(frames):
            raise ImageReadError(f"{example.source} now holds {len(frames)} images, fewer than when the data was "
                                 "read; it changed: load the data again")
        for frame, pixels in enumerate(frames):
            image = self._letterbox(pixels, example.source)
            self._memory[(example.source, frame)] = image
            if paths is not None and frame < len(paths):
                _write_atomic(paths[frame], image)
        return self._memory[key]

    def _letterbox(self, pixels: np.ndarray, where: str) -> np.ndarray:
        pixels = _eight_bit(np.asarray(pixels))
        grey = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 1)
        try:
            out = self._geometry(pixels).numpy()
        except BadInputError as exc:
            raise ImageReadError(f"{where}: {exc}") from exc
        image = np.rint(out * 255).astype(np.uint8)
        if grey or (np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[-1])):
            return np.ascontiguousarray(image[0])
        return np.ascontiguousarray(image.transpose(1, 2, 0))

    def _cache_paths(self, example: Example) -> list[Path] | None:
        """The cache files of every frame of ``example``'s source (None without ``cache_dir`` or a key)."""
        if self.cache_dir is None:
            return None
        identity = self._identity(example)
        if identity is None:
            return None
        count = self._frame_counts[example.source]
        digest = hashlib.sha256(identity.encode()).hexdigest()
        return [self.cache_dir / digest[:2] / f"{digest}-{frame}.npy" for frame in range(count)]

    def _identity(self, example: Example) -> str | None:
        """What the cached pixels depend on: the file (path, size, modification time) or the row's bytes."""
        if not example.source.startswith("dataset:"):
            try:
                info = os.stat(example.source)
            except OSError:
                return None
            return f"file|{example.source}|{info.st_size}|{info.st_mtime_ns}"
        rows = self.data.rows
        if rows is None:
            return None
        index = int(example.source.split(":", 1)[1])
        value = rows.table[index][rows.column]
        if isinstance(value, Mapping) and value.get("bytes"):
            return "bytes|" + hashlib.sha256(value["bytes"]).hexdigest()
        if isinstance(value, Mapping) and value.get("path"):
            return self._identity(Example(os.path.abspath(value["path"]), 0, "", 0))
        return f"row|{rows.fingerprint}|{index}" if rows.fingerprint else None


def _write_atomic(path: Path, image: np.ndarray) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder and a rename."""
    def save(temporary: Path) -> None:
        with open(temporary, "wb") as fh:  # a handle: np.save would add ".npy" to a name
            np.save(fh, image, allow_pickle=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save)


def _augmentation(flip: bool) -> Any:
    """The original study's training augmentation on a float [C, H, W] tensor in [0, 1]."""
    from torchvision.transforms import v2

    steps = [v2.RandomHorizontalFlip(p=0.5)] if flip else []
    steps += [v2.RandomRotation(15), v2.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.3))]
    return v2.Compose(steps)


def make_dataset(data: FinetuneData, split: str, *, model_config: Mapping[str, Any], init: str = "radiologynet",
                 train: bool | None = None, flip: bool = True, cache_dir: str | os.PathLike[str] | None = None
                 ) -> FinetuneDataset:
    """The torch ``Dataset`` of one split: items ``{"pixel_values", "labels"}`` (see the module docstring).

    ``model_config``: the model folder's ``config.json`` dict (its ``pretrained_cfg`` gives the input
    size, mean and std). ``init``: ``"radiologynet"``/``"scratch"`` (the config's mean/std) or
    ``"imagenet"`` (ImageNet mean/std). ``train``: augment (default: when ``split == "train"``);
    ``flip=False`` drops the horizontal flip. ``cache_dir``: also keep letterboxed images on disk there.
    """
    return FinetuneDataset(data, split, model_config=model_config, init=init, train=train, flip=flip,
                           cache_dir=cache_dir)
