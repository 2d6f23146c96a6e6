"""``rnet_hub.finetune`` / ``rnet-hub finetune``: one shared run, its outputs, and bad inputs (issue 13).

The shared run (module fixture): MobileNetV3Small (a stand-in with random weights whose BatchNorm
statistics are calibrated to the data, see ``_finetune_support``) fine-tuned at 64 px, batch 4, 3 epochs
without early stopping, on an image folder of a separable task (a big bright square vs a small dim
cross; PNG and DICOM). It is the learning test too: chance is 0.5, and the best validation accuracy must
reach :data:`LEARNED` and the test accuracy :data:`LEARNED_TEST`. Reloads by timm, transformers and
``rnet_hub.create_model`` must give the fine-tune's logits within :data:`ATOL` (the same float32 tensors).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from _finetune_support import SEPARABLE, calibrated_copy, make_separable, timm_logits
from huggingface_hub import ModelCard

import rnet_hub
from rnet_hub.cli import main
from rnet_hub.errors import BadInputError, OutputExistsError

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("finetune-run")

#: Chance is 0.5 on the two balanced classes; these leave room for noise and still mean "it learned".
LEARNED = 0.8
LEARNED_TEST = 0.75
#: max |Δlogits| between the three reloads and the model the run returned (same float32 tensors: 0 in practice).
ATOL = 1e-5
EPOCHS = 3


@pytest.fixture(scope="module")
def shared(tmp_path_factory, converted_dir):
    """The shared run: (result, data folder, base folder, seconds it took)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("finetune")
    data = make_separable(root / "data")
    base = calibrated_copy(converted_dir("MobileNetV3Small"), root / "base", data)
    start = time.perf_counter()
    result = rnet_hub.finetune(data, model=base, out_dir=root / "run", epochs=EPOCHS, batch_size=4, image_size=64,
                               patience=0, quiet=True)
    return result, data, base, time.perf_counter() - start


def _images(result, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from rnet_hub.finetune.data import load_data, make_dataset

    config = json.loads((result.model_dir / "config.json").read_text())
    test = make_dataset(load_data(data), "test", model_config=config)
    return (torch.stack([test[i]["pixel_values"] for i in range(len(test))]),
            torch.stack([test[i]["labels"] for i in range(len(test))]))


def test_it_learns_a_separable_task(shared):
    result, *_ = shared
    best = max(row["eval_accuracy"] for row in result.history)
    print(f"validation accuracy per epoch {[round(r['eval_accuracy'], 3) for r in result.history]}, "
          f"test accuracy {result.test_metrics['test_accuracy']:.3f} (chance 0.5)")
    assert best >= LEARNED, result.history
    assert result.test_metrics["test_accuracy"] >= LEARNED_TEST, result.test_metrics
    assert result.epochs == EPOCHS and [row["epoch"] for row in result.history] == [1, 2, 3]


def test_outputs_are_written(shared):
    result, *_ = shared
    out = result.out_dir
    assert {p.name for p in out.iterdir()} == {"model", "checkpoints", "metrics.jsonl", "test_metrics.json",
                                              "curves.png"}
    assert {p.name for p in result.model_dir.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all({"train_loss", "eval_loss", "eval_accuracy", "eval_balanced_accuracy", "eval_f1_weighted",
                "eval_f1_macro", "eval_auroc_macro", "train_accuracy"} <= set(row) for row in rows)
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["best_metric"] == "eval_f1_weighted" and test["epochs"] == EPOCHS
    assert test["test_accuracy"] == pytest.approx(result.test_metrics["test_accuracy"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*")), "no staging or temporary files are left"


def test_reloads_by_timm_transformers_and_rnet_hub_agree(shared):
    from transformers import AutoModelForImageClassification, pipeline

    result, data, *_ = shared
    images, labels = _images(result, data)
    with torch.no_grad():
        reference = result.model.eval()(pixel_values=images).logits
        reloads = {"timm": timm_logits(result.model_dir, images),
                   "rnet_hub": rnet_hub.create_model(result.model_dir).eval()(images),
                   "transformers": AutoModelForImageClassification.from_pretrained(result.model_dir).eval()(
                       pixel_values=images).logits}
    for how, logits in reloads.items():
        assert (logits - reference).abs().max().item() <= ATOL, how
    accuracy = (reference.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.test_metrics["test_accuracy"])  # the saved model is the evaluated one
    tuned = AutoModelForImageClassification.from_pretrained(result.model_dir)
    assert tuned.config.id2label == dict(enumerate(SEPARABLE))  # the real names, in head order
    assert tuned.config.problem_type == "single_label_classification"
    assert timm_model_labels(result.model_dir) == list(SEPARABLE)
    from PIL import Image

    image = Image.open(next((data / "test" / "large").glob("*.png")))
    scores = pipeline("image-classification", model=str(result.model_dir))(image.convert("RGB"))
    assert {s["label"] for s in scores} == set(SEPARABLE)


def timm_model_labels(folder: Path) -> list[str]:
    import timm

    return list(timm.create_model(f"local-dir:{folder}", pretrained=True).pretrained_cfg["label_names"])


def test_the_card_names_base_model_data_and_test_metrics(shared):
    result, *_ = shared
    card = ModelCard.load(result.model_dir / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "radiologynet/mobilenetv3_small_100"  # what the converted folder records
    assert data["base_model_relation"] == "finetune" and data["pipeline_tag"] == "image-classification"
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(result.test_metrics["test_accuracy"])
    assert "| train | 32 |" in card.text and "| large |" in card.text and "learning_rate | 0.001" in card.text


def test_the_output_folder_pushes_to_the_hub(shared, hub_client, capsys):
    result, *_ = shared
    assert main(["push", str(result.model_dir), "--repo-id", "someone/mnv3-finetuned"]) == 0
    files = hub_client.hub.history("someone/mnv3-finetuned")[0].tree
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)


def test_a_finished_run_is_not_retrained(shared, capsys):
    result, data, base, seconds = shared
    start = time.perf_counter()
    again = rnet_hub.finetune(data, model=base, out_dir=result.out_dir, epochs=EPOCHS)
    assert again.already_finished and again.test_metrics["test_accuracy"] == result.test_metrics["test_accuracy"]
    assert time.perf_counter() - start < seconds / 3
    assert "not retrained" in capsys.readouterr().err


def test_a_used_folder_is_refused_without_resume(shared, tmp_path, capsys):
    _, data, base, _ = shared
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
        rnet_hub.finetune(data, model=base, out_dir=tmp_path / "run")
    assert main(["finetune", str(data), "--model", str(base), "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("options", "message"), [
    ({"learning_rate": 1e-3}, "unknown fine-tuning option 'learning_rate'"),
    ({"init": "imagenet21k"}, "--init must be one of"),
    ({"unfreeze_after": 2}, "--unfreeze-after N needs --freeze-backbone"),
    ({"training_args": {"learning_rat": 1}}, "'learning_rat' is not a TrainingArguments field.*learning_rate"),
    ({"bf16": True, "fp16": True}, "exclude each other"),
    ({"metric": "mae"}, "'mae' is not a validation metric of single_label"),
])
def test_bad_options_are_refused_before_training(shared, tmp_path, options, message):
    _, data, base, _ = shared
    with pytest.raises(BadInputError, match=message):
        rnet_hub.finetune(data, model=base, out_dir=tmp_path / "run", **options)


def test_bad_cli_values_give_one_error_line(shared, tmp_path, capsys):
    _, data, base, _ = shared
    common = [str(data), "--model", str(base), "--out", str(tmp_path / "run")]
    assert main(["finetune", *common, "--ta", "per_device_train_batch_size=many"]) == 2
    assert "is not a valid value for per_device_train_batch_size" in capsys.readouterr().err
    assert main(["finetune", *common, "--ta", "nonsense"]) == 2
    assert "is not key=value" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("- a list\n")
    assert main(["finetune", *common, "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "must hold a mapping of TrainingArguments fields" in capsys.readouterr().err


def test_labels_that_do_not_fit_the_head_are_refused(shared, tmp_path):
    from rnet_hub.finetune import check_targets
    from rnet_hub.finetune.data import load_data

    _, data, *_ = shared
    loaded = load_data(data)
    check_targets(loaded, 2)
    with pytest.raises(BadInputError, match="does not fit a single_label head of 1 output"):
        check_targets(loaded, 1)


def test_a_single_class_is_refused(shared, tmp_path):
    _, data, base, _ = shared
    one = tmp_path / "one" / "large"
    one.mkdir(parents=True)
    for path in sorted((data / "train" / "large").iterdir())[:6]:
        (one / path.name).write_bytes(path.read_bytes())
    with pytest.raises(BadInputError, match="class"):
        rnet_hub.finetune(tmp_path / "one", model=base, out_dir=tmp_path / "run")
