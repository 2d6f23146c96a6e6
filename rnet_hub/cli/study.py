"""``rnet-hub study``: does RadiologyNET initialisation help on my data? (inits x fractions x runs, one command)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ._shared import SubParsers, writing_to

__all__ = ["add_parser"]

_EXAMPLES = """examples:
  # the original protocol on a folder DATA/{train,val,test}/<class>/*.png (or a manifest, or a datasets folder)
  rnet-hub study DATA --models resnet50,mobilenetv3_small_100 --inits radiologynet,imagenet,scratch \\
      --fractions 0.05,0.25,0.5,1.0 --runs 5 --epochs 10 --out study-dir
  # two learning rates, four cells at once (one GPU each when there are GPUs)
  rnet-hub study DATA --models resnet18 --lrs 1e-3,1e-4 --parallel 4 --out study-dir
  # continue after an interruption: finished cells are skipped, interrupted ones resume
  rnet-hub study DATA --models resnet18 --out study-dir --resume
  # one Ray task per cell on a running cluster
  rnet-hub study DATA --models resnet18 --engine ray --address auto --out study-dir

DIR then holds cells.csv (per-epoch metrics), final.csv (per cell), summary.csv (mean ± std over runs),
comparisons.csv (paired t-test and Wilcoxon between inits), the pictures, plots.json and report.md/.html."""


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning options every cell gets."""
    from ..finetune.options import parse_ta

    named = {"image_size": args.image_size, "batch_size": args.batch_size, "weight_decay": args.weight_decay,
             "num_workers": args.num_workers, "config": str(args.config) if args.config else None,
             "image_column": args.image_column, "label_column": args.label_column,
             "cache_dir": str(args.cache_dir) if args.cache_dir else None}
    options = {k: v for k, v in named.items() if v is not None}
    if args.no_flip:
        options["flip"] = False
    if args.bf16:
        options["bf16"] = True
    if args.fp16:
        options["fp16"] = True
    if args.ta:
        options["training_args"] = parse_ta(args.ta)
    return options


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces this study, every setting spelled out."""
    parts = ["rnet-hub", "study", str(args.data), "--models", args.models, "--inits", args.inits, "--fractions",
             args.fractions, "--runs", str(args.runs), "--epochs", str(args.epochs), "--lrs", args.lrs,
             "--seed", str(args.seed), "--curve-epochs", str(args.curve_epochs), "--alpha", str(args.alpha)]
    for flag, value in (("--task", args.task), ("--metric", args.metric), ("--image-size", args.image_size),
                        ("--batch-size", args.batch_size), ("--weight-decay", args.weight_decay),
                        ("--num-workers", args.num_workers), ("--config", args.config),
                        ("--image-column", args.image_column), ("--label-column", args.label_column)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--no-flip", args.no_flip), ("--bf16", args.bf16), ("--fp16", args.fp16)) if on]
    for pair in args.ta or []:
        parts += ["--ta", pair]
    return shlex.join([*parts, "--out", str(args.out)])


def _cmd_study(args: argparse.Namespace) -> int:
    """Run or continue the study and print where its report is."""
    from ..study import study

    with writing_to(args.out, "--out"):
        result = study(args.data, models=args.models, out_dir=args.out, inits=args.inits, fractions=args.fractions,
                       runs=args.runs, epochs=args.epochs, lrs=args.lrs, task=args.task, seed=args.seed,
                       metric=args.metric, curve_epochs=args.curve_epochs, alpha=args.alpha, parallel=args.parallel,
                       engine=args.engine, address=args.address, resume=args.resume, finetune_options=_options(args),
                       command=_command(args), progress=not args.quiet)
    print(result)
    if result.failed:
        print(f"{len(result.failed)} cell(s) failed twice (see report.md); run again with --resume to retry them")
        return 1
    return 0


def add_parser(sub: SubParsers) -> None:
    """Add the ``study`` command."""
    parser = sub.add_parser(
        "study", help="does RadiologyNET help on my data? compare inits over data fractions and runs",
        description="The original study's comparison as one command: every model x init x training fraction x\n"
                    "learning rate x run is one `rnet-hub finetune` run (nested, seeded fractions of the training\n"
                    "split; validation and test never reduced; runs differ only in their seed; every cell trains\n"
                    "--epochs epochs, no early stopping). Writes tables, paired tests between inits, averaged\n"
                    "learning curves and a report to --out; the study's state lives there too (--resume).",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", metavar="DATA",
                        help="an image folder, a CSV/Parquet manifest or a datasets dataset (as rnet-hub finetune)")
    parser.add_argument("--models", required=True,
                        help="comma-separated model names: architectures (resnet50), Hub ids or converted folders")
    parser.add_argument("--inits", default="radiologynet,imagenet,scratch",
                        help="comma-separated inits (default: radiologynet,imagenet,scratch)")
    parser.add_argument("--fractions", default="0.05,0.25,0.5,1.0",
                        help="training fractions, nested (default: 0.05,0.25,0.5,1.0 as the original study)")
    parser.add_argument("--runs", type=int, default=5, help="runs per cell, differing only in their seed (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per cell, no early stopping (default 10)")
    parser.add_argument("--lrs", default="1e-3", help="comma-separated learning rates (default 1e-3)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the study folder (state and results)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in --out: skip finished cells, resume interrupted ones")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N cells at once, one process each (one GPU each when there are GPUs)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local processes (default) or one Ray task per cell (pip install 'rnet-hub[ray]')")
    parser.add_argument("--address",
                        help="the Ray cluster to use (e.g. auto or ray://host:10001); implies --engine ray")
    parser.add_argument("--task", choices=("single_label", "multi_label", "regression"),
                        help="the task (default: inferred from the data)")
    parser.add_argument("--seed", type=int, default=1221,
                        help="split and fraction seed; run r trains with seed + r (default 1221, the original's)")
    parser.add_argument("--metric", help="main validation metric (default: the task's, e.g. f1_weighted or mae)")
    parser.add_argument("--curve-epochs", type=int, default=10, metavar="N",
                        help="the first N epochs of the curves and of the curve area (default 10)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the comparisons")
    group = parser.add_argument_group("fine-tuning options (every cell)")
    group.add_argument("--image-size", type=int, help="train at this square size instead of the native one")
    group.add_argument("--batch-size", type=int, help="batch size (default 32)")
    group.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-3)")
    group.add_argument("--num-workers", type=int, help="DataLoader workers per cell")
    group.add_argument("--no-flip", action="store_true", help="no horizontal flips (laterality-sensitive tasks)")
    group.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU)")
    group.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU)")
    group.add_argument("--config", type=Path, help="a JSON/YAML file of TrainingArguments fields")
    group.add_argument("--ta", action="append", metavar="KEY=VALUE", help="a TrainingArguments field (repeatable)")
    group.add_argument("--image-column", help="image column of a datasets dataset (default image)")
    group.add_argument("--label-column", help="label column of a manifest or datasets dataset")
    group.add_argument("--cache-dir", type=Path, help="where Hub models are cached")
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per finished cell")
    parser.set_defaults(func=_cmd_study)
