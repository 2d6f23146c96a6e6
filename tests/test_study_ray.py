"""``rnet_hub.study(engine="ray")``: one Ray task per cell on a small local Ray, failures retried once by
Ray and isolated per cell, with the stand-in cell runner (tests/study_fakes.py); Ray is an optional extra."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from study_fakes import failing_cell, fake_cell, make_data

from rnet_hub.errors import MissingExtraError
from rnet_hub.study import study

GRID = {"models": ["resnet18"], "inits": ["radiologynet", "scratch"], "fractions": [0.5, 1.0], "runs": 2,
        "epochs": 2}


def test_cells_run_as_ray_tasks_retried_once_and_isolated(tmp_path: Path) -> None:
    import ray

    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    here = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(temp), logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": here}})  # the workers import the stand-in runner
    try:
        out = tmp_path / "s"
        result = study(make_data(), out_dir=out, cell_runner=failing_cell, engine="ray", progress=False, **GRID)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert result.failed == ("resnet18__scratch__f1__lr0.001__run1",)  # failed on both tries
    assert len(result.ran) == 7
    retried = [json.loads(x) for x in (out / "cells" / "resnet18__scratch__f1__lr0.001__run0" / "calls.jsonl")
               .read_text().splitlines()]
    assert retried[0] == {"failed": True} and "seed" in retried[1]  # Ray's retry succeeded
    serial = tmp_path / "serial"
    study(make_data(), out_dir=serial, cell_runner=fake_cell, progress=False, **GRID)
    ours = pd.read_csv(out / "final.csv").drop(columns=["wall_s"])
    theirs = pd.read_csv(serial / "final.csv").drop(columns=["wall_s"])
    key = ["init", "fraction", "run"]
    merged = theirs.merge(ours, on=key, suffixes=("", "_ray"))
    assert len(merged) == 7 and (merged["test_f1_weighted"] == merged["test_f1_weighted_ray"]).all()


def test_ray_is_an_optional_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rnet-hub\[ray\]'"):
        study(make_data(), out_dir=tmp_path / "s", cell_runner=fake_cell, engine="ray", progress=False, **GRID)
