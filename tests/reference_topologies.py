"""An independent reference for parity: the ten wrapper topologies, rebuilt on the test side.

Written from ``shared/reference/radiologynet-originals.md`` (section "The wrapper topologies")
and torchvision's constructors only. It deliberately imports nothing from ``rnet_hub``: the
package's own reconstruction (``rnet_hub.legacy``) is what these tests check, so it cannot
also be what they check it against.

Also the test side's parity tolerance, ``PARITY_RTOL``: the product's promise, written here
as a literal so that a looser value in ``rnet_hub.parity`` cannot silently loosen the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

__all__ = ["PARITY_RTOL", "PRETRAINING_CLASSES", "REFERENCE", "RefSpec", "assert_parity", "build_reference"]

#: The product's promise: max|Δlogits| <= 1e-4 x max(1, max|logits|), and top-1 agrees on every sample.
PARITY_RTOL = 1e-4
#: 50 pseudo-label clusters minus 14 excluded ones: every head is [36, features].
PRETRAINING_CLASSES = 36


@dataclass(frozen=True)
class RefSpec:
    """One published checkpoint's wrapper, as the facts file describes it."""

    name: str  # the wrapper class name and archive stem
    family: str  # one of the topologies below
    torchvision_fn: str  # the torchvision constructor the wrapper wraps (weights=None)
    head_in: int  # input width of the 36-class Linear
    timm_arch: str  # what the facts table says it converts to
    test_size: int  # the input size these tests run it at (where the size matters, the one it needs)


#: The ten, as a literal table (facts file: "The ten published checkpoints" and "The wrapper topologies").
REFERENCE: dict[str, RefSpec] = {s.name: s for s in (
    RefSpec("ResNet18", "resnet", "resnet18", 512, "resnet18", 128),
    RefSpec("ResNet34", "resnet", "resnet34", 512, "resnet34", 128),
    RefSpec("ResNet50", "resnet", "resnet50", 2048, "resnet50", 128),
    RefSpec("InceptionV3", "inception", "inception_v3", 2048, "inception_v3", 299),
    RefSpec("DenseNet121", "densenet", "densenet121", 1024, "densenet121", 128),
    RefSpec("VGG16", "vgg", "vgg16", 4096, "vgg16", 224),  # the forward skips avgpool: 224 only
    RefSpec("EfficientNetB3", "efficientnet", "efficientnet_b3", 1536, "efficientnet_b3", 128),
    RefSpec("EfficientNetB4", "efficientnet", "efficientnet_b4", 1792, "efficientnet_b4", 128),
    RefSpec("MobileNetV3Large", "mobilenetv3", "mobilenet_v3_large", 1280, "mobilenetv3_large_100", 128),
    RefSpec("MobileNetV3Small", "mobilenetv3", "mobilenet_v3_small", 1024, "mobilenetv3_small_100", 128),
)}


class ModelAttribute(nn.Module):
    """ResNet18/34/50 and InceptionV3: ``self.model`` is the torchvision network (keys ``model.*``)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.model = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # InceptionV3 in eval mode returns the main logits only


class DenseNetTwice(nn.Module):
    """DenseNet121: ``features`` and ``classifier`` at the top and again under ``model`` (shared storage)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.features = network.features
        self.classifier = network.classifier
        self.model = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.features(x))
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class FeaturesHead(nn.Module):
    """VGG16, EfficientNet, MobileNetV3: ``features``, ``avgpool``, ``classifier``."""

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module, *, skip_avgpool: bool) -> None:
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier
        self.skip_avgpool = skip_avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if not self.skip_avgpool:
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def build_reference(name: str, num_classes: int = PRETRAINING_CLASSES) -> nn.Module:
    """The wrapper of ``name`` (a key of :data:`REFERENCE`) with torchvision's random weights, in eval mode."""
    spec = REFERENCE[name]
    constructor = getattr(torchvision.models, spec.torchvision_fn)
    if spec.family == "resnet":
        network = constructor(weights=None)
        network.fc = nn.Linear(spec.head_in, num_classes)
        wrapper: nn.Module = ModelAttribute(network)
    elif spec.family == "inception":
        # aux logits on, transform_input off; the aux head keeps its own 1000-output fc (never trained)
        network = constructor(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        network.fc = nn.Linear(spec.head_in, num_classes)
        assert network.AuxLogits.fc.out_features == 1000
        wrapper = ModelAttribute(network)
    elif spec.family == "densenet":
        network = constructor(weights=None)
        network.classifier = nn.Linear(spec.head_in, num_classes)
        wrapper = DenseNetTwice(network)
    elif spec.family == "vgg":
        network = constructor(weights=None)
        classifier = nn.Sequential(
            nn.Linear(25088, 4096), nn.ReLU(True), nn.Dropout(),  # 512 x 7 x 7 at 224
            nn.Linear(4096, spec.head_in), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        wrapper = FeaturesHead(network.features, network.avgpool, classifier, skip_avgpool=True)
    elif spec.family == "efficientnet":
        network = constructor(weights=None)
        classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(spec.head_in, num_classes))
        wrapper = FeaturesHead(network.features, network.avgpool, classifier, skip_avgpool=False)
    elif spec.family == "mobilenetv3":
        network = constructor(weights=None)
        assert network.classifier[3].in_features == spec.head_in
        network.classifier[3] = nn.Linear(spec.head_in, num_classes)  # no sigmoid: the pretraining copy
        wrapper = FeaturesHead(network.features, network.avgpool, network.classifier, skip_avgpool=False)
    else:  # pragma: no cover - the table above has only these families
        raise AssertionError(spec.family)
    return wrapper.eval()


def assert_parity(reference: torch.Tensor, candidate: torch.Tensor, what: str = "logits",
                  rtol: float = PARITY_RTOL) -> None:
    """max|Δ| <= rtol x max(1, max|reference|), and the same top-1 on every sample."""
    assert candidate.shape == reference.shape, f"{what}: {tuple(candidate.shape)} != {tuple(reference.shape)}"
    tolerance = rtol * max(1.0, reference.abs().max().item())
    difference = (reference - candidate).abs().max().item()
    assert difference <= tolerance, f"{what}: max|Δ| {difference:.3e} > {tolerance:.3e}"
    assert torch.equal(reference.argmax(-1), candidate.argmax(-1)), f"{what}: top-1 differs"
