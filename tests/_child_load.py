"""Child process of ``test_hub_roundtrip.py``: load RadiologyNET models from the Hub as a user would.

Usage: ``python tests/_child_load.py JOB.json OUT.pt`` with ``HF_ENDPOINT``/``HF_HOME`` (and, for
the offline phase, ``HF_HUB_OFFLINE=1``) in the environment. A fresh process is the point: the
clients read those variables at import, exactly as they do for users.

It only loads models and runs them; every comparison is made by the parent test. Each check is
recorded separately (its outputs, or the traceback under ``errors``) so that one broken loading
path fails only the tests about it.

JOB.json: ``{"inputs": "<.pt of {arch: batch at the native size}>", "probe": "<.pt of a small batch>",
"image": "<.png>", "num_classes": N, "top_k": K, "models": [{"arch": ..., "repo_id": ..., "revision":
<commit sha>}, ...]}``. Logits that are compared with the original model use the native-size batch;
the checks that compare our models with each other use the small probe batch, to keep the run short.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

Outputs = dict[str, Any]
Models = dict[str, torch.nn.Module]  # models one check loaded and a later one may reuse


@dataclass(frozen=True)
class Job:
    """One architecture to load, and what to run it on."""

    arch: str
    repo_id: str
    revision: str
    x: torch.Tensor
    probe: torch.Tensor
    image: Image.Image
    num_classes: int
    top_k: int


def _fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict: equal fingerprints, identical weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _head_outputs(model: torch.nn.Module, x: torch.Tensor, prefix: str) -> Outputs:
    """Logits and pre-logits from one pass: in timm, ``model(x)`` is ``forward_head(forward_features(x))``."""
    features = model.forward_features(x)
    return {f"{prefix}logits": model.forward_head(features),
            f"{prefix}pre_logits": model.forward_head(features, pre_logits=True),
            f"{prefix}hidden_shape": list(features.shape)}


def _plain_timm(job: Job, models: Models) -> Outputs:
    """``timm.create_model("hf-hub:<id>", pretrained=True)`` on a cold cache, before rnet_hub is imported.

    Plain timm users never import rnet_hub: the repository's ``config.json`` must be enough.
    """
    import timm

    if "rnet_hub" in sys.modules:
        raise RuntimeError("rnet_hub was imported before the plain-timm check; it must run first")
    return {"timm_hub": timm.create_model(f"hf-hub:{job.repo_id}", pretrained=True).eval()(job.x)}


def _timm_loaders(job: Job, models: Models) -> Outputs:
    """After ``import rnet_hub``: the ``.radiologynet`` tag, and the eval transform of the hf-hub model."""
    import timm

    import rnet_hub  # noqa: F401  (registers the '.radiologynet' tags)

    model = timm.create_model(f"hf-hub:{job.repo_id}", pretrained=True).eval()
    tagged = timm.create_model(f"{job.arch}.radiologynet", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    pixels = transform(job.image).unsqueeze(0)
    return {"timm_tag": tagged(job.x), "timm_pixels": pixels,
            **_head_outputs(model, job.probe, "probe_"), **_head_outputs(model, pixels, "image_")}


def _create_model(job: Job, models: Models) -> Outputs:
    """``rnet_hub.create_model`` on the repository id and on ``hf-hub:<id>@<commit>``.

    Like ``timm.create_model``, it returns the model in train mode: ``.eval()`` for inference, as users do.
    """
    import rnet_hub

    models["create"] = rnet_hub.create_model(job.repo_id).eval()
    pinned = rnet_hub.create_model(f"hf-hub:{job.repo_id}@{job.revision}").eval()
    return {"create": models["create"](job.x), "create_weights": _fingerprint(models["create"]),
            "create_rev_weights": _fingerprint(pinned)}


def _variants(job: Job, models: Models) -> Outputs:
    """``num_classes``, ``in_chans=1`` and ``features_only`` through ``rnet_hub.create_model`` on a Hub id."""
    import rnet_hub

    base = models.get("create") or rnet_hub.create_model(job.repo_id).eval()
    new_head = rnet_hub.create_model(job.repo_id, num_classes=job.num_classes).eval()
    gray = rnet_hub.create_model(job.repo_id, in_chans=1).eval()
    features = rnet_hub.create_model(job.repo_id, features_only=True).eval()
    one_channel = job.probe[:, :1]
    return {**_head_outputs(base, job.probe, "base_"), **_head_outputs(new_head, job.probe, "new_head_"),
            "gray_logits": gray(one_channel), "gray_reference": base(one_channel.repeat(1, 3, 1, 1)),
            "features": list(features(job.probe))}


def _auto_classes(job: Job, models: Models) -> Outputs:
    """transformers' ``AutoModel``, ``AutoModelForImageClassification`` and ``AutoImageProcessor``."""
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

    classifier = AutoModelForImageClassification.from_pretrained(job.repo_id).eval()
    backbone = AutoModel.from_pretrained(job.repo_id).eval()
    processor = AutoImageProcessor.from_pretrained(job.repo_id)
    id2label = classifier.config.id2label
    return {"hf_logits": classifier(pixel_values=job.x).logits,
            "hf_pooled": backbone(pixel_values=job.probe).pooler_output,
            "processor_pixels": processor(job.image, return_tensors="pt")["pixel_values"],
            "id2label": [id2label[i] for i in range(len(id2label))]}


def _pipelines(job: Job, models: Models) -> Outputs:
    """``pipeline("image-feature-extraction")`` (pooled and not) and ``pipeline("image-classification")``."""
    from transformers import pipeline

    extractor = pipeline("image-feature-extraction", model=job.repo_id)
    classify = pipeline("image-classification", model=job.repo_id)
    predictions = classify(job.image, top_k=job.top_k)
    return {"pipe_pooled": torch.tensor(extractor(job.image, pool=True)),
            "pipe_hidden_shape": list(torch.tensor(extractor(job.image)).shape),
            "pipe_labels": [p["label"] for p in predictions],
            "pipe_scores": torch.tensor([p["score"] for p in predictions], dtype=torch.float64)}


CHECKS: dict[str, Callable[[Job, Models], Outputs]] = {
    "timm": _timm_loaders,  # the plain-timm check runs before all of these, see main()
    "create": _create_model,
    "variants": _variants,
    "auto": _auto_classes,
    "pipelines": _pipelines,
}


def _record(results: dict[str, Any], job: Job, check: str, run: Callable[[Job, Models], Outputs],
            models: Models) -> None:
    """Run one check and store its outputs under ``<arch>/<key>``, or its traceback under ``errors``."""
    try:
        with torch.inference_mode():
            outputs = run(job, models)
    except Exception:  # recorded for the parent, which fails only the tests of this check
        results["errors"][f"{job.arch}/{check}"] = traceback.format_exc()
        return
    results.update({f"{job.arch}/{key}": value for key, value in outputs.items()})


def main(job_path: str, out_path: str) -> None:
    spec = json.loads(Path(job_path).read_text())
    inputs = torch.load(spec["inputs"], weights_only=True)
    probe = torch.load(spec["probe"], weights_only=True)
    image = Image.open(spec["image"]).convert("RGB")
    jobs = [Job(entry["arch"], entry["repo_id"], entry["revision"], inputs[entry["arch"]], probe, image,
                spec["num_classes"], spec["top_k"]) for entry in spec["models"]]
    results: dict[str, Any] = {"errors": {}}
    for job in jobs:  # all plain-timm loads first, while rnet_hub is not imported yet
        _record(results, job, "plain_timm", _plain_timm, {})
    for job in jobs:
        models: Models = {}
        for check, run in CHECKS.items():
            _record(results, job, check, run, models)
    torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
