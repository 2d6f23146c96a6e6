"""``config.json`` conforms to what timm and transformers write and read (issue 11, item 1).

* ``model_args`` is always an object in what we write, and ``null`` reads as ``{}``: transformers'
  ``save_pretrained`` turns a missing ``model_args`` into ``"model_args": null``, which timm's
  ``local-dir:``/``hf-hub:`` loader cannot read (``AttributeError`` in ``timm/models/_hub.py``), while an
  object survives ``save_pretrained`` as it is.
* A transformers fine-tune of every architecture, saved with ``save_pretrained``, reloads through
  ``timm.create_model("local-dir:...")``, :func:`rnet_hub.create_model` and transformers with the same
  logits (within :data:`ATOL` plus :data:`RTOL` of the largest logit: the three reload the same float32 tensors, but the
  kernels they run can differ in the last bits with memory layout and thread count).
* ``pretrained_cfg`` carries every field of timm's ``PretrainedCfg``, and a conversion claims the
  published weights' Hub repository, tag or URL only when told (``repo_id``, ``origin_url``).

One architecture per family runs by default, the other five (and VGG16, the largest) are ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from timm.models import PretrainedCfg

import rnet_hub
from rnet_hub import ARCHITECTURES, find_arch
from rnet_hub.converter import convert
from rnet_hub.folder import PUBLISHED_TAG, RUNTIME_CFG_FIELDS, build_config, read_config

#: max |Δlogits| allowed between the fine-tune and each reload: ATOL + RTOL x the largest |logit| (float32, same
#: tensors; one-thread kernels differed by up to 2.3e-5 on logits near 100, 5.4e-7 on logits near 0.5).
ATOL = 1e-5
RTOL = 1e-6
#: One per family, cheap: ResNet, DenseNet, Inception, EfficientNet, MobileNetV3 (VGG16 is the largest: slow).
DEFAULT = {"ResNet18", "DenseNet121", "InceptionV3", "EfficientNetB3", "MobileNetV3Small"}
NAMES = [pytest.param(spec.name, marks=() if spec.name in DEFAULT else (pytest.mark.slow,)) for spec in ARCHITECTURES]
#: Where the input size does not matter (every architecture pools globally), a small one keeps the test fast.
SIZE = 128


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: s.name)
def test_written_model_args_is_always_an_object(spec):
    config = build_config(spec, num_classes=36, num_features=1)
    assert config["model_args"] == dict(spec.model_args)  # {} for eight of the ten
    assert json.loads(json.dumps(config))["model_args"] is not None


@pytest.mark.parametrize("stored", [None, "missing"])
def test_null_or_missing_model_args_read_as_empty(stored, converted_dir, tmp_path):
    folder = Path(shutil.copytree(converted_dir("ResNet18"), tmp_path / "copy"))
    config = json.loads((folder / "config.json").read_text())
    if stored == "missing":
        del config["model_args"]
    else:
        config["model_args"] = stored
    (folder / "config.json").write_text(json.dumps(config))
    assert read_config(folder)["model_args"] == {}
    with torch.inference_mode():
        assert rnet_hub.create_model(folder).eval()(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 36)
        assert rnet_hub.create_model(folder, pretrained=False).num_classes == 36


@pytest.mark.parametrize("name", NAMES)
def test_transformers_fine_tune_reloads_three_ways(name, converted_dir, tmp_path):
    from transformers import AutoModelForImageClassification

    folder = converted_dir(name)
    ours = json.loads((folder / "config.json").read_text())
    tuned = AutoModelForImageClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    tuned.save_pretrained(tmp_path / "tuned")
    written = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert written["model_args"] == ours["model_args"]  # an object survives save_pretrained (null would not load)
    assert written["num_classes"] == 3 and written["architecture"] == ours["architecture"]
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = _logits(tuned.eval()(x))
        reloads = {"timm": timm.create_model(f"local-dir:{tmp_path / 'tuned'}", pretrained=True),
                   "rnet_hub": rnet_hub.create_model(tmp_path / "tuned"),
                   "transformers": AutoModelForImageClassification.from_pretrained(tmp_path / "tuned")}
        for how, model in reloads.items():
            logits = _logits(model.eval()(x))
            assert logits.shape == (2, 3), how
            assert (logits - reference).abs().max().item() <= ATOL + RTOL * reference.abs().max().item(), how


def test_pretrained_cfg_carries_every_timm_field(converted_dir):
    fields = [f.name for f in dataclasses.fields(PretrainedCfg)]
    reference = timm.models.get_pretrained_cfg("resnet50.a1_in1k").to_dict()
    for spec in ARCHITECTURES:
        cfg = build_config(spec, num_classes=36, num_features=1)["pretrained_cfg"]
        assert list(cfg) == [f for f in fields if f not in RUNTIME_CFG_FIELDS], spec.name  # timm's order
        assert set(reference) - set(cfg) <= set(RUNTIME_CFG_FIELDS)
        PretrainedCfg(**cfg)  # timm takes it as it is
    cfg = read_config(converted_dir("InceptionV3"))["pretrained_cfg"]
    assert cfg["pool_size"] == [8, 8] and cfg["input_size"] == [3, 299, 299]  # the measured final feature map
    assert cfg["architecture"] == "inception_v3" and cfg["num_classes"] == 36
    assert read_config(converted_dir("ResNet18"))["pretrained_cfg"]["pool_size"] == list(
        timm.models.get_pretrained_cfg("resnet18.a1_in1k").pool_size)  # timm's own for 224 px


def test_a_users_conversion_claims_no_published_repository(sample_archive, tmp_path):
    spec = find_arch("ResNet18")
    plain = read_config(convert(sample_archive("ResNet18"), tmp_path / "plain",  # a local file, no repo_id
                                progress=False).out_dir)["pretrained_cfg"]
    assert (plain["hf_hub_id"], plain["tag"], plain["origin_url"]) == (None, None, None)
    own = read_config(convert(sample_archive("ResNet18"), tmp_path / "own", repo_id="someone/resnet18-ft",
                              progress=False).out_dir)["pretrained_cfg"]
    assert (own["hf_hub_id"], own["tag"], own["origin_url"]) == ("someone/resnet18-ft", None, None)
    elsewhere = read_config(convert(sample_archive("ResNet18"), tmp_path / "elsewhere", progress=False,
                                    origin_url="https://example.org/ResNet18.tar.gz").out_dir)["pretrained_cfg"]
    assert (elsewhere["hf_hub_id"], elsewhere["tag"]) == (None, None)
    assert elsewhere["origin_url"] == "https://example.org/ResNet18.tar.gz"
    # what the publishing pipeline passes: the repository and the published archive's URL
    official = read_config(convert(sample_archive("ResNet18"), tmp_path / "official", repo_id=spec.repo_id(),
                                   origin_url=spec.archive_url, progress=False).out_dir)["pretrained_cfg"]
    assert (official["hf_hub_id"], official["tag"], official["origin_url"]) == (
        "radiologynet/resnet18", PUBLISHED_TAG, spec.archive_url)


def test_the_card_of_a_users_conversion_claims_no_repository(sample_archive, tmp_path):
    text = (convert(sample_archive("ResNet18"), tmp_path / "own", progress=False).out_dir / "README.md").read_text()
    assert "**Not published.**" in text and 'timm.create_model("hf-hub:YOUR-ORG/resnet18"' in text
    assert "hf-hub:radiologynet/" not in text and "radiologynet/resnet18" not in text
    named = convert(sample_archive("ResNet18"), tmp_path / "named", repo_id="someone/resnet18-ft", progress=False)
    named_text = (named.out_dir / "README.md").read_text()
    assert "**Not published.**" not in named_text and 'timm.create_model("hf-hub:someone/resnet18-ft"' in named_text
