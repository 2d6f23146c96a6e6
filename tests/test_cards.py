"""Model cards: metadata, content and usage snippets for all ten, fine-tune cards, and a snippet run for real.

Cards are rendered from the packaged template (``rnet_hub/publish/templates/radiologynet.md``)
and loaded back with ``ModelCard.load``, the way the Hub and its clients read them. The snippet run pushes the
converted seed-0 stand-in MobileNetV3Small (random weights) to the loopback Hub and runs every Python snippet
of its card in a fresh process against it. Cards whose metadata the Hub refuses are refused by the loopback
Hub too (HTTP 400), and ``push_folder`` reports it.
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
from rnet_hub.errors import BadInputError, ConvertedFolderError, PushError
from rnet_hub.publish import cards
from rnet_hub.publish.cards import build_card, build_card_for_folder, model_stats

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


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


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
                                                                              "image-feature-extraction")
    assert set(data["tags"]) >= REQUIRED_TAGS and "image-classification" not in data["tags"]
    assert "base_model" not in data
    text = " ".join(card.text.split())  # wrapping-independent
    stats = model_stats(spec)
    size = f"3 × {spec.input_size} × {spec.input_size}"
    for expected in (f"# RadiologyNET {spec.name}", "36 clusters", "no human-readable names", "zero padding",
                     "RescaleSlope", "in_chans=1", "features_only=True", "Not for clinical use",
                     "Single-institution data", spec.archive_url, SHA, "3.250e-06", "2.000e-03",
                     f"torch {torch.__version__}", f"timm {timm.__version__}", f"{spec.input_size} × {spec.input_size}",
                     "10.1038/s41598-025-05009-w", "10.1186/s13040-024-00373-1", "BioData Mining",
                     "statistically indistinguishable",
                     # model details: measured figures and the tool that measured them
                     f"| parameters | {stats.parameters_text}, with the 36-output head |",
                     f"| compute | {stats.gmacs_text} GMACs per image at {size} |",
                     f"Measured on the timm model with `torch.utils.flop_counter.FlopCounterMode` at {size}",
                     f"{stats.embedding_dim} pooled features", "tagged `image-feature-extraction`",
                     # training details, from the facts file; the unknowns said to be unknown
                     "## Training details", "about 1.9 million 2D images", "one institution",
                     "Only MR, CR, NM, CT, RF and XA", "50 clusters", "minus 14 excluded", "**Optimiser:** AdamW",
                     "**Not published** with the weights: the number of epochs", "learning rate and its schedule",
                     # embeddings, DICOM, the training-transform warning
                     "num_classes=0).eval()",
                     f'pipeline("image-feature-extraction", model="{spec.repo_id()}", pool=True)',
                     "rnet_hub.preprocess.load_dicom", 'load_dicom("study/IM0001")',
                     f"rnet-hub embed scans/ --model {spec.repo_id()} --out embeddings",
                     "create_transform(**config, is_training=True)", "**flips it horizontally with probability 0.5**",
                     "laterality", "jitters brightness and contrast", "v2.RandomRotation(15)",
                     # out of scope, where to report
                     "## Out-of-scope use", "Diagnosis, screening, triage",
                     "Reading the 36-cluster outputs as findings",
                     "## Reporting problems", "Community tab of this model's Hub page",
                     "an issue on the rnet_hub repository"):
        assert expected in text, expected
    assert "https://github.com/radiologynet" not in text.lower()  # no invented issue-tracker URL
    assert text.count("@article{") == 2
    assert "{{" not in text and "{%" not in text


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: s.name)
def test_every_usage_snippet_names_this_model_from_the_table(spec: ArchSpec, tmp_path: Path) -> None:
    card = _saved_and_loaded(build_card(spec, repo_id=spec.repo_id(), source_name=f"{spec.name}.tar.gz",
                                        source_sha256=SHA, parity_max_abs_diff=0.0), tmp_path)
    table_ids = {s.repo_id() for s in ARCHITECTURES}
    table_tags = {s.pretrained_tag for s in ARCHITECTURES}
    blocks = _python_blocks(card.text)
    # timm, timm tag, timm variants, timm embedding, pipeline embedding, DICOM, augmentation, transformers, U-Net
    assert len(blocks) == 9
    for block in blocks:
        ids, tags = _model_ids(block)
        assert ids or tags, f"snippet names no model:\n{block}"
        assert ids <= table_ids and tags <= table_tags, block
        assert ids <= {spec.repo_id()} and tags <= {spec.pretrained_tag}, block  # this card's own model
    assert f"hf-hub:{spec.repo_id()}@<commit sha>" in card.text  # the pinned verification command
    embeds = [m for block in _bash_blocks(card.text) for m in re.findall(r"rnet-hub embed .*--model (\S+)", block)]
    assert embeds == [spec.repo_id()]
    unet = next(block for block in blocks if "smp.Unet" in block)
    assert ("bn_eps=0.001" in unet) == (spec.family == "mobilenetv3")  # as pretrained: torchvision's BatchNorm eps


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
    assert data["pipeline_tag"] == "image-classification"  # named labels: the widget shows them
    text = " ".join(card.text.split())
    assert "# ResNet50 fine-tuned from RadiologyNET" in text
    assert "**Task:** Wrist fracture on paediatric radiographs" in text
    assert "| 0 | no fracture |" in text and "| 1 | fracture |" in text
    assert "reports no performance figures" in text and "Not for clinical use" in text
    assert "no human-readable names" not in text  # that is about the 36-cluster head, which was replaced
    for block in _python_blocks(card.text):
        ids, tags = _model_ids(block)
        assert ids == {"someone/wrist-fracture"} and not tags, block
    assert 'pipeline("image-classification", model="someone/wrist-fracture") # scores by label name' in text
    assert f"| parameters | {model_stats(spec, 2).parameters_text}, with the 2-output head |" in text


def test_fine_tuned_card_without_label_names_is_a_feature_extractor_on_the_hub() -> None:
    card = build_card("ResNet50", repo_id="someone/bone-age", source_name="age.pth", source_sha256=SHA,
                      parity_max_abs_diff=1e-6, num_classes=1, task="Bone age in months")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-feature-extraction" and "image-classification" not in data["tags"]
    assert data["base_model"] == "radiologynet/resnet50" and "fine-tuned" in data["tags"]
    assert "# scores by output index" in card.text and "| parameters |" in card.text


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
    assert f"torch {torch.__version__}" not in text and "None" not in text.replace("weights=None", "")
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


_SNIPPET_CHECKS = {  # a line each snippet is recognised by -> what to print after it ran
    "cluster_scores = ": "print('scores', json.dumps(cluster_scores[0].tolist()))",
    "in_chans=1)": "print('heads', grey(torch.zeros(1, 1, 224, 224)).shape[1], "
                   "classifier(torch.zeros(1, 3, 224, 224)).shape[1])",
    "num_classes=0).eval()": "print('timm-embedding', *embedding.shape)",
    "pool=True)\nembedding": "print('pipeline-embedding', len(embedding), len(embedding[0]))",
    "load_dicom(": "print('dicom-embeddings', *embeddings.shape)",
    "train_transform = ": "print('augmented', *train_transform(Image.open('image.png').convert('RGB')).shape)",
    "AutoModelForImageClassification": "print('transformers', logits.shape[1], features.shape[1])",
    "smp.Unet": "print('untouched', sorted({key.split('.')[0] for key in report.untouched_target_keys}))\n"
                "print('bn_eps', sorted({m.eps for m in unet.encoder.modules() "
                "if isinstance(m, torch.nn.BatchNorm2d)}))",
}


def test_every_snippet_of_a_published_card_runs_against_the_hub(converted_dir, hub_client, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from rnet_hub.publish.push import push_folder

    spec = ARCHITECTURES[-1]  # MobileNetV3Small: the smallest upload, and BatchNorm eps 0.001
    folder = Path(shutil.copytree(converted_dir(spec.name), tmp_path / spec.timm_arch))
    build_card_for_folder(folder, parity_max_abs_diff=0.0).save(folder / "README.md")
    push_folder(folder, repo_id=spec.repo_id())
    blocks = _python_blocks(ModelCard.load(spec.repo_id()).text)  # the card as the Hub serves it
    script, used = ["import json", "import torch", "from PIL import Image"], []
    for block in blocks:
        markers = [marker for marker in _SNIPPET_CHECKS if marker in block]
        script += [block, *(_SNIPPET_CHECKS[marker] for marker in markers)]
        used += markers
    assert len(blocks) == 9 and sorted(used) == sorted(_SNIPPET_CHECKS)  # each check follows its one snippet
    grey = np.random.default_rng(0).integers(0, 256, size=(180, 260), dtype=np.uint8)  # not square: letterboxed
    Image.fromarray(grey).save(tmp_path / "image.png")
    (tmp_path / "study").mkdir()
    shutil.copyfile(get_testdata_file("MR_small.dcm"), tmp_path / "study" / "IM0001")
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=hub_client.env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    out = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] in
           {"scores", "heads", "timm-embedding", "pipeline-embedding", "dicom-embeddings", "augmented", "transformers",
            "untouched", "bn_eps"}}
    info = timm.create_model(spec.timm_arch, features_only=True).feature_info
    width = model_stats(spec).embedding_dim
    assert f"{info.channels()} {info.reduction()}" in lines  # printed by the card's features_only snippet
    assert "[('export', True)]" in lines  # the DICOM snippet's frame was windowed exactly as in pretraining
    assert out["heads"] == "36 4"  # in_chans=1 keeps the 36-cluster head; num_classes=4 a new head
    assert out["timm-embedding"] == f"1 {width}" and out["pipeline-embedding"] == f"1 {width}"
    assert out["dicom-embeddings"] == f"1 {width}"  # MR_small: one frame
    assert out["augmented"] == "3 224 224" and out["transformers"] == f"36 {width}"
    assert out["untouched"] == "[]"  # the whole encoder came from the Hub model
    assert out["bn_eps"] == "[0.001]"  # the U-Net encoder is built as pretrained

    local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=local))
    with torch.inference_mode():
        expected = local(transform(Image.open(tmp_path / "image.png").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
    torch.testing.assert_close(torch.tensor(json.loads(out["scores"])), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the Hub refuses bad card metadata
_BAD_METADATA = {
    "license": ("license: gpl3", '"license" must be one of'),
    "pipeline_tag": ("pipeline_tag: image-feature-extractor", '"pipeline_tag" must be one of'),
    "base_model prefix": ("base_model: hf-hub:radiologynet/resnet18", '"base_model" must be a model id'),
    "base_model revision": ("base_model:\n- radiologynet/resnet18@main", '"base_model" must be a model id'),
    "library_name": ("library_name:\n- timm", '"library_name" must be a string'),
}


def _http_status(exc: BaseException | None) -> int | None:
    """The HTTP status behind an error, following its causes."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if response is not None:
            return response.status_code
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.mark.parametrize("server_only", [False, True], ids=["validate-yaml", "commit"])
@pytest.mark.parametrize("field", _BAD_METADATA)
def test_push_of_a_card_the_hub_refuses_fails_with_400(field: str, server_only: bool, converted_dir, hub_client,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub asks ``/api/validate-yaml`` before committing a README; the commit itself is checked too."""
    from huggingface_hub import HfApi

    from rnet_hub.publish.push import push_folder

    spec = ARCHITECTURES[-1]
    folder = Path(shutil.copytree(converted_dir(spec.name), tmp_path / spec.timm_arch))
    card = str(build_card_for_folder(folder, parity_max_abs_diff=0.0))
    line, message = _BAD_METADATA[field]
    key = line.split(":", 1)[0]
    front, body = card.split("\n---\n", 1)
    front = "\n".join(kept for kept in front.splitlines() if not kept.startswith(f"{key}:"))
    (folder / "README.md").write_text(f"{front}\n{line}\n---\n{body}")
    if server_only:  # a client that skips the validation (git, an older client): the commit is refused
        monkeypatch.setattr(HfApi, "_validate_yaml", lambda *args, **kwargs: None)
    with pytest.raises(PushError, match="Invalid metadata in README.md") as raised:
        push_folder(folder, repo_id=spec.repo_id())
    assert _http_status(raised.value) == 400 and message in str(raised.value)
    assert [c.title for c in hub_client.hub.history(spec.repo_id())] == ["initial commit"]  # nothing landed


def test_cards_the_hub_accepts_push(converted_dir, hub_client, tmp_path: Path) -> None:
    from hub_server import _card_metadata_errors

    from rnet_hub.publish.push import push_folder

    spec = ARCHITECTURES[-1]
    folder = Path(shutil.copytree(converted_dir(spec.name), tmp_path / spec.timm_arch))
    build_card_for_folder(folder, parity_max_abs_diff=0.0, base_model=spec.repo_id(), task="A fine-tune").save(
        folder / "README.md")
    assert push_folder(folder, repo_id="someone/fine-tune").changed  # base_model, base_model_relation accepted
    assert ModelCard.load("someone/fine-tune").data.base_model == spec.repo_id()
    assert not _card_metadata_errors("---\nbase_model:\n- a/b\n- c.d/e-f\nlicense: mit\n---\n# card\n")
    assert not _card_metadata_errors("# a card without metadata\n")
