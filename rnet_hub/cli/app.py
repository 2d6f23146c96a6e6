"""``rnet-hub app``: the RadiologyNET Gradio app on this machine (the same app as the Hugging Face Space)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import BadInputError
from ._shared import SubParsers

__all__ = ["add_parser"]

_EPILOG = """examples:
  rnet-hub app                                     # the official models (Hub or HF cache), http://127.0.0.1:7860
  rnet-hub app --model resnet18 --reference ~/refs # nearest images among the files under ~/refs
  rnet-hub app --model ./converted/ResNet18 --model ./finetuned  # local folders, no network needed
  HF_HUB_OFFLINE=1 rnet-hub app --model radiologynet/resnet50    # offline, from the Hugging Face cache
  rnet-hub app --host 0.0.0.0 --port 8080          # reachable from other machines (never a public link)
"""


def _cmd_app(args: argparse.Namespace) -> int:
    """Build the app and serve it until Ctrl-C; the temp folder is removed at the end."""
    if args.reference is not None and not args.reference.exists():
        raise BadInputError(f"--reference {args.reference} does not exist; give a folder of DICOM/PNG/JPEG files")
    if args.port is not None and not 0 < args.port < 65536:
        raise BadInputError(f"--port must be between 1 and 65535, got {args.port}")
    from ..app import DEFAULT_MODELS, make_temp_dir, prepare_environment

    temp = make_temp_dir()
    prepare_environment(temp)  # before gradio is imported: no analytics, uploads in the temp folder
    try:
        from ..app import create_app
        from ..app.ui import import_gradio, launch_app

        import_gradio()
        app, analyser = create_app(models=args.model or list(DEFAULT_MODELS), reference=args.reference,
                                   cache_dir=args.cache_dir, temp_dir=temp)
        print(f"models: {', '.join(analyser.models)}; reference: {args.reference or 'none (upload in the app)'}; "
              f"embedding cache: {analyser.cache_dir}; temp folder: {temp}")
        print(f"serving on http://{args.host}:{args.port or 7860} (Ctrl-C stops it)", flush=True)
        launch_app(app, host=args.host, port=args.port, block=True, allowed_paths=[str(temp)])
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``app`` command."""
    parser = sub.add_parser(
        "app", help="the Gradio app: a DICOM as the model sees it, nearest images, Grad-CAM (local Space)",
        description="Serve the RadiologyNET app locally (pip install 'rnet-hub[app]'). Upload DICOM, PNG or JPEG\n"
                    "files and see every image the pretraining exporter makes of them with the metadata that\n"
                    "decided it, the exact model input, the embedding and the nearest images of a reference set;\n"
                    "for a fine-tuned model (rnet-hub finetune) also the class probabilities and a Grad-CAM map.\n\n"
                    "Nothing is sent anywhere: gradio's analytics are off and there is no share link. Uploads stay\n"
                    "in a temp folder removed at exit; reference embeddings are cached in --cache-dir.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", metavar="NAME_OR_FOLDER",
                        help="a model name (resnet50, radiologynet/resnet50, hf-hub:..., local-dir:...) or a "
                             "converted or fine-tuned folder; repeat for several (default: the official models)")
    parser.add_argument("--reference", type=Path, metavar="FOLDER",
                        help="images to search for nearest neighbours (walked recursively; embedded once, cached)")
    parser.add_argument("--cache-dir", type=Path, metavar="FOLDER",
                        help="where reference embeddings are cached (default: $RNET_HUB_APP_CACHE or "
                             "~/.cache/rnet-hub/app)")
    parser.add_argument("--port", type=int, help="port to serve on (default 7860, or the next free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    parser.set_defaults(func=_cmd_app)
