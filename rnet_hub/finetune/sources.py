"""Reading fine-tuning data from files: class folders and CSV/Parquet manifests.

Both end as :class:`Raw` rows (one per image a file makes, with its group, raw label and given
split), which :func:`rnet_hub.finetune.data.load_data` turns into targets and splits. Files are
checked here without decoding pixels: images with PIL's ``verify``, DICOM files by their header
(StudyInstanceUID for grouping, and the number of frames/windows
:func:`rnet_hub.imaging.dicom.load_frames` will make, from the exporter's own plan). Files that
fail are reported together, by path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ..errors import BadInputError, ImageReadError
from ..files import regular_file_problem
from ..imaging.dicom import is_dicom
from ..imaging.export_rules import export_plan

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_SUFFIXES", "Raw", "list_problems", "read_folder", "read_manifest",
           "scan_file", "split_name"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
"""Files taken from class folders (besides extension-less files that are DICOM by their header)."""
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_DICOM_SUFFIXES = (".dcm", ".dicom", "")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}
_SHOWN = 10


class Raw(NamedTuple):
    """One image of the data before labels are encoded: file, frame, group, raw label, given split."""

    source: str
    frame: int
    group: str
    label: Any
    split: str | None


def split_name(name: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a split's name (``validation``, ``valid``, ``dev`` ... too)."""
    return _SPLIT_NAMES.get(name.strip().lower())


def list_problems(problems: Sequence[str], what: str, fix: str) -> str:
    """One line: ``N what: a; b; ...; and K more; fix`` (at most 10 shown; ``what`` in the plural, and
    ``"files "``/``"paths "`` become singular for one)."""
    if len(problems) == 1:
        what = what.replace("files ", "file ", 1).replace("paths ", "path ", 1).replace(" do not ", " does not ")
    shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
    return f"{len(problems)} {what}: {shown}; {fix}"


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def _scan_dicom(path: str) -> tuple[int, str]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        from ..errors import MissingExtraError

        raise MissingExtraError(f"{path} is DICOM and reading DICOM needs pydicom: pip install "
                                "'rnet-hub[dicom]'") from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ImageReadError(f"not a readable DICOM file ({exc})") from exc
    if not rows or not columns:
        raise ImageReadError("a DICOM file without an image (no Rows/Columns)")
    colour = int(ds.get("SamplesPerPixel") or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    count = frames if colour else len(export_plan(ds, str(ds.get("Modality", "") or ""), frames, frames > 1))
    return count, str(ds.get("StudyInstanceUID", "") or "") or path


def scan_file(path: str) -> tuple[int, str]:
    """``(images, group)`` of one file without decoding its pixels: the number of images
    :func:`~rnet_hub.imaging.dicom.load_frames` makes of it (frames and windows of a DICOM, 1 for an
    image) and its group (the StudyInstanceUID of a DICOM file, else the path). Raises
    :class:`~rnet_hub.errors.ImageReadError` with the reason when the file cannot be read."""
    problem = regular_file_problem(path)
    if problem is not None:
        raise ImageReadError(problem)
    if is_dicom(path):
        return _scan_dicom(path)
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many kinds on broken files
        if Path(path).suffix.lower() in _DICOM_SUFFIXES:  # headerless DICOM, as load_frames tries it
            try:
                return _scan_dicom(path)
            except ImageReadError:
                pass
        raise ImageReadError(f"neither an image PIL can read nor a DICOM file ({type(exc).__name__}: {exc})") \
            from exc
    return 1, path


def _scan_all(files: Sequence[tuple[str, Any, str | None]], where: str) -> list[Raw]:
    """:class:`Raw` rows of ``(path, label, split)`` files; every unreadable file reported at once."""
    rows: list[Raw] = []
    problems: list[str] = []
    for path, label, split in files:
        try:
            count, group = scan_file(path)
        except ImageReadError as exc:
            problems.append(f"{path} ({str(exc)[:120]})")
            continue
        rows.extend(Raw(path, frame, group, label, split) for frame in range(count))
    if problems:
        raise ImageReadError(list_problems(problems, f"files under {where} cannot be read",
                                           "fix or remove them"))
    return rows


# ---------------------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------------------

def _images_under(folder: Path) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(root, name)
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                continue
            if suffix in IMAGE_SUFFIXES or (suffix == "" and os.path.isfile(path) and is_dicom(path)):
                found.append(path)
    return found


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder(root: Path) -> list[Raw]:
    """Rows of ``root/{train,val,test}/<class>/...`` or ``root/<class>/...`` (no split given); class
    folders are searched recursively for ``.png``/``.jpg``/``.jpeg``/``.dcm`` (and other
    :data:`IMAGE_SUFFIXES`) and extension-less DICOM files."""
    folders = _subfolders(root)
    splits = {p: split_name(p.name) for p in folders if split_name(p.name)}
    if splits and len(splits) != len(folders):
        others = ", ".join(p.name for p in folders if p not in splits)
        raise BadInputError(f"{root} mixes split folders ({', '.join(p.name for p in splits)}) with other folders "
                            f"({others}): put the class folders inside train/ (and val/, test/)")
    if len({*splits.values()}) != len(splits):
        raise BadInputError(f"{root} has two folders for one split ({', '.join(p.name for p in splits)}); keep one")
    layout = [(cls, split) for folder, split in splits.items() for cls in _subfolders(folder)] if splits \
        else [(cls, None) for cls in folders]
    files = [(path, cls.name, split) for cls, split in layout for path in _images_under(cls)]
    if not files:
        raise BadInputError(f"no images found under {root}: expected {root}/<class>/*.png|jpg|dcm, or "
                            f"{root}/train/<class>/... with optional val/ and test/")
    return _scan_all([(os.path.abspath(p), label, split) for p, label, split in files], str(root))


# ---------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------

def _read_table(path: Path) -> Any:
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import csv as csv_module

            from pyarrow import csv

            with open(path, newline="", encoding="utf-8-sig") as fh:
                names = next(csv_module.reader(fh), [])
            text = {n: pa.string() for n in names if n.strip().lower() in ("path", "split")}
            return csv.read_csv(path, convert_options=csv.ConvertOptions(column_types=text))
        from pyarrow import parquet

        return parquet.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInputError(f"manifest {path} cannot be read as {path.suffix[1:].upper()} ({exc})") from exc


def read_manifest(path: Path, label_column: str | None) -> tuple[list[Raw], list[str], list[list[Any]]]:
    """``(rows, label columns, their values)`` of a CSV/Parquet manifest with a ``path`` column (paths
    relative to the manifest's folder), label column(s) and an optional ``split`` column. Each row's
    ``label`` is its value (one column) or the tuple of values (several)."""
    table = _read_table(path)
    columns = {name.strip().lower(): name for name in table.column_names}
    if "path" not in columns:
        raise BadInputError(f"manifest {path} has no 'path' column (columns: {', '.join(table.column_names)}); "
                            "name the image-path column 'path'")
    special = {columns["path"], columns.get("split")}
    if label_column is not None and label_column not in table.column_names:
        raise BadInputError(f"manifest {path} has no column {label_column!r} (columns: "
                            f"{', '.join(table.column_names)}); pass one of them as label_column")
    labels = [label_column] if label_column else [n for n in table.column_names if n not in special]
    if not labels:
        raise BadInputError(f"manifest {path} has no label column (only {', '.join(table.column_names)}): add "
                            "'label' (single-label), one 0/1 column per label (multi-label) or a numeric target")
    values = [table.column(n).to_pylist() for n in labels]
    paths = table.column(columns["path"]).to_pylist()
    splits: list[str | None] = [None] * len(paths)
    if "split" in columns:
        given = table.column(columns["split"]).to_pylist()
        bad = sorted({repr(s) for s in given if s is None or split_name(str(s)) is None})
        if bad:
            raise BadInputError(f"manifest {path}: the split column holds {', '.join(bad[:5])}; use train, val or "
                                "test in every row (or drop the column to split automatically)")
        splits = [split_name(str(s)) for s in given]
    base = path.parent
    empty = [str(i + 2) for i, p in enumerate(paths) if not p]
    if empty:
        raise BadInputError(f"manifest {path} has empty paths in lines {', '.join(empty[:10])}; fill them in")
    files = [os.path.abspath(os.path.join(base, os.path.expanduser(p))) for p in paths]
    missing = [p for p, f in zip(paths, files, strict=True) if not os.path.lexists(f)]
    if missing:
        raise BadInputError(list_problems(missing, f"paths in manifest {path} do not exist",
                                          f"paths are relative to {base}"))
    row_labels = values[0] if len(labels) == 1 else list(zip(*values, strict=True))
    return _scan_all(list(zip(files, row_labels, splits, strict=True)), f"manifest {path}"), labels, values
