"""``rnet-hub finetune`` on each data source, task and initialisation; resume after a kill; DDP on 2 CPUs.

Small runs (MobileNetV3Small stand-in, 64 px, a few dozen images, 1-2 epochs): they check the machinery
(which weights a run started from, what it wrote, which options reached ``TrainingArguments``), not
learning, which ``test_finetune.py`` checks. Each run combines one source, one task and one init:

* CSV manifest, multi-label, ``--init imagenet`` (timm's ImageNet weights: a stand-in published on the
  loopback Hub under timm's repository id), ``--freeze-backbone``: the backbone ends equal to the stand-in;
* Parquet manifest, regression, ``--init scratch``, through the CLI with ``--config`` (YAML), ``--ta`` and
  ``--report-to tensorboard``;
* ``datasets`` save_to_disk folder, single-label, ``--init radiologynet``, ``--class-weights``,
  ``--freeze-backbone --unfreeze-after 1``: the first epoch's checkpoint keeps the base backbone, the
  second's does not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _finetune_support import IMAGENET_REPO, publish_imagenet_standin
from finetune_data import make_hf_dataset, make_image_folder, make_manifest

import rnet_hub
from rnet_hub.cli import main

TESTS = Path(__file__).resolve().parent
SMALL = {"batch_size": 8, "image_size": 64, "quiet": True, "patience": 0}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "model.safetensors")


def test_manifest_multi_label_from_imagenet_weights(tmp_path, hub_client, converted_dir):
    torch.set_num_threads(2)
    standin = publish_imagenet_standin(hub_client.endpoint, hub_client.token, tmp_path)
    manifest = make_manifest(tmp_path / "data", "multi_label", "csv", n=24)
    result = rnet_hub.finetune(manifest, model=converted_dir("MobileNetV3Small"), out_dir=tmp_path / "run",
                               init="imagenet", freeze_backbone=True, epochs=1, **SMALL)
    assert result.task == "multi_label" and result.label_names == ("circle", "square", "cross")
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["num_classes"] == 3
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet normalisation
    assert config["model_args"] == {}  # timm's own architecture defaults, as the ImageNet weights were trained
    trained = _weights(result.model_dir)
    for key in ("conv_stem.weight", "blocks.2.0.conv_pw.weight", "conv_head.weight"):  # frozen: the stand-in's
        assert torch.equal(trained[key], standin[key]), key
    assert any(IMAGENET_REPO in request for request in map(str, hub_client.hub.requests))
    assert {"test_accuracy", "test_f1_weighted", "test_f1_macro", "test_auroc_macro"} <= set(result.test_metrics)
    card = (result.model_dir / "README.md").read_text()
    assert f"base_model: {IMAGENET_REPO}" in card and "base_model_relation: finetune" in card


def test_parquet_regression_from_scratch_through_the_cli(tmp_path, converted_dir, capsys):
    manifest = make_manifest(tmp_path / "data", "regression", "parquet", n=24, split_column=True)
    (tmp_path / "ta.yaml").write_text("learning_rate: 0.0005\nseed: 3\nnum_train_epochs: 5\n")
    out = tmp_path / "run"
    code = main(["finetune", str(manifest), "--model", str(converted_dir("MobileNetV3Small")), "--out", str(out),
                 "--init", "scratch", "--image-size", "64", "--batch-size", "8", "--config", str(tmp_path / "ta.yaml"),
                 "--ta", "seed=7", "--ta", "num_train_epochs=1", "--report-to", "tensorboard", "--quiet"])
    assert code == 0, capsys.readouterr().err
    test = json.loads((out / "test_metrics.json").read_text())
    assert {"test_mae", "test_rmse", "test_mse", "test_r2", "epochs"} <= set(test) and test["epochs"] == 1
    assert test["test_rmse"] == pytest.approx(test["test_mse"] ** 0.5)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["num_classes"] == 1
    assert config["label_names"] == ["size_px"]
    args = torch.load(next((out / "checkpoints").glob("checkpoint-*")) / "training_args.bin", weights_only=False)
    assert (args.learning_rate, args.seed, args.num_train_epochs) == (0.0005, 7, 1)  # file, then --ta over it
    assert (args.weight_decay, args.optim, args.lr_scheduler_type) == (1e-3, "adamw_torch", "constant")
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert "trained 1 epochs" in capsys.readouterr().out


def test_datasets_folder_with_class_weights_and_unfreezing(tmp_path, converted_dir):
    from huggingface_hub.utils import tqdm as hub_tqdm
    from transformers.utils import logging as hf_logging

    base = converted_dir("MobileNetV3Small")
    saved = make_hf_dataset(tmp_path / "hf", n=24)
    bar_states = sys.modules[hub_tqdm.__module__].progress_bar_states
    original = dict(bar_states)
    bar_states.update({"_global": True, "some.group": False})  # the caller's own progress-bar settings
    before = (dict(bar_states), hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    try:
        result = rnet_hub.finetune(saved, model=base, out_dir=tmp_path / "run", epochs=2, class_weights=True,
                                   freeze_backbone=True, unfreeze_after=1,
                                   training_args={"load_best_model_at_end": False, "save_total_limit": None},
                                   **SMALL)
        # quiet=True silenced transformers and huggingface_hub for the run only (process-wide switches)
        assert (dict(bar_states), hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
    finally:
        bar_states.clear()
        bar_states.update(original)
    assert result.label_names == ("circle", "square", "cross") and result.epochs == 2
    original = _weights(base)
    first, second = sorted((result.out_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    frozen, unfrozen = _weights(first), _weights(second)
    key = "conv_stem.weight"
    assert torch.equal(frozen[key], original[key])  # epoch 1: only the head trained
    assert not torch.equal(unfrozen[key], original[key])  # epoch 2: everything
    assert not torch.equal(frozen["classifier.weight"], unfrozen["classifier.weight"])


def _cli(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(data), "--model", str(model), "--out", str(out), "--image-size", "64",
            "--batch-size", "8", "--patience", "0", "--epochs", "2", *extra]


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, converted_dir, capsys):
    data = make_image_folder(tmp_path / "data", per_class=8, dicom_every=4)  # 24 training images: 3 steps
    base, out = converted_dir("MobileNetV3Small"), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    child = subprocess.Popen([sys.executable, "-m", "rnet_hub.cli", *_cli(data, base, out, "--quiet")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert not (out / "model").exists() and not (out / "test_metrics.json").exists()
    saved = sorted(int(p.parent.name[11:]) for p in out.glob("checkpoints/checkpoint-*/trainer_state.json"))
    assert main(_cli(data, base, out)) == 2  # without --resume: refused
    assert "--resume" in capsys.readouterr().err
    assert main(_cli(data, base, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"resuming from {out / 'checkpoints'}/checkpoint-{saved[-1]}" in err  # not from the start
    assert "epoch 1/2" not in err and "epoch 2/2" in err  # the epoch before the checkpoint is not trained again
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # the same number of epochs, none twice
    assert json.loads((out / "test_metrics.json").read_text())["epochs"] == 2


def test_two_cpu_processes_under_torchrun_train_one_model(tmp_path, converted_dir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    data = make_image_folder(tmp_path / "data", per_class=8, dicom_every=0)
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    out = tmp_path / "run"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(TESTS / "_ddp_finetune.py"),
                           str(data), str(converted_dir("MobileNetV3Small")), str(out), str(hashes)],
                          capture_output=True, text=True, timeout=400, cwd=TESTS)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = {p.name: p.read_text().split() for p in hashes.iterdir()}
    assert set(ranks) == {"rank0.txt", "rank1.txt"}
    assert ranks["rank0.txt"] == ranks["rank1.txt"]  # identical final weights, same epoch count
    assert ranks["rank0.txt"][1] == "2"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "metrics.jsonl", "model",
                                                      "test_metrics.json"]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # written once (by rank 0), not once per process
    from _ddp_finetune import state_hash
    from transformers import AutoModelForImageClassification

    written = AutoModelForImageClassification.from_pretrained(out / "model")
    assert state_hash(written) == ranks["rank0.txt"][0]  # DIR/model holds the weights both ranks ended with
