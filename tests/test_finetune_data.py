"""The data layer of ``rnet-hub finetune``: layouts, tasks, splits, errors, transform and cache.

Data are the synthetic shapes of ``tests/finetune_data.py`` (grey and RGB PNG/JPEG, DICOM with and
without extension, multi-frame DICOM, manifests, ``datasets``), all tiny.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_data import (
    CLASSES,
    draw,
    hf_dataset,
    make_hf_dataset,
    make_image_folder,
    make_manifest,
    write_dicom,
    write_manifest,
)
from PIL import Image

import rnet_hub.finetune.dataset as finetune_dataset
from rnet_hub.architectures import find_arch
from rnet_hub.errors import BadInputError, ImageReadError
from rnet_hub.finetune.data import SPLITS, FinetuneData, load_data, make_dataset
from rnet_hub.folder import build_config
from rnet_hub.imaging.dicom import load_frames
from rnet_hub.imaging.transforms import create_transform

ROOT = Path(__file__).resolve().parent.parent


def small_config(size: int = 48) -> dict:
    """A ResNet18 folder's config.json, at a small input size to keep the tests fast."""
    config = build_config(find_arch("ResNet18"), num_classes=3, num_features=512)
    config["pretrained_cfg"]["input_size"] = [3, size, size]
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("folder") / "data", per_class=8, size=32)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("flat") / "data", per_class=8, size=32, split=False)


def sets(data: FinetuneData) -> dict[str, set[tuple[str, int]]]:
    return {s: {(e.source, e.frame) for e in data.splits[s]} for s in SPLITS}


# ---------------------------------------------------------------------------------------- layouts
def test_folder_with_splits_reads_every_file_kind(folder: Path) -> None:
    data = load_data(folder)
    assert (data.task, data.source_kind, data.root) == ("single_label", "folder", str(folder))
    assert data.label_names == ("circle", "cross", "square")
    assert data.summary()["counts"] == {"train": 24, "val": 6, "test": 6}
    sources = [e.source for s in SPLITS for e in data.splits[s]]
    assert {Path(s).suffix for s in sources} == {".png", ".jpg", ".dcm", ""}  # extension-less DICOM found
    for example in data.splits["train"]:
        assert data.label_names[example.target] == Path(example.source).parent.name
        assert Path(example.source).parts[-3] == "train" and os.path.isabs(example.source)


def test_missing_val_and_test_are_a_seeded_stratified_split(flat: Path) -> None:
    data = load_data(flat)
    summary = data.summary()
    assert summary["counts"] == {"train": 18, "val": 3, "test": 3}  # 0.75 / 0.125 / 0.125 of 24
    assert all(summary["class_counts"][s] == dict.fromkeys(CLASSES, n) for s, n in (("train", 6), ("val", 1),
                                                                                    ("test", 1)))
    assert sets(load_data(flat)) == sets(data)  # deterministic for the seed (1221)
    assert sets(load_data(flat, seed=1)) != sets(data)
    assert sets(load_data(flat, fractions=(0.5, 0.25, 0.25)))["val"].__len__() == 6


def test_a_missing_test_folder_is_carved_out_of_train(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=8, size=32, dicom_every=0)
    for path in (root / "test").rglob("*"):
        if path.is_file():
            path.unlink()
    for cls in CLASSES:
        (root / "test" / cls).rmdir()
    (root / "test").rmdir()
    data = load_data(root)
    assert len(data.splits["val"]) == 6 and all("/val/" in e.source for e in data.splits["val"])
    # test takes 0.125 / (0.75 + 0.125) of the 24 training images
    assert len(data.splits["test"]) == 3 and all("/train/" in e.source for e in data.splits["test"])


def test_frames_of_one_study_never_straddle_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    for k, cls in enumerate(("circle", "square")):
        write_dicom(root / cls / "cine.dcm", np.stack([draw(cls, 32, rng=rng) for _ in range(4)]))  # 4 frames
        for i in range(3):  # three files of one study
            write_dicom(root / cls / f"series{i}.dcm", draw(cls, 32, rng=rng), study_uid=f"1.2.3.{k}")
        for i in range(6):
            Image.fromarray(draw(cls, 32, rng=rng)).save(root / cls / f"plain{i}.png")
    cine = str(root / "circle" / "cine.dcm")
    for seed in range(6):
        data = load_data(root, seed=seed)
        frames = sorted(e.frame for s in SPLITS for e in data.splits[s] if e.source == cine)
        assert frames == list(range(len(load_frames(cine)))) == [0, 1, 2, 3]  # one example per frame
        where = {}
        for split in SPLITS:
            for example in data.splits[split]:
                assert where.setdefault(example.group, split) == split, f"{example.group} in two splits"
        assert {e.group for s in SPLITS for e in data.splits[s] if "series" in e.source} == {"1.2.3.0", "1.2.3.1"}
        assert all(len(data.splits[s]) for s in SPLITS)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("kind", ["single_label", "multi_label", "regression"])
def test_manifests_infer_the_task_and_read_targets(tmp_path: Path, kind: str, fmt: str) -> None:
    manifest = make_manifest(tmp_path / "m", kind, fmt, n=16, size=32, split_column=True)
    data = load_data(manifest)
    assert (data.task, data.source_kind) == (kind, "manifest")
    assert data.summary()["counts"] == {"train": 12, "val": 2, "test": 2}  # the split column, as given
    import pyarrow.csv
    import pyarrow.parquet

    table = (pyarrow.csv.read_csv if fmt == "csv" else pyarrow.parquet.read_table)(manifest).to_pylist()
    expected = {str((manifest.parent / r["path"]).resolve()): r for r in table}
    for example in (e for s in SPLITS for e in data.splits[s]):
        row = expected[example.source]
        if kind == "single_label":
            assert data.label_names[example.target] == row["label"]
        elif kind == "multi_label":
            assert data.label_names == CLASSES and example.target == tuple(float(row[c]) for c in CLASSES)
        else:
            assert data.label_names == ("size_px",) and example.target == pytest.approx(row["size_px"])


def test_task_override_applies_or_fails_clearly(tmp_path: Path, folder: Path) -> None:
    regression = make_manifest(tmp_path / "r", "regression", n=16, size=32)
    assert load_data(regression, task="single_label").task == "single_label"  # sizes as classes
    labels = make_manifest(tmp_path / "s", "single_label", n=16, size=32)
    with pytest.raises(BadInputError, match=r"regression needs a numeric target .* 'label' holds text"):
        load_data(labels, task="regression")
    with pytest.raises(BadInputError, match="class folders make single-label data; use a CSV or Parquet manifest"):
        load_data(folder, task="multi_label")
    multi = make_manifest(tmp_path / "m", "multi_label", n=16, size=32)
    with pytest.raises(BadInputError, match=r"single_label needs one label column .* has 3 .*label_column"):
        load_data(multi, task="single_label")
    assert load_data(multi, task="single_label", label_column="square").label_names == ("0", "1")
    months = [{"path": f"m/images/img_00{i}.png", "age": 100 + 7 * i} for i in range(8)]  # whole numbers
    ages = write_manifest(tmp_path / "ages.csv", months)
    assert load_data(ages).task == "single_label"
    data = load_data(ages, task="regression")
    assert data.label_names == ("age",) and sorted(e.target for s in SPLITS for e in data.splits[s]) == [
        float(r["age"]) for r in months]
    with pytest.raises(BadInputError, match="unknown task 'segmentation'"):
        load_data(folder, task="segmentation")


def test_a_hub_name_goes_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    asked = []

    def load_dataset(name: str) -> datasets.DatasetDict:
        asked.append(name)
        return hf_dataset(n=6, size=32)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_data("someone/shapes")
    assert asked == ["someone/shapes"] and (data.source_kind, data.root) == ("datasets", "someone/shapes")
    assert data.summary()["counts"] == {"train": 6, "val": 3, "test": 3}


def test_datasets_sources(tmp_path: Path) -> None:
    saved = load_data(make_hf_dataset(tmp_path / "hf", n=12, size=32))
    assert (saved.source_kind, saved.label_names) == ("datasets", CLASSES)  # ClassLabel names
    assert saved.summary()["counts"] == {"train": 12, "val": 3, "test": 3}
    single = load_data(hf_dataset(n=24, size=32, splits=False))
    assert single.summary()["counts"] == {"train": 18, "val": 3, "test": 3}
    assert single.root.startswith("<in-memory datasets.Dataset")
    rows = hf_dataset(n=6, size=32)
    first = rows["validation"][0]
    data = load_data(rows)
    dataset = make_dataset(data, "val", model_config=small_config())
    index = data.splits["val"].index(next(e for e in data.splits["val"] if e.source == "dataset:6"))
    np.testing.assert_array_equal(dataset[index]["pixel_values"], create_transform(small_config())(first["image"]))
    assert dataset[index]["labels"] == first["label"]
    with pytest.raises(BadInputError, match=r"splits validation, test but no 'train' split: rename one"):
        load_data(type(rows)(validation=rows["validation"], test=rows["test"]))
    with pytest.raises(BadInputError, match=r"no image column 'picture' .*pass image_column=NAME"):
        load_data(rows, image_column="picture")


# ---------------------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(BadInputError, match=r"no images found under .*empty: expected"):
        load_data(tmp_path / "empty")
    make_image_folder(tmp_path / "one", per_class=4, size=32, split=False, classes=("circle",))
    with pytest.raises(BadInputError, match=r"single class \(circle\): classification needs at least two"):
        load_data(tmp_path / "one")
    with pytest.raises(BadInputError, match=r"nowhere\.csv does not exist: give an image folder"):
        load_data(tmp_path / "nowhere.csv")


def test_unreadable_files_are_listed_by_path(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=4, size=32, split=False, dicom_every=0)
    broken = [root / "circle" / f"broken{i:02d}.png" for i in range(12)] + [root / "square" / "broken.dcm"]
    for path in broken:
        path.write_bytes(b"not an image at all" * 20)
    with pytest.raises(ImageReadError) as caught:
        load_data(root)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"13 files under {root} cannot be read")
    assert message.count("broken") == 10 and message.endswith("and 3 more; fix or remove them")
    for path in broken[:2]:
        path.unlink()
    for path in broken[2:-1]:
        path.unlink()
    with pytest.raises(ImageReadError, match=rf"^1 file under .* cannot be read: {broken[-1]} \(neither an image PIL "
                                            "can read nor a DICOM file"):
        load_data(root)


def test_clear_errors_for_bad_manifests(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, "multi_label", n=8, size=32)
    rows = [dict(zip(["file", "label"], ["images/img_000.png", "circle"], strict=True))]
    with pytest.raises(BadInputError, match=r"no 'path' column \(columns: file, label\); name the image-path"):
        load_data(write_manifest(tmp_path / "nopath.csv", rows))
    with pytest.raises(BadInputError, match="has no label column .*add 'label'"):
        load_data(write_manifest(tmp_path / "nolabel.parquet", [{"path": "images/img_000.png"}]))
    records = [{"path": f"images/img_00{i}.png", "a": i % 2, "b": 2 if i == 3 else 1} for i in range(8)]
    with pytest.raises(BadInputError, match=r"multi-label values must be 0 or 1, but 1 rows are not \(row 4: "):
        load_data(write_manifest(tmp_path / "two.csv", records))
    lost = [{"path": p, "label": "x"} for p in ("images/img_000.png", "gone/a.png", "gone/b.png")]
    with pytest.raises(BadInputError, match=rf"2 paths in manifest .* do not exist: gone/a.png; gone/b.png; paths "
                                            rf"are relative to {tmp_path}"):
        load_data(write_manifest(tmp_path / "lost.csv", lost))
    with pytest.raises(BadInputError, match=r"has no column 'age' \(columns: path, circle, square, cross\)"):
        load_data(manifest, label_column="age")
    bad_split = [{"path": f"images/img_00{i}.png", "label": i % 2, "split": "holdout"} for i in range(4)]
    with pytest.raises(BadInputError, match=r"split column holds 'holdout'; use train, val or test"):
        load_data(write_manifest(tmp_path / "split.csv", bad_split))


# ---------------------------------------------------------------------------------------- the dataset
def test_eval_output_is_the_pretraining_transform(folder: Path) -> None:
    data = load_data(folder)
    config = build_config(find_arch("ResNet18"), num_classes=3, num_features=512)  # the real 224 config
    transform = create_transform(config)
    dataset = make_dataset(data, "val", model_config=config)
    kinds = set()
    for index, example in enumerate(data.splits["val"]):
        item = dataset[index]
        assert item["pixel_values"].dtype == torch.float32 and item["pixel_values"].shape == (3, 224, 224)
        torch.testing.assert_close(item["pixel_values"], transform(example.source), rtol=0, atol=0)
        torch.testing.assert_close(dataset[index]["pixel_values"], item["pixel_values"], rtol=0, atol=0)
        assert item["labels"].dtype == torch.int64 and item["labels"].item() == example.target
        kinds.add((Path(example.source).suffix, load_frames(example.source)[0].pixels.ndim))
    assert {(".png", 2), (".jpg", 3)} <= kinds  # grey and RGB both
    imagenet = make_dataset(data, "val", model_config=config, init="imagenet")
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for index in range(len(dataset)):
        torch.testing.assert_close(imagenet[index]["pixel_values"], (dataset[index]["pixel_values"] - mean) / std,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["multi_label", "regression"])
def test_labels_have_the_loss_dtype(tmp_path: Path, kind: str) -> None:
    data = load_data(make_manifest(tmp_path, kind, n=8, size=32))
    item = make_dataset(data, "test", model_config=small_config())[0]
    assert item["labels"].dtype == torch.float32
    assert item["labels"].shape == ((3,) if kind == "multi_label" else ())


def test_training_augments_and_flip_can_be_turned_off(tmp_path: Path) -> None:
    image = np.zeros((48, 48), np.uint8)
    image[20:28, 3:13] = 200  # a bright bar near the left edge
    root = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(4):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / cls / f"{i}.png")
    data = load_data(root)
    config = small_config(48)

    def right_heavy(flip: bool) -> list[bool]:
        dataset = make_dataset(data, "train", model_config=config, flip=flip)
        torch.manual_seed(0)
        outputs = [dataset[0]["pixel_values"][0] for _ in range(16)]
        assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # random every call
        return [float(o[:, 24:].sum()) > float(o[:, :24].sum()) for o in outputs]

    assert any(right_heavy(True)) and not all(right_heavy(True))  # flipped about half the time
    assert not any(right_heavy(False))  # rotation and colour jitter only
    evaluation = make_dataset(data, "train", model_config=config, train=False)
    torch.testing.assert_close(evaluation[0]["pixel_values"], create_transform(config)(data.splits["train"][0].source),
                               rtol=0, atol=0)


def test_the_cache_decodes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    root = make_image_folder(tmp_path / "data", per_class=3, size=32, split=False)
    write_dicom(root / "circle" / "cine.dcm", np.stack([draw("circle", 32, rng=rng) for _ in range(3)]))
    data = load_data(root, fractions=(0.9, 0.05, 0.05))
    decoded: list[str] = []
    real = finetune_dataset.decode_source

    def counting(example, rows=None):
        decoded.append(example.source)
        return real(example, rows)

    monkeypatch.setattr(finetune_dataset, "decode_source", counting)
    train = data.splits["train"]
    files = {e.source for e in train}
    assert len(train) > len(files)  # the multi-frame file gives several examples
    dataset = make_dataset(data, "train", model_config=small_config(), train=False, cache_dir=tmp_path / "cache")
    first = [dataset[i]["pixel_values"] for i in range(len(dataset))]
    assert sorted(decoded) == sorted(files) and dataset.decodes == len(files)  # one decode per file
    second = [dataset[i]["pixel_values"] for i in range(len(dataset))]
    assert len(decoded) == len(files)  # the second epoch decodes nothing
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    again = make_dataset(data, "train", model_config=small_config(), train=False, cache_dir=tmp_path / "cache")
    assert all(torch.equal(again[i]["pixel_values"], first[i]) for i in range(len(again)))
    assert len(decoded) == len(files) and again.cache_hits == len(train)  # read back from disk


def test_a_second_process_reuses_the_disk_cache(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=4, size=32, split=False)
    cache = tmp_path / "cache"
    data = load_data(root)
    filled = make_dataset(data, "train", model_config=small_config(), train=False, cache_dir=cache)
    np.save(tmp_path / "fill.npy", np.stack([filled[i]["pixel_values"].numpy() for i in range(len(filled))]))
    assert (filled.decodes, filled.cache_hits) == (9, 0)  # 9 training images, decoded once each
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import rnet_hub.finetune.dataset as d
        from rnet_hub.finetune.data import load_data, make_dataset
        from rnet_hub.architectures import find_arch
        from rnet_hub.folder import build_config

        def refuse(*args, **kwargs):
            raise AssertionError("decoded in the second process")

        d.decode_source = refuse
        config = build_config(find_arch("ResNet18"), num_classes=3, num_features=512)
        config["pretrained_cfg"]["input_size"] = [3, 48, 48]
        data = load_data({str(root)!r})
        dataset = make_dataset(data, "train", model_config=config, train=False, cache_dir={str(cache)!r})
        np.save({str(tmp_path / "reuse.npy")!r}, np.stack([dataset[i]["pixel_values"].numpy()
                                                         for i in range(len(dataset))]))
        print(dataset.decodes, dataset.cache_hits)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "9"]  # (a DDP rank, a resumed run) only reads back
    np.testing.assert_array_equal(np.load(tmp_path / "fill.npy"), np.load(tmp_path / "reuse.npy"))


def test_concurrent_cache_writers_leave_whole_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=4, size=32, split=False)
    data = load_data(root)
    datasets = [make_dataset(data, "train", model_config=small_config(), train=False, cache_dir=tmp_path / "c")
                for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: [d[i]["pixel_values"] for i in range(len(d))], datasets))
    assert all(torch.equal(a, b) for r in results[1:] for a, b in zip(results[0], r, strict=True))
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert len(files) == len(data.splits["train"]) and all(p.suffix == ".npy" for p in files)  # no temporary left
    assert all(np.load(p).dtype == np.uint8 for p in files)


def test_training_fractions_are_nested(flat: Path) -> None:
    data = load_data(flat)
    parts = {f: data.with_train_fraction(f) for f in (0.05, 0.25, 0.5, 1.0)}
    sizes = {f: len(p.splits["train"]) for f, p in parts.items()}
    assert sizes == {0.05: 1, 0.25: 4, 0.5: 9, 1.0: 18}
    chosen = [set(parts[f].splits["train"]) for f in (0.05, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in itertools.pairwise(chosen))  # each a strict subset of the next
    assert all(p.splits["val"] == data.splits["val"] and p.splits["test"] == data.splits["test"]
               for p in parts.values())
    assert set(data.with_train_fraction(0.25, seed=7).splits["train"]) != chosen[1]
    assert data.with_train_fraction(0.25).splits == parts[0.25].splits  # deterministic
    with pytest.raises(BadInputError, match=r"fraction must be in \(0, 1\]"):
        data.with_train_fraction(0)
