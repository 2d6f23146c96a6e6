"""``rnet-hub embed --aggregate series|study`` (local engine) and the pooling itself, checked against numpy
on the rows read back: DICOM files in two studies and three series (one a 15-frame dose grid), plus a PNG,
which belongs to no series and is left out.

The Ray engine pools its shards with the same code; tests/test_embed_ray.py checks it there too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from rnet_hub.cli import main
from rnet_hub.imaging.aggregate import aggregate_rows
from rnet_hub.imaging.embed_schema import read_embeddings

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray")

#: file name -> (study, series) of the MR copies; dose.dcm is a third series in study 2.
LAYOUT = {"mr0.dcm": ("1.2.3.1", "1.2.3.1.1"), "mr1.dcm": ("1.2.3.1", "1.2.3.1.1"),
          "mr2.dcm": ("1.2.3.1", "1.2.3.1.2"), "mr3.dcm": ("1.2.3.2", "1.2.3.2.1")}


def write_series(root):
    """MR_small copies with their own pixels and UIDs, the 15-frame RT dose in its own study, and a PNG."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (name, (study, series)) in enumerate(LAYOUT.items()):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        pixels = ds.pixel_array.astype(np.int16)
        pixels = np.roll(pixels, 7 * i, axis=1) + rng.integers(0, 200, pixels.shape).astype(np.int16)
        ds.PixelData = pixels.tobytes()
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{series}.{i}", study, series
        ds.save_as(root / name)
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.2", "1.2.3.2.9"
    ds.save_as(root / "dose.dcm")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "plain.png")
    return root


def numpy_pools(rows, vectors, key):
    """{uid: (mean, max, images, files)} computed the obvious way."""
    uids = np.array([u if u is not None else "" for u in rows.column(key).to_pylist()])
    paths = np.array(rows.column("path").to_pylist())
    return {u: (vectors[uids == u].astype(np.float64).mean(axis=0), vectors[uids == u].max(axis=0),
                int((uids == u).sum()), len(set(paths[uids == u]))) for u in set(uids) - {""}}


def check_pooled(pooled, expected, key, *, max_pool):
    assert pooled.column(key).to_pylist() == sorted(expected)
    means = np.stack(pooled.column("embedding_mean").to_numpy(zero_copy_only=False))
    assert means.dtype == np.float32
    for uid, mean, images, files in zip(pooled.column(key).to_pylist(), means, pooled.column("images").to_pylist(),
                                        pooled.column("files").to_pylist(), strict=True):
        np.testing.assert_allclose(mean, expected[uid][0], rtol=1e-6, atol=1e-6)
        assert (images, files) == expected[uid][2:]
    if max_pool:
        maxima = np.stack(pooled.column("embedding_max").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(maxima, np.stack([expected[u][1] for u in sorted(expected)]))
    else:
        assert "embedding_max" not in pooled.column_names


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, converted_dir):
    tmp = tmp_path_factory.mktemp("aggregate")
    root = write_series(tmp / "in")
    stem = tmp / "emb"
    code = main(["embed", str(root), "--model", str(converted_dir("MobileNetV3Small")), "--out", str(stem),
                 "--aggregate", "series", "--aggregate", "study", "--max-pool", "--num-workers", "0", "-q"])
    assert code == 0
    return stem


def test_series_and_study_vectors_equal_numpy_on_the_rows(embedded):
    rows, vectors = read_embeddings(f"{embedded}.parquet")
    assert len(vectors) == 4 + 15 + 1
    series = pq.read_table(f"{embedded}.series.parquet")
    expected = numpy_pools(rows, vectors, "series_instance_uid")
    assert sorted(expected) == ["1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1", "1.2.3.2.9"]  # the PNG is in none
    check_pooled(series, expected, "series_instance_uid", max_pool=True)
    assert series.column("study_instance_uid").to_pylist() == ["1.2.3.1", "1.2.3.1", "1.2.3.2", "1.2.3.2"]
    assert series.column("images").to_pylist() == [2, 1, 1, 15]
    assert series.column("modalities").to_pylist() == [["MR"], ["MR"], ["MR"], ["RTDOSE"]]
    study = pq.read_table(f"{embedded}.study.parquet")
    check_pooled(study, numpy_pools(rows, vectors, "study_instance_uid"), "study_instance_uid", max_pool=True)
    assert study.column("modalities").to_pylist() == [["MR"], ["MR", "RTDOSE"]]
    assert set(study.column("model_id").to_pylist()) == set(rows.column("model_id").to_pylist())
    assert len(set(study.column("weights_sha256").to_pylist())) == 1


def test_rows_carry_the_uids_and_model_columns(embedded):
    rows = pq.read_table(f"{embedded}.parquet").to_pylist()
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in rows if r["frame"] == 0}
    assert (by_name["mr2.dcm"]["study_instance_uid"], by_name["mr2.dcm"]["series_instance_uid"]) == LAYOUT["mr2.dcm"]
    assert by_name["mr2.dcm"]["sop_instance_uid"] == "1.2.3.1.2.2" and by_name["mr2.dcm"]["modality"] == "MR"
    png = by_name["plain.png"]
    assert png["series_instance_uid"] is None and png["modality"] is None and png["window_center"] is None
    weights = hashlib.sha256((Path(png["model_id"]) / "model.safetensors").read_bytes())
    assert png["weights_sha256"] == weights.hexdigest() and png["hub_revision"] == ""
    assert {r["window_index"] for r in rows} == {0}


def test_pooling_streams_over_several_tables(embedded):
    """Shards (several tables, a group split between them) pool to the same vectors as one table."""
    table = pq.read_table(f"{embedded}.parquet")
    parts = [table.slice(0, 3), table.slice(3, 9), table.slice(12)]
    whole = aggregate_rows([table], by="series", max_pool=True)
    split = aggregate_rows(parts, by="series")
    assert split.column("series_instance_uid").equals(whole.column("series_instance_uid"))
    np.testing.assert_allclose(np.stack(split.column("embedding_mean").to_numpy(zero_copy_only=False)),
                               np.stack(whole.column("embedding_mean").to_numpy(zero_copy_only=False)), atol=1e-6)
    assert "embedding_max" not in split.column_names


def test_a_wrong_level_is_refused(tmp_path, converted_dir, capsys):
    with pytest.raises(SystemExit):
        main(["embed", str(tmp_path), "--model", str(converted_dir("MobileNetV3Small")), "--aggregate", "patient"])
    assert "invalid choice: 'patient'" in capsys.readouterr().err
    assert main(["embed", str(tmp_path), "--model", "x", "--workers", "2"]) == 2
    assert "--workers is an option of --engine ray" in capsys.readouterr().err
