"""``rnet-hub demo``, the built-in default job: sample archive -> convert -> load (timm, transformers) -> parity.

It runs on a stand-in archive (random weights in the exact published format), so it works
on an empty machine with no network; the figures it prints are about the conversion, not
about the real RadiologyNET weights. torch and timm are imported when the command runs,
not when the parser is built.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import ARCH_HELP, SubParsers, writing_to
from .convert import import_converter

__all__ = ["add_parser", "run_demo"]


def run_demo(arch: str, workdir: Path, *, progress: bool = True) -> int:
    """Run the whole chain for ``arch`` inside ``workdir`` and print each step's result."""
    from ..architectures import find_arch

    spec = find_arch(arch)  # an unknown name fails before torch is imported
    converter = import_converter()
    import timm
    import torch

    from .. import legacy
    from ..legacy.checkpoint import open_legacy_checkpoint
    from ..parity import compare_logits, parity_input, run_logits
    from ..testing import write_sample_archive

    print(f"1/4 writing a stand-in {spec.name} archive (random weights, original format) ...")
    archive = write_sample_archive(spec, workdir / f"{spec.name}.tar.gz", with_optimizer=True)
    print(f"    {archive} ({archive.stat().st_size / 2**20:.1f} MiB; published: {spec.archive_mib:.0f} MiB)")
    print("2/4 converting (the converter verifies parity against the original topology) ...")
    result = converter.convert(archive, workdir / spec.timm_arch, overwrite=True, progress=progress)
    print(f"    {result}")
    inputs = parity_input(spec.input_size)
    with open_legacy_checkpoint(archive, progress=False) as checkpoint:
        original = run_logits(legacy.build_with_state(checkpoint.state_dict, spec, result.num_classes), inputs)
    print(f"3/4 timm.create_model('local-dir:{result.out_dir}', pretrained=True)")
    timm_logits = run_logits(timm.create_model(f"local-dir:{result.out_dir}", pretrained=True), inputs)
    print(f"    timm vs original topology: {compare_logits(original, timm_logits, spec.input_size)}")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        print("4/4 transformers is not installed (pip install 'rnet-hub[transformers]'); skipped")
        return 0
    print(f"4/4 AutoModelForImageClassification.from_pretrained('{result.out_dir}')")
    hf_model = AutoModelForImageClassification.from_pretrained(result.out_dir)
    with torch.inference_mode():
        hf_logits = hf_model.eval()(pixel_values=inputs).logits
    print(f"    transformers vs original topology: {compare_logits(original, hf_logits, spec.input_size)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo chain in ``--workdir``."""
    with writing_to(args.workdir, "--workdir"):
        return run_demo(args.arch, args.workdir, progress=not args.quiet)


def add_parser(sub: SubParsers) -> None:
    """Add the ``demo`` command."""
    parser = sub.add_parser(
        "demo", help="the whole chain on a built-in default: sample archive, convert, load, parity report",
        description="Write a stand-in archive (random weights in the exact published format), convert it, "
                    "load the result with timm and transformers and print the parity report against the "
                    "original topology. Needs no network.")
    parser.add_argument("--arch", default="ResNet50", help=f"architecture (default ResNet50); {ARCH_HELP}")
    parser.add_argument("--workdir", type=Path, default=Path("demo-output"),
                        help="folder for the archive and the converted model (default ./demo-output)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_demo)
