"""Conversion speed and memory, as ratios against baselines measured in the same run.

For each architecture (default VGG16 and ResNet50) it writes the stand-in archive *with*
optimizer state (the size of the published one), then runs, alternately, ``--repeats`` times:

* ``gzip -dc ARCHIVE > /dev/null``: the floor for reading the archive at all;
* ``python -c "import torch, timm"``: the memory floor of any Python process that could convert;
* ``rnet-hub convert ARCHIVE --out DIR --overwrite -q``: the conversion, parity check included.

It prints the medians and two ratios with their targets:

* time:   convert wall / gzip wall                       (target <= 1.2 on VGG16, reported for others)
* memory: (convert peak RSS - import peak RSS) / fp32 model bytes   (target <= 1.6)

The time target is set on VGG16, the archive where reading dominates. Smaller archives (ResNet50:
247 MiB, read in about 2.4 s) decompress faster than torch and timm import (about 4 s), so their
ratio says how long the import takes, and it is only reported.

Peak RSS is the kernel's ``ru_maxrss`` of each child process (``os.wait4``). Results on stand-in
archives measure the converter, not the real weights.

Usage: python benchmarks/convert.py [--arch VGG16 --arch ResNet50] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _measure import bench_workdir, fp32_model_bytes, median_runs, python_output

TIME_TARGET = 1.2
TIME_TARGET_ARCH = "VGG16"
MEMORY_TARGET = 1.6


def _rnet_hub_command() -> list[str]:
    """The installed ``rnet-hub`` console script beside this Python, else ``python -m rnet_hub.cli``."""
    script = Path(sys.executable).with_name("rnet-hub")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rnet_hub.cli"]


def bench(arch: str, workdir: Path, repeats: int) -> dict[str, float]:
    archive = workdir / f"{arch}.tar.gz"
    if not archive.exists():
        print(f"writing the {arch} stand-in archive with optimizer state ...", flush=True)
        python_output(f"from rnet_hub.testing import write_sample_archive as w; w({arch!r}, {str(archive)!r})")
    out = workdir / f"{arch}-converted"
    commands = {
        "gzip": (f"gzip -dc {archive} > /dev/null", True),
        "import": ([sys.executable, "-c", "import torch, timm"], False),
        "convert": ([*_rnet_hub_command(), "convert", str(archive), "--out", str(out), "--overwrite", "-q"], False),
    }
    median = median_runs(commands, repeats)
    model_bytes = fp32_model_bytes(arch)
    return {
        "archive_mib": archive.stat().st_size / 2**20,
        "model_mib": model_bytes / 2**20,
        "gzip_s": median["gzip"][0],
        "convert_s": median["convert"][0],
        "import_rss_mib": median["import"][1] / 2**20,
        "convert_rss_mib": median["convert"][1] / 2**20,
        "time_ratio": median["convert"][0] / median["gzip"][0],
        "memory_ratio": (median["convert"][1] - median["import"][1]) / model_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="architecture(s) to measure (default VGG16, ResNet50)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each command (default 3)")
    parser.add_argument("--workdir", type=Path, help="keep archives here between runs (default: a temp folder)")
    args = parser.parse_args()
    failed = False
    with bench_workdir(args.workdir) as workdir:
        for arch in args.arch or ["VGG16", "ResNet50"]:
            r = bench(arch, workdir, args.repeats)
            timed = arch == TIME_TARGET_ARCH
            ok_time, ok_memory = r["time_ratio"] <= TIME_TARGET or not timed, r["memory_ratio"] <= MEMORY_TARGET
            failed |= not (ok_time and ok_memory)
            verdict = (f"(target <= {TIME_TARGET}) {'ok' if ok_time else 'MISSED'}" if timed
                       else f"(reported; the target is set on {TIME_TARGET_ARCH})")
            print(f"{arch}: archive {r['archive_mib']:.0f} MiB, fp32 model {r['model_mib']:.0f} MiB\n"
                  f"  gzip -dc {r['gzip_s']:.2f} s | convert {r['convert_s']:.2f} s | "
                  f"time ratio {r['time_ratio']:.2f} {verdict}\n"
                  f"  peak RSS: import torch,timm {r['import_rss_mib']:.0f} MiB | convert "
                  f"{r['convert_rss_mib']:.0f} MiB | memory ratio {r['memory_ratio']:.2f} "
                  f"(target <= {MEMORY_TARGET}) {'ok' if ok_memory else 'MISSED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
