"""Whole-process measurements shared by the benchmark scripts (public tools only: os.wait4)."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

Command = tuple[Sequence[str] | str, bool]  # (argv or shell string, run through the shell?)


def run_measured(command: Sequence[str] | str, *, shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes (the kernel's ru_maxrss) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command} failed: {error[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def median_runs(commands: Mapping[str, Command], repeats: int) -> dict[str, tuple[float, int]]:
    """Run each command once to warm up, then ``repeats`` rounds in turn; median (wall s, peak RSS B) each."""
    for command, shell in commands.values():
        run_measured(command, shell=shell)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (command, shell) in commands.items():
            samples[name].append(run_measured(command, shell=shell))
    return {name: (statistics.median(w for w, _ in runs), int(statistics.median(r for _, r in runs)))
            for name, runs in samples.items()}


def python_output(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return what it printed.

    The benchmark process itself never imports torch: on Linux a child's ``ru_maxrss``
    starts from its parent's resident size at fork, so a heavy parent would inflate every
    peak-memory figure.
    """
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def fp32_model_bytes(arch: str) -> int:
    """fp32 bytes of the parameters of the architecture's legacy topology (36-class head)."""
    code = (f"from rnet_hub import legacy; "
            f"print(4 * sum(p.numel() for p in legacy.build_on_meta({arch!r}).parameters()))")
    return int(python_output(code).strip().splitlines()[-1])


@contextlib.contextmanager
def bench_workdir(kept: Path | None, prefix: str = "rnet-hub-bench-") -> Iterator[Path]:
    """``kept`` (created if needed and left afterwards), or a temporary folder removed at the end."""
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        yield kept
        return
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
