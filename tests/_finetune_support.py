"""Helpers of the fine-tuning engine tests: a separable synthetic task, a calibrated stand-in base model,
and a stand-in for timm's ImageNet weights on the loopback Hub.

The stand-in RadiologyNET weights are random, and so are their BatchNorm running statistics: in eval
mode such a model maps every image to nearly the same logits, whatever training does to its weights in
a few steps (train mode, which normalises with the batch's statistics, is unaffected). A real pretrained
model's statistics match its weights; :func:`calibrated_copy` gives the stand-in that property by
recomputing them over the task's images (a cumulative average in train mode, no weight changed), so the
learning test measures learning, not stale statistics. Nothing here is a result on the real weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from finetune_data import draw, write_dicom
from PIL import Image

__all__ = ["IMAGENET_REPO", "SEPARABLE", "calibrated_copy", "make_separable", "publish_imagenet_standin",
           "timm_logits"]

SEPARABLE = ("large", "small")
IMAGENET_REPO = "timm/mobilenetv3_small_100.lamb_in1k"


def make_separable(root: Path, *, per_class: int = 16, size: int = 64, seed: int = 0) -> Path:
    """``root/{train,val,test}/{large,small}/``: a big bright square vs a small dim cross (mean brightness
    alone separates them); ``per_class`` training images per class, half as many for val and test; every
    fourth image a DICOM file (the rest PNG)."""
    rng = np.random.default_rng(seed)
    for part, count in {"train": per_class, "val": per_class // 2, "test": per_class // 2}.items():
        for name in SEPARABLE:
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = draw("square", size, rng=rng, radius=size // 3) if name == "large" else \
                    draw("cross", size, rng=rng, radius=size // 8) // 2
                if i % 4 == 3:
                    write_dicom(folder / f"{name}_{i:02d}.dcm", image)
                else:
                    Image.fromarray(image).save(folder / f"{name}_{i:02d}.png")
    return root


def calibrated_copy(folder: Path, out: Path, data: Path, *, size: int = 64) -> Path:
    """A copy of the converted ``folder`` whose BatchNorm running statistics are those of ``data``'s training
    images (module docstring); weights, config and safetensors metadata unchanged."""
    import safetensors.torch
    import torch

    import rnet_hub
    from rnet_hub.finetune.data import load_data, make_dataset

    shutil.copytree(folder, out)
    model = rnet_hub.create_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["input_size"] = [3, size, size]
    train = make_dataset(load_data(data), "train", model_config=config, train=False)
    images = torch.stack([train[i]["pixel_values"] for i in range(len(train))])
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the pass
    with torch.no_grad():
        model.train()(images)
    with safetensors.safe_open(folder / "model.safetensors", "pt") as weights:
        metadata = weights.metadata()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, out / "model.safetensors", metadata=metadata)
    return out


def publish_imagenet_standin(endpoint: str, token: str, workdir: Path) -> dict:
    """Publish random ``mobilenetv3_small_100`` weights (1000 classes) under timm's ImageNet repository id on
    the loopback Hub, as timm lays such a repository out; returns the published state dict."""
    import safetensors.torch
    import timm
    import torch
    from huggingface_hub import HfApi

    torch.manual_seed(7)
    model = timm.create_model("mobilenetv3_small_100", pretrained=False)
    folder = workdir / "imagenet-standin"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = {"architecture": "mobilenetv3_small_100", "num_classes": 1000, "num_features": 1024,
              "pretrained_cfg": {k: v for k, v in model.pretrained_cfg.items() if k not in ("file", "source")}}
    (folder / "config.json").write_text(json.dumps(config))
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(IMAGENET_REPO, exist_ok=True)
    api.upload_folder(repo_id=IMAGENET_REPO, folder_path=folder)
    return state


def timm_logits(folder: Path, images):
    """Logits of ``folder`` loaded by timm's own ``local-dir:`` loader, in eval mode."""
    import timm
    import torch

    with torch.no_grad():
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(images)
