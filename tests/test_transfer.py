"""transfer_weights: any source into any topology, with a report that tells the truth.

The weights are the stand-in archives' random ones (see conftest); every comparison is
between the same weights reached by two different routes, so a wrong key, a wrong
reshape or a missed tensor shows up as a difference.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from torch import nn

from rnet_hub import legacy
from rnet_hub.architectures import ArchSpec, find_arch
from rnet_hub.errors import TransferError
from rnet_hub.folder import WEIGHTS_NAME
from rnet_hub.legacy.checkpoint import open_legacy_checkpoint
from rnet_hub.legacy.keymap import legacy_to_timm
from rnet_hub.loading import load_timm_from_dir
from rnet_hub.transfer import TransferReport, transfer_weights, transfer_weights_to_model

Fixture = Callable[..., Path]


def _batch(size: int = 128) -> torch.Tensor:
    """One small image: the networks are fully convolutional up to the head, so any size exercises every tensor."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _on_cpu_uninitialised(build: Callable[[], nn.Module]) -> nn.Module:
    """A module with allocated but uninitialised tensors (skips the slow random init)."""
    with torch.device("meta"):
        module = build()
    return module.to_empty(device="cpu").eval()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []


def _assert_honest(report: TransferReport, target: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Every filled target has its source's shape, and no source tensor filled two unshared targets."""
    state = target.state_dict()
    for item in report.transferred:
        assert state[item.target].shape == source[item.source].shape, item
    storages: dict[str, set[int]] = {}
    for item in report.transferred:
        storages.setdefault(item.source, set()).add(state[item.target].untyped_storage().data_ptr())
    assert all(len(s) == 1 for s in storages.values())


@pytest.fixture
def legacy_state(sample_archive: Fixture) -> Callable[[str], Iterator[dict[str, torch.Tensor]]]:
    """``with legacy_state("ResNet18") as state``: the stand-in archive's ``model_state``."""
    import contextlib

    @contextlib.contextmanager
    def opened(name: str) -> Iterator[dict[str, torch.Tensor]]:
        with open_legacy_checkpoint(sample_archive(name), progress=False) as checkpoint:
            yield checkpoint.state_dict

    return opened


# ----------------------------------------------------------------------------- segmentation models
def test_unet_resnet50_encoder_from_converted_folder(converted_dir: Fixture) -> None:
    folder = converted_dir("ResNet50")
    source = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    unet = smp.Unet("resnet50", encoder_weights=None, classes=2)

    report = transfer_weights(folder, unet)

    encoder = unet.encoder.state_dict()
    for key, tensor in encoder.items():  # smp's ResNet encoder keeps torchvision (= timm) names
        assert torch.equal(tensor, source[key]), key
    assert {t.target for t in report.transferred} == {f"encoder.{k}" for k in encoder}
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.untouched_target_keys)
    assert sorted(report.unused_source_keys) == ["fc.bias", "fc.weight"]
    assert report.shape_mismatches == []
    assert 0.0 < report.coverage < 1.0  # the decoder is new

    encoder_report = transfer_weights(folder, unet.encoder, strict=True)
    assert encoder_report.coverage == 1.0
    assert encoder_report.untouched_target_keys == []


def test_unet_timm_universal_encoder_from_legacy_archive(sample_archive: Fixture, legacy_state) -> None:
    unet = smp.Unet("tu-resnet50", encoder_weights=None, classes=2)

    report = transfer_weights(sample_archive("ResNet50"), unet)

    encoder = {k: v for k, v in unet.state_dict().items() if k.startswith("encoder.")}
    assert {t.target for t in report.transferred} == set(encoder)
    with legacy_state("ResNet50") as state:
        for key, tensor in encoder.items():  # encoder.model.conv1.weight <- model.conv1.weight
            assert torch.equal(tensor, state[key.removeprefix("encoder.")]), key
    assert transfer_weights(sample_archive("ResNet50"), unet.encoder, strict=True).coverage == 1.0


def test_one_channel_unet_first_conv_is_a_reported_mismatch(converted_dir: Fixture) -> None:
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2)
    before = _snapshot(unet)

    with pytest.raises(TransferError, match=r"\(conv1\.weight\); coverage would be 99\.9%; shape mismatches: "
                                            r"conv1\.weight \(64, 1, 7, 7\) <- conv1\.weight \(64, 3, 7, 7\)"):
        transfer_weights(converted_dir("ResNet18"), unet.encoder, strict=True)
    _assert_unchanged(unet, before)

    report = transfer_weights(converted_dir("ResNet18"), unet.encoder)
    assert report.untouched_target_keys == ["conv1.weight"]
    assert 0.999 < report.coverage < 1.0
    assert "99.9% of target elements" in str(report)  # never rounded up to 100.0%


def test_smp_loading_the_converted_encoder_itself_agrees_with_transfer(converted_dir: Fixture) -> None:
    """The README's other route: smp's ``tu-`` encoder with timm reading the folder (``hf-hub:`` works alike)."""
    folder = converted_dir("ResNet18")
    by_timm = smp.Unet(f"tu-local-dir:{folder}", encoder_weights=True, classes=2)
    by_transfer = smp.Unet("tu-resnet18", encoder_weights=None, classes=2)

    assert transfer_weights(folder, by_transfer.encoder, strict=True).coverage == 1.0
    expected = by_timm.encoder.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in by_transfer.encoder.state_dict().items())


# ----------------------------------------------------------------------------- legacy and torchvision targets
def _random_legacy(spec: ArchSpec) -> nn.Module:
    model = _on_cpu_uninitialised(lambda: legacy.build(spec))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else 3)
    return model


def _torchvision_model(spec: ArchSpec) -> nn.Module:
    kwargs = {"aux_logits": True, "init_weights": False} if spec.family == "inception" else {}
    return _on_cpu_uninitialised(lambda: getattr(torchvision.models, spec.torchvision_fn)(**kwargs))


#: one architecture per family; VGG16 has its own test (its tensors are large)
ROUND_TRIP = ["ResNet18", "DenseNet121", "InceptionV3", "EfficientNetB3", "MobileNetV3Large"]


@pytest.mark.parametrize("spec", [find_arch(n) for n in ROUND_TRIP], ids=ROUND_TRIP)
def test_key_maps_round_trip_legacy_timm_torchvision(spec: ArchSpec) -> None:
    """legacy -> timm -> torchvision -> legacy gives the legacy tensors back; timm's are the converter's."""
    source = _random_legacy(spec)
    as_timm = _on_cpu_uninitialised(lambda: timm.create_model(spec.timm_arch, num_classes=36, **spec.model_args))

    assert transfer_weights(source, as_timm, strict=True).coverage == 1.0
    converted = legacy_to_timm(spec, source.state_dict())
    assert all(torch.equal(t, converted[k]) for k, t in as_timm.state_dict().items())

    as_torchvision = _torchvision_model(spec)
    with torch.no_grad():  # what timm cannot fill (InceptionV3's aux head) holds numbers, not uninitialised memory
        for tensor in as_torchvision.state_dict().values():
            tensor.zero_()
    transfer_weights(as_timm, as_torchvision, strict=spec.family != "inception")  # timm has no AuxLogits
    back = _on_cpu_uninitialised(lambda: legacy.build(spec))
    report = transfer_weights(as_torchvision, back)

    original = source.state_dict()
    differ = [k for k, t in back.state_dict().items() if not torch.equal(t, original[k])]
    # only the 1000-class torchvision head, and InceptionV3's aux head that timm does not have
    assert all(k in report.classifier_keys or ".AuxLogits." in f".{k}" for k in differ)



def test_legacy_densenet_from_converted_folder(converted_dir: Fixture, legacy_state) -> None:
    wrapper = legacy.build("DenseNet121", num_classes=2).eval()

    report = transfer_weights(converted_dir("DenseNet121"), wrapper, strict=True)

    head = ["classifier.weight", "classifier.bias", "model.classifier.weight", "model.classifier.bias"]
    assert sorted(report.untouched_target_keys) == sorted(head)
    assert report.untouched_outside_classifier == []
    assert {m.target for m in report.shape_mismatches} <= set(head)
    # features.* and model.features.* share storage: both listed, filled from the same source tensor
    sources = {t.target: t.source for t in report.transferred}
    assert sources["features.conv0.weight"] == sources["model.features.conv0.weight"] == "features.conv0.weight"
    body = sum(p.numel() for k, p in wrapper.state_dict().items()
               if k.startswith("features.") and not k.endswith("num_batches_tracked"))
    assert report.filled_elements == body

    batch = _batch()
    with legacy_state("DenseNet121") as state, torch.no_grad():
        reference = legacy.build_with_state(state, "DenseNet121", 36)
        assert torch.equal(wrapper.features(batch), reference.features(batch))


def test_torchvision_efficientnet_b3_from_converted_folder(converted_dir: Fixture, legacy_state) -> None:
    model = _on_cpu_uninitialised(lambda: torchvision.models.efficientnet_b3())

    report = transfer_weights(converted_dir("EfficientNetB3"), model, strict=True)  # timm names -> torchvision

    assert report.untouched_target_keys == ["classifier.1.weight", "classifier.1.bias"]  # 1000 vs 36 classes
    assert {t.rule for t in report.transferred} == {"legacy names"}
    batch = _batch(160)
    with legacy_state("EfficientNetB3") as state, torch.no_grad():
        reference = legacy.build_with_state(state, "EfficientNetB3", 36)
        # same torchvision modules, same weights, same input: bit-identical (tolerance 0)
        assert torch.equal(model.features(batch), reference.features(batch))


def test_vgg16_linear_and_conv_classifier_reshape_both_ways() -> None:
    source = _on_cpu_uninitialised(lambda: legacy.build("VGG16"))
    with torch.no_grad():
        for tensor in source.state_dict().values():
            tensor.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(tensor.numel()))
    as_timm = _on_cpu_uninitialised(lambda: timm.create_model("vgg16", num_classes=36))

    report = transfer_weights(source, as_timm, strict=True)

    assert report.coverage == 1.0
    assert torch.equal(as_timm.pre_logits.fc1.weight.flatten(1), source.classifier[0].weight)  # [4096,512,7,7]
    assert torch.equal(as_timm.pre_logits.fc2.weight.flatten(1), source.classifier[3].weight)  # [4096,4096,1,1]

    back = _on_cpu_uninitialised(lambda: legacy.build("VGG16"))
    assert transfer_weights(as_timm, back, strict=True).coverage == 1.0
    original = source.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in back.state_dict().items())


# ----------------------------------------------------------------------------- partial transfers
def test_resnet18_into_resnet50_is_partial_and_refused_by_strict(sample_archive: Fixture, legacy_state,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    target = timm.create_model("resnet50", num_classes=36)
    before = _snapshot(target)

    with pytest.raises(TransferError, match=r"strict transfer refused: \d+ target tensors outside the classifier "
                                            r"would stay untouched \(.*layer1\.0\.conv1\.weight"):
        transfer_weights(sample_archive("ResNet18"), target, strict=True)
    _assert_unchanged(target, before)

    with caplog.at_level(logging.INFO, logger="rnet_hub.transfer"):
        report = transfer_weights(sample_archive("ResNet18"), target)
    assert 0.1 < report.coverage < 0.5
    mismatched = {m.target: (m.target_shape, m.source_shape) for m in report.shape_mismatches}
    assert mismatched["layer1.0.conv1.weight"] == ((64, 64, 1, 1), (64, 64, 3, 3))
    assert "fc.weight" in mismatched and "fc.bias" in report.untouched_target_keys  # no half-filled layers
    assert "layer1.0.conv2.weight" in {t.target for t in report.transferred}  # same 3x3 64->64 conv
    with legacy_state("ResNet18") as state:
        _assert_honest(report, target, state)
    assert [r.getMessage() for r in caplog.records if r.name == "rnet_hub.transfer"] == [report.summary()]


def test_min_coverage_refuses_and_leaves_target_untouched(sample_archive: Fixture) -> None:
    target = timm.create_model("resnet34", num_classes=36)
    before = _snapshot(target)
    with pytest.raises(TransferError, match=r"coverage \d+\.\d% is below min_coverage 90\.0%") as raised:
        transfer_weights(sample_archive("ResNet18"), target, min_coverage=0.9)
    assert raised.value.report.coverage < 0.9
    _assert_unchanged(target, before)
    with pytest.raises(ValueError, match="min_coverage must be a fraction between 0 and 1"):
        transfer_weights(sample_archive("ResNet18"), target, min_coverage=90)


def test_nothing_matches_is_loud(sample_archive: Fixture, caplog: pytest.LogCaptureFixture) -> None:
    target = nn.Sequential(nn.Conv2d(5, 7, 3), nn.BatchNorm2d(7))
    before = _snapshot(target)
    with caplog.at_level(logging.INFO, logger="rnet_hub.transfer"):
        report = transfer_weights(sample_archive("ResNet18"), target)
    assert report.coverage == 0.0 and report.transferred == []
    assert len(report.untouched_target_keys) == len(before)
    records = [r for r in caplog.records if r.name == "rnet_hub.transfer"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "nothing matched" in records[0].getMessage()
    _assert_unchanged(target, before)


def test_one_source_tensor_never_fills_two_targets(sample_archive: Fixture) -> None:
    twins = nn.ModuleDict({"a": torchvision.models.resnet18(num_classes=36),
                           "b": torchvision.models.resnet18(num_classes=36)})
    report = transfer_weights(sample_archive("ResNet18"), twins)
    filled = {t.target.partition(".")[0] for t in report.transferred}
    assert filled == {"a"}
    assert len({t.source for t in report.transferred}) == len(report.transferred)
    assert report.coverage == pytest.approx(0.5)


# ----------------------------------------------------------------------------- timm targets
@pytest.mark.parametrize("name", ["ResNet18", "DenseNet121", "MobileNetV3Small"])
def test_features_only_from_legacy_archive_match_full_model(name: str, sample_archive: Fixture,
                                                            converted_dir: Fixture) -> None:
    spec = find_arch(name)
    features = timm.create_model(spec.timm_arch, features_only=True, **spec.model_args).eval()

    report = transfer_weights(sample_archive(name), features, strict=True)

    assert report.coverage == 1.0
    full = load_timm_from_dir(converted_dir(name))
    batch = _batch()
    with torch.no_grad():
        got = features(batch)
        expected = full.forward_intermediates(batch, indices=features.feature_info.out_indices,
                                              intermediates_only=True)
    assert len(got) == len(expected) == len(features.feature_info.out_indices)
    for level, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(a, b), f"feature level {level}"


# ----------------------------------------------------------------------------- sources
def _pth(sample_archive: Fixture, tmp_path: Path) -> Path:
    with open_legacy_checkpoint(sample_archive("ResNet18"), progress=False) as checkpoint:
        path = tmp_path / "ResNet18.pth"
        torch.save({"model_state": {k: v.clone() for k, v in checkpoint.state_dict.items()},
                    "model_name": "ResNet18"}, path)
    return path


def _bare_safetensors(converted_dir: Fixture, tmp_path: Path) -> Path:
    path = tmp_path / "alone" / WEIGHTS_NAME  # no config.json beside it
    path.parent.mkdir()
    shutil.copy(converted_dir("ResNet18") / WEIGHTS_NAME, path)
    return path


SOURCES: dict[str, Callable[[Fixture, Fixture, Path], object]] = {
    "archive": lambda archive, converted, tmp: archive("ResNet18"),
    "pth": lambda archive, converted, tmp: _pth(archive, tmp),
    "folder": lambda archive, converted, tmp: str(converted("ResNet18")),
    "safetensors file": lambda archive, converted, tmp: _bare_safetensors(converted, tmp),
    "state dict": lambda archive, converted, tmp: safetensors.torch.load_file(converted("ResNet18") / WEIGHTS_NAME),
    "module": lambda archive, converted, tmp: load_timm_from_dir(converted("ResNet18")),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_kind_fills_a_timm_model(kind: str, sample_archive: Fixture, converted_dir: Fixture,
                                              tmp_path: Path) -> None:
    source = SOURCES[kind](sample_archive, converted_dir, tmp_path)
    target = timm.create_model("resnet18", num_classes=36)

    report = transfer_weights(source, target, strict=True)

    assert report.coverage == 1.0 and report.unused_source_keys == []
    assert report.source_arch is not None and report.source_arch.startswith("ResNet18 (")
    expected = safetensors.torch.load_file(converted_dir("ResNet18") / WEIGHTS_NAME)
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_hub_names_download_the_pinned_commit_from_the_hub(converted_dir: Fixture, hub_client, hub_server,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two commits on the (loopback) Hub; a name pinned to the first one's sha gets its weights, not main's."""
    from hub_server import LoopbackHub

    from rnet_hub.publish.push import push_folder

    hub: LoopbackHub = hub_server
    monkeypatch.delenv("RNET_HUB_ORG", raising=False)
    repo = "radiologynet/resnet18"
    first_dir = converted_dir("ResNet18")
    first_weights = safetensors.torch.load_file(first_dir / WEIGHTS_NAME)
    first = push_folder(first_dir, repo_id=repo).commit_sha
    second_dir = Path(shutil.copytree(first_dir, tmp_path / "second"))
    with safetensors.safe_open(first_dir / WEIGHTS_NAME, "pt") as handle:
        metadata = handle.metadata()
    second_weights = {k: v + 1 for k, v in first_weights.items()}  # every tensor differs from the first commit's
    safetensors.torch.save_file(second_weights, second_dir / WEIGHTS_NAME, metadata=metadata)
    second = push_folder(second_dir, repo_id=repo).commit_sha
    assert first != second and [c.oid for c in hub.history(repo)][:2] == [second, first]

    for name, expected in [(f"hf-hub:{repo}@{first}", first_weights),
                           (f"{repo}@{first}", first_weights),
                           (f"res18@{first}", first_weights),  # the short name: radiologynet/resnet18
                           (repo, second_weights)]:  # no revision: main
        target = timm.create_model("resnet18", num_classes=36)
        report = transfer_weights(name, target, strict=True)
        assert report.source == name and report.coverage == 1.0
        for key, tensor in target.state_dict().items():
            assert torch.equal(tensor, expected[key]), (name, key)
    for sha in (first, second):  # each commit's weights were downloaded over HTTP, by the commit's sha
        assert len(hub.requests_to(f"/{repo}/resolve/{sha}/{WEIGHTS_NAME}", "GET")) == 1, sha


def test_bad_sources_and_targets_are_explained(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot read weights from a int"):
        transfer_weights(3, nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no such checkpoint file"):
        transfer_weights(tmp_path / "missing.pth", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="has no parameters or buffers"):
        transfer_weights({"w": torch.ones(1)}, nn.ReLU())
    with torch.device("meta"):
        on_meta = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"meta device .*to_empty"):
        transfer_weights({"weight": torch.ones(2, 2)}, on_meta)


# ----------------------------------------------------------------------------- report and the legacy entry point
def test_report_table(sample_archive: Fixture) -> None:
    report = transfer_weights(sample_archive("ResNet18"), torchvision.models.resnet18())
    lines = str(report).splitlines()
    assert [line.split("  ")[0] for line in lines] == ["source", "coverage", "transferred", "shape mismatches",
                                                      "untouched target", "unused source"]
    assert "ResNet18.tar.gz [ResNet18 (legacy names)]" in lines[0]
    assert f"{report.coverage:.1%}" in lines[1]
    assert "fc.weight (1000, 512) <- model.fc.weight (36, 512)" in lines[3]
    assert lines[4].endswith("[2 in the classifier]")


def test_transfer_weights_to_model_keeps_the_original_signature(sample_archive: Fixture) -> None:
    parameters = inspect.signature(transfer_weights_to_model).parameters
    assert list(parameters) == ["path", "target_model", "device"]
    assert parameters["device"].default == "cpu"

    target = legacy.build("ResNet18", num_classes=5)
    report = transfer_weights_to_model(str(sample_archive("ResNet18")), target, "cpu")

    assert isinstance(report, TransferReport)
    assert report.untouched_outside_classifier == []
    assert sorted(report.untouched_target_keys) == ["model.fc.bias", "model.fc.weight"]
    assert {t.rule for t in report.transferred} == {"exact"}
