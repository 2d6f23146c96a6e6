"""Loading speed and memory, as ratios against baselines measured in the same run.

For each architecture (default VGG16 and ResNet50) it writes the stand-in archive with
optimizer state, converts it, extracts the ``.pth`` and then measures, in turn, whole processes:

* import: ``python -c "import torch, timm"`` (the floor of any loader);
* ours: ``import rnet_hub; rnet_hub.create_model(FOLDER, pretrained=True)`` from the converted folder,
  then one read of every weight (they are memory-mapped; this makes them resident);
* original: the original path: build the legacy wrapper (random init), ``torch.load`` the whole
  extracted ``.pth`` (optimizer state included) and copy matching names into the wrapper.

Printed ratios and targets:

* (a) ours wall / import wall                                   (target <= 1.3)
* (b) original wall / ours wall                                 (reported)
* (c) (ours peak RSS - import peak RSS) / fp32 model bytes      (target <= 1.2)

Results on stand-in archives measure the loaders, not the real weights.

Usage: python benchmarks/load.py [--arch VGG16 --arch ResNet50] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from _measure import bench_workdir, fp32_model_bytes, median_runs, python_output

TIME_TARGET = 1.3
MEMORY_TARGET = 1.2

# The weights are memory-mapped from the safetensors file; reading every tensor once makes them
# resident, so the memory figure counts the whole model (as the original path does).
OURS = ("import rnet_hub; m = rnet_hub.create_model({folder!r}, pretrained=True); "
        "sum(float(t.float().sum()) for t in m.state_dict().values())")
ORIGINAL = """
import torch
from rnet_hub import legacy
model = legacy.build({arch!r})
checkpoint = torch.load({pth!r}, map_location="cpu", weights_only=True)
target = model.state_dict()
for key, value in checkpoint["model_state"].items():
    if key in target and target[key].shape == value.shape:
        target[key].copy_(value)
"""


def prepare(arch: str, workdir: Path) -> tuple[Path, Path]:
    """The converted folder and the extracted ``.pth`` of the stand-in archive."""
    folder, pth = workdir / f"{arch}-converted", workdir / f"{arch}.pth"
    if not folder.exists() or not pth.exists():
        print(f"preparing {arch}: stand-in archive, conversion, extracted .pth ...", flush=True)
        archive = workdir / f"{arch}.tar.gz"
        python_output(f"from rnet_hub.testing import write_sample_archive as w; w({arch!r}, {str(archive)!r}); "
                      f"from rnet_hub import convert; convert({str(archive)!r}, {str(folder)!r}, "
                      f"overwrite=True, progress=False)")
        with tarfile.open(archive) as tar:
            member = tar.getmembers()[0]
            tar.extract(member, workdir, filter="data")
        (workdir / member.name).rename(pth)
    return folder, pth


def bench(arch: str, workdir: Path, repeats: int) -> dict[str, float]:
    folder, pth = prepare(arch, workdir)
    python = sys.executable
    median = median_runs({
        "import": ([python, "-c", "import torch, timm"], False),
        "ours": ([python, "-c", OURS.format(folder=str(folder))], False),
        "original": ([python, "-c", ORIGINAL.format(arch=arch, pth=str(pth))], False),
    }, repeats)
    model_bytes = fp32_model_bytes(arch)
    return {
        "model_mib": model_bytes / 2**20,
        "import_s": median["import"][0], "ours_s": median["ours"][0], "original_s": median["original"][0],
        "import_rss": median["import"][1] / 2**20, "ours_rss": median["ours"][1] / 2**20,
        "original_rss": median["original"][1] / 2**20,
        "time_ratio": median["ours"][0] / median["import"][0],
        "speedup": median["original"][0] / median["ours"][0],
        "memory_ratio": (median["ours"][1] - median["import"][1]) / model_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="architecture(s) to measure (default VGG16, ResNet50)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each command (default 3)")
    parser.add_argument("--workdir", type=Path, help="keep prepared files here between runs (default: temp folder)")
    args = parser.parse_args()
    failed = False
    with bench_workdir(args.workdir) as workdir:
        for arch in args.arch or ["VGG16", "ResNet50"]:
            r = bench(arch, workdir, args.repeats)
            ok_time, ok_memory = r["time_ratio"] <= TIME_TARGET, r["memory_ratio"] <= MEMORY_TARGET
            failed |= not (ok_time and ok_memory)
            print(f"{arch}: fp32 model {r['model_mib']:.0f} MiB\n"
                  f"  wall: import torch,timm {r['import_s']:.2f} s | ours {r['ours_s']:.2f} s | original "
                  f"{r['original_s']:.2f} s\n"
                  f"  (a) ours/import {r['time_ratio']:.2f} (target <= {TIME_TARGET}) "
                  f"{'ok' if ok_time else 'MISSED'} | (b) original/ours {r['speedup']:.2f}\n"
                  f"  peak RSS: import {r['import_rss']:.0f} MiB | ours {r['ours_rss']:.0f} MiB | original "
                  f"{r['original_rss']:.0f} MiB | (c) (ours-import)/model {r['memory_ratio']:.2f} "
                  f"(target <= {MEMORY_TARGET}) {'ok' if ok_memory else 'MISSED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
