"""One name grammar: every entry point reads model names through ``rnet_hub.names.parse_model_name``.

One table of names for the same model (a stand-in ResNet18 converted here and pushed to the
loopback Hub as ``radiologynet/resnet18``) goes through each entry point: ``create_model``,
``transfer_weights``, ``verify``, ``embed``, ``push_folder`` and ``build_card``. All of them
must reach the same weights; the Hub is asked with this package's name in the user agent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import rnet_hub
from rnet_hub.errors import BadInputError, UnknownArchitectureError
from rnet_hub.names import ModelRef, architecture_of, local_folder, parse_model_name
from rnet_hub.parity import parity_input

LOCAL_FORMS = ("{folder}", "local-dir:{folder}")
HUB_FORMS = ("radiologynet/resnet18", "hf-hub:radiologynet/resnet18", "hf-hub:radiologynet/resnet18@main",
             "radiologynet/resnet18@main", "resnet18.radiologynet", "ResNet18", "res18", "resnet18", "RESNET18")
NAMES = LOCAL_FORMS + HUB_FORMS
#: Our own tolerance for "the same weights": both sides run the same code on the same tensors.
SAME_LOGITS_ATOL = 1e-6


@pytest.fixture
def published(hub_client, converted_dir) -> Path:
    """The stand-in ResNet18 folder, also pushed to the loopback Hub as radiologynet/resnet18."""
    folder = converted_dir("ResNet18")
    rnet_hub.push_folder(folder, repo_id="radiologynet/resnet18")
    return folder


def _expand(template: str, folder: Path) -> str:
    return template.format(folder=folder)


@pytest.mark.parametrize("template", NAMES)
def test_every_name_designates_the_same_model(template: str, tmp_path: Path) -> None:
    ref = parse_model_name(_expand(template, tmp_path))
    if template in LOCAL_FORMS:
        assert ref == ModelRef(_expand(template, tmp_path), folder=tmp_path)
    else:
        assert (ref.repo_id, ref.arch.timm_arch) == ("radiologynet/resnet18", "resnet18")
        assert ref.revision == ("main" if "@main" in template else None)


@pytest.mark.parametrize(("name", "message"), [
    ("./no/such/folder", "no such folder: ./no/such/folder"),
    ("~/no-such-folder-here/x", "no such folder"),
    ("resnet51", "unknown RadiologyNET architecture 'resnet51'"),
    ("hf-hub:not a/repo", "is not a Hub repository id"),
])
def test_bad_names_say_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_model_name(name)


def test_architecture_of_reads_a_folder_and_refuses_an_unnamed_repo(converted_dir) -> None:
    assert architecture_of(converted_dir("ResNet18")).timm_arch == "resnet18"
    assert architecture_of("hf-hub:radiologynet/resnet18@v1").name == "ResNet18"
    with pytest.raises(UnknownArchitectureError, match="does not name its architecture"):
        architecture_of("someone/my-model")


def test_one_table_of_names_through_every_entry_point(published: Path, hub_client, sample_archive,
                                                      tmp_path: Path) -> None:
    inputs = parity_input(224)
    reference = timm.create_model(f"local-dir:{published}", pretrained=True).eval()(inputs)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(images / "ramp.png")
    for template in NAMES:
        name = _expand(template, published)
        with torch.inference_mode():
            logits = rnet_hub.create_model(name).eval()(inputs)
        torch.testing.assert_close(logits, reference, rtol=0, atol=SAME_LOGITS_ATOL, msg=name)

        target = timm.create_model("resnet18", num_classes=36)
        assert rnet_hub.transfer_weights(name, target, strict=True).coverage == 1.0, name
        with torch.inference_mode():
            torch.testing.assert_close(target.eval()(inputs), reference, rtol=0, atol=SAME_LOGITS_ATOL, msg=name)

        assert rnet_hub.verify(name, sample_archive("ResNet18"), progress=False).passed, name

        embedded = rnet_hub.embed([images], model=name, out=tmp_path / "emb" / str(NAMES.index(template)),
                                  progress=False)
        assert (embedded.files, embedded.images) == (1, 1), name

        card = rnet_hub.build_card(name, repo_id="radiologynet/resnet18", source_name="ResNet18.tar.gz",
                                   source_sha256="0" * 64, parity_max_abs_diff=0.0)
        assert 'timm.create_model("hf-hub:radiologynet/resnet18"' in card.text, name

        if template in LOCAL_FORMS:
            plan = rnet_hub.push_folder(name, repo_id="radiologynet/resnet18", dry_run=True)
            assert {f.path for f in plan.files} >= {"config.json", "model.safetensors"}, name
        else:
            with pytest.raises(BadInputError, match="is not a folder"):
                rnet_hub.push_folder(name, repo_id="radiologynet/resnet18", dry_run=True)

    agents = {r.headers.get("user-agent", "") for r in hub_client.hub.requests if "/resolve/" in r.path}
    assert agents and all(f"rnet_hub/{rnet_hub.__version__}" in a for a in agents), agents


def test_local_folder_refuses_what_is_not_one(tmp_path: Path) -> None:
    assert local_folder(f"local-dir:{tmp_path}") == tmp_path
    with pytest.raises(BadInputError, match="is not a folder; pass the output folder of `rnet-hub convert`"):
        local_folder(tmp_path / "missing")
