"""The committed ``model_cards/``: the ten cards as they are pushed, kept in step with the template and manifest.

``conversion/render_cards.py`` writes them through :func:`rnet_hub.publish.pipeline.model_cards`;
these tests render them through the same function and fail when a committed card is stale.
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

from rnet_hub.architectures import ARCHITECTURES, find_arch
from rnet_hub.errors import BadInputError
from rnet_hub.publish.cards import build_card
from rnet_hub.publish.pipeline import empty_manifest, model_card, model_cards, read_manifest

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
