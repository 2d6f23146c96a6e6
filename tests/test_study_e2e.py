"""The tiny study end to end with real fine-tuning: 2 inits x 2 fractions x 2 runs x 2 epochs of a stand-in
MobileNetV3Small at 64 px on generated shapes, through the ``rnet-hub study`` command, then resumed.

The weights are random stand-ins: the numbers say nothing about the real RadiologyNET weights; the
test checks the study's bookkeeping on real runs, not which init wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from finetune_data import make_image_folder

from rnet_hub.cli import main

INITS = ("radiologynet", "scratch")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared two-core machine, two threads per op wait on each other (3-5x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_tiny_study_runs_real_fine_tunes_and_resumes_without_retraining(
        tmp_path: Path, converted_dir: Callable[[str], Path], capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    model = converted_dir("MobileNetV3Small")
    data = make_image_folder(tmp_path / "data", per_class=8, size=64, dicom_every=0)  # 24 train, 6 val, 6 test
    out = tmp_path / "study"
    argv = ["study", str(data), "--models", str(model), "--inits", ",".join(INITS), "--fractions", "0.5,1.0",
            "--runs", "2", "--epochs", "2", "--image-size", "64", "--batch-size", "12", "--out", str(out), "-q"]
    assert main(argv) == 0
    label = model.name
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 8 * 2 and set(cells["epoch"]) == {1, 2}  # every cell trained both epochs (no early stop)
    assert cells["f1_weighted"].between(0, 1).all() and cells["loss"].notna().all()
    final = pd.read_csv(out / "final.csv")
    assert len(final) == 8 and (final["epochs"] == 2).all()
    assert dict(final.groupby("fraction")["train_size"].unique().map(list)) == {0.5: [12], 1.0: [24]}
    assert final["test_f1_weighted"].between(0, 1).all() and (final["wall_s"] > 0).all()
    for row in final.itertuples():
        folder = out / "cells" / f"{label}__{row.init}__f{row.fraction:g}__lr0.001__run{row.run}" / "finetune"
        assert (folder / "model" / "config.json").is_file()
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        assert rows[-1]["eval_f1_weighted"] == pytest.approx(
            cells[(cells.init == row.init) & (cells.fraction == row.fraction) & (cells.run == row.run)
                  & (cells.epoch == 2)]["f1_weighted"].item())
    summary = pd.read_csv(out / "summary.csv").set_index(["init", "fraction", "at", "metric"])
    for init in INITS:  # the summary's means are the means over the two runs of cells.csv
        at = cells[(cells.init == init) & (cells.fraction == 0.5) & (cells.epoch == 2)]["f1_weighted"]
        assert summary.loc[(init, 0.5, "2", "f1_weighted"), "mean"] == pytest.approx(at.mean())
        assert summary.loc[(init, 0.5, "2", "f1_weighted"), "n"] == 2
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert len(comparisons) == 2 * 2 and (comparisons["n"] == 2).all()
    assert set(comparisons["a"] + " vs " + comparisons["b"]) == {"radiologynet vs scratch"}
    pictures = json.loads((out / "plots.json").read_text())
    curves = pictures[f"curves_{label}_lr0.001.png"]["panels"]
    assert [p["title"] for p in curves] == ["fraction 0.5", "fraction 1"]
    for panel in curves:
        fraction = float(panel["title"].split()[-1])
        for line in panel["lines"]:
            values = cells[(cells.init == line["label"]) & (cells.fraction == fraction)].groupby("epoch")["f1_weighted"]
            assert line["x"] == [1.0, 2.0] and line["n"] == [2, 2]
            assert line["mean"] == pytest.approx(list(values.mean()))
    assert (out / f"curves_{label}_lr0.001.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert f"rnet-hub study {data} --models {model} --inits radiologynet,scratch" in report
    assert "| torch |" in report and "not measured (install rnet-hub[energy])" in report
    assert "data:image/png;base64," in (out / "report.html").read_text()
    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")}
    before = {name: pd.read_csv(out / name) for name in ("cells.csv", "summary.csv", "comparisons.csv")}
    assert main([*argv, "--resume"]) == 0
    assert "0 run now, 8 finished before" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")} == mtimes
    for name, frame in before.items():  # the tables rebuilt from the saved state are the same
        pd.testing.assert_frame_equal(pd.read_csv(out / name), frame)
