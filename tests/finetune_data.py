"""Small synthetic fine-tuning data for the tests: grey shapes whose class is visible.

Three classes (:data:`CLASSES`): a filled circle, square or cross, bright on a dark noisy
background, at a random place and size. Writers for every data layout ``rnet_hub.finetune``
reads: class folders (PNG, JPEG, grey and RGB, DICOM with and without extension)
(:func:`make_image_folder`), CSV/Parquet manifests for each task (:func:`make_manifest`),
``datasets`` datasets (:func:`hf_dataset`, :func:`make_hf_dataset`), and DICOM files with studies
and frames of your choosing (:func:`write_dicom`). Everything is seeded: the same arguments write
the same files.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "draw", "hf_dataset", "make_hf_dataset", "make_image_folder", "make_manifest", "write_dicom"]

CLASSES = ("circle", "square", "cross")


def draw(shape: str, size: int = 64, *, rng: np.random.Generator, height: int | None = None,
         radius: int | None = None, rgb: bool = False) -> np.ndarray:
    """uint8 image (``height`` x ``size``, grey or RGB) of one bright ``shape`` of half-size ``radius``
    (random when None) at a random place on dark noise."""
    height = height or size
    radius = radius or int(rng.integers(max(3, min(size, height) // 6), max(4, min(size, height) // 3)))
    image = rng.normal(25, 8, (height, size)).clip(0, 255)
    cy = int(rng.integers(radius + 1, height - radius - 1))
    cx = int(rng.integers(radius + 1, size - radius - 1))
    yy, xx = np.mgrid[:height, :size]
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    if shape == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        mask = (dy <= radius) & (dx <= radius)
    elif shape == "cross":
        arm = max(1, radius // 3)
        mask = ((dy <= arm) & (dx <= radius)) | ((dx <= arm) & (dy <= radius))
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {CLASSES}")
    image[mask] = rng.normal(200, 15, int(mask.sum())).clip(0, 255)
    grey = image.astype(np.uint8)
    if not rgb:
        return grey
    return np.stack([grey, (grey * 0.8).astype(np.uint8), (grey * 0.6).astype(np.uint8)], axis=2)


def write_dicom(path: str | Path, pixels: np.ndarray, *, study_uid: str | None = None, modality: str = "MR",
                window: tuple[float, float] | None = (128.0, 256.0)) -> Path:
    """Write uint8 ``pixels`` ((H, W), or (N, H, W) for a multi-frame file) as a 16-bit grey DICOM
    file with StudyInstanceUID ``study_uid`` (a fresh one when None), one window, and a preamble.
    UIDs derive from the path, so the same call writes the same file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path), "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[str(path), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_image(folder: Path, stem: str, image: np.ndarray, kind: str) -> Path:
    """``kind``: "png", "jpg", "dcm" or "dicom-noext"."""
    if kind == "dcm":
        return write_dicom(folder / f"{stem}.dcm", image)
    if kind == "dicom-noext":
        return write_dicom(folder / stem, image)
    path = folder / f"{stem}.{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95) if kind == "jpg" else Image.fromarray(image).save(path)
    return path


def _kind(i: int, dicom_every: int) -> tuple[str, bool]:
    """(file kind, RGB) of the i-th image of a class: DICOM every ``dicom_every`` (alternately with and
    without extension), else PNG and JPEG, grey and RGB, in turn."""
    if dicom_every and i % dicom_every == dicom_every - 1:
        return ("dcm" if (i // dicom_every) % 2 == 0 else "dicom-noext"), False
    return ("png" if i % 2 == 0 else "jpg"), i % 4 in (1, 2)


def make_image_folder(root: str | Path, *, per_class: int = 8, size: int = 64, dicom_every: int = 3,
                      split: bool = True, classes: Sequence[str] = CLASSES, seed: int = 0) -> Path:
    """Class folders under ``root``: ``root/{train,val,test}/<class>/`` (``split=True``: ``per_class``
    training images per class and ``max(2, per_class // 4)`` each for val and test) or
    ``root/<class>/`` (``per_class`` each). Every other image is 3/4 as tall as wide (letterboxing);
    PNG and JPEG alternate, some RGB; every ``dicom_every``-th image is a DICOM file (0: none),
    alternately named ``.dcm`` and extension-less. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    plan = {"train": per_class, "val": max(2, per_class // 4), "test": max(2, per_class // 4)} if split \
        else {"": per_class}
    for part, count in plan.items():
        for cls in classes:
            for i in range(count):
                kind, rgb = _kind(i, dicom_every)
                image = draw(cls, size, rng=rng, height=size if i % 2 == 0 else size * 3 // 4, rgb=rgb)
                _write_image(root / part / cls, f"{cls}_{i:03d}", image, kind)
    return root


def _rows(kind: str, n: int, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, dict[str, Any]]]:
    rows = []
    for i in range(n):
        if kind == "single_label":
            cls = CLASSES[i % len(CLASSES)]
            rows.append((draw(cls, size, rng=rng), {"label": cls}))
        elif kind == "multi_label":
            present = [c for j, c in enumerate(CLASSES) if (i + 1) >> j & 1] or [CLASSES[0]]
            image = np.maximum.reduce([draw(c, size, rng=rng, radius=size // 8) for c in present])
            rows.append((image, {c: int(c in present) for c in CLASSES}))
        elif kind == "regression":
            radius = int(rng.integers(size // 10, size // 3))
            rows.append((draw("square", size, rng=rng, radius=radius), {"size_px": float(2 * radius + 1)}))
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return rows


def make_manifest(root: str | Path, kind: str = "single_label", fmt: str = "csv", *, n: int = 24, size: int = 64,
                  split_column: bool = False, dicom_every: int = 0, seed: int = 0) -> Path:
    """A manifest ``root/manifest.{csv,parquet}`` over PNG images in ``root/images/`` (paths relative to
    the manifest; every ``dicom_every``-th one DICOM). ``kind``: ``"single_label"`` (``path,label``
    with the shape's name), ``"multi_label"`` (``path,circle,square,cross`` 0/1; the image shows those
    shapes) or ``"regression"`` (``path,size_px``: the side of a square, a float). ``split_column``
    adds ``split`` (train, val, test in turn 6:1:1). Returns the manifest's path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    records = []
    for i, (image, labels) in enumerate(_rows(kind, n, size, rng)):
        image_kind = "dcm" if dicom_every and i % dicom_every == dicom_every - 1 else "png"
        path = _write_image(root / "images", f"img_{i:03d}", image, image_kind)
        record = {"path": path.relative_to(root).as_posix(), **labels}
        if split_column:
            record["split"] = ("train",) * 6 + ("val", "test")
            record["split"] = record["split"][i % 8]
        records.append(record)
    return write_manifest(root / f"manifest.{fmt}", records)


def write_manifest(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` (dicts with the same keys) as CSV or Parquet (by ``path``'s suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(records)), path)
    else:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return path


def hf_dataset(*, n: int = 24, size: int = 64, splits: bool = True, seed: int = 0) -> Any:
    """An in-memory ``datasets`` dataset of shapes: ``image`` (``datasets.Image``) and ``label``
    (``ClassLabel`` with :data:`CLASSES`). ``splits=True``: a ``DatasetDict`` with train (``n``),
    validation and test (``n // 4`` each); else one ``Dataset`` of ``n`` rows."""
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})

    def part(count: int) -> Any:
        labels = [i % len(CLASSES) for i in range(count)]
        images = [Image.fromarray(draw(CLASSES[c], size, rng=rng)) for c in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    if not splits:
        return part(n)
    return datasets.DatasetDict(train=part(n), validation=part(max(3, n // 4)), test=part(max(3, n // 4)))


def make_hf_dataset(root: str | Path, *, n: int = 24, size: int = 64, splits: bool = True, seed: int = 0) -> Path:
    """:func:`hf_dataset` written with ``save_to_disk`` to ``root``; returns ``root``."""
    root = Path(root)
    hf_dataset(n=n, size=size, splits=splits, seed=seed).save_to_disk(str(root))
    return root
