"""Stand-in archives in the exact original format, for tests, demos and benchmarks.

The real archives cannot be downloaded everywhere, so this writes one that is
indistinguishable in *format* from a published one: a ``.tar.gz`` holding ``<Name>.pth``,
a dict with ``time``, ``model_state`` (the legacy wrapper's ``state_dict()``),
``model_name``, ``optimizer_state`` (a real AdamW ``state_dict()`` with per-parameter
``step``/``exp_avg``/``exp_avg_sq``), ``optimizer_name`` and ``epoch``. The weights are
random (seeded) with randomised BatchNorm affine parameters and running statistics.
Results on these archives say nothing about the real weights.
"""

from __future__ import annotations

import math
import os
import tarfile
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import legacy
from .architectures import PRETRAINING_NUM_CLASSES, ArchSpec, find_arch

__all__ = ["write_sample_archive"]

_FIXED_TIME = "2023-06-01 12:00:00"
_FIXED_MTIME = 1685620800


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Variance-preserving random weights and non-trivial BatchNorm statistics, in place."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=generator)))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.01, generator=generator)


def _trained_parameters(wrapper: nn.Module) -> list[nn.Parameter]:
    """Parameters AdamW held state for: all but InceptionV3's never-used aux head."""
    return [p for n, p in wrapper.named_parameters() if ".AuxLogits." not in f".{n}"]


def _adamw_state(wrapper: nn.Module, generator: torch.Generator, steps: int) -> dict:
    """A real ``AdamW.state_dict()`` with per-parameter moments filled in."""
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-4, weight_decay=1e-2)
    trained = {id(p) for p in _trained_parameters(wrapper)}
    for param in wrapper.parameters():
        if id(param) in trained:
            optimizer.state[param] = {
                "step": torch.tensor(float(steps)),
                "exp_avg": torch.randn(param.shape, generator=generator) * 1e-3,
                "exp_avg_sq": torch.rand(param.shape, generator=generator) * 1e-6,
            }
    return optimizer.state_dict()


def _open_gzip_writer(path: Path):
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.GzipFile(path, "wb", compresslevel=1, mtime=_FIXED_MTIME)
    return igzip.IGzipFile(path, "wb", compresslevel=1, mtime=_FIXED_MTIME)


def write_sample_archive(name: str | ArchSpec, out_path: str | os.PathLike[str], *, seed: int = 0,
                         num_classes: int = PRETRAINING_NUM_CLASSES, with_optimizer: bool = True,
                         epoch: int = 30) -> Path:
    """Write a stand-in ``<Name>.tar.gz`` for ``name``; returns the archive path.

    Written to a temporary name and renamed, so a failure leaves nothing. The same seed
    gives the same weights.
    """
    spec = name if isinstance(name, ArchSpec) else find_arch(name)
    out_path = Path(out_path)
    if out_path.is_dir() or not out_path.name.endswith((".tar.gz", ".tgz")):
        out_path = out_path / f"{spec.name}.tar.gz"  # a folder: name the archive as published
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wrapper = legacy.build(spec, num_classes)
    _randomise(wrapper, generator)
    checkpoint = {
        "time": _FIXED_TIME,
        "model_state": wrapper.state_dict(),
        "model_name": spec.name,
        "optimizer_state": _adamw_state(wrapper, generator, steps=epoch * 1000) if with_optimizer else {},
        "optimizer_name": "AdamW",
        "epoch": epoch,
    }
    if not with_optimizer:
        del checkpoint["optimizer_state"], checkpoint["optimizer_name"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rnet-hub-sample-", dir=out_path.parent) as workdir:
        pth = Path(workdir) / f"{spec.name}.pth"
        torch.save(checkpoint, pth)
        del checkpoint, wrapper
        partial = Path(workdir) / "archive.tar.gz"
        with _open_gzip_writer(partial) as gz, tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            info = tar.gettarinfo(pth, arcname=pth.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _FIXED_MTIME, 0, 0, "", ""
            with open(pth, "rb") as handle:
                tar.addfile(info, handle)
        os.replace(partial, out_path)
    return out_path
