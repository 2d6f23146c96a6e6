"""The one table of the ten RadiologyNET architectures.

Every other part of the package (legacy topologies, key maps, conversion, timm
registration, model cards and the parametrized tests) reads this table instead of
repeating per-model facts. The facts come from ``shared/reference/radiologynet-originals.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import UnknownArchitectureError

__all__ = [
    "ARCHITECTURES",
    "ARCHIVE_BASE_URL",
    "DEFAULT_ORG",
    "PRETRAINING_NUM_CLASSES",
    "ArchSpec",
    "default_org",
    "find_arch",
    "max_checkpoint_bytes",
]

ARCHIVE_BASE_URL = "http://radiologynet.riteh.hr/models"
DEFAULT_ORG = "radiologynet"
#: 50 pseudo-label clusters minus 14 excluded ones.
PRETRAINING_NUM_CLASSES = 36
MIB = 1024 * 1024


@dataclass(frozen=True)
class ArchSpec:
    """Everything the package knows about one RadiologyNET architecture.

    Attributes:
        name: the legacy wrapper class name, also the archive stem (``ResNet50.tar.gz``).
        aliases: the short names the original code accepted (``res50``).
        timm_arch: the timm architecture the weights convert to.
        family: which key map and legacy topology apply.
        torchvision_fn: the torchvision constructor the legacy wrapper wraps.
        input_size: the square input size used in pretraining.
        archive_mib: the published archive size in MiB.
        head_in_features: the input width of the classification head.
        first_conv: timm name of the first convolution (``pretrained_cfg['first_conv']``).
        classifier: timm name of the classifier (``pretrained_cfg['classifier']``).
        legacy_head: legacy state-dict prefix of the layer whose rows are the classes.
        model_args: extra timm ``create_model`` arguments needed to match the originals.
        imagenet_tag: timm's pretrained tag with ImageNet weights for the architecture (``rnet-hub finetune
            --init imagenet``): torchvision's (``.tv_in1k``) where timm has them, as the original study used
            torchvision's; EfficientNet-B3/B4 and MobileNetV3 have none there, so these are timm's own
            trainings (``ra2_in1k``, ``ra_in1k``, ``lamb_in1k``), not torchvision's weights.
    """

    name: str
    aliases: tuple[str, ...]
    timm_arch: str
    family: str
    torchvision_fn: str
    input_size: int
    archive_mib: float
    head_in_features: int
    first_conv: str
    classifier: str
    legacy_head: str
    model_args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    imagenet_tag: str = ""

    @property
    def archive_url(self) -> str:
        """Where the original authors publish this checkpoint."""
        return f"{ARCHIVE_BASE_URL}/{self.name}.tar.gz"

    @property
    def archive_bytes(self) -> int:
        """The published archive size in bytes (rounded as published)."""
        return int(self.archive_mib * MIB)

    @property
    def pretrained_tag(self) -> str:
        """The timm pretrained tag this package registers, e.g. ``resnet50.radiologynet``."""
        return f"{self.timm_arch}.radiologynet"

    def repo_id(self, org: str | None = None) -> str:
        """The Hub repository, ``radiologynet/<timm architecture>`` unless ``org`` says otherwise."""
        return f"{org or default_org()}/{self.timm_arch}"


def _spec(**kwargs: Any) -> ArchSpec:
    kwargs["model_args"] = MappingProxyType(dict(kwargs.get("model_args", {})))
    return ArchSpec(**kwargs)


ARCHITECTURES: tuple[ArchSpec, ...] = (
    _spec(name="ResNet18", aliases=("res18",), timm_arch="resnet18", family="resnet",
          imagenet_tag="resnet18.tv_in1k",
          torchvision_fn="resnet18", input_size=224, archive_mib=117, head_in_features=512,
          first_conv="conv1", classifier="fc", legacy_head="model.fc"),
    _spec(name="ResNet34", aliases=("res34",), timm_arch="resnet34", family="resnet",
          imagenet_tag="resnet34.tv_in1k",
          torchvision_fn="resnet34", input_size=224, archive_mib=223, head_in_features=512,
          first_conv="conv1", classifier="fc", legacy_head="model.fc"),
    _spec(name="ResNet50", aliases=("res50",), timm_arch="resnet50", family="resnet",
          imagenet_tag="resnet50.tv_in1k",
          torchvision_fn="resnet50", input_size=224, archive_mib=247, head_in_features=2048,
          first_conv="conv1", classifier="fc", legacy_head="model.fc"),
    _spec(name="DenseNet121", aliases=("dense121",), timm_arch="densenet121", family="densenet",
          imagenet_tag="densenet121.tv_in1k",
          torchvision_fn="densenet121", input_size=224, archive_mib=74, head_in_features=1024,
          first_conv="features.conv0", classifier="classifier", legacy_head="classifier"),
    _spec(name="InceptionV3", aliases=("incept_v3",), timm_arch="inception_v3", family="inception",
          imagenet_tag="inception_v3.tv_in1k",
          torchvision_fn="inception_v3", input_size=299, archive_mib=229, head_in_features=2048,
          first_conv="Conv2d_1a_3x3.conv", classifier="fc", legacy_head="model.fc"),
    _spec(name="VGG16", aliases=("vgg16",), timm_arch="vgg16", family="vgg",
          imagenet_tag="vgg16.tv_in1k",
          torchvision_fn="vgg16", input_size=224, archive_mib=1.21 * 1024, head_in_features=4096,
          first_conv="features.0", classifier="head.fc", legacy_head="classifier.6"),
    _spec(name="EfficientNetB3", aliases=("eff3",), timm_arch="efficientnet_b3", family="efficientnet",
          imagenet_tag="efficientnet_b3.ra2_in1k",
          torchvision_fn="efficientnet_b3", input_size=300, archive_mib=114, head_in_features=1536,
          first_conv="conv_stem", classifier="classifier", legacy_head="classifier.1"),
    _spec(name="EfficientNetB4", aliases=("eff4",), timm_arch="efficientnet_b4", family="efficientnet",
          imagenet_tag="efficientnet_b4.ra2_in1k",
          torchvision_fn="efficientnet_b4", input_size=380, archive_mib=189, head_in_features=1792,
          first_conv="conv_stem", classifier="classifier", legacy_head="classifier.1"),
    _spec(name="MobileNetV3Large", aliases=("mobileNetV3Large",), timm_arch="mobilenetv3_large_100",
          imagenet_tag="mobilenetv3_large_100.ra_in1k",
          family="mobilenetv3", torchvision_fn="mobilenet_v3_large", input_size=224, archive_mib=45,
          head_in_features=1280, first_conv="conv_stem", classifier="classifier",
          legacy_head="classifier.3", model_args={"bn_eps": 0.001}),
    _spec(name="MobileNetV3Small", aliases=("mobileNetV3Small",), timm_arch="mobilenetv3_small_100",
          imagenet_tag="mobilenetv3_small_100.lamb_in1k",
          family="mobilenetv3", torchvision_fn="mobilenet_v3_small", input_size=224, archive_mib=17,
          head_in_features=1024, first_conv="conv_stem", classifier="classifier",
          legacy_head="classifier.3", model_args={"bn_eps": 0.001}),
)


def default_org() -> str:
    """The Hub organisation: ``$RNET_HUB_ORG`` when set, else ``radiologynet``."""
    return os.environ.get("RNET_HUB_ORG") or DEFAULT_ORG


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _names(spec: ArchSpec) -> tuple[str, ...]:
    return (spec.name, *spec.aliases, spec.timm_arch, spec.pretrained_tag)


_BY_NAME: dict[str, ArchSpec] = {_normalise(n): s for s in ARCHITECTURES for n in _names(s)}


def find_arch(name: str) -> ArchSpec:
    """Look an architecture up by legacy name, alias, timm name or pretrained tag (any case).

    Only table names: full model names (Hub ids, folders) go through :mod:`rnet_hub.names`.
    """
    try:
        return _BY_NAME[_normalise(name)]
    except KeyError:
        known = ", ".join(s.name for s in ARCHITECTURES)
        raise UnknownArchitectureError(
            f"unknown RadiologyNET architecture {name!r}; use one of {known} "
            f"(or an alias such as res50, or a timm name such as resnet50)"
        ) from None


#: A legacy checkpoint is at most this many times its published archive: the archive holds the model and
#: its AdamW moments, which compress little; the margin covers other heads and float64 weights without them.
CHECKPOINT_SIZE_MARGIN = 2


def max_checkpoint_bytes(file_name: str | None = None) -> tuple[int, str]:
    """The largest a legacy checkpoint can be, and what the bound is for: the architecture ``file_name``
    names (``ResNet50.pth``), else the largest of the ten. Extraction refuses larger members up front."""
    try:
        spec = find_arch(str(file_name).split(".", 1)[0]) if file_name else None
    except UnknownArchitectureError:
        spec = None
    if spec is None:
        largest = max(ARCHITECTURES, key=lambda s: s.archive_bytes)
        return CHECKPOINT_SIZE_MARGIN * largest.archive_bytes, "any RadiologyNET checkpoint"
    return CHECKPOINT_SIZE_MARGIN * spec.archive_bytes, f"a {spec.name} checkpoint"
