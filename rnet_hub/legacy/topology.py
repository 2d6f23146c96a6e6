"""The original RadiologyNET wrapper topologies, rebuilt from the architecture table.

These reproduce the *state-dict keys and forward pass* of the modules the published
checkpoints were trained with (see ``shared/reference/radiologynet-originals.md``), so a
legacy checkpoint loads into them with ``strict=True`` and gives the original logits.
They are the reference every conversion is verified against.

Three topologies cover the ten models:

* ``model`` attribute (ResNet, InceptionV3): ``self.model`` is the torchvision network
  with its ``fc`` replaced.
* DenseNet: ``features`` and ``classifier`` registered at the top *and* again under
  ``model``; forward is features -> ReLU -> global average pool -> classifier.
* features + head (VGG16, EfficientNet, MobileNetV3): torchvision ``features``, ``avgpool``
  and a classifier ``Sequential``. VGG16's pretraining forward skipped ``avgpool``.

For migrating users, the original constructor style works too:
``rnet_hub.legacy.MobileNetV3Large(pretrained=False, number_of_classes=10)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from ..architectures import ARCHITECTURES, PRETRAINING_NUM_CLASSES, ArchSpec, find_arch
from ..errors import BadInputError

__all__ = [
    "LegacyWrapper",
    "build",
    "build_on_meta",
    "build_with_state",
    "legacy_class",
]


class LegacyWrapper(nn.Module):
    """Base class of the rebuilt wrappers; ``spec`` names the architecture."""

    spec: ArchSpec


class _ModelAttrWrapper(LegacyWrapper):
    """ResNet18/34/50 and InceptionV3: the torchvision model under ``self.model``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.model = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _DenseNetWrapper(LegacyWrapper):
    """DenseNet121: the same modules registered twice, as the original did."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.features = network.features
        self.classifier = network.classifier
        self.model = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.features(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


class _FeaturesHeadWrapper(LegacyWrapper):
    """VGG16, EfficientNet, MobileNetV3: ``features`` [-> ``avgpool``] -> ``classifier``."""

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module,
                 *, use_avgpool: bool = True) -> None:
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier
        self.use_avgpool = use_avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.use_avgpool:
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def _torchvision(spec: ArchSpec, **kwargs: Any) -> nn.Module:
    return getattr(torchvision.models, spec.torchvision_fn)(weights=None, **kwargs)


def _resnet_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    network = _torchvision(spec)
    network.fc = nn.Linear(spec.head_in_features, num_classes)
    return {"network": network}


def _inception_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    # aux_logits on, transform_input off; the aux head keeps its 1000 outputs (never trained).
    network = _torchvision(spec, aux_logits=True, transform_input=False, init_weights=True)
    network.fc = nn.Linear(spec.head_in_features, num_classes)
    return {"network": network}


def _densenet_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    network = _torchvision(spec)
    network.classifier = nn.Linear(spec.head_in_features, num_classes)
    return {"network": network}


def _vgg_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    network = _torchvision(spec)
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes),
    )
    return {"features": network.features, "avgpool": network.avgpool, "classifier": classifier,
            "use_avgpool": False}


def _efficientnet_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    network = _torchvision(spec)
    classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(spec.head_in_features, num_classes))
    return {"features": network.features, "avgpool": network.avgpool, "classifier": classifier}


def _mobilenetv3_parts(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    network = _torchvision(spec)
    network.classifier[3] = nn.Linear(spec.head_in_features, num_classes)
    return {"features": network.features, "avgpool": network.avgpool, "classifier": network.classifier}


#: family -> (wrapper topology, function giving that topology's constructor arguments)
_FAMILIES: dict[str, tuple[type[LegacyWrapper], Callable[[ArchSpec, int], dict[str, Any]]]] = {
    "resnet": (_ModelAttrWrapper, _resnet_parts),
    "inception": (_ModelAttrWrapper, _inception_parts),
    "densenet": (_DenseNetWrapper, _densenet_parts),
    "vgg": (_FeaturesHeadWrapper, _vgg_parts),
    "efficientnet": (_FeaturesHeadWrapper, _efficientnet_parts),
    "mobilenetv3": (_FeaturesHeadWrapper, _mobilenetv3_parts),
}


def _legacy_class_for(spec: ArchSpec) -> type[LegacyWrapper]:
    """A class named like the original (``ResNet50``) that takes the original arguments."""
    topology, parts = _FAMILIES[spec.family]

    def __init__(self: LegacyWrapper, pretrained: bool = False,
                 number_of_classes: int = PRETRAINING_NUM_CLASSES) -> None:
        if pretrained:
            raise BadInputError(
                f"{spec.name}(pretrained=True) is not supported: build it with pretrained=False and "
                f"load RadiologyNET weights with rnet_hub.transfer_weights(path, model), "
                f"or use rnet_hub.create_model({spec.timm_arch!r}, pretrained=True) for the timm model"
            )
        if number_of_classes < 1:
            raise BadInputError(f"number_of_classes must be a positive integer, got {number_of_classes}")
        topology.__init__(self, **parts(spec, number_of_classes))

    doc = f"The original ``{spec.name}`` wrapper around torchvision ``{spec.torchvision_fn}``."
    return type(spec.name, (topology,), {"__init__": __init__, "__doc__": doc, "spec": spec,
                                         "__module__": __name__})


_CLASSES: dict[str, type[LegacyWrapper]] = {s.name: _legacy_class_for(s) for s in ARCHITECTURES}
globals().update(_CLASSES)
__all__ += list(_CLASSES)


def legacy_class(name: str | ArchSpec) -> type[LegacyWrapper]:
    """The original-style class of ``name`` (e.g. ``legacy_class("res50")`` is ``ResNet50``)."""
    spec = name if isinstance(name, ArchSpec) else find_arch(name)
    return _CLASSES[spec.name]


def build(name: str | ArchSpec, num_classes: int = PRETRAINING_NUM_CLASSES) -> LegacyWrapper:
    """Build the original wrapper topology of ``name`` (legacy name, alias or timm name).

    The weights are torchvision's random initialisation; load a legacy ``model_state``
    into the result with ``strict=True``.
    """
    return legacy_class(name)(pretrained=False, number_of_classes=num_classes)


def build_on_meta(name: str | ArchSpec, num_classes: int = PRETRAINING_NUM_CLASSES) -> LegacyWrapper:
    """Build the wrapper without allocating or initialising weights (for ``assign=True`` loads)."""
    with torch.device("meta"):
        return build(name, num_classes)


def build_with_state(state_dict: Mapping[str, torch.Tensor], name: str | ArchSpec,
                     num_classes: int) -> LegacyWrapper:
    """Build the wrapper around ``state_dict`` without a random initialisation first.

    The tensors are assigned, not copied, so an mmapped checkpoint stays file-backed.
    DenseNet's duplicated modules are the same objects, so loading either copy fills both.
    """
    wrapper = build_on_meta(name, num_classes)
    wrapper.load_state_dict(dict(state_dict), strict=True, assign=True)
    return wrapper.eval()

