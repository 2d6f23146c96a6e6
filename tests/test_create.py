"""``rnet_hub.create_model`` and the timm tags, for all ten architectures, from converted folders."""

from __future__ import annotations

import pytest
import timm
import torch

import rnet_hub
from rnet_hub import ARCHITECTURES
from rnet_hub.names import parse_model_name
from rnet_hub.tags import check_timm_compat

NAMES = [spec.name for spec in ARCHITECTURES]
RELATIVE = 1e-5


def _close(reference: torch.Tensor, candidate: torch.Tensor) -> bool:
    return (reference - candidate).abs().max().item() <= RELATIVE * max(1.0, reference.abs().max().item())


def _input(spec, channels=3, seed=7):
    return torch.rand(2, channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(seed))


def test_installed_timm_is_compatible_and_ten_tags_are_listed():
    check_timm_compat()
    tags = timm.list_pretrained("*radiologynet*")
    assert sorted(tags) == sorted(spec.pretrained_tag for spec in ARCHITECTURES)
    cfg = timm.models.get_pretrained_cfg("resnet50.radiologynet")
    assert (cfg.hf_hub_id, cfg.mean, cfg.crop_mode) == ("radiologynet/resnet50", (0.0, 0.0, 0.0), "border")


def test_tags_follow_the_organisation(monkeypatch):
    try:
        rnet_hub.register_pretrained_tags("my-mirror")
        assert timm.models.get_pretrained_cfg("vgg16.radiologynet").hf_hub_id == "my-mirror/vgg16"
        monkeypatch.setenv("RNET_HUB_ORG", "env-org")
        rnet_hub.register_pretrained_tags()
        assert timm.models.get_pretrained_cfg("vgg16.radiologynet").hf_hub_id == "env-org/vgg16"
        assert parse_model_name("res50").repo_id == "env-org/resnet50"
    finally:
        monkeypatch.delenv("RNET_HUB_ORG")
        rnet_hub.register_pretrained_tags()


@pytest.mark.parametrize(("name", "expected"), [
    ("radiologynet/resnet50", ("radiologynet/resnet50", None)),
    ("hf-hub:radiologynet/resnet50@abc123", ("radiologynet/resnet50", "abc123")),
    ("resnet50.radiologynet", ("radiologynet/resnet50", None)),
    ("ResNet50", ("radiologynet/resnet50", None)),
    ("res50", ("radiologynet/resnet50", None)),
    ("mobileNetV3Small", ("radiologynet/mobilenetv3_small_100", None)),
])
def test_names_resolve_to_hub_repositories(name, expected):
    ref = parse_model_name(name)
    assert (ref.repo_id, ref.revision) == expected


def test_unknown_name_error_names_the_choices():
    with pytest.raises(ValueError, match="unknown RadiologyNET architecture 'resnet51'.*ResNet50"):
        rnet_hub.create_model("resnet51")


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_weights_equal_timms_own_loader(name, converted_dir):
    folder = converted_dir(name)
    ours = rnet_hub.create_model(folder).state_dict()
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", NAMES)
def test_new_head_keeps_the_body(name, converted_dir):
    spec = rnet_hub.find_arch(name)
    folder = converted_dir(name)
    base, four = rnet_hub.create_model(folder), rnet_hub.create_model(folder, num_classes=4)
    x = _input(spec)
    with torch.inference_mode():
        assert four(x).shape == (2, 4)
        assert torch.equal(base.forward_features(x), four.forward_features(x))
    assert not any(t.is_meta for t in four.state_dict().values())


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_input_equals_grey_replicated(name, converted_dir):
    spec = rnet_hub.find_arch(name)
    folder = converted_dir(name)
    grey = rnet_hub.create_model(folder, in_chans=1)
    rgb = rnet_hub.create_model(folder)
    x = _input(spec, channels=1)
    with torch.inference_mode():
        assert _close(rgb(x.repeat(1, 3, 1, 1)), grey(x))
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True, in_chans=1).state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in grey.state_dict().items())


def _hooked_activations(model, module_names, x):
    outputs = {}
    handles = []
    for name in module_names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = model.get_submodule(name.replace("_", "."))
        handles.append(module.register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out)))
    with torch.inference_mode():
        model(x)
    for handle in handles:
        handle.remove()
    return [outputs[n] for n in module_names]


@pytest.mark.parametrize("name", NAMES)
def test_features_only_equals_full_model_activations(name, converted_dir):
    spec = rnet_hub.find_arch(name)
    folder = converted_dir(name)
    features = rnet_hub.create_model(folder, features_only=True)
    full = rnet_hub.create_model(folder)
    x = _input(spec)
    with torch.inference_mode():
        maps = features(x)
    expected = _hooked_activations(full, features.feature_info.module_name(), x)
    assert len(maps) == len(expected) >= 4
    for got, want in zip(maps, expected, strict=True):
        assert got.shape == want.shape and _close(want, got)
