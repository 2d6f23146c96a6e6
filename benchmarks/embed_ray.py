"""Throughput of ``rnet-hub embed --engine ray`` against the local engine, a competent plain timm script and
the model alone, measured in the same run, plus the per-image costs the README's scaling estimate uses.

It writes the ResNet18 stand-in archive, converts it, and generates ``--images`` 256x256 8-bit grey PNG
files (smooth images with noise; ``benchmarks/embed.py``'s generator) and 64 DICOM files for the decode
cost. Then, each as a fresh process (both engines and the script pay their start-up, as a user does):

* ``local``: ``rnet-hub embed PNG_FOLDER --model DIR`` (default engine, workers and batch 32);
* ``ray``: the same with ``--engine ray`` (starts Ray on this machine: all its CPUs, one model actor);
* ``timm+DataLoader``: a batched plain script: ``timm.create_model("local-dir:DIR")``, timm's eval
  transform on ``Image.open(f).convert("RGB")`` in a ``DataLoader`` (batch 32, ``--loader-workers``
  processes), pooled features, ``inference_mode``;
* ``model only``: the forward of batches of 32 pre-decoded tensors (channels-last, ``inference_mode``):
  the limit any pipeline on this machine can reach.

Each whole-process run is preceded by a warm-up run on 32 images, whose wall time is also reported: it
is mostly start-up (imports, Ray, actors), which an archive run pays once. Printed ratios and targets:

* ray / local images per second, whole processes                         (target >= 0.8)
* the same after subtracting each one's 32-image run (steady state)      (reported)
* local / timm+DataLoader images per second                              (target >= 1.0)
* local / model-only images per second (how close to the limit)          (reported)

Per image, one thread: decode + transform of a PNG and of a 512x512 16-bit DICOM, and the model forward
(batch 32), the inputs of the scaling estimate. Random stand-in weights: the numbers measure the
pipeline, not the real RadiologyNET weights.

Usage: python benchmarks/embed_ray.py [--images 2000] [--threads N] [--loader-workers W] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _measure import bench_workdir, run_measured
from embed import prepare_model, smooth_image, write_dicom

TARGET_RAY, TARGET_LOOP = 0.8, 1.0

LOOP = '''
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset

model_dir, folder, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
transform = create_transform(**resolve_data_config(model=model))


class Files(Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return transform(Image.open(self.files[i]).convert("RGB"))


loader = DataLoader(Files(sorted(Path(folder).glob("*.png"))), batch_size=32, num_workers=workers)
features = []
with torch.inference_mode():
    for x in loader:
        features.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
np.save(out, np.concatenate(features))
'''

COSTS = '''
import json, sys, time
from pathlib import Path

import torch

torch.set_num_threads(int(sys.argv[3]))
from rnet_hub.imaging.embed import read_file
from rnet_hub.imaging.embed_model import forward_fn, load_model
from rnet_hub.imaging.transforms import create_transform

model_dir, folder = sys.argv[1], Path(sys.argv[2])
model = load_model(model_dir).to(memory_format=torch.channels_last)
transform = create_transform(model)
out = {}
for kind, pattern in (("png", "png/*.png"), ("dicom", "dicom/*")):
    files = sorted(folder.glob(pattern))[:64]
    read_file(str(files[0]), transform)
    start = time.perf_counter()
    for f in files:
        assert read_file(str(f), transform).error is None
    out[f"decode_{kind}_ms"] = 1000 * (time.perf_counter() - start) / len(files)
forward = forward_fn(model, None)
x = torch.randn(32, *transform.config["input_size"]).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    forward(x)
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < 20 or batches < 3:
        forward(x)
        batches += 1
out["forward_ms"] = 1000 * (time.perf_counter() - start) / (32 * batches)
print(json.dumps(out))
'''


def make_inputs(folder: Path, images: int) -> None:
    """``images`` PNGs under png/, 64 512x512 12-bit MR DICOM files under dicom/, a 32-image warm-up list."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "png").mkdir(parents=True)
    (folder / "dicom").mkdir()
    (folder / "warm").mkdir()
    for i in range(images):
        Image.fromarray(smooth_image(rng, 256, 255).astype(np.uint8)).save(folder / "png" / f"{i:05d}.png")
    for i in range(32):
        os.link(folder / "png" / f"{i:05d}.png", folder / "warm" / f"{i:05d}.png")
    for i in range(64):
        write_dicom(folder / "dicom" / f"IM{i:04d}", smooth_image(rng, 512, 4095), i)


def main() -> int:
    """Measure and print; exit status 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every child (default: torch's choice)")
    parser.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="DataLoader processes of the plain script (default: CPUs - 1)")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every child
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local Ray
    with bench_workdir(args.workdir, prefix="rnet-embed-ray-bench-") as workdir:
        model_dir = prepare_model(workdir)
        inputs = workdir / "inputs"
        if not inputs.exists():
            make_inputs(inputs, args.images)
        (workdir / "loop.py").write_text(LOOP)
        (workdir / "costs.py").write_text(COSTS)
        cli = [sys.executable, "-m", "rnet_hub.cli", "embed"]

        def embed(folder: str, engine: str) -> str:
            out = shlex.quote(str(workdir / f"out-{engine}"))
            return (f"rm -rf {out}.* && " + shlex.join([*cli, str(inputs / folder), "--model", str(model_dir),
                                                        "--out", str(workdir / f"out-{engine}"), "--engine",
                                                        engine, "-q"]))

        def loop(folder: str) -> list[str]:
            return [sys.executable, str(workdir / "loop.py"), str(model_dir), str(inputs / folder),
                    str(workdir / "loop.npy"), str(args.loader_workers)]

        walls: dict[str, tuple[float, float]] = {}
        for name, small, full, shell in (("local", embed("warm", "local"), embed("png", "local"), True),
                                         ("ray", embed("warm", "ray"), embed("png", "ray"), True),
                                         ("timm+DataLoader", loop("warm"), loop("png"), False)):
            warm = run_measured(small, shell=shell)[0]
            walls[name] = (warm, run_measured(full, shell=shell)[0])
        threads = args.threads or os.cpu_count() or 1

        def costs(torch_threads: int) -> dict[str, float]:
            run = subprocess.run([sys.executable, str(workdir / "costs.py"), str(model_dir), str(inputs),
                                  str(torch_threads)], check=True, capture_output=True, text=True)
            return json.loads(run.stdout.strip().splitlines()[-1])

        costs_one = costs(1)
        forward_all = costs(threads)["forward_ms"]
        n = args.images
        rate = {name: n / full for name, (_, full) in walls.items()}
        steady = {name: (n - 32) / max(full - warm, 1e-9) for name, (warm, full) in walls.items()}
        model_rate = 1000 / forward_all
        print(f"{n} PNG (256x256), ResNet18 stand-in on CPU ({os.cpu_count()} cores, threads "
              f"{args.threads or 'default'}, loader workers {args.loader_workers}, "
              f"load average {os.getloadavg()[0]:.1f}), one run each")
        for name, (warm, full) in walls.items():
            print(f"  {name:16s} {full:8.2f} s  {rate[name]:7.1f} images/s   (32 images: {warm:6.2f} s; "
                  f"steady {steady[name]:7.1f} images/s)")
        print(f"  {'model only':16s} {'':8s}    {model_rate:7.1f} images/s   (forward of pre-decoded batches of 32,"
              f" {threads} threads)")
        print(f"per image, 1 thread: decode+transform PNG {costs_one['decode_png_ms']:.2f} ms, DICOM 512x512 "
              f"{costs_one['decode_dicom_ms']:.2f} ms; forward {costs_one['forward_ms']:.2f} ms ({forward_all:.2f} ms "
              f"with {threads} threads)")
        ray_ratio, loop_ratio = rate["ray"] / rate["local"], rate["local"] / rate["timm+DataLoader"]
        print(f"ratio ray / local (images per second): {ray_ratio:.2f}  (target >= {TARGET_RAY}) "
              f"{'PASS' if ray_ratio >= TARGET_RAY else 'FAIL'}; steady state {steady['ray'] / steady['local']:.2f}")
        print(f"ratio local / timm+DataLoader: {loop_ratio:.2f}  (target >= {TARGET_LOOP}) "
              f"{'PASS' if loop_ratio >= TARGET_LOOP else 'FAIL'}")
        print(f"local / model only: {rate['local'] / model_rate:.2f} (whole process), "
              f"{steady['local'] / model_rate:.2f} (steady state)")
        print(json.dumps({"images": n, "walls": walls, "costs_1_thread": costs_one,
                          "forward_ms_all_threads": forward_all, "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
        return 0 if ray_ratio >= TARGET_RAY and loop_ratio >= TARGET_LOOP else 1


if __name__ == "__main__":
    sys.exit(main())
