"""Conversion of all ten architectures: stand-in archive -> folder -> timm and transformers, with parity.

Parity here is checked independently of the converter's own check: the legacy wrapper is
built the ordinary way (random init, then ``load_state_dict(strict=True)``) and the
converted folder is read back by timm's and transformers' own loaders.
"""

from __future__ import annotations

import json

import pytest
import safetensors
import timm
import torch
from reference_topologies import PARITY_RTOL

from rnet_hub import ARCHITECTURES, legacy
from rnet_hub.legacy.checkpoint import open_legacy_checkpoint
from rnet_hub.parity import parity_input

SPECS = {spec.name: spec for spec in ARCHITECTURES}


def _legacy_logits(archive, spec, inputs):
    with open_legacy_checkpoint(archive, progress=False) as checkpoint:
        wrapper = legacy.build(spec.name)
        wrapper.load_state_dict(checkpoint.state_dict, strict=True)
    with torch.inference_mode():
        return wrapper.eval()(inputs)


def _assert_parity(reference: torch.Tensor, candidate: torch.Tensor) -> None:
    """The promise: max|Δlogits| <= PARITY_RTOL (1e-4) x max(1, max|logits|), and the same top-1."""
    tolerance = PARITY_RTOL * max(1.0, reference.abs().max().item())
    assert (reference - candidate).abs().max().item() <= tolerance
    assert torch.equal(reference.argmax(1), candidate.argmax(1))


@pytest.mark.parametrize("name", list(SPECS))
def test_convert_matches_legacy_in_timm_and_transformers(name, sample_archive, converted_dir):
    from transformers import AutoModelForImageClassification

    spec = SPECS[name]
    out = converted_dir(name)
    inputs = parity_input(spec.input_size, batch=2, seed=123)
    reference = _legacy_logits(sample_archive(name), spec, inputs)

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["crop_mode"] == "border"
    with torch.inference_mode():
        _assert_parity(reference, model(inputs))

    hf_model = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.inference_mode():
        _assert_parity(reference, hf_model(pixel_values=inputs).logits)


@pytest.mark.parametrize("name", list(SPECS))
def test_output_folder_contents(name, converted_dir, sample_archive):
    spec = SPECS[name]
    out = converted_dir(name)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == spec.timm_arch
    assert config["num_classes"] == 36
    assert "num_classes" not in config.get("model_args", {})
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, spec.input_size, spec.input_size]
    assert (cfg["mean"], cfg["std"]) == ([0.0] * 3, [1.0] * 3)
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == ("bilinear", 1.0, "border")
    assert (cfg["first_conv"], cfg["classifier"], cfg["license"]) == (spec.first_conv, spec.classifier, "gpl-3.0")
    with safetensors.safe_open(out / "model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"
    assert metadata["source_file"] == f"{spec.name}.tar.gz"
    import hashlib

    assert metadata["source_sha256"] == hashlib.sha256(sample_archive(name).read_bytes()).hexdigest()


def test_transformers_auto_classes_load_the_folder(converted_dir):
    from transformers import AutoImageProcessor, AutoModel

    out = converted_dir("MobileNetV3Small")
    model = AutoModel.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    from PIL import Image

    image = Image.new("RGB", (300, 150), (128, 128, 128))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    # letterbox: the 2:1 image leaves zero bands above and below, values in [0, 1], no normalisation
    assert pixels[0, :, :40, :].abs().max().item() == 0.0
    assert abs(pixels[0, :, 112, 112].mean().item() - 128 / 255) < 1 / 255
    with torch.inference_mode():
        pooled = model(pixel_values=pixels).pooler_output
    assert tuple(pooled.shape) == (1, 1024)


def test_timm_default_loader_and_fast_loader_give_identical_weights(converted_dir):
    from rnet_hub.loading import load_timm_from_dir

    out = converted_dir("EfficientNetB3")
    slow = timm.create_model(f"local-dir:{out}", pretrained=True).state_dict()
    fast = load_timm_from_dir(out).state_dict()
    assert slow.keys() == fast.keys()
    assert all(torch.equal(slow[k], fast[k]) for k in slow)
