"""``rnet-hub embed --engine ray`` on Ray clusters this test starts on this machine.

* ``ray.init(num_cpus=2)`` for the module: the Ray engine equals the local engine (max abs difference
  <= 1e-5 over the same rows) on PNG and DICOM inputs (pydicom's own test files) with bad files mixed in,
  the same schema, the same error list, and series vectors equal to numpy on the rows, while an inference
  actor killed mid-run (the ``RNET_HUB_TEST_KILL_WORKER`` hook) is retried (one run checks all of it:
  Ray start-up is slow); a driver killed after some shards are written and rerun with ``--resume`` ends
  with the same row set, no duplicate.
* ``ray start --head --port=0`` plus a second node joined by address, then the CLI with ``--address``,
  under a hard time limit, every process stopped at the end whatever happens.

Ray temporary folders live under the test's temporary folders; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from pydicom.data import get_testdata_file

from rnet_hub import embed
from rnet_hub.cli import main
from rnet_hub.errors import BadInputError, MissingExtraError, OutputExistsError
from rnet_hub.imaging.embed_inputs import collect_inputs, list_inputs
from rnet_hub.imaging.embed_ray import KILL_WORKER_ENV
from rnet_hub.imaging.embed_schema import read_embeddings

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray")

DICOM_FILES = ("MR_small.dcm", "CT_small.dcm", "rtdose.dcm")  # 1 + 1 + 15 frames
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def write_inputs(root: Path) -> Path:
    """6 small PNGs (8/16 bit, grey/RGB), pydicom's test files, and two files that cannot be read."""
    (root / "png").mkdir(parents=True)
    (root / "dicom").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        size = (64 + 8 * i, 96 - 4 * i)
        pixels = rng.integers(0, 256, (*size, 3) if i % 2 else size, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "png" / f"im{i}.png")
    Image.fromarray(rng.integers(0, 65536, (80, 64), dtype=np.uint16)).save(root / "png" / "deep.png")
    for name in DICOM_FILES:
        shutil.copy(get_testdata_file(name), root / "dicom" / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "dicom" / "empty.dcm").write_bytes(b"")
    return root


def rows_by_key(source) -> dict[tuple[str, int, int], np.ndarray]:
    """(path, frame, window_index) -> vector; duplicates fail."""
    index, vectors = read_embeddings(source)
    keys = list(zip(index.column("path").to_pylist(), index.column("frame").to_pylist(),
                    index.column("window_index").to_pylist(), strict=True))
    assert len(set(keys)) == len(keys), "duplicate rows"
    return dict(zip(keys, vectors, strict=True))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def read_errors(stem: Path) -> list[str]:
    return sorted(line.split(",", 1)[0] for line in Path(f"{stem}.errors.csv").read_text().splitlines()[1:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU Ray for this module, its files under a temporary folder; its GCS address."""
    temp = tmp_path_factory.mktemp("ray")
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # loopback only: no token written to ~/.ray; drivers started here agree
    context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs") / "in")


@pytest.fixture(scope="module")
def model_dir(converted_dir):
    return converted_dir("MobileNetV3Small")


@pytest.fixture(scope="module")
def local(tmp_path_factory, inputs, model_dir):
    """The local engine's output on the inputs: the reference."""
    stem = tmp_path_factory.mktemp("local") / "emb"
    embed([inputs], model=str(model_dir), out=stem, num_workers=0, progress=False, device="cpu")
    return stem


def test_ray_equals_local_and_a_killed_worker_loses_nothing(cluster, inputs, local, model_dir, tmp_path,
                                                            monkeypatch):
    """One run checks equality, schema, errors and series vectors, with one inference actor killed mid-run."""
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_WORKER_ENV, str(marker))
    stem = tmp_path / "emb"
    report = embed([f"file://{inputs}"], model=str(model_dir), out=stem, engine="ray", batch_size=4,
                   rows_per_shard=6, aggregate=["series"], max_pool=True, progress=False)
    killed = int(marker.read_text())  # the hook fired: that actor process is gone, Ray retried its batch
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    expected = rows_by_key(f"{local}.parquet")
    got = rows_by_key(stem.with_suffix(".parquet"))
    assert len(expected) == 7 + 1 + 1 + 15
    assert max_difference(got, expected) <= 1e-5
    assert (report.files, report.images, len(report.failed)) == (10, 24, 2)
    assert len(list(stem.with_suffix(".parquet").glob("part-*.parquet"))) >= 3
    ray_table, local_table = pq.read_table(stem.with_suffix(".parquet")), pq.read_table(f"{local}.parquet")
    assert ray_table.schema == local_table.schema
    columns = [c for c in local_table.column_names if c != "embedding"]
    order = [("path", "ascending"), ("frame", "ascending")]
    assert ray_table.select(columns).sort_by(order).equals(local_table.select(columns).sort_by(order))
    assert read_errors(stem) == read_errors(local) == [str(inputs / "broken.png"), str(inputs / "dicom/empty.dcm")]

    index, vectors = read_embeddings(ray_table)  # series vectors against numpy on the rows
    pooled = pq.read_table(tmp_path / "emb.series.parquet")
    series = np.array([u or "" for u in index.column("series_instance_uid").to_pylist()])
    assert len(pooled) == len(set(series) - {""}) == 3
    for uid, mean, top in zip(pooled.column("series_instance_uid").to_pylist(),
                              pooled.column("embedding_mean").to_numpy(zero_copy_only=False),
                              pooled.column("embedding_max").to_numpy(zero_copy_only=False), strict=True):
        np.testing.assert_allclose(mean, vectors[series == uid].mean(axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(top, vectors[series == uid].max(axis=0))


def test_resume_after_the_driver_is_killed(cluster, inputs, local, model_dir, tmp_path):
    stem = tmp_path / "emb"
    shards = stem.with_suffix(".parquet")
    command = [sys.executable, "-m", "rnet_hub.cli", "embed", str(inputs), "--model", str(model_dir), "--out",
               str(stem), "--engine", "ray", "--address", cluster, "--batch-size", "2", "--rows-per-shard", "1", "-q"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while len(list(shards.glob("part-*.parquet"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=30)
        driver.stderr.close()
    assert driver.returncode == -signal.SIGKILL
    written = list(shards.glob("part-*.parquet"))
    done = set(pq.read_table(shards, columns=["path"]).column("path").to_pylist())
    assert len(written) >= 2 and len(done) < 10, "the driver was not killed mid-run"

    report = embed([inputs], model=str(model_dir), out=stem, engine="ray", resume=True, progress=False)
    assert report.already_done == len(done) and report.files == 10 - len(done)
    assert max_difference(rows_by_key(shards), rows_by_key(f"{local}.parquet")) <= 1e-5  # no duplicate, none lost


#: The test cluster's processes and its driver agree on no token authentication (loopback only).
NO_TOKEN = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([RAY_CLI, "start", "--block", "--num-cpus=1", "--object-store-memory=100000000",
                                 "--disable-usage-stats", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=NO_TOKEN)


def test_refusals_name_the_fix(cluster, inputs, local, model_dir, tmp_path):
    with pytest.raises(BadInputError, match="the Ray cluster has 0 GPUs"):
        embed([inputs], model=str(model_dir), out=tmp_path / "emb", engine="ray", gpus_per_worker=1, progress=False)
    with pytest.raises(OutputExistsError, match="holds the local engine's output"):
        embed([inputs], model=str(model_dir), out=local, engine="ray", progress=False)
    with pytest.raises(BadInputError, match="device is an option of the local engine"):
        embed([inputs], model=str(model_dir), out=tmp_path / "emb", engine="ray", device="cpu")
    assert not list(tmp_path.iterdir())


def _ours(temp: Path) -> list[int]:
    """Processes naming ``temp`` on their command line: the Ray processes a node started there."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(temp) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def _stop(process: subprocess.Popen, temp: Path) -> None:
    """SIGKILL to ``ray start --block``'s process group and to every process of its node (a SIGTERM
    drains for 30 s: too slow for a test, and the node's files are removed anyway)."""
    for pid in [-process.pid, *_ours(temp)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(-pid, signal.SIGKILL) if pid < 0 else os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.timeout(240)
def test_two_nodes_joined_by_address(inputs, local, model_dir, tmp_path, tmp_path_factory):
    """A head and a second node of 1 CPU each, driven from ``--address``: the CPU default asks for one model
    actor of 0.75 CPU per node (two actors, which only fit one on each node), beside a quarter-CPU decode slot."""
    # short folders: Ray's socket paths under them must stay within 107 bytes
    head_temp, node_temp = tmp_path_factory.mktemp("h"), tmp_path_factory.mktemp("n")
    head = _start_node(["--head", "--port=0", "--include-dashboard=false", f"--temp-dir={head_temp}"],
                       tmp_path / "head.log")
    nodes = [(head, head_temp)]
    try:
        address, deadline = None, time.monotonic() + 90
        while address is None and time.monotonic() < deadline and head.poll() is None:
            found = re.search(r"--address='([^']+)'", (tmp_path / "head.log").read_text())
            address = found.group(1) if found else time.sleep(0.2)
        assert address, (tmp_path / "head.log").read_text()[-2000:]
        nodes.append((_start_node([f"--address={address}", f"--temp-dir={node_temp}"], tmp_path / "node.log"),
                      node_temp))
        manifest = tmp_path / "files.csv"
        listed = [str(p) for p in collect_inputs([inputs])]
        manifest.write_text("path\n" + "\n".join(os.path.relpath(p, tmp_path) for p in listed) + "\n")
        stem = tmp_path / "emb"
        command = [sys.executable, "-m", "rnet_hub.cli", "embed", str(manifest), "--model", str(model_dir),
                   "--out", str(stem), "--engine", "ray", "--address", address, "--aggregate", "study", "-q"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=180, env=NO_TOKEN)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "embedded 24 images from 10 files" in run.stdout
        assert max_difference(rows_by_key(stem.with_suffix(".parquet")), rows_by_key(f"{local}.parquet")) <= 1e-5
        assert read_errors(stem) == read_errors(local)
        assert pq.read_table(tmp_path / "emb.study.parquet").num_rows == 3
    finally:
        for process, temp in reversed(nodes):
            _stop(process, temp)
    deadline = time.monotonic() + 10
    while (_ours(head_temp) or _ours(node_temp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ours(head_temp) and not _ours(node_temp)
    shutil.rmtree(head_temp, ignore_errors=True)
    shutil.rmtree(node_temp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Without a cluster: listing, options, the optional dependency
# ---------------------------------------------------------------------------------------

def test_inputs_folders_globs_manifests_and_file_uris(inputs, tmp_path):
    every = [str(p) for p in collect_inputs([inputs])]
    assert len(every) == 12 and every == sorted(every)
    assert list_inputs([f"file://{inputs}"]) == every
    assert list_inputs([str(inputs / "png" / "im*.png")]) == [str(inputs / "png" / f"im{i}.png") for i in range(6)]
    pq.write_table(pa.table({"path": ["png/im0.png", str(inputs / "dicom" / "CT_small.dcm")]}), tmp_path / "m.parquet")
    (inputs.parent / "list.csv").write_text("path\nin/png/im1.png\n")
    assert list_inputs([tmp_path / "m.parquet"]) == [str(tmp_path / "png/im0.png"), str(inputs / "dicom/CT_small.dcm")]
    assert collect_inputs([inputs.parent / "list.csv"]) == [inputs / "png" / "im1.png"]
    with pytest.raises(BadInputError, match="no file matches the pattern"):
        list_inputs([str(inputs / "*.tiff")])
    with pytest.raises(BadInputError, match="use --engine ray"):
        collect_inputs(["s3://bucket/scans/"])


def test_ray_is_an_optional_extra(inputs, model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rnet-hub\[ray\]'"):
        embed([inputs], model=str(model_dir), out=tmp_path / "emb", engine="ray")
    assert not list(tmp_path.iterdir())
    assert main(["embed", str(inputs), "--model", str(model_dir), "--engine", "ray", "--device", "cpu"]) == 2
