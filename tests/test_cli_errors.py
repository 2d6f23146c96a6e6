"""How ``rnet-hub`` reports errors: one ``error:`` line for known errors, a traceback for bugs.

* an :class:`~rnet_hub.errors.RnetHubError` prints exactly one ``error: <message>`` line on
  stderr and exits with its ``exit_code``: 2 for bad input and the environment, 1 for failed
  integrity checks (parity);
* any other exception is a bug: its traceback is shown;
* ``--debug`` or ``RNET_HUB_DEBUG=1`` shows the traceback of known errors too.

The main cases run the installed console script itself (``rnet_hub.cli:run``, which leaves
with ``os._exit``), the rest call :func:`rnet_hub.cli.main` in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import rnet_hub
import rnet_hub.staging
from rnet_hub.cli import main
from rnet_hub.errors import (
    BadInputError,
    ConvertedFolderError,
    DownloadError,
    ImageReadError,
    IncompatibleTimmError,
    KeyMapError,
    MissingExtraError,
    ParityError,
    PublishedMismatchError,
    PushError,
    RnetHubError,
    SourceError,
)

SCRIPT = Path(sys.executable).parent / "rnet-hub"


def _script(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``rnet-hub`` console script."""
    assert SCRIPT.exists(), f"the console script is not installed beside {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k != "RNET_HUB_DEBUG"} | (env or {})
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=300)


def _python(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RNET_HUB_DEBUG"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=300)


def _one_error_line(stderr: str) -> str:
    """The single ``error:`` line that is all of ``stderr``."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------------------ the real console script
def test_script_bad_input_is_one_line_and_exit_2(tmp_path):
    done = _script("convert", "/nonexistent.tar.gz", "-q", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "no such checkpoint file: /nonexistent.tar.gz" in _one_error_line(done.stderr)
    assert done.stdout == ""
    assert not (tmp_path / "converted").exists()


def test_script_missing_label_names_file_names_the_file(tmp_path):
    done = _script("convert", "/nonexistent.tar.gz", "--label-names-file", tmp_path / "labels.txt", cwd=tmp_path)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert f"cannot read --label-names-file {tmp_path / 'labels.txt'}" in line and "No such file" in line


def test_script_failed_parity_is_exit_1(converted_dir, tmp_path):
    """A folder converted from the seed-0 archive, verified against another seed of the same architecture."""
    made = _script("sample-archive", "ResNet18", "-o", "other.tar.gz", "--seed", "2", "--no-optimizer", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("wrote other.tar.gz")
    model_dir = converted_dir("ResNet18")
    done = _script("verify", model_dir, "--against", "other.tar.gz", "-q", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "parity FAIL" in done.stdout  # the report, as before
    line = _one_error_line(done.stderr)
    assert f"{model_dir} does not reproduce other.tar.gz (parity FAIL" in line
    assert "convert it again from the right source" in line


_BUG = """
import sys
import rnet_hub.cli
import rnet_hub
import rnet_hub.staging

def boom(out_dir, overwrite):
    raise RuntimeError("boom")

rnet_hub.staging.refuse_existing = boom  # what `convert --out` calls first
sys.argv = ["rnet-hub", "convert", "archive.tar.gz", "--out", "out"]
rnet_hub.cli.run()
"""


def test_a_bug_shows_its_traceback(tmp_path):
    done = _python(_BUG, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "in run" in done.stderr and "in main" in done.stderr and "in boom" in done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: boom")
    assert "error: " not in done.stderr


@pytest.mark.parametrize("how", [["--debug"], "RNET_HUB_DEBUG"], ids=["option", "environment"])
def test_debug_shows_the_traceback_of_known_errors(tmp_path, how):
    args = ["convert", "/nonexistent.tar.gz", "--label-names-file", tmp_path / "labels.txt"]
    if how == "RNET_HUB_DEBUG":
        done = _script(*args, cwd=tmp_path, env={"RNET_HUB_DEBUG": "1"})
    else:
        done = _script(*how, *args, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "rnet_hub.errors.BadInputError: cannot read --label-names-file" in done.stderr
    assert "FileNotFoundError" in done.stderr  # the cause is chained


def test_debug_environment_off(tmp_path):
    done = _script("convert", "/x.tar.gz", "--label-names-file", tmp_path / "l.txt", cwd=tmp_path,
                   env={"RNET_HUB_DEBUG": "0"})
    assert done.returncode == 2
    _one_error_line(done.stderr)


# ------------------------------------------------------------------------------------ main(), in-process
def _patch_command(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[str]:
    """Make ``convert --out`` raise ``error`` from its first step; returns the arguments that run it."""

    def fail(out_dir: Path, overwrite: bool) -> None:
        raise error

    monkeypatch.setattr(rnet_hub.staging, "refuse_existing", fail)
    return ["convert", "archive.tar.gz", "--out", "out"]


@pytest.mark.parametrize(("error", "code"), [
    (BadInputError("bad"), 2), (SourceError("bad"), 2), (MissingExtraError("bad"), 2), (DownloadError("bad"), 2),
    (PushError("bad"), 2), (IncompatibleTimmError("bad"), 2), (ImageReadError("bad"), 2),
    (ParityError("bad"), 1), (KeyMapError("bad"), 1), (PublishedMismatchError("bad"), 1),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value))
def test_known_errors_exit_with_their_code(monkeypatch, capsys, error, code):
    monkeypatch.delenv("RNET_HUB_DEBUG", raising=False)
    assert main(_patch_command(monkeypatch, error)) == code
    assert _one_error_line(capsys.readouterr().err) == "error: bad"


@pytest.mark.parametrize("error", [ValueError("bug"), OSError("bug"), FileNotFoundError("bug"),
                                   AssertionError("bug"), RuntimeError("bug"), KeyError("bug")],
                         ids=lambda e: type(e).__name__)
def test_other_errors_are_raised(monkeypatch, capsys, error):
    monkeypatch.delenv("RNET_HUB_DEBUG", raising=False)
    with pytest.raises(type(error), match="bug"):
        main(_patch_command(monkeypatch, error))
    assert capsys.readouterr().err == ""


def test_debug_reraises_known_errors(monkeypatch):
    monkeypatch.delenv("RNET_HUB_DEBUG", raising=False)
    with pytest.raises(ParityError, match="bad"):
        main(["--debug", *_patch_command(monkeypatch, ParityError("bad"))])
    monkeypatch.setenv("RNET_HUB_DEBUG", "yes")
    with pytest.raises(BadInputError, match="bad"):
        main(_patch_command(monkeypatch, BadInputError("bad")))


def test_interrupt_keeps_its_message_and_130(monkeypatch, capsys):
    assert main(_patch_command(monkeypatch, KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted; nothing was left half-written\n"


def test_a_multi_line_message_is_printed_on_one_line(monkeypatch, capsys):
    monkeypatch.delenv("RNET_HUB_DEBUG", raising=False)
    assert main(_patch_command(monkeypatch, PushError("upload failed\n  nothing landed\n"))) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: upload failed nothing landed"
    assert main(_patch_command(monkeypatch, RnetHubError())) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: RnetHubError"


def test_parity_error_from_the_converter_is_exit_1(monkeypatch, capsys):
    import rnet_hub.converter

    def shapes_differ(*args: object, **kwargs: object) -> None:
        raise ParityError("logit shapes differ: original (2, 36), converted (2, 3)")

    monkeypatch.setattr(rnet_hub.converter, "verify", shapes_differ)
    assert main(["verify", "somewhere", "--against", "nothing.tar.gz", "-q"]) == 1
    assert _one_error_line(capsys.readouterr().err) == "error: logit shapes differ: original (2, 36), converted (2, 3)"


# ------------------------------------------------------------------------------------ user errors, one line each
def test_unwritable_output_names_the_option(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["sample-archive", "ResNet18", "-o", str(tmp_path / "file" / "x.tar.gz"), "--no-optimizer"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write -o/--output {tmp_path / 'file' / 'x.tar.gz'}:")


def test_impossible_number_of_classes(tmp_path, capsys):
    assert main(["sample-archive", "ResNet18", "-o", str(tmp_path), "--num-classes", "0"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: number_of_classes must be a positive integer, got 0"


def test_label_names_file_that_is_not_text(tmp_path, capsys):
    (tmp_path / "labels.txt").write_bytes(b"\xff\xfe\x00bad")
    assert main(["convert", str(tmp_path / "missing.tar.gz"), "--label-names-file", str(tmp_path / "labels.txt")]) == 2
    assert "cannot read --label-names-file" in _one_error_line(capsys.readouterr().err)


def test_wrong_number_of_label_names(sample_archive, tmp_path, capsys):
    assert main(["convert", str(sample_archive("ResNet18")), "--out", str(tmp_path / "out"), "-q",
                 "--label-names", "a,b"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "2 label names given but the checkpoint's head has 36 classes" in line
    assert not (tmp_path / "out").exists()


def test_source_that_cannot_be_read(tmp_path, capsys):
    from rnet_hub.archives.extract import sniff

    with pytest.raises(SourceError, match="cannot read"):
        sniff(tmp_path)  # a folder


@pytest.fixture
def damaged(converted_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    """A copy of the converted ResNet18 folder, for damaging."""
    return Path(shutil.copytree(converted_dir("ResNet18"), tmp_path / "copy"))


def test_damaged_weights_file(damaged, sample_archive, capsys):
    from rnet_hub.loading import create_model, load_timm_from_dir

    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConvertedFolderError, match="model.safetensors cannot be read"):
        load_timm_from_dir(damaged)
    with pytest.raises(ConvertedFolderError, match="model.safetensors cannot be read"):
        create_model(str(damaged))
    assert main(["verify", str(damaged), "--against", str(sample_archive("ResNet18")), "-q"]) == 2
    assert "convert or download the folder again" in _one_error_line(capsys.readouterr().err)


def test_weights_that_do_not_fit_the_config(damaged):
    from rnet_hub.loading import load_timm_from_dir

    config = json.loads((damaged / "config.json").read_text())
    config["num_classes"] = 3
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertedFolderError, match=r"does not fit resnet18 \(.*size mismatch.*rnet-hub convert"):
        load_timm_from_dir(damaged)


def test_legacy_constructor_errors_are_bad_input():
    from rnet_hub import legacy

    with pytest.raises(BadInputError, match=r"ResNet18\(pretrained=True\) is not supported"):
        legacy.ResNet18(pretrained=True)
    with pytest.raises(BadInputError, match="number_of_classes must be a positive integer"):
        legacy.ResNet18(number_of_classes=0)


def test_imaging_errors_are_hierarchy_errors(tmp_path, monkeypatch):
    import numpy as np

    from rnet_hub.architectures import find_arch
    from rnet_hub.folder import pretrained_cfg
    from rnet_hub.imaging.dicom import load_dicom, load_frames
    from rnet_hub.imaging.transforms import create_transform

    with pytest.raises(ImageReadError, match="cannot be read"):
        load_frames(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="neither an image PIL can read nor a DICOM file"):
        load_frames(tmp_path / "notes.txt")
    transform_300 = create_transform(pretrained_cfg(find_arch("EfficientNetB3"), num_classes=36), faithful=True)
    with pytest.raises(BadInputError, match="unsupported pixel type int16"):
        transform_300(np.zeros((4, 4), dtype=np.int16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r"rnet-hub\[dicom\]"):
        load_dicom(tmp_path / "notes.txt")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingExtraError, match=r"rnet-hub\[faithful\]"):
        transform_300(np.zeros((10, 10), dtype=np.uint8))


@pytest.mark.parametrize(("option", "message"), [
    (["--num-workers", "-1"], "--num-workers must be 0 or more, got -1"),
    (["--device", "nonsense"], "--device 'nonsense' is not a torch device"),
])
def test_embed_option_errors(tmp_path, capsys, option, message):
    assert main(["embed", str(tmp_path), "--model", str(tmp_path), "-q", *option]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_version_is_printed_by_the_console_script():
    done = subprocess.run([str(Path(sys.executable).parent / "rnet-hub"), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"rnet-hub {rnet_hub.__version__}")
