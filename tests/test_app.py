"""The Gradio app (issue 16): its functions called directly, then the running app driven through gradio_client.

Models are stand-ins (random weights, converted from generated archives): the numbers checked
here are properties of the app (cosine of a file with itself, probabilities equal to the
transformers model's, a Grad-CAM of the input's size), never results on the real weights.
The app is launched once for the module on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from rnet_hub.app import create_app
from rnet_hub.app.analysis import Analyser
from rnet_hub.app.demo import write_demo_reference
from rnet_hub.app.environment import PRIVACY_ENV
from rnet_hub.app.models import load_app_model
from rnet_hub.app.reference import build_reference_index
from rnet_hub.app.ui import API_NAME, import_gradio, launch_app
from rnet_hub.app.views import dicom_rescale, input_preview, read_views
from rnet_hub.cli import main
from rnet_hub.errors import MissingExtraError

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("app")

LABELS = {0: "normal", 1: "abnormal"}


@contextlib.contextmanager
def restored_environment() -> Iterator[None]:
    """Put back the environment variables the app sets (:data:`PRIVACY_ENV`, gradio's and matplotlib's folders)."""
    keys = [*PRIVACY_ENV, "GRADIO_TEMP_DIR", "MPLCONFIGDIR"]
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_reference(folder: Path) -> Path:
    """Four small generated PNGs and a copy of MR_small.dcm (named IM0001, found by its header)."""
    return write_demo_reference(folder)


def make_finetuned(converted: Path, out: Path) -> Path:
    """What ``rnet-hub finetune`` writes: transformers' TimmWrapper with a 2-class head, saved."""
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(
        converted, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
        ignore_mismatched_sizes=True)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(converted_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app")
    return {"pretrained": converted_dir("MobileNetV3Small"),
            "finetuned": make_finetuned(converted_dir("ResNet18"), root / "ResNet18-finetuned"),
            "reference": make_reference(root / "reference"), "cache": root / "cache", "temp": root / "temp"}


@pytest.fixture(scope="module")
def analyser(setup) -> Analyser:
    return Analyser(models=[str(setup["pretrained"]), str(setup["finetuned"])], reference=setup["reference"],
                    cache_dir=setup["cache"], temp_dir=setup["temp"] / "direct")


@pytest.fixture(scope="module")
def running(setup) -> Iterator[tuple[str, Path]]:
    """The app served on 127.0.0.1 for this module; the environment is restored afterwards."""
    temp = setup["temp"] / "served"
    with restored_environment():
        app, _ = create_app(models=[str(setup["pretrained"]), str(setup["finetuned"])],
                            reference=setup["reference"], cache_dir=setup["cache"], temp_dir=temp)
        port = free_port()
        launch_app(app, port=port, block=False, allowed_paths=[str(temp)])
        try:
            yield f"http://127.0.0.1:{port}/", temp
        finally:
            app.close()


# --------------------------------------------------------------------------- the functions, called directly
def test_every_frame_has_its_metadata_and_exact_model_input(setup) -> None:
    model = load_app_model(str(setup["pretrained"]))
    views = read_views(get_testdata_file("rtdose.dcm"), transform=model.transform, first_number=3)
    assert [v.number for v in views] == list(range(3, 18)) and [v.frame.frame for v in views] == list(range(15))
    assert "RescaleSlope" not in pydicom.dcmread(get_testdata_file("rtdose.dcm"), stop_before_pixels=True)
    assert {v.metadata["rescale (slope/intercept)"] for v in views} == {"absent (slope 1, intercept 0)"}
    assert {v.metadata["modality"] for v in views} == {"RTDOSE"}
    assert all(v.metadata["window (centre/width)"] != "-" for v in views)
    (ct,) = read_views(get_testdata_file("CT_small.dcm"), transform=model.transform)
    ct_header = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    assert dicom_rescale(ct_header, 0) == (float(ct_header.RescaleSlope), float(ct_header.RescaleIntercept))
    assert ct.metadata["rescale (slope/intercept)"] == f"{float(ct_header.RescaleSlope):g} / " \
                                                        f"{float(ct_header.RescaleIntercept):g}"
    assert ct.metadata["modality"] == "CT" and "export skipped it" in ct.metadata["note"]
    # the preview is the tensor the model gets, at its native size, within rounding to 8 bits
    assert tuple(ct.model_input.shape) == (3, 224, 224)
    preview = input_preview(ct.model_input, model.transform.config)
    assert preview.shape == (224, 224) and preview.dtype == np.uint8
    assert np.abs(preview / 255.0 - ct.model_input[0].numpy()).max() <= 0.5 / 255 + 1e-6
    assert torch.equal(ct.model_input, model.transform(ct.frame))


def test_a_frame_the_exporter_drops_is_shown_with_the_reason(setup, tmp_path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 100000, 10  # every value below the window: a black image
    ds.save_as(tmp_path / "black.dcm")
    model = load_app_model(str(setup["pretrained"]))
    (view,) = read_views(tmp_path / "black.dcm", transform=model.transform)
    assert view.frame.rule == "export" and view.metadata["window (centre/width)"] == "100000 / 10"
    assert view.metadata["dropped by the exporter"].startswith("too few grey levels")
    assert view.caption.endswith(" - DROPPED")


def test_reference_embeddings_are_cached_and_searched_by_cosine(setup, tmp_path) -> None:
    model = load_app_model(str(setup["pretrained"]))
    folder = tmp_path / "ref"
    shutil.copytree(setup["reference"], folder)
    first = build_reference_index([folder], model=model, cache_dir=tmp_path / "cache")
    assert (first.embedded, first.from_cache, len(first.images)) == (5, 0, 5)
    again = build_reference_index([folder], model=model, cache_dir=tmp_path / "cache")
    assert (again.embedded, again.from_cache) == (0, 5)
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(folder / "pattern0.png")  # changed content
    changed = build_reference_index([folder], model=model, cache_dir=tmp_path / "cache")
    assert (changed.embedded, changed.from_cache) == (1, 4)
    (mr,) = read_views(folder / "IM0001", transform=model.transform)
    query = model.run([mr.model_input])[0][0]
    best = first.nearest(query, k=3)
    assert best[0].image.path.name == "IM0001" and best[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [n.similarity for n in best] == sorted((n.similarity for n in best), reverse=True)
    norms = np.linalg.norm(first.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_finetuned_model_gives_named_probabilities_and_a_real_cam(setup, analyser) -> None:
    from transformers import AutoModelForImageClassification

    result = analyser.analyse([get_testdata_file("MR_small.dcm")], model_name=str(setup["finetuned"]))
    assert result.messages == []
    assert set(result.probabilities) == {"normal", "abnormal"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    model = analyser.model(str(setup["finetuned"]))
    (view,) = read_views(get_testdata_file("MR_small.dcm"), transform=model.transform)
    hf = AutoModelForImageClassification.from_pretrained(setup["finetuned"]).eval()
    with torch.inference_mode():
        expected = torch.softmax(hf(pixel_values=view.model_input.unsqueeze(0)).logits, 1)[0]
    for index, label in LABELS.items():
        assert result.probabilities[label] == pytest.approx(float(expected[index]), abs=1e-5)
    assert result.cam.shape == (224, 224) == tuple(view.model_input.shape[1:])
    assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0 and result.cam.std() > 0.01
    assert result.cam_image.shape == (224, 224, 3) and result.cam_image.dtype == np.uint8
    assert "fine-tuned classifier (2 classes: normal, abnormal)" in result.summary


def test_pretrained_model_gives_embedding_and_neighbours_but_no_classes(setup, analyser) -> None:
    result = analyser.analyse([get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")],
                              model_name=str(setup["pretrained"]), image_number=2)
    assert result.messages == [] and result.selected == 2 and len(result.images) == len(result.inputs) == 2
    assert result.probabilities is None and result.cam is None
    assert result.embedding.shape == (1024,)
    saved = np.load(result.embeddings_file)
    np.testing.assert_array_equal(saved[1], result.embedding)
    assert result.embeddings_file.is_relative_to(analyser.temp_dir)
    assert result.neighbours[0].image.path.name == "IM0001"  # the uploaded MR is in the reference set
    assert result.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(result.neighbour_gallery()) == 5


def test_bad_files_and_models_become_messages(setup, analyser, tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:-10000])  # pixel data cut short
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(photo)
    result = analyser.analyse([text, empty, corrupt, get_testdata_file("MR_small.dcm"), photo],
                              model_name=str(setup["pretrained"]))
    assert [row[1] for row in result.table] == ["MR_small.dcm", "photo.jpg"]
    assert result.table[1][4] == "image (not DICOM: used as it is)" and result.table[1][9] == "60 x 90 x 3 uint8"
    assert result.inputs[1][0].shape == (224, 224, 3)  # colour stays colour in the model input
    assert [m.split(" ")[0] for m in result.messages] == ["notes.txt", "empty.dcm", "corrupt.dcm"]
    assert all("cannot be read" in m for m in result.messages)
    assert "more than the file holds" in result.messages[2]
    nothing = analyser.analyse([], model_name=str(setup["pretrained"]))
    assert nothing.messages == ["no file: upload one or more DICOM, PNG or JPEG files"]
    unknown = analyser.analyse([get_testdata_file("MR_small.dcm")], model_name="no-such-model-xyz")
    assert unknown.images == [] and unknown.messages[0].startswith("model 'no-such-model-xyz' cannot be loaded")


def test_missing_gradio_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rnet-hub\[app\]'"):
        import_gradio()


def test_cli_refuses_a_missing_reference_folder(tmp_path, capsys) -> None:
    assert main(["app", "--reference", str(tmp_path / "nowhere")]) == 2
    assert "error: --reference" in capsys.readouterr().err


def test_the_space_folder_builds_the_same_app(setup, running, monkeypatch) -> None:
    import runpy

    import gradio  # imported by the running app first, so that gradio's own temp folder is that app's
    import yaml

    from rnet_hub import __version__
    from rnet_hub.app import DEFAULT_MODELS
    from rnet_hub.architectures import ARCHITECTURES

    space = Path(__file__).resolve().parent.parent / "spaces" / "radiologynet"
    front = yaml.safe_load((space / "README.md").read_text().split("---\n")[1])
    assert front["sdk"] == "gradio" and (space / front["app_file"]).is_file() and front["license"] == "gpl-3.0"
    assert front["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    assert front["models"] == list(DEFAULT_MODELS)
    assert set(front["models"]) <= {spec.repo_id() for spec in ARCHITECTURES}
    assert f"rnet-hub[app]=={__version__}" in (space / "requirements.txt").read_text().splitlines()
    monkeypatch.setenv("RNET_HUB_MODELS", str(setup["pretrained"]))
    monkeypatch.delenv("RNET_HUB_REFERENCE", raising=False)
    with restored_environment():
        space_app = runpy.run_path(str(space / "app.py"), run_name="space")  # not __main__: built, not launched
        try:
            assert isinstance(space_app["demo"], gradio.Blocks)
            assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
            assert os.environ["GRADIO_TEMP_DIR"] == str(space_app["TEMP"] / "gradio")
            result = space_app["analyser"].analyse([get_testdata_file("MR_small.dcm")],
                                                   model_name=str(setup["pretrained"]))
            assert result.messages == [] and len(result.images) == 1 and "No reference images" in result.summary
        finally:
            shutil.rmtree(space_app["TEMP"], ignore_errors=True)


# --------------------------------------------------------------------------- the running app, via gradio_client
def test_client_uploads_dicoms_and_gets_frames_embeddings_and_neighbours(setup, running, tmp_path) -> None:
    from gradio_client import Client, handle_file

    url, temp = running
    client = Client(url, download_files=str(tmp_path / "downloads"), verbose=False)
    out = client.predict([handle_file(get_testdata_file("rtdose.dcm")), handle_file(get_testdata_file("MR_small.dcm"))],
                         str(setup["pretrained"]), 16, None, api_name=f"/{API_NAME}")
    frames, table, inputs, summary, neighbours, label, cam, download, messages = out
    assert messages == "" and len(frames) == len(inputs) == 16 and len(table["data"]) == 16
    assert frames[0]["caption"].startswith("#1 rtdose.dcm frame 0") and "MR_small.dcm" in frames[15]["caption"]
    assert [row[2] for row in table["data"][:15]] == [str(i) for i in range(15)]
    assert Image.open(inputs[15]["image"]).size == (224, 224)
    assert "Embedding of image #16" in summary and "1024 values" in summary
    assert neighbours[0]["caption"].startswith("cos 1.000 - IM0001")
    assert len(neighbours) == 5 and not label and cam is None  # no classes for a pretrained model
    assert np.load(download).shape == (16, 1024)
    uploads = list((temp / "gradio").rglob("rtdose.dcm"))
    assert uploads, "uploads must land in the app's own temp folder"


def test_client_gets_messages_for_bad_files_and_the_app_keeps_working(setup, running, tmp_path) -> None:
    from gradio_client import Client, handle_file

    url, _ = running
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"DICM" * 10)
    client = Client(url, download_files=str(tmp_path / "downloads"), verbose=False)
    out = client.predict([handle_file(bad)], str(setup["finetuned"]), 1, None, api_name=f"/{API_NAME}")
    assert out[0] == [] and out[-1].startswith("scan.dcm cannot be read")
    assert str(tmp_path) not in out[-1]  # no server paths in messages
    out = client.predict([handle_file(get_testdata_file("MR_small.dcm"))], str(setup["finetuned"]), 1, None,
                         api_name=f"/{API_NAME}")
    assert out[-1] == "" and out[5]["label"] in LABELS.values()
    assert {c["label"] for c in out[5]["confidences"]} == set(LABELS.values())
    assert Image.open(out[6]).size == (224, 224)
