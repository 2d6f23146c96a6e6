"""Make the README's study picture: a small `rnet-hub study` on a generated set, saved to docs/images/study_curves.png.

The model is a stand-in ResNet18 (random weights in the original archive format, converted as the
real ones are) and the data are generated grey squares and crosses at 64 px (tests/finetune_data.py):
the picture shows what the study draws and how to read it, and says nothing about the real RadiologyNET
weights.

    .venv/bin/python scripts/study_example.py [--work DIR] [--runs 3] [--epochs 6] [--parallel 1]

Runs offline (the inits are radiologynet and scratch; ImageNet weights would need the Hub). On two CPU
cores the default takes a few minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shape generator of the fine-tuning tests


def main() -> int:
    """Generate the data and the model, run the study, copy its curve picture into docs/images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=32, help="training images per class (2 classes)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "study_curves.png")
    args = parser.parse_args()

    from finetune_data import make_image_folder

    from rnet_hub.architectures import find_arch
    from rnet_hub.converter import convert
    from rnet_hub.study import study
    from rnet_hub.testing import write_sample_archive

    work = args.work or Path(tempfile.mkdtemp(prefix="rnet-study-example-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = work / "resnet18"
        if not model.exists():
            archive = write_sample_archive("ResNet18", work / "archive" / "ResNet18.tar.gz", seed=0)
            convert(archive, model, repo_id=find_arch("ResNet18").repo_id(), progress=False)
        data = work / "shapes"
        if not data.exists():
            make_image_folder(data, per_class=args.per_class, size=64, dicom_every=0, classes=("square", "cross"),
                              seed=1)
        result = study(str(data), models=[str(model)], inits=["radiologynet", "scratch"], fractions=[0.25, 1.0],
                       runs=args.runs, epochs=args.epochs, lrs=[1e-4], out_dir=work / "study", resume=True,
                       parallel=args.parallel, finetune_options={"image_size": 64, "batch_size": 16},
                       command=f"rnet-hub study {data} --models {model} --inits radiologynet,scratch "
                               f"--fractions 0.25,1.0 --runs {args.runs} --epochs {args.epochs} --lrs 1e-4 "
                               f"--image-size 64 --batch-size 16 --out {work / 'study'}")
        print(result)
        curves = next(p for p in result.pictures if p.name.startswith("curves_"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "study" / curves.name, args.out)
        print(f"wrote {args.out}")
        print((work / "study" / "report.md").read_text())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
