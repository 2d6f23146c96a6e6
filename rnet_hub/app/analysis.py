"""One analysis of uploaded files, independent of the UI: what every panel of the app shows.

:class:`Analyser` holds what lives as long as the app (loaded models, the reference folder
given at start, the cache and temp folders); :meth:`Analyser.analyse` reads the uploaded files,
and returns an :class:`Analysis`: every image with its metadata and model input, the chosen
image's embedding and nearest reference images, and, for a fine-tuned model, its class
probabilities and Grad-CAM overlay. A file that cannot be read, a model that cannot be
loaded, or an empty upload never raises: it becomes a line in :attr:`Analysis.messages`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RnetHubError
from ..imaging.embed import collect_inputs
from .models import AppModel, ModelCache
from .reference import READ_ERRORS, Neighbour, ReferenceIndex, build_reference_index
from .saliency import grad_cam, overlay
from .views import ImageView, frame_preview, input_preview, read_views

__all__ = ["Analyser", "Analysis", "Progress"]

logger = logging.getLogger(__name__)

#: ``progress(fraction, description)``: how long work reports where it is (gradio's ``gr.Progress`` fits).
Progress = Callable[[float, str], None]
Captioned = tuple[np.ndarray, str]


@dataclass
class Analysis:
    """What the app shows for one upload (images as 8-bit numpy arrays with captions)."""

    images: list[Captioned] = field(default_factory=list)
    inputs: list[Captioned] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    selected: int | None = None
    embedding: np.ndarray | None = None
    summary: str = ""
    neighbours: list[Neighbour] = field(default_factory=list)
    probabilities: dict[str, float] | None = None
    cam: np.ndarray | None = None
    cam_image: np.ndarray | None = None
    embeddings_file: Path | None = None
    messages: list[str] = field(default_factory=list)

    def neighbour_gallery(self) -> list[Captioned]:
        """The nearest reference images with their cosine similarity as captions."""
        return [(n.image.pixels(), f"cos {n.similarity:.3f} - {n.image.caption}") for n in self.neighbours]


def _reason(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """The error's message on one line, with ``path`` shortened to its file name (uploads sit in hashed folders)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(os.fspath(path), os.path.basename(os.fspath(path))) if path is not None else text


def _quiet(fraction: float, description: str) -> None:
    """The default progress callback: nothing."""


class Analyser:
    """The app's state: models loaded once, the reference set and its cache, the temp folder for downloads.

    ``reference``: a folder (or file) whose images are the reference set for neighbours;
    ``cache_dir``: where reference embeddings are cached; ``temp_dir``: where the app writes the
    files it offers for download. ``max_images`` caps the images shown per upload.
    """

    def __init__(self, *, models: Sequence[str], reference: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str], temp_dir: str | os.PathLike[str], max_images: int = 64,
                 neighbours: int = 8) -> None:
        self.models = list(models)
        self.reference = Path(reference) if reference is not None else None
        self.cache_dir = Path(cache_dir)
        self.temp_dir = Path(temp_dir)
        self.max_images = max_images
        self.k = neighbours
        self._cache = ModelCache()
        self._indexes: dict[tuple[str, tuple[tuple[str, int, int], ...]], ReferenceIndex] = {}

    def model(self, name: str) -> AppModel:
        """The loaded model for ``name``."""
        return self._cache.get(name)

    def reference_index(self, model: AppModel, uploaded: Sequence[str | os.PathLike[str]] = (),
                        progress: Progress = _quiet) -> ReferenceIndex:
        """The reference set (the start folder and ``uploaded`` files) embedded by ``model`` (cached on disk)."""
        sources = ([str(self.reference)] if self.reference is not None else []) + [os.fspath(p) for p in uploaded]
        key = (model.key, _signature(sources))  # a file added, changed or removed builds the index again
        if key not in self._indexes:
            self._indexes[key] = build_reference_index(sources, model=model, cache_dir=self.cache_dir,
                                                       progress=progress)
        return self._indexes[key]

    def _read(self, files: Sequence[str | os.PathLike[str]], model: AppModel, result: Analysis,
              progress: Progress) -> list[ImageView]:
        views: list[ImageView] = []
        for count, path in enumerate(files):
            name = os.path.basename(os.fspath(path))
            progress(0.3 * count / max(len(files), 1), f"reading {name}")
            try:
                found = read_views(path, transform=model.transform, name=name, first_number=len(views) + 1)
            except READ_ERRORS as exc:
                result.messages.append(f"{name} cannot be read: {_reason(exc, path)}")
                continue
            except Exception as exc:
                logger.exception("unexpected error reading %s", path)
                result.messages.append(f"{name} cannot be read ({type(exc).__name__}: {_reason(exc, path)})")
                continue
            if not found:
                result.messages.append(f"{name} holds no image")
            views += found
        if len(views) > self.max_images:
            result.messages.append(f"{len(views)} images: showing the first {self.max_images}")
            views = views[:self.max_images]
        return views

    def analyse(self, files: Sequence[str | os.PathLike[str]], *, model_name: str, image_number: int = 1,
                reference_files: Sequence[str | os.PathLike[str]] = (), progress: Progress = _quiet) -> Analysis:
        """Everything the app shows for ``files`` with the model ``model_name``; ``image_number`` (1-based)
        picks the image whose embedding, neighbours, probabilities and Grad-CAM are shown."""
        result = Analysis()
        if not files:
            result.messages.append("no file: upload one or more DICOM, PNG or JPEG files")
            return result
        progress(0.0, f"loading {model_name}")
        try:
            model = self.model(model_name)
        except (RnetHubError, OSError) as exc:
            result.messages.append(f"model {model_name!r} cannot be loaded: {_reason(exc)}")
            return result
        views = self._read(files, model, result, progress)
        if not views:
            return result
        result.table = [view.row() for view in views]
        result.images = [(frame_preview(view.frame), view.caption) for view in views]
        height, width = model.input_size
        result.inputs = [(input_preview(view.model_input, model.transform.config),
                          f"#{view.number} model input {height} x {width}") for view in views]
        if not 1 <= image_number <= len(views):
            result.messages.append(f"image {image_number} does not exist: showing image 1 of {len(views)}")
            image_number = 1
        result.selected = image_number
        progress(0.4, "embedding")
        embeddings, probabilities = model.run([view.model_input for view in views])
        result.embedding = embeddings[image_number - 1]
        result.embeddings_file = self._save(embeddings, views)
        self._explain(model, views[image_number - 1], probabilities[image_number - 1], result)
        try:
            index = self.reference_index(model, reference_files, lambda f, d: progress(0.5 + 0.45 * f, d))
        except RnetHubError as exc:  # the reference folder went away
            result.messages.append(f"the reference set cannot be read: {_reason(exc)}")
            index = ReferenceIndex()
        result.neighbours = index.nearest(result.embedding, self.k)
        result.messages += [f"reference file {name} skipped: {why}" for name, why in index.skipped]
        result.summary = _summary(model, result, index)
        progress(1.0, "done")
        return result

    def _explain(self, model: AppModel, view: ImageView, probabilities: np.ndarray, result: Analysis) -> None:
        """Class probabilities and the Grad-CAM overlay of a fine-tuned model."""
        if not model.fine_tuned:
            return
        result.probabilities = {label: float(p) for label, p in zip(model.label_names, probabilities, strict=True)}
        try:
            result.cam = grad_cam(model.model, view.model_input, int(np.argmax(probabilities)))
        except (ValueError, RuntimeError, ImportError) as exc:  # no feature stage to hook, grad-cam missing
            result.messages.append(f"no Grad-CAM for {model.architecture}: {_reason(exc)}")
            return
        result.cam_image = overlay(input_preview(view.model_input, model.transform.config), result.cam)

    def _save(self, embeddings: np.ndarray, views: list[ImageView]) -> Path:
        """The embeddings of this upload as ``embeddings.npy`` (one row per image) in a new folder of the temp dir."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="embeddings-", dir=self.temp_dir))
        np.save(folder / "embeddings.npy", embeddings.astype(np.float32))
        (folder / "embeddings.csv").write_text("number,file,frame,rule\n" + "".join(
            f"{v.number},{v.name},{v.frame.frame},{v.frame.rule}\n" for v in views))
        return folder / "embeddings.npy"


def _signature(sources: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """The reference files under ``sources`` with their size and modification time."""
    found = []
    for path in collect_inputs(sources) if sources else []:
        try:
            stat = path.stat()
        except OSError:
            found.append((str(path), -1, -1))
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _summary(model: AppModel, result: Analysis, index: ReferenceIndex) -> str:
    """Markdown: the model, the chosen image's embedding, and the reference set."""
    embedding = result.embedding if result.embedding is not None else np.zeros(0)
    head = ", ".join(f"{v:.4f}" for v in embedding[:6])
    kind = (f"fine-tuned classifier ({model.num_classes} classes: {', '.join(model.label_names)})"
            if model.fine_tuned else "pretrained (36 unnamed pretraining clusters)")
    lines = [f"**Model** `{model.name}`: {model.architecture}, {kind}, input "
             f"{model.input_size[0]} x {model.input_size[1]}.",
             f"**Embedding of image #{result.selected}**: {embedding.size} values (pooled features), "
             f"L2 norm {float(np.linalg.norm(embedding)):.4f}; first values [{head}, ...].",
             f"**Reference set**: {len(index.images)} images "
             f"({index.from_cache} files from the cache, {index.embedded} embedded now"
             f"{f', {len(index.skipped)} skipped' if index.skipped else ''})."]
    if not index.images:
        lines.append("No reference images: start the app with `--reference FOLDER` or upload reference files "
                     "to see the nearest images.")
    return "\n\n".join(lines)
