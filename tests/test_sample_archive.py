"""Stand-in archives are in the exact original format and about as large as the published ones."""

from __future__ import annotations

import tarfile

import pytest
import torch

from rnet_hub import find_arch
from rnet_hub.cli import main
from rnet_hub.testing import write_sample_archive

SIZE_TOLERANCE = 0.20


@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV3Small", "DenseNet121"])
def test_archive_size_within_20_percent_of_published(name, sample_archive):
    spec = find_arch(name)
    size = sample_archive(name, with_optimizer=True).stat().st_size
    assert abs(size - spec.archive_bytes) <= SIZE_TOLERANCE * spec.archive_bytes, (size, spec.archive_bytes)


def _load_member(archive, tmp_path):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [archive.name.replace(".tar.gz", ".pth")]
        tar.extract(members[0], tmp_path, filter="data")
    return torch.load(tmp_path / members[0].name, weights_only=True)


def test_archive_layout_matches_the_original_format(sample_archive, tmp_path):
    checkpoint = _load_member(sample_archive("DenseNet121", with_optimizer=True), tmp_path)
    assert set(checkpoint) == {"time", "model_state", "model_name", "optimizer_state", "optimizer_name", "epoch"}
    assert (checkpoint["model_name"], checkpoint["optimizer_name"]) == ("DenseNet121", "AdamW")
    assert isinstance(checkpoint["time"], str) and isinstance(checkpoint["epoch"], int)
    state = checkpoint["model_state"]
    # DenseNet registers its modules twice; the pairs share storage in the saved file
    assert state["features.conv0.weight"].data_ptr() == state["model.features.conv0.weight"].data_ptr()
    optimizer = checkpoint["optimizer_state"]
    assert optimizer["param_groups"][0]["weight_decay"] == pytest.approx(1e-2)
    n_params = len(optimizer["param_groups"][0]["params"])
    assert len(optimizer["state"]) == n_params
    first = optimizer["state"][0]
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"}
    assert first["exp_avg"].shape == state["features.conv0.weight"].shape


def test_batchnorm_statistics_are_randomised(sample_archive, tmp_path):
    state = _load_member(sample_archive("ResNet18"), tmp_path)["model_state"]
    assert not torch.allclose(state["model.bn1.running_var"], torch.ones(64))
    assert not torch.allclose(state["model.bn1.running_mean"], torch.zeros(64))
    assert not torch.allclose(state["model.bn1.weight"], torch.ones(64))
    assert state["model.bn1.num_batches_tracked"].item() > 0


def test_inception_aux_head_has_no_optimizer_state(tmp_path):
    archive = write_sample_archive("InceptionV3", tmp_path, with_optimizer=True)
    checkpoint = _load_member(archive, tmp_path)
    names = list(checkpoint["model_state"])
    n_params = len(optimizer_params := checkpoint["optimizer_state"]["param_groups"][0]["params"])
    assert checkpoint["model_state"]["model.AuxLogits.fc.weight"].shape == (1000, 768)
    n_aux = sum(1 for n in names if ".AuxLogits." in n and not n.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))
    assert len(checkpoint["optimizer_state"]["state"]) == n_params - n_aux == len(optimizer_params) - n_aux


def test_same_seed_same_bytes_and_cli(tmp_path, capsys):
    assert main(["sample-archive", "res18", "-o", str(tmp_path / "a"), "--seed", "3", "--no-optimizer"]) == 0
    assert "ResNet18.tar.gz" in capsys.readouterr().out
    again = write_sample_archive("ResNet18", tmp_path / "b" / "ResNet18.tar.gz", seed=3, with_optimizer=False)
    assert (tmp_path / "a" / "ResNet18.tar.gz").read_bytes() == again.read_bytes()
    other = write_sample_archive("ResNet18", tmp_path / "c.tar.gz", seed=4, with_optimizer=False)
    assert other.read_bytes() != again.read_bytes()
