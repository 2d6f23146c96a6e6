"""Damaged inputs and outputs of a conversion (issue 12, items 6 and 9): every one is a one-line
:class:`~rnet_hub.errors.RnetHubError` naming the file, the field or tensor and the fix, never a raw
``KeyError``/``TypeError``/``RuntimeError``, and nothing is left behind.

The converted folders come from the session fixtures (``converted_dir``), which are shared: every
test tampers with a copy.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import timm
import torch
from PIL import Image

import rnet_hub
from rnet_hub.cli import main
from rnet_hub.converter import convert
from rnet_hub.errors import BadInputError, ConvertedFolderError, SourceError
from rnet_hub.imaging.embed import resolve_device
from rnet_hub.legacy import open_legacy_checkpoint

ARCH = "ResNet18"


def _copy(converted_dir: Callable[..., Path], tmp_path: Path, name: str = ARCH) -> Path:
    return Path(shutil.copytree(converted_dir(name), tmp_path / f"copy-{name}"))


def _edit_config(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _image_folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(images / "ramp.png")
    return images


def _source_state(sample_archive: Callable[..., Path], name: str = ARCH) -> dict[str, torch.Tensor]:
    with open_legacy_checkpoint(sample_archive(name), progress=False) as checkpoint:
        return {k: v.clone() for k, v in checkpoint.state_dict.items()}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------------------- 6a full disk
def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _rust_enospc(*_: Any, **__: Any) -> None:  # what safetensors' Rust writer raises
    raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                      'message: "No space left on device" })')


@pytest.mark.parametrize("full", [_enospc, _rust_enospc], ids=["OSError", "SafetensorError"])
def test_a_full_disk_is_one_line_naming_the_fix_and_leaves_nothing(full, sample_archive, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    parent = tmp_path / "outputs"
    parent.mkdir()
    with pytest.raises(BadInputError) as caught:
        convert(sample_archive(ARCH), parent / "resnet18", progress=False)
    message = _one_line(caught)
    assert "model.safetensors" in message and "No space left on device" in message
    assert "free space or choose another --out" in message
    assert list(parent.iterdir()) == []  # no staging folder, no lock
    assert main(["convert", str(sample_archive(ARCH)), "--out", str(parent / "cli"), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not write model.safetensors"), err
    assert list(parent.iterdir()) == []


# ----------------------------------------------------------------------------------------- 6b truncated weights
@pytest.mark.parametrize("keep", [100, 0.5], ids=["header cut", "data cut"])
def test_truncated_weights_are_named_by_every_loader(keep, converted_dir, sample_archive, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    expected = re.escape(f"{weights} cannot be read: it is truncated")
    with pytest.raises(ConvertedFolderError, match=expected):
        rnet_hub.create_model(folder)
    with pytest.raises(ConvertedFolderError, match=expected):
        rnet_hub.verify(folder, sample_archive(ARCH), progress=False)
    with pytest.raises(ConvertedFolderError, match=expected):  # before the (long) read of the source
        rnet_hub.verify(folder, tmp_path / "not-there.tar.gz", progress=False)
    with pytest.raises(ConvertedFolderError, match=expected):
        rnet_hub.embed([_image_folder(tmp_path)], model=str(folder), out=tmp_path / "emb" / "x", progress=False,
                       device="cpu")
    assert not (tmp_path / "emb").exists()
    target = timm.create_model("resnet18", num_classes=36)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for source in (folder, weights):  # the folder, and the weights file alone
        with pytest.raises(ConvertedFolderError, match=expected):
            rnet_hub.transfer_weights(source, target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


# ----------------------------------------------------------------------------------------- 6c architecture swapped
def test_config_naming_another_architecture_names_the_mismatch(converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    _edit_config(folder, lambda c: c.update(architecture="resnet34"))
    expected = (r"model\.safetensors does not fit resnet34 \(\d+ missing .*config\.json names resnet34 with 36 "
                r"classes, but the weights were converted for resnet18")
    with pytest.raises(ConvertedFolderError, match=expected):
        rnet_hub.embed([_image_folder(tmp_path)], model=str(folder), out=tmp_path / "emb" / "x", progress=False,
                       device="cpu")
    with pytest.raises(ConvertedFolderError, match=expected):
        rnet_hub.create_model(folder)
    assert not (tmp_path / "emb").exists()


# ----------------------------------------------------------------------------------------- 6d devices
@pytest.mark.parametrize("device", [
    "bogus",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param("cuda:64", marks=pytest.mark.skipif(torch.cuda.device_count() > 64, reason="64 GPUs")),
    "meta",
])
def test_embed_refuses_a_device_this_machine_cannot_use(device, converted_dir, tmp_path):
    with pytest.raises(BadInputError, match=f"device {re.escape(repr(device) if device == 'bogus' else device)}"):
        rnet_hub.embed([_image_folder(tmp_path)], model=str(converted_dir(ARCH)), out=tmp_path / "emb" / "x",
                       progress=False, device=device)
    assert not (tmp_path / "emb").exists()
    with pytest.raises(BadInputError, match="^--device "):  # the CLI's wording, from the same check
        resolve_device(device, option="--device")


def test_resolve_device_defaults_and_accepts_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------- 6e fp16 / fp64 sources
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16], ids=str)
def test_half_and_double_checkpoints_convert_to_float32(dtype, sample_archive, tmp_path):
    state = _source_state(sample_archive)
    source = tmp_path / "resnet18-cast.pth"
    torch.save({"model_state": {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}}, source)
    result = convert(source, tmp_path / "out", progress=False)
    assert result.parity.passed and result.source_dtype == str(dtype).removeprefix("torch.")
    assert f"{result.source_dtype} source weights saved as float32" in str(result)
    weights = safetensors.torch.load_file(result.out_dir / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    assert torch.equal(weights["conv1.weight"], state["model.conv1.weight"].to(dtype).float())
    model = rnet_hub.create_model(result.out_dir).eval()
    assert next(model.parameters()).dtype == torch.float32
    assert rnet_hub.verify(result.out_dir, source, progress=False).passed


def test_double_values_beyond_float32_are_refused(sample_archive, tmp_path):
    state = {k: v.double() if v.is_floating_point() else v for k, v in _source_state(sample_archive).items()}
    state["model.layer1.0.conv1.weight"][0, 0, 0, 0] = 1e300
    torch.save({"model_state": state}, tmp_path / "huge.pth")
    with pytest.raises(SourceError, match=r"model\.layer1\.0\.conv1\.weight holds float64 values beyond float32"):
        convert(tmp_path / "huge.pth", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- 9a tampered config.json
TAMPERED = {
    "architecture missing": ("'architecture'", lambda c: c.pop("architecture")),
    "architecture a number": ("'architecture'", lambda c: c.update(architecture=50)),
    "architecture unknown to timm": ("'architecture' names 'resnet51'", lambda c: c.update(architecture="resnet51")),
    "num_classes missing": ("'num_classes'", lambda c: c.pop("num_classes")),
    "num_classes a string": ("'num_classes'", lambda c: c.update(num_classes="36")),
    "num_classes negative": ("'num_classes'", lambda c: c.update(num_classes=-1)),
    "num_classes a bool": ("'num_classes'", lambda c: c.update(num_classes=True)),
    "pretrained_cfg missing": ("'pretrained_cfg'", lambda c: c.pop("pretrained_cfg")),
    "pretrained_cfg a list": ("'pretrained_cfg'", lambda c: c.update(pretrained_cfg=[])),
    "classifier missing": ("'pretrained_cfg.classifier'", lambda c: c["pretrained_cfg"].pop("classifier")),
    "classifier null": ("'pretrained_cfg.classifier'", lambda c: c["pretrained_cfg"].update(classifier=None)),
    "classifier names nothing": ("'pretrained_cfg.classifier' names 'head'",
                                 lambda c: c["pretrained_cfg"].update(classifier="head")),
    "first_conv a number": ("'pretrained_cfg.first_conv'", lambda c: c["pretrained_cfg"].update(first_conv=1)),
    "input_size too short": ("'pretrained_cfg.input_size'", lambda c: c["pretrained_cfg"].update(input_size=[3, 9])),
    "mean a string": ("'pretrained_cfg.mean'", lambda c: c["pretrained_cfg"].update(mean="0")),
    "std zero": ("'pretrained_cfg.std'", lambda c: c["pretrained_cfg"].update(std=[0, 0, 0])),
    "interpolation unknown": ("'pretrained_cfg.interpolation'",
                              lambda c: c["pretrained_cfg"].update(interpolation="cubic")),
    "crop_mode missing": ("'pretrained_cfg.crop_mode'", lambda c: c["pretrained_cfg"].pop("crop_mode")),
    "crop_pct a string": ("'pretrained_cfg.crop_pct'", lambda c: c["pretrained_cfg"].update(crop_pct="1")),
    "label_names a number": ("'label_names'", lambda c: c.update(label_names=3)),
    "label_names too few": ("'label_names'", lambda c: c.update(label_names=["a", "b"])),
    "label_names not strings": ("'label_names'", lambda c: c.update(label_names=list(range(36)))),
    "model_args a list": ("'model_args'", lambda c: c.update(model_args=[])),
    "model_args.num_classes disagrees": ("'model_args.num_classes'", lambda c: c.update(model_args={"num_classes": 3})),
    "not an object": ("the file", lambda c: (c.clear(), c.update({"x": 1}))),
}


@pytest.mark.parametrize(("field", "change"), TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_config_names_the_folder_and_the_field(field, change, converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    if field == "the file":
        (folder / "config.json").write_text("[1, 2]")
    else:
        _edit_config(folder, change)
    loads = [lambda: rnet_hub.create_model(folder, num_classes=4, in_chans=1)]
    if " names " not in field:  # a head name is only read to replace the head
        loads += [lambda: rnet_hub.create_model(folder), lambda: rnet_hub.create_model(folder, pretrained=False)]
    for load in loads:
        with pytest.raises(ConvertedFolderError) as caught:
            load()
        message = _one_line(caught)
        assert str(folder / "config.json") in message and field in message, message
        assert "restore the original config.json or convert the model again" in message


# ----------------------------------------------------------------------------------------- 9b model_args steering timm
@pytest.mark.parametrize(("key", "value"), [("checkpoint_path", "OTHER"), ("pretrained", True),
                                            ("pretrained_cfg_overlay", {"file": "x"}), ("block_args", [1])])
def test_model_args_outside_the_allow_list_are_refused_by_name(key, value, converted_dir, sample_archive, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    if value == "OTHER":  # another model's weights: timm would load them instead
        other = convert(sample_archive(ARCH, seed=1), tmp_path / "other", progress=False).out_dir
        value = str(other / "model.safetensors")
    _edit_config(folder, lambda c: c.update(model_args={key: value}))
    with pytest.raises(ConvertedFolderError, match=rf"'model_args\.{key}' is refused: for resnet18 only "
                                                   r"drop_path_rate, drop_rate, global_pool, in_chans, num_classes"):
        rnet_hub.create_model(folder)


@pytest.mark.parametrize(("name", "model_args"), [(ARCH, {"drop_rate": 0.3}), ("MobileNetV3Small", {"bn_eps": 1e-3}),
                                                  (ARCH, {"num_classes": 36, "in_chans": 3, "global_pool": "avg"})])
def test_model_args_on_the_allow_list_load(name, model_args, converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path, name)
    _edit_config(folder, lambda c: c.update(model_args=model_args))
    model = rnet_hub.create_model(folder)
    assert model.drop_rate == model_args.get("drop_rate", 0.0)


@pytest.mark.parametrize("model_args", [{"drop_rate": 1.5}, {"bn_eps": -1}, {"global_pool": "bogus"},
                                        {"in_chans": 0}])
def test_model_args_values_are_checked(model_args, converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path, "MobileNetV3Small")
    _edit_config(folder, lambda c: c.update(model_args=model_args))
    with pytest.raises(ConvertedFolderError, match=rf"'model_args\.{next(iter(model_args))}' must be"):
        rnet_hub.create_model(folder)


# ----------------------------------------------------------------------------------------- 9c bfloat16 weights
def test_bfloat16_weights_load_as_a_float32_model(converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    weights = folder / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    safetensors.torch.save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, weights,
                                metadata={"format": "pt"})
    model = rnet_hub.create_model(folder)
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.float32}
    with torch.inference_mode():
        logits = model.eval()(torch.rand(2, 3, 64, 64))
    assert logits.dtype == torch.float32 and logits.shape == (2, 36) and torch.isfinite(logits).all()
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict()  # timm casts the same way
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    assert next(rnet_hub.create_model(folder, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------- 9d NaN / Inf
@pytest.mark.parametrize(("key", "value"), [("model.bn1.running_var", float("inf")),
                                            ("model.layer2.0.conv1.weight", float("nan"))])
def test_non_finite_source_weights_are_refused_by_name(key, value, sample_archive, tmp_path):
    state = _source_state(sample_archive)
    state[key].view(-1)[0] = value
    torch.save({"model_state": state}, tmp_path / "damaged.pth")
    with pytest.raises(SourceError, match=rf"damaged\.pth holds NaN/Inf values \(first: {re.escape(key)}\)"):
        convert(tmp_path / "damaged.pth", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    target = timm.create_model("resnet18", num_classes=36)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SourceError, match=rf"damaged\.pth: {re.escape(key)} holds NaN/Inf values"):
        rnet_hub.transfer_weights(tmp_path / "damaged.pth", target)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched


def test_non_finite_folder_weights_are_reported_by_name(converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path)
    weights = folder / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    state["layer3.1.bn2.running_var"][3] = float("inf")
    safetensors.torch.save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConvertedFolderError, match=rf"{re.escape(str(weights))} holds NaN/Inf values \(first: "
                                                   r"layer3\.1\.bn2\.running_var\)"):
        rnet_hub.create_model(folder)
    for source in (folder, str(weights), state):
        with pytest.raises(SourceError, match=r"layer3\.1\.bn2\.running_var holds NaN/Inf values"):
            rnet_hub.transfer_weights(source, timm.create_model("resnet18", num_classes=36))


def test_non_finite_tensors_that_are_not_copied_do_not_block_a_transfer(converted_dir):
    state = safetensors.torch.load_file(converted_dir(ARCH) / "model.safetensors")
    state["aux_head.weight"] = torch.full((7, 3), float("nan"))  # matches nothing in the target (an unused head)
    report = rnet_hub.transfer_weights(state, timm.create_model("resnet18", num_classes=36), strict=True)
    assert report.coverage == 1.0 and report.unused_source_keys == ["aux_head.weight"]
