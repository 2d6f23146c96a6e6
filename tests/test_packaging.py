"""The wheel a user installs: built from this checkout in a fresh venv, then read back.

It must carry the GPL-3.0 license, the ``py.typed`` marker and the one card template, and no
tests, benchmarks or maintainer scripts. Building needs setuptools >= 77 (SPDX ``license``),
which pip fetches into an isolated build environment, as any user's ``pip install`` does.
"""

from __future__ import annotations

import email
import subprocess
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path: Path) -> Path:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("rnet_hub-*.whl")
    return wheel


def test_the_wheel_holds_the_package_its_license_and_nothing_else(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "rnet_hub/py.typed" in names
    assert "rnet_hub/publish/templates/radiologynet.md" in names
    assert {n.split("/")[0] for n in names} == {"rnet_hub", dist_info}  # no tests/, benchmarks/, conversion/
    license_text = zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE").decode()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 3, 29 June 2007" in license_text
    metadata = email.message_from_bytes(zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA"))
    assert metadata["License-Expression"] == "GPL-3.0-only"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert any(url.startswith("Paper, https://doi.org/10.1038/") for url in metadata.get_all("Project-URL"))
