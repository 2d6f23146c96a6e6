"""Model cards: metadata, content and usage snippets for all ten, fine-tune cards, and a snippet run for real.

Cards are rendered from the packaged template (``rnet_hub/publish/templates/radiologynet.md``)
and loaded back with ``ModelCard.load``, the way the Hub and its clients read them. The snippet run pushes the
converted seed-0 stand-in ResNet18 (random weights) to the loopback Hub and runs the card's
own timm code in a fresh process against it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image

from rnet_hub.architectures import ARCHITECTURES, ArchSpec
from rnet_hub.errors import BadInputError, ConvertedFolderError
from rnet_hub.publish import cards
from rnet_hub.publish.cards import build_card, build_card_for_folder

REQUIRED_TAGS = {"timm", "transformers", "medical-imaging", "radiology", "transfer-learning",
                 "image-feature-extraction"}
SHA = "0123456789abcdef" * 4
_ID_PATTERNS = (r'"hf-hub:([^"@]+)', r'from_pretrained\("([^"]+)"\)', r'model="([^"]+)"',
                r'transfer_weights\("([^"]+)"')
_TAG_PATTERN = r'create_model\("(?!hf-hub:)([^"]+)"'


@pytest.fixture(autouse=True)
def _default_org(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNET_HUB_ORG", raising=False)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _model_ids(code: str) -> tuple[set[str], set[str]]:
    """``(hub ids, timm pretrained tags)`` named by a snippet."""
    ids = {m for pattern in _ID_PATTERNS for m in re.findall(pattern, code)}
    return ids, set(re.findall(_TAG_PATTERN, code))


def _saved_and_loaded(card: ModelCard, tmp_path: Path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: s.name)
def test_card_of_each_model_loads_back_with_metadata_and_content(spec: ArchSpec, tmp_path: Path) -> None:
    card = _saved_and_loaded(build_card(spec, repo_id=spec.repo_id(), source_name=f"{spec.name}.tar.gz",
                                        source_sha256=SHA, parity_max_abs_diff=3.25e-6, parity_tolerance=2e-3),
                             tmp_path)
    data = card.data.to_dict()
    assert (data["license"], data["library_name"], data["pipeline_tag"]) == ("gpl-3.0", "timm",
                                                                              "image-classification")
    assert set(data["tags"]) >= REQUIRED_TAGS
    assert "base_model" not in data
    text = " ".join(card.text.split())  # wrapping-independent
    for expected in (f"# RadiologyNET {spec.name}", "36 clusters", "no human-readable names", "zero padding",
                     "RescaleSlope", "in_chans=1", "features_only=True", "Not for clinical use",
                     "Single-institution data", spec.archive_url, SHA, "3.250e-06", "2.000e-03",
                     f"torch {torch.__version__}", f"timm {timm.__version__}", f"{spec.input_size} × {spec.input_size}",
                     "10.1038/s41598-025-05009-w", "10.1186/s13040-024-00373-1", "BioData Mining",
                     "statistically indistinguishable"):
        assert expected in text, expected
    assert text.count("@article{") == 2
    assert "{{" not in text and "{%" not in text


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: s.name)
def test_every_usage_snippet_names_this_model_from_the_table(spec: ArchSpec, tmp_path: Path) -> None:
    card = _saved_and_loaded(build_card(spec, repo_id=spec.repo_id(), source_name=f"{spec.name}.tar.gz",
                                        source_sha256=SHA, parity_max_abs_diff=0.0), tmp_path)
    table_ids = {s.repo_id() for s in ARCHITECTURES}
    table_tags = {s.pretrained_tag for s in ARCHITECTURES}
    blocks = _python_blocks(card.text)
    assert len(blocks) == 5  # timm, timm tag, timm variants, transformers, U-Net transfer
    for block in blocks:
        ids, tags = _model_ids(block)
        assert ids or tags, f"snippet names no model:\n{block}"
        assert ids <= table_ids and tags <= table_tags, block
        assert ids <= {spec.repo_id()} and tags <= {spec.pretrained_tag}, block  # this card's own model
    assert f"hf-hub:{spec.repo_id()}@<commit sha>" in card.text  # the pinned verification command


def test_fine_tuned_card_points_at_its_base_model(tmp_path: Path) -> None:
    spec = ARCHITECTURES[2]  # ResNet50
    card = _saved_and_loaded(build_card(spec, repo_id="someone/wrist-fracture", source_name="wrist.pth",
                                        source_sha256=SHA, parity_max_abs_diff=1e-6, num_classes=2,
                                        label_names=["no fracture", "fracture"],
                                        task="Wrist fracture on paediatric radiographs"), tmp_path)
    data = card.data.to_dict()
    assert data["base_model"] == "radiologynet/resnet50" == spec.repo_id()
    assert data["base_model_relation"] == "finetune"
    assert {"fine-tuned", *REQUIRED_TAGS} <= set(data["tags"]) and data["license"] == "gpl-3.0"
    text = " ".join(card.text.split())
    assert "# ResNet50 fine-tuned from RadiologyNET" in text
    assert "**Task:** Wrist fracture on paediatric radiographs" in text
    assert "| 0 | no fracture |" in text and "| 1 | fracture |" in text
    assert "reports no performance figures" in text and "Not for clinical use" in text
    assert "no human-readable names" not in text  # that is about the 36-cluster head, which was replaced
    for block in _python_blocks(card.text):
        ids, tags = _model_ids(block)
        assert ids == {"someone/wrist-fracture"} and not tags, block
    assert 'pipeline("image-classification", model="someone/wrist-fracture")' in text


def test_fine_tuned_card_checks_its_inputs() -> None:
    common = {"repo_id": "someone/x", "source_name": "x.pth", "source_sha256": SHA, "parity_max_abs_diff": 0.0}
    with pytest.raises(ValueError, match="'radiologynet/resnet18' is not the RadiologyNET repository of ResNet50"):
        build_card("ResNet50", base_model="radiologynet/resnet18", num_classes=2, **common)
    with pytest.raises(ValueError, match="3 label names for a head of 2 classes"):
        build_card("ResNet50", num_classes=2, label_names=["a", "b", "c"], **common)


def test_pending_card_renders_the_same_card_with_its_provenance_pending(tmp_path: Path) -> None:
    spec = ARCHITECTURES[4]  # InceptionV3: 299 input, so the resize note is in both
    pending = _saved_and_loaded(build_card(spec, repo_id=spec.repo_id(), source_name=None, source_sha256=None,
                                           parity_max_abs_diff=None), tmp_path)
    done = build_card(spec, repo_id=spec.repo_id(), source_name=f"{spec.name}.tar.gz", source_sha256=SHA,
                      parity_max_abs_diff=1e-6, parity_tolerance=1e-3)
    assert pending.data.to_dict() == done.data.to_dict()
    text = " ".join(pending.text.split())
    assert "**The conversion from the published archive is pending**" in text
    assert "| source sha256 | *pending*: recorded when the archive is converted |" in text
    assert "| converter | *pending*: recorded when the archive is converted |" in text
    assert f"torch {torch.__version__}" not in text and "None" not in text.replace("encoder_weights=None", "")
    pending_lines, done_lines = set(pending.text.splitlines()), set(done.text.splitlines())
    only_done = done_lines - pending_lines  # what differs is the provenance and the sentences about it
    assert len(only_done) == 7 and all("rnet_hub" in line or "|" in line or "logits" in line or "PyTorch" in line
                                       for line in only_done), only_done
    assert "*pending*" not in done.text and "is pending" not in done.text


def test_half_a_provenance_is_refused() -> None:
    with pytest.raises(BadInputError, match="lacks source_sha256, parity_max_abs_diff"):
        build_card("ResNet18", repo_id="radiologynet/resnet18", source_name="ResNet18.tar.gz", source_sha256=None,
                   parity_max_abs_diff=None)
    with pytest.raises(BadInputError, match="parity_tolerance, converted_with given for a pending conversion"):
        build_card("ResNet18", repo_id="radiologynet/resnet18", source_name=None, source_sha256=None,
                   parity_max_abs_diff=None, parity_tolerance=1e-3, converted_with={"rnet_hub": "1"})
    with pytest.raises(BadInputError, match="a fine-tune's card needs its conversion's provenance"):
        build_card("ResNet18", repo_id="someone/x", source_name=None, source_sha256=None, parity_max_abs_diff=None,
                   num_classes=2)


def test_card_for_a_converted_folder_reads_its_provenance(converted_dir, tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = converted_dir("MobileNetV3Small")
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        source_sha = weights.metadata()["source_sha256"]
    versions = {"rnet_hub": "0.0.9", "torch": "2.4.0", "timm": "1.0.20"}  # as recorded when it was converted
    card = _saved_and_loaded(build_card_for_folder(folder, parity_max_abs_diff=1.5e-7, parity_tolerance=1e-3,
                                                   source_url="http://example.invalid/MobileNetV3Small.tar.gz",
                                                   converted_with=versions), tmp_path)
    text = " ".join(card.text.split())
    assert f"| source sha256 | `{source_sha}` |" in text
    assert "`MobileNetV3Small.tar.gz` downloaded from <http://example.invalid/MobileNetV3Small.tar.gz>" in text
    assert 'hf-hub:radiologynet/mobilenetv3_small_100"' in text  # the repo id recorded in config.json
    assert "1.500e-07" in text and "letterboxing to 224 first" not in text  # 224-input model
    assert "| converter | rnet_hub 0.0.9, torch 2.4.0, timm 1.0.20 |" in text


def test_card_for_a_folder_that_is_no_conversion_names_the_fix(converted_dir, tmp_path: Path) -> None:
    with pytest.raises(ConvertedFolderError, match="is not a converted model folder"):
        build_card_for_folder(tmp_path, parity_max_abs_diff=0.0)
    folder = Path(shutil.copytree(converted_dir("MobileNetV3Small"), tmp_path / "copy"))
    config = json.loads((folder / "config.json").read_text())
    del config["pretrained_cfg"]["hf_hub_id"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInputError, match="no repo_id given and none recorded in config.json"):
        build_card_for_folder(folder, parity_max_abs_diff=0.0)


def test_template_lives_once_in_the_package() -> None:
    packaged = Path(cards.__file__).parent / "templates" / cards.TEMPLATE_NAME
    assert cards.template_path() == packaged
    assert packaged.is_file() and not packaged.is_symlink()
    assert "{{ repo_id }}" in packaged.read_text(encoding="utf-8")


def test_template_variable_without_a_value_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "radiologynet.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ title }} for {{ hospital_name }}\n")
    monkeypatch.setattr(cards, "template_path", lambda: template)
    with pytest.raises(ValueError, match=r"variables build_card does not provide: \['hospital_name'\]"):
        build_card("ResNet18", repo_id="radiologynet/resnet18", source_name="a", source_sha256=SHA,
                   parity_max_abs_diff=0.0)


def test_timm_and_unet_snippets_of_a_published_card_run_against_the_hub(converted_dir, hub_client,
                                                                      tmp_path: Path) -> None:
    from rnet_hub.publish.push import push_folder

    spec = ARCHITECTURES[-1]  # MobileNetV3Small: the smallest upload
    folder = Path(shutil.copytree(converted_dir(spec.name), tmp_path / spec.timm_arch))
    build_card_for_folder(folder, parity_max_abs_diff=0.0).save(folder / "README.md")
    push_folder(folder, repo_id=spec.repo_id())
    blocks = _python_blocks(ModelCard.load(spec.repo_id()).text)  # the card as the Hub serves it
    timm_blocks = [b for b in blocks if "import timm" in b]
    unet_blocks = [b for b in blocks if "smp.Unet" in b]
    assert len(timm_blocks) == 3 and len(unet_blocks) == 1  # hf-hub id, tag, variants; U-Net transfer
    grey = np.random.default_rng(0).integers(0, 256, size=(180, 260), dtype=np.uint8)  # not square: letterboxed
    Image.fromarray(grey).save(tmp_path / "image.png")
    checks = ["import json", "print('scores', json.dumps(cluster_scores[0].tolist()))",
              "print('heads', grey(torch.zeros(1, 1, 224, 224)).shape[1], model(torch.zeros(1, 3, 224, 224)).shape[1])",
              "print('untouched', sorted({key.split('.')[0] for key in report.untouched_target_keys}))"]
    done = subprocess.run([sys.executable, "-c", "\n".join([*timm_blocks, *unet_blocks, *checks])], cwd=tmp_path,
                          env=hub_client.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    features_line = next(line for line in lines if line.startswith("["))  # printed by the card's own snippet
    scores_line, classes_line, untouched_line = (line.split(" ", 1)[1] for line in lines[-3:])
    info = timm.create_model(spec.timm_arch, features_only=True).feature_info
    assert features_line == f"{info.channels()} {info.reduction()}"  # features_only loaded from the Hub
    assert classes_line == "36 4"  # in_chans=1 keeps the 36-cluster head; the tag snippet's new 4-class head
    assert untouched_line == "[]"  # the whole encoder came from the Hub model

    local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=local))
    with torch.inference_mode():
        expected = local(transform(Image.open(tmp_path / "image.png").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
    torch.testing.assert_close(torch.tensor(json.loads(scores_line)), expected, rtol=0, atol=1e-6)
