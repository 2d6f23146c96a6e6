"""``rnet-hub finetune``: fine-tune a RadiologyNET model on your own data with transformers' ``Trainer``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from ._shared import SubParsers

__all__ = ["add_parser"]

_EXAMPLES = textwrap.dedent("""\
    data layouts:
      DATA/{train,val,test}/<class>/*.{png,jpg,dcm}   image folder (val/test optional: seeded 0.75/0.125/0.125 split)
      manifest.csv | manifest.parquet                 path,label | path,<label1>,<label2>,... (0/1) | path,<target>
                                                      (+ optional split column; paths relative to the manifest)
      a `datasets` save_to_disk folder or Hub name    with image and label columns

    outputs in DIR: model/ (best checkpoint: timm, transformers, rnet_hub.create_model, `rnet-hub push`),
      metrics.jsonl (per epoch), test_metrics.json, curves.png, checkpoints/ (Trainer's), tensorboard/

    examples:
      rnet-hub finetune data/ --model resnet50 --out runs/r50
      rnet-hub finetune labels.csv --model radiologynet/densenet121 --task multi_label --out runs/d121
      rnet-hub finetune data/ --model resnet50 --init imagenet --out runs/r50-in --ta lr_scheduler_type=cosine
      torchrun --nproc_per_node 4 -m rnet_hub.cli finetune data/ --model resnet50 --out runs/r50 --bf16
      accelerate launch -m rnet_hub.cli finetune data/ --model resnet50 --out runs/r50
      rnet-hub finetune data/ --model resnet50 --out runs/r50 --resume     # after a kill
""")


def _cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune and print the result (only the main process prints it)."""
    import os

    from ..finetune import finetune
    from ..finetune.options import parse_ta
    from ._shared import writing_to

    options = {key: getattr(args, key) for key in (
        "init", "epochs", "lr", "batch_size", "weight_decay", "patience", "metric", "image_size", "seed", "bf16",
        "fp16", "report_to", "num_workers", "freeze_backbone", "unfreeze_after", "class_weights", "quiet", "resume",
        "overwrite", "config", "image_column", "label_column")}
    options.update(flip=not args.no_flip, training_args=parse_ta(args.ta or []), data_cache_dir=args.data_cache)
    with writing_to(args.out, "--out"):
        result = finetune(args.data, model=args.model, out_dir=args.out, task=args.task, **options)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result)
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``finetune`` command."""
    parser = sub.add_parser(
        "finetune", help="fine-tune a model on your images (folders, CSV/Parquet manifests, datasets, DICOM)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES,
        description="Train a RadiologyNET model (or timm's ImageNet weights, or a random initialisation of the "
                    "same architecture) on DATA with transformers' Trainer and the original study's defaults: "
                    "AdamW, lr 1e-3, weight decay 1e-3, batch 32, constant learning rate, augmentation (flip, "
                    "±15° rotation, brightness, contrast), early stopping after 10 epochs without improvement "
                    "of the validation metric, the best checkpoint kept. Runs unchanged under torchrun or "
                    "accelerate launch (data-parallel); only the main process writes DIR.")
    parser.add_argument("data", metavar="DATA", help="image folder, CSV/Parquet manifest, or datasets folder/name")
    parser.add_argument("--model", required=True,
                        help="converted folder, Hub id or architecture (resnet50, radiologynet/resnet50, ...)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder of the run")
    parser.add_argument("--task", choices=("single_label", "multi_label", "regression"),
                        help="default: inferred from the data")
    parser.add_argument("--init", choices=("radiologynet", "imagenet", "scratch"), default="radiologynet",
                        help="weights to start from: the model's, timm's ImageNet ones for the same architecture, "
                             "or random (default radiologynet)")
    parser.add_argument("--epochs", type=float, help="maximum epochs (default 200, as the study; early stopping "
                                                     "usually ends sooner)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (default 32)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-3)")
    parser.add_argument("--patience", type=int, default=10,
                        help="epochs without improvement before stopping (0: no early stopping; default 10)")
    parser.add_argument("--metric", help="validation metric for early stopping and the best checkpoint (default "
                                         "f1_weighted, multi-label auroc_macro, regression mae)")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="train at PX x PX instead of the architecture's native size (recorded in the output)")
    parser.add_argument("--seed", type=int, help="training seed (default 1221; the data split has its own)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU)")
    parser.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU)")
    parser.add_argument("--report-to", help="Trainer loggers, e.g. tensorboard (logs in DIR/tensorboard)")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    parser.add_argument("--freeze-backbone", action="store_true", help="train only the new head")
    parser.add_argument("--unfreeze-after", type=int, metavar="N",
                        help="with --freeze-backbone: train the whole model from epoch N on")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flip (laterality-sensitive tasks)")
    parser.add_argument("--class-weights", action="store_true",
                        help="weight the loss against class imbalance (classification)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="JSON or YAML mapping of TrainingArguments fields (named options and --ta win)")
    parser.add_argument("--ta", action="append", metavar="KEY=VALUE",
                        help="set any TrainingArguments field (repeatable), e.g. --ta lr_scheduler_type=cosine")
    parser.add_argument("--image-column", default="image", help="datasets: the image column (default image)")
    parser.add_argument("--label-column", help="datasets: the label column (default: label or labels)")
    parser.add_argument("--data-cache", type=Path, metavar="DIR",
                        help="also keep decoded, letterboxed images on disk there (default: in memory only)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the earlier run in --out and start again")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.set_defaults(func=_cmd_finetune)
