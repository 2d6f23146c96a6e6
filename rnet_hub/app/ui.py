"""The Gradio UI (``gr.Blocks``) over :class:`~rnet_hub.app.analysis.Analyser`, and how it is launched.

Panels, top to bottom: the upload (DICOM, PNG, JPEG; several files at once), the model
(a dropdown of the names given at start; any other name or folder can be typed), the image to
explain, and optional reference files; then the images the exporter rules make with the
metadata table that decided them, the model input at native size, the embedding summary
with the nearest reference images, and for fine-tuned models the class probabilities and the
Grad-CAM overlay. Problems (unreadable files, unknown models) appear as a warning toast and
in the "Messages" box; the page never freezes on them.

Gradio is optional (``pip install 'rnet-hub[app]'``) and imported inside the functions; call
:func:`rnet_hub.app.environment.prepare_environment` before it is first imported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import MissingExtraError
from .analysis import Analyser, Analysis
from .views import METADATA_COLUMNS

__all__ = ["API_NAME", "build_app", "import_gradio", "launch_app"]

logger = logging.getLogger(__name__)

#: The name of the analysis endpoint (``Client.predict(..., api_name="/analyse")``).
API_NAME = "analyse"

_INTRO = ("# RadiologyNET: see an image as the model sees it\n"
          "Upload DICOM (single- or multi-frame), PNG or JPEG files. The app shows every image the pretraining "
          "exporter makes of them and why, the exact model input, the embedding and the nearest reference images; "
          "for a fine-tuned model also the class probabilities and a Grad-CAM map. Research use only, not for "
          "diagnosis. Files stay on this server, in the app's temp folder.")


def import_gradio() -> Any:
    """``import gradio``, or :class:`~rnet_hub.errors.MissingExtraError` naming the extra."""
    try:
        import gradio
    except ImportError as exc:
        raise MissingExtraError("the app needs gradio: pip install 'rnet-hub[app]'") from exc
    return gradio


def _paths(files: Any) -> list[str]:
    """Gradio's file value (None, a path, a list of paths or of file objects) as a list of paths."""
    if not files:
        return []
    items = files if isinstance(files, list | tuple) else [files]
    return [str(getattr(item, "name", item)) for item in items]


def _outputs(result: Analysis) -> tuple[Any, ...]:
    """The values of the output components, in :func:`build_app`'s order."""
    import pandas as pd

    table = pd.DataFrame(result.table, columns=list(METADATA_COLUMNS))
    return (result.images, table, result.inputs, result.summary, result.neighbour_gallery(),
            result.probabilities, result.cam_image,
            str(result.embeddings_file) if result.embeddings_file else None, "\n".join(result.messages))


def build_app(analyser: Analyser, *, title: str = "RadiologyNET") -> Any:
    """The app's ``gr.Blocks`` for ``analyser`` (its model names fill the model dropdown)."""
    gr = import_gradio()

    def analyse(files: Any, model_name: str, image_number: float | None, reference_files: Any,
                progress: Any = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - gradio's progress injection
        """Run the analysis; problems become messages (toast and text box), never an exception."""
        try:
            result = analyser.analyse(_paths(files), model_name=str(model_name or ""),
                                      image_number=int(image_number or 1), reference_files=_paths(reference_files),
                                      progress=lambda fraction, description: progress(fraction, desc=description))
        except Exception as exc:
            logger.exception("analysis failed")
            result = Analysis(messages=[f"the analysis failed ({type(exc).__name__}: {exc})"])
        for message in result.messages:
            gr.Warning(message)
        return _outputs(result)

    def pick(event: gr.SelectData) -> int:
        """The 1-based number of the image clicked in the frames gallery."""
        return int(event.index) + 1

    pick.__annotations__["event"] = gr.SelectData  # gradio finds the event by its type, not a string

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(label="DICOM, PNG or JPEG files", file_count="multiple", type="filepath",
                                elem_id="files")
            with gr.Column(scale=1):
                model = gr.Dropdown(choices=analyser.models, value=analyser.models[0] if analyser.models else None,
                                    allow_custom_value=True, label="Model (name or folder)", elem_id="model")
                number = gr.Number(value=1, precision=0, minimum=1, label="Image to explain (#, or click a frame)",
                                   elem_id="image-number")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=1):
                reference = gr.File(label="Reference files (optional, added to the reference folder)",
                                    file_count="multiple", type="filepath", elem_id="reference")
        messages = gr.Textbox(label="Messages", lines=2, interactive=False, elem_id="messages")
        with gr.Row():
            frames = gr.Gallery(label="Images the exporter rules make (click one to explain it)", columns=4,
                                height=320, format="png", elem_id="frames")
            inputs = gr.Gallery(label="Model input at native size (after the pretraining transform)", columns=4,
                                height=320, format="png", elem_id="inputs")
        table = gr.Dataframe(headers=list(METADATA_COLUMNS), label="What decided each image", wrap=True,
                             interactive=False, elem_id="metadata", max_height=400, pinned_columns=2,
                             column_widths=["3%", "10%", "5%", "7%", "16%", "9%", "9%", "10%", "11%", "8%", "12%"])
        summary = gr.Markdown(label="Embedding and reference set", elem_id="summary")
        neighbours = gr.Gallery(label="Nearest reference images (cosine similarity of the embeddings)", columns=8,
                                height=260, format="png", elem_id="neighbours")
        with gr.Row():
            label = gr.Label(label="Class probabilities (fine-tuned models)", num_top_classes=10, elem_id="label")
            cam = gr.Image(label="Grad-CAM on the model input (fine-tuned models)", format="png",
                           interactive=False, elem_id="cam")
        download = gr.File(label="Embeddings of every image (.npy)", interactive=False, elem_id="download")
        outputs = [frames, table, inputs, summary, neighbours, label, cam, download, messages]
        arguments = [files, model, number, reference]
        gr.on([button.click, files.upload], analyse, arguments, outputs, api_name=API_NAME)
        frames.select(pick, None, number, api_visibility="private").then(
            analyse, arguments, outputs, api_visibility="private")
    return app


def launch_app(app: Any, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               allowed_paths: Sequence[str] = ()) -> Any:
    """Launch ``app`` locally (never shared), quietly; ``block=False`` returns at once (tests, notebooks)."""
    gr = import_gradio()
    font = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts fetched from outside
    theme = gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"])
    return app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                      quiet=True, show_error=True, inbrowser=False, theme=theme, ssr_mode=False,
                      allowed_paths=list(allowed_paths), max_file_size="512mb")
