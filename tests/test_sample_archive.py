"""Stand-in archives are in the exact original format and about as large as the published ones.

Checked against the facts file (``shared/reference/radiologynet-originals.md``), not against the
writer: the published sizes are literals from its table, and parameter names, shapes and order come
from the test side's own rebuild of the wrappers (``tests/reference_topologies.py``).
"""

from __future__ import annotations

import tarfile

import pytest
import torch
from reference_topologies import build_reference

from rnet_hub.cli import main
from rnet_hub.testing import write_sample_archive

#: Published archive sizes in MiB (the facts file's download table).
PUBLISHED_MIB = {"ResNet18": 117, "MobileNetV3Small": 17, "DenseNet121": 74}
#: Measured: the stand-ins (model + AdamW moments, gzip level 1) land within 3% of these.
SIZE_TOLERANCE = 0.10
TOP_LEVEL_KEYS = {"time", "model_state", "model_name", "optimizer_state", "optimizer_name", "epoch"}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("name", list(PUBLISHED_MIB))
def test_archive_size_close_to_published(name, sample_archive):
    published = PUBLISHED_MIB[name] * 2**20
    size = sample_archive(name, with_optimizer=True).stat().st_size
    assert abs(size - published) <= SIZE_TOLERANCE * published, (size, published)
    # the AdamW moments are about two thirds of every archive: without them, about a third is left
    bare = sample_archive(name, with_optimizer=False).stat().st_size
    assert 0.25 * published < bare < 0.45 * published, (bare, published)


def _load_member(archive, tmp_path):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [archive.name.replace(".tar.gz", ".pth")]
        tar.extract(members[0], tmp_path, filter="data")
    return torch.load(tmp_path / members[0].name, weights_only=True)


def _moments_by_parameter(checkpoint, name):
    """{parameter name: its AdamW state}, in the order torch's AdamW numbers ``model.parameters()``."""
    optimizer = checkpoint["optimizer_state"]
    named = list(build_reference(name).named_parameters())  # distinct parameters, in registration order
    assert [group_param for group in optimizer["param_groups"] for group_param in group["params"]] == list(
        range(len(named)))
    return named, {named[index][0]: state for index, state in optimizer["state"].items()}


def test_archive_layout_matches_the_original_format(sample_archive, tmp_path):
    checkpoint = _load_member(sample_archive("DenseNet121", with_optimizer=True), tmp_path)
    assert set(checkpoint) == TOP_LEVEL_KEYS
    assert (checkpoint["model_name"], checkpoint["optimizer_name"]) == ("DenseNet121", "AdamW")
    assert isinstance(checkpoint["time"], str) and isinstance(checkpoint["epoch"], int)
    state = checkpoint["model_state"]
    build_reference("DenseNet121").load_state_dict(state, strict=True)
    # DenseNet registers its modules twice; every pair shares storage in the saved file
    top = [k for k in state if k.startswith(("features.", "classifier."))]
    assert top and len(state) == 2 * len(top)
    for key in top:
        assert state[key].data_ptr() == state[f"model.{key}"].data_ptr(), key
    # AdamW holds exp_avg and exp_avg_sq, shaped like the parameter, for every (trained) parameter
    named, moments = _moments_by_parameter(checkpoint, "DenseNet121")
    assert set(moments) == {n for n, _ in named}
    for param_name, param in named:
        entry = moments[param_name]
        assert {"step", "exp_avg", "exp_avg_sq"} <= set(entry), param_name
        assert entry["exp_avg"].shape == entry["exp_avg_sq"].shape == param.shape, param_name
        assert entry["exp_avg_sq"].min().item() >= 0, param_name


@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV3Small"])
def test_batchnorm_statistics_are_not_at_their_defaults(name, sample_archive, tmp_path):
    state = _load_member(sample_archive(name), tmp_path)["model_state"]
    layers = [k.removesuffix(".running_var") for k in state if k.endswith(".running_var")]
    assert layers
    for layer in layers:  # a fresh BatchNorm has mean 0, var 1, weight 1, bias 0 and no batches
        assert not torch.allclose(state[f"{layer}.running_mean"], torch.zeros(())), layer
        assert not torch.allclose(state[f"{layer}.running_var"], torch.ones(())), layer
        assert not torch.allclose(state[f"{layer}.weight"], torch.ones(())), layer
        assert state[f"{layer}.num_batches_tracked"].item() > 0, layer


def test_inception_aux_head_has_no_optimizer_state(sample_archive, tmp_path):
    checkpoint = _load_member(sample_archive("InceptionV3", with_optimizer=True), tmp_path)
    assert checkpoint["model_state"]["model.AuxLogits.fc.weight"].shape == (1000, 768)  # never trained: 1000
    named, moments = _moments_by_parameter(checkpoint, "InceptionV3")
    aux_head = {f"model.AuxLogits.{p}" for p in ("conv0.conv.weight", "conv0.bn.weight", "conv0.bn.bias",
                                                 "conv1.conv.weight", "conv1.bn.weight", "conv1.bn.bias",
                                                 "fc.weight", "fc.bias")}
    assert {n for n, _ in named} - set(moments) == aux_head
    for param_name, param in named:
        if param_name in moments:
            assert moments[param_name]["exp_avg"].shape == param.shape, param_name


def test_same_seed_same_bytes_and_cli(tmp_path, capsys):
    assert main(["sample-archive", "res18", "-o", str(tmp_path / "a"), "--seed", "3", "--no-optimizer"]) == 0
    assert "ResNet18.tar.gz" in capsys.readouterr().out
    again = write_sample_archive("ResNet18", tmp_path / "b" / "ResNet18.tar.gz", seed=3, with_optimizer=False)
    assert (tmp_path / "a" / "ResNet18.tar.gz").read_bytes() == again.read_bytes()
    other = write_sample_archive("ResNet18", tmp_path / "c.tar.gz", seed=4, with_optimizer=False)
    assert other.read_bytes() != again.read_bytes()
