"""The built-in default job: sample archive -> convert -> load through timm and transformers -> parity.

It runs on a stand-in archive (random weights in the exact published format), so it works
on an empty machine with no network; the figures it prints are about the conversion, not
about the real RadiologyNET weights.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from .. import legacy
from ..architectures import find_arch
from ..converter import convert
from ..legacy.checkpoint import open_legacy_checkpoint
from ..parity import compare_logits, parity_input, run_logits
from ..testing import write_sample_archive

__all__ = ["run_demo"]


def run_demo(arch: str, workdir: Path, *, progress: bool = True) -> int:
    """Run the whole chain for ``arch`` inside ``workdir`` and print each step's result."""
    spec = find_arch(arch)
    print(f"1/4 writing a stand-in {spec.name} archive (random weights, original format) ...")
    archive = write_sample_archive(spec, workdir / f"{spec.name}.tar.gz", with_optimizer=True)
    print(f"    {archive} ({archive.stat().st_size / 2**20:.1f} MiB; published: {spec.archive_mib:.0f} MiB)")
    print("2/4 converting (the converter verifies parity against the original topology) ...")
    result = convert(archive, workdir / spec.timm_arch, overwrite=True, progress=progress)
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
