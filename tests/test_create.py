"""``rnet_hub.create_model`` and the timm tags, for all ten architectures, from converted folders.

``rnet_hub.create_model(folder, **kwargs)`` is held to ``timm.create_model(f"local-dir:{folder}",
pretrained=True, **kwargs)``: same class, mode (train, as timm returns it), state dict (but a new head's
random values) and preprocessing, for the keyword sets users pass.
"""

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
    base, four = rnet_hub.create_model(folder).eval(), rnet_hub.create_model(folder, num_classes=4).eval()
    x = _input(spec)
    with torch.inference_mode():
        assert four(x).shape == (2, 4)
        assert torch.equal(base.forward_features(x), four.forward_features(x))
    assert not any(t.is_meta for t in four.state_dict().values())


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_input_equals_grey_replicated(name, converted_dir):
    spec = rnet_hub.find_arch(name)
    folder = converted_dir(name)
    grey = rnet_hub.create_model(folder, in_chans=1).eval()
    rgb = rnet_hub.create_model(folder).eval()
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
    features = rnet_hub.create_model(folder, features_only=True).eval()
    full = rnet_hub.create_model(folder).eval()
    x = _input(spec)
    with torch.inference_mode():
        maps = features(x)
    expected = _hooked_activations(full, features.feature_info.module_name(), x)
    assert len(maps) == len(expected) >= 4
    for got, want in zip(maps, expected, strict=True):
        assert got.shape == want.shape and _close(want, got)


# ------------------------------------------------------------------ the same model as timm's own loader
#: (keywords, whether the head is new): the keyword sets users pass, compared with timm's loader.
KEYWORD_SETS = {
    "defaults": {},
    "num_classes": {"num_classes": 4},
    "no head": {"num_classes": 0},
    "in_chans=1": {"in_chans": 1},
    "drop_rate": {"drop_rate": 0.25},
    "global_pool": {"global_pool": "max"},
    "features_only": {"features_only": True, "out_indices": (1, 3)},
    "bfloat16": {"dtype": torch.bfloat16},
    "overlay": {"pretrained_cfg_overlay": {"mean": (0.5, 0.5, 0.5)}},
}
CFG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes", "classifier",
            "first_conv", "pool_size")


@pytest.mark.parametrize("kwargs", KEYWORD_SETS.values(), ids=KEYWORD_SETS.keys())
@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV3Small"])
def test_create_model_gives_timms_model(name, kwargs, converted_dir):
    folder = converted_dir(name)
    ours = rnet_hub.create_model(folder, **kwargs)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    assert type(ours) is type(theirs)
    assert ours.training and theirs.training  # timm returns train mode: so do we
    assert all(m.training for m in ours.modules())
    head = theirs.pretrained_cfg["classifier"] + "." if kwargs.get("num_classes", 36) != 36 else None
    mine, timms = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == timms.keys()
    for key, value in mine.items():
        assert value.shape == timms[key].shape and value.dtype == timms[key].dtype, key
        assert (head is not None and key.startswith(head)) or torch.equal(value, timms[key]), key
    assert getattr(ours, "drop_rate", None) == getattr(theirs, "drop_rate", None)
    if kwargs.get("features_only"):
        assert ours.feature_info.channels() == theirs.feature_info.channels()
        assert ours.feature_info.out_indices == theirs.feature_info.out_indices == (1, 3)
    else:
        mine_cfg, timms_cfg = ours.pretrained_cfg, theirs.pretrained_cfg
        assert {k: mine_cfg.get(k) for k in CFG_KEYS} == {k: timms_cfg.get(k) for k in CFG_KEYS}


@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 5}], ids=["defaults", "num_classes"])
def test_random_model_is_timms_too(kwargs, converted_dir):
    folder = converted_dir("MobileNetV3Small")
    ours = rnet_hub.create_model(folder, pretrained=False, **kwargs)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=False, **kwargs)
    assert ours.training and theirs.training and ours.num_classes == theirs.num_classes
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: ours.pretrained_cfg.get(k) for k in CFG_KEYS} == {k: theirs.pretrained_cfg.get(k) for k in CFG_KEYS}
    assert ours.conv_stem is not None and ours.bn1.eps == theirs.bn1.eps == 1e-3  # the folder's model_args
    by_name = rnet_hub.create_model("MobileNetV3Small", pretrained=False)  # the table's, no download
    assert by_name.bn1.eps == 1e-3 and by_name.num_classes == 36 and by_name.pretrained_cfg["mean"] == [0.0] * 3


def test_timms_loader_keywords_are_applied_after_loading(converted_dir, sample_archive, tmp_path):
    from rnet_hub.converter import convert

    folder = converted_dir("ResNet18")
    other = convert(sample_archive("ResNet18", seed=1), tmp_path / "other", progress=False).out_dir
    checkpoint = tmp_path / "other.pth"
    torch.save(timm.create_model(f"local-dir:{other}", pretrained=True).state_dict(), checkpoint)
    ours = rnet_hub.create_model(folder, checkpoint_path=checkpoint, device="cpu")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True, checkpoint_path=checkpoint, device="cpu")
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert next(ours.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="create_model takes no pretrained_cfg.*pretrained_cfg_overlay"):
        rnet_hub.create_model(folder, pretrained_cfg={"mean": (0.5, 0.5, 0.5)})
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        rnet_hub.create_model(folder, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"built with \{'global_pool': 'catavgmax'\} \(size mismatch for fc\.weight"):
        rnet_hub.create_model(folder, global_pool="catavgmax")  # a wider classifier input: timm's RuntimeError
    assert rnet_hub.create_model(folder, global_pool="catavgmax", num_classes=2).fc.in_features == 1024  # new head
