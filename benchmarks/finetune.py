"""Training speed and memory of ``rnet-hub finetune`` against a plain hand-written timm + torch loop.

Both sides train the same model (a converted stand-in folder) on the same synthetic image folder with
the same batch, augmentation and input pipeline (``rnet_hub.finetune.data.make_dataset``), optimiser
(AdamW, lr 1e-3, weight decay 1e-3), torch threads (``OMP_NUM_THREADS``) and DataLoader workers (0),
and both evaluate the validation split and save a checkpoint (weights and optimiser state) once per
epoch, as a hand-written loop for this job would. Each side runs as its own process; its training
loop's time (epochs, validation, checkpoints; not start-up, model loading or the test evaluation) is
what each side reports: ``train_runtime`` in ``DIR/test_metrics.json`` (the Trainer's own figure) for
``rnet-hub finetune``, a ``perf_counter`` around the loop for the plain one. Then

    training images/s = epochs x training images / loop time   (median over --repeats)

Printed ratios and targets:

* (a) images/s of ``rnet-hub finetune`` / images/s of the plain loop      (target >= 0.9)
* (b) peak RSS of ``rnet-hub finetune`` / peak RSS of the plain loop       (target <= 1.2; whole processes)

The stand-in weights are random: the figures measure the training machinery, not the real weights.
On a shared or loaded machine the figures are noisy; use ``--repeats``.

Usage: python benchmarks/finetune.py [--arch MobileNetV3Small] [--images 256] [--size 128] [--batch 32]
       [--epochs 3] [--repeats 1] [--threads 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from _measure import bench_workdir, python_output, run_measured

SPEED_TARGET = 0.9
MEMORY_TARGET = 1.2

PLAIN = """
import sys, time, torch
from torch.utils.data import DataLoader
import rnet_hub
from rnet_hub.finetune.data import load_data, make_dataset
data_dir, folder, out, epochs, batch, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
    int(sys.argv[5]), int(sys.argv[6])
torch.manual_seed(1221)
data = load_data(data_dir)
model = rnet_hub.create_model(folder, num_classes=len(data.label_names))
config = {"pretrained_cfg": {**model.pretrained_cfg, "input_size": [3, size, size]}}
train = DataLoader(make_dataset(data, "train", model_config=config), batch_size=batch, shuffle=True, num_workers=0)
val = DataLoader(make_dataset(data, "val", model_config=config), batch_size=batch, num_workers=0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
start = time.perf_counter()
for epoch in range(epochs):
    model.train()
    for item in train:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(item["pixel_values"]), item["labels"])
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(b["pixel_values"]).argmax(1) == b["labels"]).sum()) for b in val)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f"{out}-{epoch}.pt")
open(f"{out}-runtime.txt", "w").write(str(time.perf_counter() - start))
"""


def make_data(root: Path, images: int, size: int) -> Path:
    """``root/{train,val,test}/{circle,square}/``: ``images`` training PNGs, a quarter as many val and test."""
    python_output(f"""
import numpy as np
from pathlib import Path
from PIL import Image, ImageDraw
rng = np.random.default_rng(0)
for part, n in {{"train": {images}, "val": {max(4, images // 4)}, "test": {max(4, images // 4)}}}.items():
    for i in range(n):
        name = ("circle", "square")[i % 2]
        folder = Path({str(root)!r}) / part / name
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.normal(25, 8, ({size}, {size})).clip(0, 255).astype("uint8"))
        r, x, y = (int(v) for v in rng.integers({size} // 8, {size} // 4, 3))
        box = (x, y, x + 2 * r, y + 2 * r)
        (ImageDraw.Draw(image).ellipse if name == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=200)
        image.save(folder / f"{{i}}.png")
""")
    return root


def prepare(arch: str, workdir: Path) -> Path:
    """The converted stand-in folder of ``arch``."""
    folder = workdir / f"{arch}-converted"
    if not folder.exists():
        archive = workdir / f"{arch}.tar.gz"
        python_output(f"from rnet_hub.testing import write_sample_archive as w; w({arch!r}, {str(archive)!r}); "
                      f"from rnet_hub import convert; convert({str(archive)!r}, {str(folder)!r}, progress=False)")
    return folder


def measure(data: Path, folder: Path, workdir: Path, args: argparse.Namespace) -> dict[str, tuple[float, int]]:
    """One run of each side: (training loop seconds, peak RSS bytes)."""
    ours, plain = workdir / "ours", workdir / "plain"
    shutil.rmtree(ours, ignore_errors=True)
    for stale in workdir.glob("plain-*"):
        stale.unlink()
    _, ours_rss = run_measured([sys.executable, "-m", "rnet_hub.cli", "finetune", str(data), "--model", str(folder),
                                "--out", str(ours), "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                                "--image-size", str(args.size), "--patience", "0", "--quiet", "--num-workers", "0"])
    _, plain_rss = run_measured([sys.executable, "-c", PLAIN, str(data), str(folder), str(plain), str(args.epochs),
                                 str(args.batch), str(args.size)])
    ours_time = json.loads((ours / "test_metrics.json").read_text())["train_runtime"]
    plain_time = float(Path(f"{plain}-runtime.txt").read_text())
    return {"ours": (ours_time, ours_rss), "plain": (plain_time, plain_rss)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="MobileNetV3Small", help="architecture (default MobileNetV3Small)")
    parser.add_argument("--images", type=int, default=256, help="training images (default 256)")
    parser.add_argument("--size", type=int, default=128, help="input size in pixels (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32, the study's)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run (default 3)")
    parser.add_argument("--repeats", type=int, default=1, help="measured runs of each command (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both sides (default 2)")
    parser.add_argument("--workdir", type=Path, help="keep prepared files here between runs (default: temp folder)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with bench_workdir(args.workdir, prefix="rnet-hub-bench-finetune-") as workdir:
        data = workdir / "data"
        if not data.exists():
            make_data(data, args.images, args.size)
        folder = prepare(args.arch, workdir)
        measure(data, folder, workdir, args)  # warm-up: caches, page cache, first imports
        runs = [measure(data, folder, workdir, args) for _ in range(args.repeats)]
    images = args.epochs * args.images
    speed = {side: statistics.median(images / run[side][0] for run in runs) for side in ("ours", "plain")}
    memory = {side: statistics.median(run[side][1] for run in runs) for side in ("ours", "plain")}
    for side in ("ours", "plain"):
        loops = ", ".join(f"{run[side][0]:.2f}" for run in runs)
        print(f"{side:>6}: training loop {loops} s; {speed[side]:.1f} images/s; "
              f"{memory[side] / 2**20:.0f} MiB peak RSS")
    print(f"training images/s: rnet-hub finetune {speed['ours']:.1f}, plain loop {speed['plain']:.1f} "
          f"({args.arch}, {args.size} px, batch {args.batch}, {args.epochs} epochs of {args.images} images, "
          f"{args.threads} threads, 0 workers)")
    ratio, rss_ratio = speed["ours"] / speed["plain"], memory["ours"] / memory["plain"]
    print(f"(a) speed ratio ours/plain:     {ratio:.3f}  (target >= {SPEED_TARGET})")
    print(f"(b) peak RSS ratio ours/plain:  {rss_ratio:.3f}  (target <= {MEMORY_TARGET})")
    return 0 if ratio >= SPEED_TARGET and rss_ratio <= MEMORY_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
