"""The committed ``model_cards/``: the ten cards as they are pushed, kept in step with the template and manifest.

``conversion/render_cards.py`` writes them through :func:`rnet_hub.publish.pipeline.model_cards`;
these tests render them through the same function and fail when a committed card is stale. They also
check what the cards state: metadata that survives ``huggingface_hub``'s ``ModelCardData`` round trip,
parameter and GMAC figures that match a count on a real model, and a U-Net snippet that builds its
encoder with the BatchNorm eps the weights were trained with.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rnet_hub.architectures import ARCHITECTURES, ArchSpec, find_arch
from rnet_hub.errors import BadInputError
from rnet_hub.publish.cards import build_card, card_metadata, model_stats
from rnet_hub.publish.pipeline import empty_manifest, model_card, model_cards, read_manifest

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("model-cards")

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "model_cards"
MANIFEST = ROOT / "conversion" / "manifest.json"
RENDER_CARDS = ROOT / "conversion" / "render_cards.py"
SHA = "0123456789abcdef" * 4
ENTRY: dict[str, Any] = {
    "repo_id": "radiologynet/resnet50", "revision": "main", "commit_sha": "c" * 40, "commit_url": None,
    "source": "http://radiologynet.riteh.hr/models/ResNet50.tar.gz", "source_name": "ResNet50.tar.gz",
    "source_sha256": SHA, "weights_sha256": "f" * 64, "files": {},
    "parity": {"max_abs_diff": 2.5e-6, "tolerance": 1e-3},
    "converted_with": {"rnet_hub": "0.1.0", "torch": "2.4.0", "timm": "1.0.20"}, "converter": "rnet_hub 0.1.0",
}


@pytest.fixture(scope="module")
def render_cards_main() -> Any:
    """``main`` of ``conversion/render_cards.py``, run in this process."""
    return runpy.run_path(str(RENDER_CARDS))["main"]


def test_committed_cards_are_the_rendered_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNET_HUB_ORG", "someone-else")  # the committed cards name the official repositories
    expected = model_cards(read_manifest(MANIFEST))
    assert sorted(expected) == sorted(f"{spec.timm_arch}.md" for spec in ARCHITECTURES)
    assert len(expected) == len(ARCHITECTURES) == 10
    assert sorted(path.name for path in CARDS.iterdir()) == sorted(expected), "model_cards/ holds exactly the ten"
    stale = [name for name, text in expected.items() if (CARDS / name).read_bytes() != text.encode("utf-8")]
    assert not stale, f"stale cards {stale}: run python conversion/render_cards.py"


def test_committed_manifest_is_a_manifest() -> None:
    manifest = read_manifest(MANIFEST)
    assert set(manifest) == {"format", "models"} and set(manifest["models"]) <= {s.name for s in ARCHITECTURES}
    if not manifest["models"]:
        assert MANIFEST.read_text() == json.dumps(empty_manifest(), indent=2, sort_keys=True) + "\n"


def test_pending_card_marks_its_provenance_and_embeds_no_installed_version() -> None:
    import timm
    import torch

    spec = find_arch("EfficientNetB4")
    text = str(model_card(spec, empty_manifest()))
    for row in ("| converted from | *pending*: not yet converted from the published archive |",
                "| source sha256 | *pending*: recorded when the archive is converted |",
                "| parity at conversion | *pending*: measured when the archive is converted |",
                "| converter | *pending*: recorded when the archive is converted |"):
        assert row in text
    assert "**The conversion from the published archive is pending**" in text
    assert f"<{spec.archive_url}>" in text and 'create_model("hf-hub:radiologynet/efficientnet_b4"' in text
    assert "380 × 380" in text and "`None`" not in text and "rnet_hub None" not in text and "{{" not in text
    assert torch.__version__ not in text and timm.__version__ not in text


def test_recorded_model_gets_the_card_its_publication_pushed() -> None:
    manifest = {"format": 1, "models": {"ResNet50": ENTRY}}
    card = str(model_card("ResNet50", manifest))
    pushed = build_card("ResNet50", repo_id="radiologynet/resnet50", source_name="ResNet50.tar.gz",
                        source_sha256=SHA, parity_max_abs_diff=2.5e-6, parity_tolerance=1e-3,
                        source_url=ENTRY["source"], converted_with=ENTRY["converted_with"])
    assert card == str(pushed)
    assert f"| source sha256 | `{SHA}` |" in card and "*pending*" not in card and "is pending" not in card
    assert "| converter | rnet_hub 0.1.0, torch 2.4.0, timm 1.0.20 |" in card
    assert "max abs logit difference 2.500e-06 (tolerance 1.000e-03)" in card
    others = model_cards(manifest)
    assert others["resnet50.md"] == card and "*pending*" in others["resnet18.md"]


def test_manifest_entry_without_the_card_fields_names_the_fix() -> None:
    entry = {key: value for key, value in ENTRY.items() if key not in ("source_name", "converted_with")}
    with pytest.raises(BadInputError, match="lacks source_name, converted_with .*publish it again"):
        model_card("ResNet50", {"format": 1, "models": {"ResNet50": entry}})


def test_render_cards_check_passes_now_and_fails_after_a_change(tmp_path: Path, render_cards_main: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(shutil.copytree(CARDS, tmp_path / "cards"))
    done = subprocess.run([sys.executable, str(RENDER_CARDS), "--check", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 10 cards up to date" in done.stdout

    before = {path.name: path.read_bytes() for path in out.iterdir()}
    vgg = out / "vgg16.md"
    vgg.write_text(vgg.read_text().replace("Not for clinical use", "Fine for clinical use"))
    (out / "resnet34.md").unlink()
    (out / "notes.md").write_text("not a card\n")
    assert render_cards_main(["--check", "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"stale: {vgg}" in report and f"stale: {out / 'resnet34.md'}" in report and "notes.md" in report
    assert "resnet18.md" not in report and "3 of 10 cards stale" in report
    assert "Fine for clinical use" in vgg.read_text() and not (out / "resnet34.md").exists()  # --check wrote nothing

    assert render_cards_main(["--out", str(out)]) == 1  # cards rewritten; the stray file is named, never deleted
    assert "extra:" in capsys.readouterr().err and (out / "notes.md").is_file()
    (out / "notes.md").unlink()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert render_cards_main(["--check", "--out", str(out)]) == 0


def test_render_cards_from_a_manifest_and_a_bad_manifest(tmp_path: Path, render_cards_main: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "models": {"ResNet50": ENTRY}}))
    out = tmp_path / "cards"
    assert render_cards_main(["--manifest", str(manifest), "--out", str(out)]) == 0
    assert len(list(out.iterdir())) == 10 and SHA in (out / "resnet50.md").read_text()
    assert "*pending*" in (out / "vgg16.md").read_text()
    capsys.readouterr()

    manifest.write_text(json.dumps({"models": {}}))
    assert render_cards_main(["--manifest", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not an rnet-hub manifest" in err and err.count("\n") == 1


# ------------------------------------------------------------------ what the cards state
#: parameters of the timm models with the 36-output head (torchvision's counts, plus the head)
PARAMETERS = {"ResNet18": 11_194_980, "ResNet34": 21_303_140, "ResNet50": 23_581_796, "DenseNet121": 6_990_756,
              "InceptionV3": 21_859_332, "VGG16": 134_408_036, "EfficientNetB3": 10_751_564,
              "EfficientNetB4": 17_613_164, "MobileNetV3Large": 4_248_148, "MobileNetV3Small": 1_554_756}


def test_card_metadata_survives_the_model_card_data_round_trip() -> None:
    from huggingface_hub import ModelCard

    texts = model_cards(empty_manifest())
    for spec in ARCHITECTURES:
        parsed = ModelCard(texts[f"{spec.timm_arch}.md"]).data.to_dict()  # as the Hub's client parses it
        assert parsed == card_metadata(spec).to_dict(), spec.name
        assert parsed["pipeline_tag"] == "image-feature-extraction" and parsed["license"] == "gpl-3.0"
    spec = find_arch("ResNet50")
    for labels, pipeline_tag in ((["no fracture", "fracture"], "image-classification"),
                                 (None, "image-feature-extraction")):
        text = str(build_card(spec, repo_id="someone/wrist", source_name="wrist.pth", source_sha256=SHA,
                              parity_max_abs_diff=1e-6, num_classes=2, label_names=labels))
        expected = card_metadata(spec, base_model=spec.repo_id(), label_names=labels).to_dict()
        assert ModelCard(text).data.to_dict() == expected and expected["pipeline_tag"] == pipeline_tag
        assert expected["base_model"] == "radiologynet/resnet50" and expected["base_model_relation"] == "finetune"


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: s.name)
def test_committed_card_states_the_measured_size_and_cost(spec: ArchSpec) -> None:
    stats = model_stats(spec)
    assert stats.parameters == PARAMETERS[spec.name] and stats is model_stats(spec)  # measured once per process
    assert stats.embedding_dim == spec.head_in_features and stats.input_size == spec.input_size
    text = (CARDS / f"{spec.timm_arch}.md").read_text(encoding="utf-8")
    size = f"3 × {spec.input_size} × {spec.input_size}"
    assert f"| parameters | {stats.parameters_text}, with the 36-output head |" in text
    assert f"| compute | {stats.gmacs_text} GMACs per image at {size} |" in text
    assert f"`torch.utils.flop_counter.FlopCounterMode` at {size}" in text


@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV3Small"])
def test_stats_counted_on_the_meta_device_equal_a_count_on_a_real_model(name: str) -> None:
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = find_arch(name)
    torch.manual_seed(0)
    model = timm.create_model(spec.timm_arch, num_classes=36, **spec.model_args).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, spec.input_size, spec.input_size))
    stats = model_stats(spec)
    assert stats.macs == counter.get_total_flops() // 2
    assert stats.parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["MobileNetV3Large", "MobileNetV3Small", "ResNet18"])
def test_unet_snippet_builds_the_encoder_with_the_pretraining_batchnorm_eps(name: str) -> None:
    import torch

    spec = find_arch(name)
    text = str(model_card(spec, empty_manifest()))
    (block,) = [b for b in text.split("```python\n") if "smp.Unet(" in b]
    code = "\n".join(line for line in block.split("```")[0].splitlines()
                     if line.startswith(("import segmentation_models_pytorch", "unet = smp.Unet(")))
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the card's own smp.Unet(...) line, without the Hub download that follows it
    encoder_eps = {m.eps for m in namespace["unet"].encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert encoder_eps == ({0.001} if spec.family == "mobilenetv3" else {1e-5})
