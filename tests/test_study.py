"""``rnet_hub.study`` with a stand-in cell runner (tests/study_fakes.py): the grid, nesting and shared data
order, the files, failures and retries, worker processes, resume after a kill, energy and the CLI.

The stand-in writes known metrics instantly, so these tests check the study's own work; the real
fine-tuning runs in tests/test_study_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from study_fakes import INIT_SHIFT, crashing_cell, failing_cell, fake_cell, fake_value, make_data

import rnet_hub
from rnet_hub.cli import main
from rnet_hub.study import study
from rnet_hub.study.grid import check_nested, make_grid, train_subsets

HERE = Path(__file__).resolve().parent
GRID = {"models": ["resnet18"], "inits": ["radiologynet", "scratch"], "fractions": [0.25, 1.0], "runs": 3,
        "epochs": 3, "curve_epochs": 2}


def _calls(out: Path) -> dict[str, list[dict]]:
    return {d.name: [json.loads(x) for x in (d / "calls.jsonl").read_text().splitlines()]
            for d in sorted((out / "cells").iterdir()) if (d / "calls.jsonl").exists()}


def test_fractions_are_nested_and_every_init_of_a_run_sees_the_same_data_in_the_same_order(tmp_path: Path) -> None:
    data = make_data(n_train=40)
    subsets = train_subsets(data, [0.05, 0.25, 0.5, 1.0], seed=1221)
    sizes = [len(subsets[f].splits["train"]) for f in (0.05, 0.25, 0.5, 1.0)]
    assert sizes == [2, 10, 20, 40]
    for small, large in ((0.05, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(subsets[small].splits["train"]) <= set(subsets[large].splits["train"])
    assert all(subsets[f].splits["val"] == data.splits["val"] and subsets[f].splits["test"] == data.splits["test"]
               for f in subsets)
    broken = {**subsets, 0.5: make_data(n_train=40).with_train_fraction(0.5, seed=7)}  # another shuffle
    with pytest.raises(rnet_hub.errors.IntegrityError, match="not nested"):
        check_nested(data, broken)
    cells = make_grid(models=["resnet18"], inits=["radiologynet", "imagenet"], fractions=[1.0, 0.5], lrs=[1e-3],
                      runs=2, seed=1221)
    assert [(c.run, c.fraction, c.init, c.seed) for c in cells[:4]] == [
        (0, 0.5, "radiologynet", 1221), (0, 0.5, "imagenet", 1221), (0, 1.0, "radiologynet", 1221),
        (0, 1.0, "imagenet", 1221)]
    study(data, out_dir=tmp_path / "s", cell_runner=fake_cell, progress=False, **GRID)
    calls = _calls(tmp_path / "s")
    assert len(calls) == 12 and all(len(c) == 1 for c in calls.values())
    for run in range(3):
        for fraction in ("0.25", "1"):
            seen = [calls[f"resnet18__{init}__f{fraction}__lr0.001__run{run}"][0] for init in GRID["inits"]]
            assert seen[0]["train"] == seen[1]["train"] and seen[0]["seed"] == seen[1]["seed"] == 1221 + run
            assert seen[0]["val"] == [e.source for e in data.splits["val"]]
    small = calls["resnet18__scratch__f0.25__lr0.001__run0"][0]["train"]
    assert len(small) == 10 and set(small) <= set(calls["resnet18__scratch__f1__lr0.001__run0"][0]["train"])


def test_a_study_writes_tables_comparisons_pictures_and_a_self_contained_report(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = study(make_data(), out_dir=out, cell_runner=fake_cell, progress=False, **GRID)
    assert (result.metric, result.greater, len(result.ran), result.failed) == ("f1_weighted", True, 12, ())
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 12 * 3 and {"f1_weighted", "accuracy", "loss"} <= set(cells.columns)
    row = cells[(cells.init == "scratch") & (cells.fraction == 0.25) & (cells.run == 1) & (cells.epoch == 2)]
    assert row["f1_weighted"].item() == pytest.approx(fake_value("scratch", 0.25, 1, 2))
    summary = pd.read_csv(out / "summary.csv").set_index(["init", "fraction", "at", "metric"])
    tests = [fake_value("radiologynet", 1.0, r, 0) for r in range(3)]
    assert summary.loc[("radiologynet", 1.0, "test", "f1_weighted"), "mean"] == pytest.approx(sum(tests) / 3)
    assert summary.loc[("radiologynet", 1.0, "best", "f1_weighted"), "mean"] == pytest.approx(
        sum(fake_value("radiologynet", 1.0, r, 3) for r in range(3)) / 3)
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["measure"]) == {"test_f1_weighted", "auc_first2_f1_weighted"}
    assert (comparisons["mean_diff"].round(9) == INIT_SHIFT["radiologynet"]).all() and (comparisons["n"] == 3).all()
    assert comparisons["verdict"].str.startswith("radiologynet better than scratch (higher").all()
    data = json.loads((out / "plots.json").read_text())
    line = next(li for p in data["curves_resnet18_lr0.001.png"]["panels"] if p["title"] == "fraction 0.25"
                for li in p["lines"] if li["label"] == "scratch")
    assert line["x"] == [1.0, 2.0]  # the first --curve-epochs epochs only
    assert line["mean"] == pytest.approx([sum(fake_value("scratch", 0.25, r, e) for r in range(3)) / 3 for e in (1, 2)])
    assert (out / "curves_resnet18_lr0.001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fractions_resnet18_lr0.001.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 2 and "src='http" not in html and "curves_" not in html.split(
        "<img")[0][-10:]
    md = (out / "report.md").read_text()
    assert "![" in md and "curves_resnet18_lr0.001.png" in md and "rnet_hub.study(" in md
    assert "not measured (install rnet-hub[energy])" in md and "| scipy |" in md
    assert "radiologynet better than scratch" in md


def test_a_failing_cell_is_retried_once_then_reported_while_the_others_finish(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = study(make_data(), out_dir=out, cell_runner=failing_cell, progress=False, **GRID)
    assert result.failed == ("resnet18__scratch__f1__lr0.001__run1",)
    assert len(result.ran) == 11  # scratch at 1.0, runs 0 and 2, failed once and passed on the retry
    record = json.loads((out / "cells" / result.failed[0] / "cell.json").read_text())
    assert record["status"] == "failed" and record["attempt"] == 2 and "made-up failure" in record["error"]
    retried = json.loads((out / "cells" / "resnet18__scratch__f1__lr0.001__run0" / "cell.json").read_text())
    assert (retried["status"], retried["attempt"]) == ("done", 2)
    assert "failed" in (out / "report.md").read_text()
    assert len(pd.read_csv(out / "final.csv")) == 11
    again = study(make_data(), out_dir=out, cell_runner=fake_cell, progress=False, resume=True, **GRID)
    assert again.ran == result.failed and len(again.skipped) == 11 and again.failed == ()


def test_parallel_cells_run_in_their_own_processes_and_a_killed_one_is_retried(tmp_path: Path) -> None:
    out = tmp_path / "s"
    grid = {**GRID, "runs": 1}
    result = study(make_data(), out_dir=out, cell_runner=crashing_cell, parallel=2, progress=False, **grid)
    assert result.failed == () and len(result.ran) == 4
    calls = _calls(out)
    scratch = calls["resnet18__scratch__f1__lr0.001__run0"]
    assert scratch[0] == {"crashed": True} and len(scratch) == 2  # died (exit 9), retried in a fresh process
    pids = {c["pid"] for rows in calls.values() for c in rows if "pid" in c}
    assert len(pids) == 4 and os.getpid() not in pids  # one process per cell try
    serial = tmp_path / "serial"
    study(make_data(), out_dir=serial, cell_runner=fake_cell, progress=False, **grid)
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), pd.read_csv(serial / "summary.csv"))


_KILLED_STUDY = """
import sys
sys.path.insert(0, {here!r})
from study_fakes import fake_cell, make_data
from rnet_hub.study import study
study(make_data(), out_dir={out!r}, cell_runner=fake_cell, progress=False, resume={resume}, **{grid!r})
"""


def test_resume_after_a_kill_skips_finished_cells_and_ends_with_the_same_tables(tmp_path: Path) -> None:
    out = tmp_path / "s"
    script = _KILLED_STUDY.format(here=str(HERE), out=str(out), resume=False, grid=GRID)
    env = {**os.environ, "STUDY_FAKE_DELAY": "0.15"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    done: list[Path] = []
    while time.monotonic() < deadline and len(done) < 3 and child.poll() is None:
        time.sleep(0.05)
        done = [p for p in out.glob("cells/*/cell.json") if '"done"' in p.read_text()]
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 3 <= len(done) < 12, "the study ended before it could be killed"
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json") if '"done"' in p.read_text()}
    interrupted = {p.parent.name: (p.parent / "finetune").exists() for p in out.glob("cells/*/cell.json")
                   if '"running"' in p.read_text()}
    result = study(make_data(), out_dir=out, cell_runner=fake_cell, progress=False, resume=True, **GRID)
    assert sorted(result.skipped) == sorted(before) and len(result.ran) == 12 - len(before)
    assert {k: (out / "cells" / k / "cell.json").stat().st_mtime_ns for k in before} == before  # not rerun
    calls = _calls(out)
    assert all(len(calls[k]) == 1 for k in before)  # each finished cell ran exactly once
    assert len(interrupted) <= 1
    for key, started in interrupted.items():  # the cell in flight at the kill continues with fine-tuning's resume
        assert calls[key][-1]["resume"] is started
    whole = tmp_path / "whole"
    study(make_data(), out_dir=whole, cell_runner=fake_cell, progress=False, **GRID)
    for name in ("cells.csv", "summary.csv", "comparisons.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(whole / name))


def test_energy_is_measured_when_codecarbon_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tracker:  # codecarbon's EmissionsTracker, as far as the study uses it
        def __init__(self, **kwargs: object) -> None:
            self.final_emissions_data = types.SimpleNamespace(energy_consumed=0.0)

        def start(self) -> None:
            pass

        def stop(self) -> float:
            self.final_emissions_data.energy_consumed = 0.25
            return 0.0

    monkeypatch.setitem(sys.modules, "codecarbon", types.SimpleNamespace(EmissionsTracker=Tracker))
    out = tmp_path / "s"
    study(make_data(), out_dir=out, cell_runner=fake_cell, progress=False, **{**GRID, "runs": 1, "fractions": [1.0]})
    final = pd.read_csv(out / "final.csv")
    assert (final["energy_kwh"] == 0.25).all()
    assert "not measured" not in (out / "report.md").read_text()


def test_the_study_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    data = make_data()
    out = tmp_path / "s"
    study(data, out_dir=out, cell_runner=fake_cell, progress=False, **{**GRID, "runs": 1})
    with pytest.raises(rnet_hub.errors.OutputExistsError, match="add --resume"):
        study(data, out_dir=out, cell_runner=fake_cell, progress=False, **{**GRID, "runs": 1})
    with pytest.raises(rnet_hub.errors.BadInputError, match="other epochs"):
        study(data, out_dir=out, cell_runner=fake_cell, progress=False, resume=True, **{**GRID, "epochs": 4})
    grown = study(data, out_dir=out, cell_runner=fake_cell, progress=False, resume=True, **{**GRID, "runs": 2})
    assert len(grown.skipped) == 4 and len(grown.ran) == 4  # a second run added to a finished study
    with pytest.raises(rnet_hub.errors.BadInputError, match="no validation metric 'bogus'"):
        study(data, out_dir=out, cell_runner=fake_cell, progress=False, resume=True, metric="bogus",
              **{**GRID, "runs": 2})
    other = study(data, out_dir=out, cell_runner=fake_cell, progress=False, resume=True, metric="eval_accuracy",
                  **{**GRID, "runs": 2})
    assert (other.metric, other.ran) == ("accuracy", ())  # another metric: the tables again, no training
    assert "best_accuracy" in pd.read_csv(out / "final.csv").columns
    for bad, message in (({"fractions": [0, 0.5]}, "not in \\(0, 1\\]"), ({"inits": ["imagenet", "bogus"]},
                         "unknown init bogus"), ({"runs": 0}, "--runs must be 1 or more")):
        with pytest.raises(rnet_hub.errors.BadInputError, match=message):
            study(data, out_dir=tmp_path / "x", cell_runner=fake_cell, progress=False, **{**GRID, **bad})
    with pytest.raises(rnet_hub.errors.BadInputError, match="set by the study"):
        study(data, out_dir=tmp_path / "x", cell_runner=fake_cell, finetune_options={"lr": 0.1}, **GRID)


def test_the_cli_explains_itself_without_torch_and_reports_bad_input_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = ("import sys; sys.modules['torch'] = None; from rnet_hub.cli import build_parser; "
            "build_parser().parse_args(['study', '--help'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "--fractions" in done.stdout and "rnet-hub study DATA" in done.stdout
    assert main(["study", str(tmp_path), "--models", "resnet18", "--fractions", "0.5,2", "--out",
                 str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: --fractions: 2 not in (0, 1]; e.g. 0.05,0.25,0.5,1.0"
    assert callable(rnet_hub.study) and "StudyResult" in rnet_hub.__all__
