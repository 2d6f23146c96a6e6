"""The reference set: embeddings of a folder (or uploaded files), computed once, cached on disk, searched by cosine.

Cache layout, under the app's cache folder (:func:`rnet_hub.app.environment.default_cache_dir`)::

    <cache>/<model key>/model.json          which model the folder is for (for people)
    <cache>/<model key>/files.json          path -> size, mtime_ns, sha256 (saves re-hashing unchanged files)
    <cache>/<model key>/<sha256>.npz        one file's embeddings and which images they are

The model key (:class:`~rnet_hub.app.models.AppModel`) changes with the model's folder or
weights; a file's entry is found by the sha256 of its content, so a renamed or re-uploaded
file is not embedded again, and a changed one is. Entries are written atomically (a
temporary file renamed into place). Files that cannot be read are listed, not fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..archives.extract import file_sha256
from ..errors import RnetHubError
from ..files import write_atomic
from ..imaging.dicom import load_frames
from ..imaging.embed import collect_inputs
from .models import AppModel
from .views import frame_preview, read_views

__all__ = ["Neighbour", "ReferenceImage", "ReferenceIndex", "build_reference_index", "file_sha256"]

#: Errors that make one reference file unreadable (it is listed and skipped).
READ_ERRORS = (RnetHubError, OSError, ValueError, RuntimeError, KeyError, TypeError)


@dataclass(frozen=True)
class ReferenceImage:
    """One image of a reference file: the file, its position in ``load_frames(path)``, and a caption."""

    path: Path
    position: int
    caption: str

    def pixels(self) -> np.ndarray:
        """The image, read again from its file (8-bit, for display)."""
        return frame_preview(load_frames(self.path)[self.position])


@dataclass(frozen=True)
class Neighbour:
    """A reference image and its cosine similarity to the query."""

    image: ReferenceImage
    similarity: float


@dataclass
class ReferenceIndex:
    """Unit-length embeddings of every reference image, with the files read from cache, embedded, and skipped."""

    images: list[ReferenceImage] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: int = 0
    embedded: int = 0

    def nearest(self, embedding: np.ndarray, k: int = 8) -> list[Neighbour]:
        """The ``k`` reference images most similar to ``embedding`` (cosine similarity, highest first)."""
        if not self.images:
            return []
        query = np.asarray(embedding, dtype=np.float64).ravel()
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        similarity = self.embeddings.astype(np.float64) @ query
        order = np.argsort(-similarity, kind="stable")[:k]
        return [Neighbour(self.images[i], float(similarity[i])) for i in order]


class _Manifest:
    """``files.json``: the sha256 of files seen before, keyed by path and valid while size and mtime match."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "files.json"
        try:
            self.entries: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        seen = self.entries.get(str(path))
        if seen and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
            return str(seen["sha256"])
        digest = file_sha256(path)
        self.entries[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            write_atomic(self.path, lambda p: p.write_text(json.dumps(self.entries, indent=1)))


def _embed_file(path: Path, model: AppModel, entry: Path) -> tuple[np.ndarray, list[str]]:
    """Embed every image of one file and store them at ``entry``."""
    views = read_views(path, transform=model.transform)
    embeddings = model.run([v.model_input for v in views])[0]
    captions = [f"{path.name} frame {v.frame.frame} ({v.frame.rule})" for v in views]

    def write(target: Path) -> None:
        with open(target, "wb") as fh:
            np.savez(fh, embeddings=embeddings, captions=np.array(captions, dtype=str))

    write_atomic(entry, write)
    return embeddings, captions


def build_reference_index(files: Sequence[str | os.PathLike[str]], *, model: AppModel,
                          cache_dir: str | os.PathLike[str],
                          progress: Callable[[float, str], None] | None = None) -> ReferenceIndex:
    """The :class:`ReferenceIndex` of every file in ``files`` (folders are walked), embedding only files not cached.

    ``progress(fraction, description)`` is called before each file."""
    folder = Path(cache_dir) / model.key
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "model.json"
    if not about.exists():
        write_atomic(about, lambda p: p.write_text(json.dumps({"model": model.name, "folder": str(model.folder)})))
    manifest = _Manifest(folder)
    index, rows = ReferenceIndex(), []
    paths = collect_inputs(files) if files else []
    for count, path in enumerate(paths):
        if progress is not None:
            progress(count / max(len(paths), 1), f"reference set: {path.name} ({count + 1}/{len(paths)})")
        try:
            entry = folder / f"{manifest.sha256(path)}.npz"
            if entry.exists():
                with np.load(entry) as stored:
                    embeddings, captions = stored["embeddings"], [str(c) for c in stored["captions"]]
                index.from_cache += 1
            else:
                embeddings, captions = _embed_file(path, model, entry)
                index.embedded += 1
        except READ_ERRORS as exc:
            index.skipped.append((path.name, " ".join(str(exc).split()) or type(exc).__name__))
            continue
        rows.append(embeddings)
        index.images += [ReferenceImage(path, i, caption) for i, caption in enumerate(captions)]
    manifest.save()
    if rows:
        stacked = np.concatenate(rows).astype(np.float32)
        norms = np.linalg.norm(stacked, axis=1, keepdims=True)
        index.embeddings = stacked / np.maximum(norms, 1e-12)
    return index
