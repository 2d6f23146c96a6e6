"""Throughput of ``rnet-hub embed`` against a plain timm loop, measured in the same run.

It writes the ResNet18 stand-in archive, converts it, and generates a folder of ``--png``
512x512 8-bit grey PNG files and ``--dicom`` 256x256 12-bit MR DICOM files (smooth images
with noise, a window in each DICOM). Then it runs, in turn, ``--repeats`` times after one
warm-up round (``_measure.median_runs``), each as a fresh process so both pay the start-up:

* ``rnet-hub embed FOLDER --model DIR``: every PNG and DICOM file, default workers and batch;
* a plain loop over the PNG files only: ``timm.create_model("local-dir:DIR")``, timm's eval
  transform on ``Image.open(f).convert("RGB")``, pooled features one image at a time.

It prints the median images per second of each and their ratio (target >= 1.0: our reading
and batching are not slower than the obvious loop), plus the start-up floor of each process.
Random stand-in weights: the numbers measure the pipeline, not the real RadiologyNET weights.

``--threads N`` sets ``OMP_NUM_THREADS`` for every child (torch's intra-op threads); on a
busy machine the default thread pool makes one-image-at-a-time loops much slower still.

Usage: python benchmarks/embed.py [--png 300] [--dicom 100] [--repeats 3] [--threads N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from _measure import bench_workdir, median_runs

TARGET = 1.0

BASELINE = '''
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

model_dir, folder, out = sys.argv[1:4]
model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
transform = create_transform(**resolve_data_config(model=model))
features = []
with torch.inference_mode():
    for path in sorted(Path(folder).glob("*.png")):
        x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
        features.append(model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy())
np.save(out, np.stack(features))
'''


def smooth_image(rng: np.random.Generator, size: int, top: int) -> np.ndarray:
    """A blurred random field with a little noise: compresses and windows like a real scan."""
    coarse = rng.random((size // 32, size // 32))
    field = np.kron(coarse, np.ones((32, 32)))
    noise = rng.normal(0, 0.03, (size, size))
    return np.clip((field * 0.9 + noise) * top, 0, top)


def write_dicom(path: Path, pixels: np.ndarray, index: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    uid = generate_uid(entropy_srcs=[f"rnet-hub-benchmark-{index}"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, uid, "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 3000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_inputs(folder: Path, n_png: int, n_dicom: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "png").mkdir(parents=True)
    (folder / "dicom").mkdir()
    for i in range(n_png):
        Image.fromarray(smooth_image(rng, 512, 255).astype(np.uint8)).save(folder / "png" / f"{i:04d}.png")
    for i in range(n_dicom):
        write_dicom(folder / "dicom" / f"IM{i:04d}", smooth_image(rng, 256, 4095), i)


def prepare_model(workdir: Path) -> Path:
    """The converted ResNet18 stand-in, made by the CLI in child processes (this process stays light)."""
    model_dir = workdir / "resnet18"
    if not model_dir.exists():
        cli = [sys.executable, "-m", "rnet_hub.cli"]
        archive = workdir / "ResNet18.tar.gz"
        subprocess.run([*cli, "sample-archive", "ResNet18", "-o", str(archive), "--no-optimizer"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*cli, "convert", str(archive), "--out", str(model_dir), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
    return model_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=int, default=300)
    parser.add_argument("--dicom", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every child (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every child
    with bench_workdir(args.workdir, prefix="rnet-embed-bench-") as workdir:
        model_dir = prepare_model(workdir)
        inputs = workdir / "inputs"
        if not inputs.exists():
            make_inputs(inputs, args.png, args.dicom)
        (workdir / "baseline.py").write_text(BASELINE)
        out = workdir / "emb"
        embed = shlex.join([sys.executable, "-m", "rnet_hub.cli", "embed", str(inputs), "--model", str(model_dir),
                            "--out", str(out), "-q"])
        commands = {  # embed refuses to overwrite its outputs: each run starts from none
            "rnet-hub embed": (f"rm -f {shlex.quote(str(out))}.* && {embed}", True),
            "timm loop": ([sys.executable, str(workdir / "baseline.py"), str(model_dir), str(inputs / "png"),
                           str(workdir / "baseline.npy")], False),
            "start-up: import rnet_hub.cli": ([sys.executable, "-c", "import rnet_hub.cli, rnet_hub.imaging.embed"],
                                            False),
            "start-up: import torch, timm": ([sys.executable, "-c", "import torch, timm"], False),
        }
        median = {name: wall for name, (wall, _) in median_runs(commands, args.repeats).items()}
        images = {"rnet-hub embed": args.png + args.dicom, "timm loop": args.png}
        print(f"{args.png} PNG (512x512) + {args.dicom} DICOM (256x256), ResNet18 on CPU ({os.cpu_count()} cores, "
              f"threads {args.threads or 'default'}, load average {os.getloadavg()[0]:.1f}), median of "
              f"{args.repeats} (wall seconds per process, start-up included)")
        for name, wall in median.items():
            rate = f"{images[name] / wall:7.1f} images/s over {images[name]} images" if name in images else ""
            print(f"  {name:32s} {wall:7.2f} s  {rate}")
        ratio = (images["rnet-hub embed"] / median["rnet-hub embed"]) / (images["timm loop"] / median["timm loop"])
        print(f"ratio embed / loop (images per second): {ratio:.2f}  (target >= {TARGET}) "
              f"{'PASS' if ratio >= TARGET else 'FAIL'}")
        return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
