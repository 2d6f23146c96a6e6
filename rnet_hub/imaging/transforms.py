"""The model input as in pretraining: letterbox, resize, scale and normalise, from a model's ``pretrained_cfg``.

:func:`create_transform` turns any image (a :class:`~rnet_hub.imaging.dicom.Frame`, an 8/16-bit
PNG or JPEG file, a PIL image, a numpy array or a torch tensor; grey or RGB) into the model
input described by the model's timm ``pretrained_cfg``: letterboxed to the native size, /255,
normalised, with 3 channels (or 1 for ``in_chans=1`` models). ``faithful=True`` reproduces the
pretraining resize chain exactly instead (see :class:`ImageTransform`): letterbox to 224 with
PIL, then OpenCV's bilinear resize to the native size (``pip install "rnet-hub[faithful]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..errors import BadInputError, MissingExtraError
from .dicom import PRETRAINING_EXPORT_SIZE, Frame, load_frames, pil_to_array

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ImageTransform", "create_transform", "resolve_input_config"]

_FAITHFUL_EXTRA = 'pip install "rnet-hub[faithful]"'


def resolve_input_config(source: nn.Module | Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, crop_pct, crop_mode, mean, std) from a timm
    model (its ``pretrained_cfg``), a ``pretrained_cfg`` dict, a whole ``config.json`` dict, or a
    converted model folder."""
    from timm.data import resolve_data_config, resolve_model_data_config

    if isinstance(source, torch.nn.Module):
        return resolve_model_data_config(source)
    if isinstance(source, (str, os.PathLike)):
        from ..folder import read_config

        source = read_config(source)
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a timm model, a pretrained_cfg dict or a model folder, got {type(source).__name__}")
    cfg = source.get("pretrained_cfg", source)
    return resolve_data_config(pretrained_cfg=dict(cfg))


def _three(values: Sequence[float]) -> list[float]:
    """Per-channel values for 3 channels (a single value is shared)."""
    values = [float(v) for v in values]
    return values * 3 if len(values) == 1 else values[:3]


def _tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """CHW/HW tensor -> HW/HWC numpy array."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    elif tensor.ndim != 2:
        raise BadInputError(f"expected an image tensor (H, W) or (C, H, W) with C in 1, 3, 4; "
                            f"got {tuple(tensor.shape)}")
    return tensor.numpy()


def _as_array(image: Any) -> np.ndarray:
    """Any supported input as a numpy image: HW or HWC (C = 3), uint8, uint16 or float in [0, 1]."""
    if isinstance(image, Frame):
        image = image.pixels
    elif isinstance(image, (str, os.PathLike)):
        frames = load_frames(image)
        if len(frames) != 1:
            raise BadInputError(f"{os.fspath(image)} holds {len(frames)} images; "
                                "pick one from rnet_hub.preprocess.load_dicom(path)")
        image = frames[0].pixels
    elif isinstance(image, Image.Image):
        image = pil_to_array(image)
    elif isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise BadInputError(f"expected a grey (H, W) or colour (H, W, 3) image, got shape {array.shape}")
    return _check_dtype(array)


def _check_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype in (np.uint8, np.uint16):
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < -1e-6 or np.nanmax(array) > 1 + 1e-6):
            raise BadInputError("float images must hold values in [0, 1]; scale them first")
        return np.clip(array, 0, 1)
    raise BadInputError(f"unsupported pixel type {array.dtype}: pass uint8, uint16 or float in [0, 1] "
                        "(DICOM files and frames from load_dicom are windowed for you)")


def _grey_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit grey: colour through PIL's ITU-R 601 luma, 16 bit and float rounded to 8 bits."""
    if array.dtype == np.uint16:
        array = np.rint(array / 257.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.rint(array * 255.0).astype(np.uint8)
    return np.asarray(Image.fromarray(array).convert("L")) if array.ndim == 3 else array


def _pil_bands(array: np.ndarray, channels: int, uniform_mean: bool) -> list[Image.Image]:
    """PIL images for timm's geometric transforms: one 'L'/'RGB' image for 8-bit data, one
    'F' image (values 0-255) per channel for deeper data, keeping its precision."""
    if array.ndim == 3 and channels == 1:
        array = _luma(array)
    elif array.ndim == 2 and channels == 3 and not uniform_mean:
        array = np.repeat(array[:, :, None], 3, axis=2)  # padding then fills each channel with its own mean
    if array.dtype == np.uint8:
        return [Image.fromarray(array)]
    scale = 255.0 / 65535.0 if array.dtype == np.uint16 else 255.0
    planes = [array] if array.ndim == 2 else [array[:, :, c] for c in range(3)]
    return [Image.fromarray(plane.astype(np.float32) * np.float32(scale), mode="F") for plane in planes]


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Grey from colour with the ITU-R 601 weights (PIL's ``convert("L")`` for 8-bit input)."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).convert("L"))
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return grey.astype(np.float32) if rgb.dtype != np.uint16 else np.rint(grey).astype(np.uint16)


def _letterbox_pil(image: np.ndarray, size: int) -> np.ndarray:
    """Pretraining step 2: longer side to ``size`` with PIL bilinear (rounded), pasted centred on zeros."""
    height, width = image.shape
    aspect = height / width
    new_h, new_w = size, size
    if height > width:
        new_w = round(size / aspect)
    else:
        new_h = round(size * aspect)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
    canvas = Image.new("L", (size, size), color=0)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def _letterbox_cv2(image: np.ndarray, size: int) -> np.ndarray:
    """Pretraining step 3: OpenCV bilinear to ``size`` (truncated sizes), zero padding ``delta//2`` first."""
    height, width = image.shape
    ratio = float(size) / max(height, width)
    new_h, new_w = int(height * ratio), int(width * ratio)
    if (new_h, new_w) == (height, width) and new_h == new_w == size:
        return image  # OpenCV copies the image unchanged at equal sizes; skip the dependency here
    try:
        import cv2
    except ImportError as exc:
        raise MissingExtraError(f"faithful preprocessing at {size} px needs OpenCV: {_FAITHFUL_EXTRA}") from exc
    resized = cv2.resize(image, (new_w, new_h))
    delta_h, delta_w = size - new_h, size - new_w
    return cv2.copyMakeBorder(resized, delta_h // 2, delta_h - delta_h // 2, delta_w // 2, delta_w - delta_w // 2,
                              cv2.BORDER_CONSTANT, value=[0])


class ImageTransform:
    """Any image -> the model's input tensor (C, H, W), float32, from a timm data config.

    Default: timm's own eval transform for the config (with RadiologyNET's ``pretrained_cfg``:
    longer side to the native size, bilinear, centred zero padding, /255, mean 0, std 1),
    applied to a grey or RGB PIL image, then grey replicated to 3 channels (or colour turned
    grey for ``in_chans=1``). On 8-bit RGB input this *is* timm's transform.

    ``faithful=True``: the pretraining chain exactly: 8-bit grey, letterbox to 224 with PIL
    bilinear (rounded sizes), then OpenCV bilinear to the native size (truncated sizes,
    padding ``delta//2`` first), /255, channel replication, the config's mean/std. It
    differs from the default at 300/380/299 px (EfficientNetB3/B4, InceptionV3), which saw
    224-detail images upscaled. Needs OpenCV for native sizes other than 224.
    """

    def __init__(self, config: Mapping[str, Any], *, faithful: bool = False) -> None:
        from timm.data import create_transform as timm_create_transform
        from timm.data.transforms import MaybePILToTensor
        from torchvision.transforms import Compose

        self.config = dict(config)
        self.faithful = faithful
        channels, height, width = self.config["input_size"]
        self.channels, self.size = int(channels), (int(height), int(width))
        if faithful and height != width:
            raise BadInputError(f"faithful preprocessing needs a square input size, got {height}x{width}")
        mean, std = _three(self.config["mean"]), _three(self.config["std"])
        self._mean = np.array(mean[:self.channels], dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.array(std[:self.channels], dtype=np.float32).reshape(-1, 1, 1)
        self._uniform_mean = len(set(mean)) == 1

        def geometry(bands: int, fill_mean: Sequence[float]) -> Callable[[Image.Image], Image.Image]:
            """The geometric steps of timm's eval transform (resize, pad/crop with round(255 * mean))."""
            steps = timm_create_transform(input_size=(bands, height, width), mean=tuple(fill_mean),
                                          interpolation=self.config["interpolation"], crop_pct=self.config["crop_pct"],
                                          crop_mode=self.config["crop_mode"], normalize=False).transforms
            return Compose([step for step in steps if not isinstance(step, MaybePILToTensor)])

        self._rgb_geometry = geometry(3, mean)
        self._plane_geometry = [geometry(1, [m]) for m in mean]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_size={tuple(self.config['input_size'])}, "
                f"faithful={self.faithful})")

    def __call__(self, image: Any) -> torch.Tensor:
        """``image``: a :class:`Frame`, a file path, a PIL image, a numpy array (HW/HWC) or a tensor
        (HW/CHW); grey or colour; uint8, uint16, or float in [0, 1]."""
        array = _as_array(image)
        planes = self._faithful(array) if self.faithful else self._timm(array)
        return torch.from_numpy(self._normalise(planes))

    def _timm(self, array: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 in [0, 1] through timm's geometry."""
        bands = _pil_bands(array, self.channels, self._uniform_mean)
        if len(bands) == 1 and bands[0].mode == "RGB":
            return np.asarray(self._rgb_geometry(bands[0]), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return np.stack([np.asarray(self._plane_geometry[c](band), dtype=np.float32) for c, band in enumerate(bands)]) \
            / np.float32(255)

    def _faithful(self, array: np.ndarray) -> np.ndarray:
        grey = _letterbox_cv2(_letterbox_pil(_grey_uint8(array), PRETRAINING_EXPORT_SIZE), self.size[0])
        return grey[None].astype(np.float32) / np.float32(255)

    def _normalise(self, planes: np.ndarray) -> np.ndarray:
        """Grey replicated to 3 channels where the model wants them, then timm's (x - mean) / std.
        Plain numpy: small per-image tensor ops in torch pay for its thread pool."""
        if planes.shape[0] != self.channels:
            planes = np.broadcast_to(planes, (self.channels, *planes.shape[1:]))
        return np.ascontiguousarray((planes - self._mean) / self._std, dtype=np.float32)


def create_transform(model_or_config: nn.Module | Mapping[str, Any] | str | os.PathLike[str], *,
                     faithful: bool = False) -> ImageTransform:
    """The :class:`ImageTransform` for a timm model, a ``pretrained_cfg``/``config.json`` dict or a
    converted model folder. ``faithful=True`` reproduces the pretraining resize chain exactly."""
    return ImageTransform(resolve_input_config(model_or_config), faithful=faithful)

