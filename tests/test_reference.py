"""Parity against an independent reference, and the checkpoint reader against plain ``torch.load``.

``tests/reference_topologies.py`` rebuilds the ten wrappers from torchvision and the facts file,
without ``rnet_hub``. Each stand-in archive is opened here with ``tarfile`` and plain
``torch.load(weights_only=True)`` (not the package's reader), loaded into that reference with
``strict=True``, and the reference is compared with:

(a) ``rnet_hub.legacy.build``'s state-dict keys and shapes;
(b) ``rnet_hub.legacy``'s logits on the same weights and input;
(c) the converted folder read back by timm's own loader (``local-dir:``), within ``PARITY_RTOL``.

One architecture per family runs by default; the other four are ``slow`` (CI runs them too).
The archives are seeded stand-ins (random weights), in the original format.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from reference_topologies import PARITY_RTOL, PRETRAINING_CLASSES, REFERENCE, assert_parity, build_reference

import rnet_hub.parity
from rnet_hub import legacy

DEFAULT = ("ResNet18", "InceptionV3", "DenseNet121", "VGG16", "EfficientNetB3", "MobileNetV3Small")
#: reference vs rnet_hub.legacy: the same torchvision modules on the same weights, so far tighter than parity
SAME_TOPOLOGY_RTOL = 1e-6
BATCH = 2


def _params(names) -> list[Any]:
    return [pytest.param(n, marks=() if n in DEFAULT else (pytest.mark.slow,)) for n in names]


def _plain_load(archive: Path, workdir: Path) -> dict[str, Any]:
    """The archive's one ``.pth``, extracted with ``tarfile`` and read with plain ``torch.load``."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [archive.name.removesuffix(".tar.gz") + ".pth"]
        tar.extract(members[0], workdir, filter="data")
    return torch.load(workdir / members[0].name, map_location="cpu", weights_only=True)


def _inputs(size: int) -> torch.Tensor:
    return torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2024))


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(inputs)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_table_covers_the_ten_and_tolerance_is_not_loosened():
    assert sorted(REFERENCE) == sorted(spec.name for spec in rnet_hub.ARCHITECTURES)
    for spec in rnet_hub.ARCHITECTURES:  # the package's table agrees with the facts file's
        assert (spec.torchvision_fn, spec.timm_arch) == (REFERENCE[spec.name].torchvision_fn,
                                                         REFERENCE[spec.name].timm_arch), spec.name
    # the product may tighten its parity criterion, never loosen it below the promise
    assert rnet_hub.parity.RELATIVE_TOLERANCE <= PARITY_RTOL


@pytest.mark.parametrize("name", _params(REFERENCE))
def test_reference_matches_legacy_and_converted(name: str, sample_archive: Callable[..., Path],
                                                converted_dir: Callable[..., Path], tmp_path: Path) -> None:
    spec = REFERENCE[name]
    checkpoint = _plain_load(sample_archive(name), tmp_path)
    state = checkpoint["model_state"]
    assert checkpoint["model_name"] == name

    reference = build_reference(name)
    reference.load_state_dict(state, strict=True)  # the facts file's key layout, exactly
    head = reference.state_dict()[{"resnet": "model.fc.weight", "inception": "model.fc.weight",
                                   "densenet": "classifier.weight", "vgg": "classifier.6.weight",
                                   "efficientnet": "classifier.1.weight",
                                   "mobilenetv3": "classifier.3.weight"}[spec.family]]
    assert tuple(head.shape) == (PRETRAINING_CLASSES, spec.head_in)
    if spec.family == "densenet":  # registered twice: the saved pairs share storage
        assert state["features.conv0.weight"].data_ptr() == state["model.features.conv0.weight"].data_ptr()
        assert state["classifier.weight"].data_ptr() == state["model.classifier.weight"].data_ptr()

    # (a) the package's reconstruction has the same keys and shapes
    wrapper = legacy.build(name)
    assert _shapes(wrapper) == _shapes(reference)

    # (b) and the same logits on the same weights
    wrapper.load_state_dict(state, strict=True)
    del checkpoint, state
    inputs = _inputs(spec.test_size)
    expected = _logits(reference, inputs)
    assert expected.shape == (BATCH, PRETRAINING_CLASSES)
    assert expected.abs().max().item() > 0 and not torch.equal(expected[0], expected[1])
    assert_parity(expected, _logits(wrapper, inputs), "rnet_hub.legacy vs reference", rtol=SAME_TOPOLOGY_RTOL)
    del wrapper

    # (c) the converted folder, through timm's own loader, within the promise
    converted = timm.create_model(f"local-dir:{converted_dir(name)}", pretrained=True)
    assert converted.default_cfg["architecture"] == spec.timm_arch
    assert_parity(expected, _logits(converted, inputs), f"timm {spec.timm_arch} vs reference")


@pytest.mark.parametrize("name", _params(REFERENCE))
def test_checkpoint_reader_matches_plain_torch_load(name: str, sample_archive: Callable[..., Path],
                                                    tmp_path: Path) -> None:
    archive = sample_archive(name)
    plain = _plain_load(archive, tmp_path)
    _assert_reader_matches(archive, plain)


def test_checkpoint_reader_skips_optimizer_state_without_touching_the_weights(sample_archive, tmp_path):
    """The reader leaves holes where AdamW's moments were; the model weights must survive intact."""
    archive = sample_archive("MobileNetV3Small", with_optimizer=True)
    plain = _plain_load(archive, tmp_path)
    assert plain["optimizer_name"] == "AdamW" and plain["optimizer_state"]["state"]
    _assert_reader_matches(archive, plain)


def _assert_reader_matches(archive: Path, plain: dict[str, Any]) -> None:
    expected = plain["model_state"]
    with legacy.open_legacy_checkpoint(archive, progress=False) as checkpoint:
        assert list(checkpoint.state_dict) == list(expected)
        for key, tensor in expected.items():
            got = checkpoint.state_dict[key]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), key
        for key in ("model_name", "epoch", "time"):
            assert checkpoint.metadata[key] == plain[key], key
        assert checkpoint.source == archive
