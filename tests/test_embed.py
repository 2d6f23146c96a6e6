"""``rnet-hub embed`` on a small mixed folder: PNG (8/16 bit, grey/RGB), JPEG, DICOM (one named
without extension, one multi-frame), a corrupt file and a hidden one.

Embeddings are read back and compared with an independent computation: timm's own eval
transform and the timm model's pooled features, one image at a time.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from timm.data import create_transform as timm_create_transform
from timm.data import resolve_data_config

from rnet_hub.cli import main
from rnet_hub.folder import read_config
from rnet_hub.loading import load_timm_from_dir
from rnet_hub.preprocess import load_dicom

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("embed")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "inputs"
    (root / "dicom").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (180, 140), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(root / "colour.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photo.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65536, (50, 70), dtype=np.uint16)).save(root / "deep.png")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "dicom" / "IM0001")  # no extension: found by header
    shutil.copy(get_testdata_file("rtdose.dcm"), root / "dicom" / "dose.dcm")  # 15 frames
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / ".DS_Store").write_bytes(b"hidden")
    return root


@pytest.fixture(scope="module")
def reference(converted_dir):
    """Pooled features computed the plain way: timm transform + timm model, one image at a time."""
    model_dir = converted_dir("ResNet18")
    model = load_timm_from_dir(model_dir)
    transform = timm_create_transform(**resolve_data_config(pretrained_cfg=read_config(model_dir)["pretrained_cfg"]))

    def embed_one(image: Image.Image) -> np.ndarray:
        with torch.inference_mode():
            x = transform(image.convert("RGB")).unsqueeze(0)
            return model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy()

    return model_dir, model, embed_one


def run(*args):
    return main(["embed", *map(str, args), "-q"])


def read_index(stem):
    with open(f"{stem}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_embeds_every_image_with_its_source(folder, tmp_path, reference, capsys):
    model_dir, _, embed_one = reference
    stem = tmp_path / "out" / "emb"
    assert run(folder, "--model", model_dir, "--out", stem, "--batch-size", "4", "--num-workers", "1") == 0
    rows, vectors = read_index(stem), np.load(f"{stem}.npy")
    assert vectors.shape == (len(rows), 512) and vectors.dtype == np.float32
    assert [r["path"].removeprefix(str(folder) + "/") for r in rows] == [
        "colour.png", "deep.png", "grey.png", "photo.jpg", "dicom/IM0001", *["dicom/dose.dcm"] * 15]

    mr = rows[4]
    assert mr["sop_instance_uid"] == pydicom.dcmread(get_testdata_file("MR_small.dcm")).SOPInstanceUID
    assert (mr["frame"], mr["rule"], float(mr["window_center"]), float(mr["window_width"])) == \
        ("0", "export", 600.0, 1600.0)
    assert [r["frame"] for r in rows[5:]] == [str(i) for i in range(15)]
    assert {r["rule"] for r in rows[5:]} == {"percentile"} and {r["rule"] for r in rows[:4]} == {"image"}

    for row, vector in zip(rows[:4], vectors[:4], strict=True):
        if row["path"].endswith("deep.png"):
            continue  # 16 bit: no 8-bit timm reference; covered in test_preprocess
        np.testing.assert_allclose(vector, embed_one(Image.open(row["path"])), rtol=1e-4, atol=1e-4)
    frames = [*load_dicom(folder / "dicom" / "IM0001"), *load_dicom(folder / "dicom" / "dose.dcm")]
    for frame, vector in zip(frames, vectors[4:], strict=True):
        np.testing.assert_allclose(vector, embed_one(Image.fromarray(frame.pixels)), rtol=1e-4, atol=1e-4)

    with open(f"{stem}.errors.csv", newline="") as fh:
        (error,) = list(csv.DictReader(fh))
    assert error["path"] == str(folder / "broken.png") and "neither an image" in error["error"]
    printed = capsys.readouterr().out
    assert "embedded 20 images from 6 files" in printed and "1 files could not be read" in printed
    meta = json.loads((tmp_path / "out" / "emb.json").read_text())
    assert meta["dim"] == 512 and meta["stage"] is None and meta["input"]["mean"] == [0.0, 0.0, 0.0]


def test_parquet_when_pyarrow_is_installed(folder, tmp_path, reference):
    stem = tmp_path / "emb"
    assert run(folder / "dicom", "--model", reference[0], "--out", f"{stem}.npy", "--num-workers", "0") == 0
    try:
        import pyarrow.parquet as pq
    except ImportError:  # the parquet extra is optional: then only .npy + .csv
        assert not (tmp_path / "emb.parquet").exists() and (tmp_path / "emb.csv").exists()
        return
    table = pq.read_table(f"{stem}.parquet")
    assert table.column_names == ["path", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "frame",
                                  "window_index", "window_center", "window_width", "rule", "modality", "model_id",
                                  "weights_sha256", "hub_revision", "embedding"]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)),
                                  np.load(f"{stem}.npy"))
    assert table.column("frame").to_pylist() == [0, *range(15)]


def test_resume_embeds_only_new_files(folder, tmp_path, reference, capsys):
    model_dir = reference[0]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(folder, "--model", model_dir, "--out", full, "--num-workers", "0") == 0
    moved = tmp_path / "later"
    moved.mkdir()
    shutil.move(folder / "dicom", moved / "dicom")
    assert run(folder, "--model", model_dir, "--out", part, "--num-workers", "0") == 0
    first = np.load(f"{part}.npy")
    shutil.move(moved / "dicom", folder / "dicom")
    capsys.readouterr()
    assert run(folder, "--model", model_dir, "--out", part, "--num-workers", "0", "--resume") == 0
    assert "embedded 16 images from 2 files" in capsys.readouterr().out
    after = np.load(f"{part}.npy")
    np.testing.assert_array_equal(after[: len(first)], first)
    by_source = {(r["path"], r["frame"], r["rule"]): v for r, v in zip(read_index(part), after, strict=True)}
    assert by_source.keys() == {(r["path"], r["frame"], r["rule"]) for r in read_index(full)}
    for row, vector in zip(read_index(full), np.load(f"{full}.npy"), strict=True):
        np.testing.assert_allclose(by_source[(row["path"], row["frame"], row["rule"])], vector, atol=1e-5)


def test_resume_after_an_interrupted_write(folder, tmp_path, reference):
    model_dir, stem = reference[0], tmp_path / "emb"
    assert run(folder, "--model", model_dir, "--out", stem, "--num-workers", "0") == 0
    complete, listed = np.load(f"{stem}.npy"), read_index(stem)
    # a crash mid-append: rows of the last file written to both files, header not yet updated
    header_rows = len(listed) - 15
    with open(f"{stem}.npy", "r+b") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        start = fh.tell()
        fh.seek(0)
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (header_rows, 512)})
        assert fh.tell() == start
        fh.seek(0, 2)
        fh.write(b"\x00" * 100)  # and a torn embedding
    with open(f"{stem}.csv", "a") as fh:
        fh.write(f"{folder}/half-writ")  # and a torn line
    assert np.load(f"{stem}.npy", mmap_mode="r").shape == (header_rows, 512)
    assert run(folder, "--model", model_dir, "--out", stem, "--num-workers", "0", "--resume") == 0
    np.testing.assert_allclose(np.load(f"{stem}.npy"), complete, atol=1e-5)
    assert read_index(stem) == listed


def test_stage_embeddings(folder, tmp_path, reference):
    model_dir, model, _ = reference
    stem = tmp_path / "stage"
    assert run(folder / "dicom" / "IM0001", "--model", model_dir, "--out", stem, "--stage", "2",
               "--num-workers", "0") == 0
    vector = np.load(f"{stem}.npy")
    assert vector.shape == (1, 128)  # resnet18 layer2
    (frame,) = load_dicom(folder / "dicom" / "IM0001")
    transform = timm_create_transform(**resolve_data_config(pretrained_cfg=read_config(model_dir)["pretrained_cfg"]))
    x = transform(Image.fromarray(frame.pixels).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        expected = model.layer2(model.layer1(h)).mean(dim=(2, 3))
    np.testing.assert_allclose(vector, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_user_errors_exit_2_and_write_nothing(folder, tmp_path, reference, capsys):
    model_dir, stem = reference[0], tmp_path / "emb"
    assert run(tmp_path / "nowhere", "--model", model_dir, "--out", stem) == 2
    assert "input not found" in capsys.readouterr().err
    assert run(folder, "--model", model_dir, "--out", stem, "--stage", "9") == 2
    assert "--stage must be between 0 and 4" in capsys.readouterr().err
    assert not list(tmp_path.glob("emb*"))
    assert run(folder / "grey.png", "--model", model_dir, "--out", stem, "--num-workers", "0") == 0
    assert run(folder / "grey.png", "--model", model_dir, "--out", stem, "--num-workers", "0") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert run(folder / "grey.png", "--model", model_dir, "--out", stem, "--resume", "--stage", "1") == 2
    assert "written with stage=None" in capsys.readouterr().err
