"""A small demo reference set for the app: generated patterns plus pydicom's own test DICOM files.

It lets the app, its screenshot script and its tests show neighbours without any patient data.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: file name in the reference folder -> pydicom test file it copies
DEFAULT_DICOM: Mapping[str, str] = {"IM0001": "MR_small.dcm"}


def write_demo_reference(folder: Path, *, patterns: int = 4,
                         dicom: Mapping[str, str] = DEFAULT_DICOM) -> Path:
    """Write ``patterns`` generated grey PNGs and copies of pydicom test files into a new ``folder``.

    The DICOM copies have no extension on purpose: the reference set finds DICOM by its header.
    """
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    y, x = np.mgrid[0:72, 0:96]
    for i in range(patterns):
        pattern = (np.sin(x / (3 + 2 * i)) * np.cos(y / (4 + i)) + 1) * 127.5
        Image.fromarray(pattern.astype(np.uint8)).save(folder / f"pattern{i}.png")
    for name, source in dicom.items():
        shutil.copy(get_testdata_file(source), folder / name)
    return folder
