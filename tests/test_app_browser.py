"""The app in a real browser: headless Chromium (Debian's chromium + chromedriver) driven by Selenium.

Loads the page, uploads a DICOM from pydicom's test files (15-frame RTDOSE) and a single-frame
MR, waits for the frames, the model inputs and the nearest reference images, checks what the
page says, and writes a screenshot into the test's temp folder. Not skipped when Chromium is
missing: it fails, naming the apt packages to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_app import free_port, make_reference, restored_environment

from rnet_hub.app import create_app
from rnet_hub.app.browser import find_chromium, full_page_screenshot, headless_chromium, upload_and_wait
from rnet_hub.app.ui import launch_app

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("app-browser")


@pytest.fixture(scope="module")
def served(converted_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    with restored_environment():
        app, _ = create_app(models=[str(converted_dir("MobileNetV3Small"))],
                            reference=make_reference(root / "reference"), cache_dir=root / "cache",
                            temp_dir=root / "temp")
        port = free_port()
        launch_app(app, port=port, block=False, allowed_paths=[str(root / "temp")])
        try:
            yield f"http://127.0.0.1:{port}/", root
        finally:
            app.close()


def test_chromium_is_installed() -> None:
    browser, driver = find_chromium()  # raises, naming `apt-get install chromium chromium-driver`, when missing
    assert os.access(browser, os.X_OK) and os.access(driver, os.X_OK)


def test_upload_a_dicom_in_headless_chromium(served, tmp_path) -> None:
    url, root = served
    upload = tmp_path / "upload"
    upload.mkdir()
    shutil.copy(get_testdata_file("rtdose.dcm"), upload / "rtdose.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), upload / "MR_small.dcm")
    driver = headless_chromium()
    try:
        page = upload_and_wait(driver, url, [upload / "MR_small.dcm", upload / "rtdose.dcm"], frames=16, timeout=120)
        shot = full_page_screenshot(driver, tmp_path / "app.png")
        driver.find_elements(By.CSS_SELECTOR, "#frames img")[-1].click()  # explain image #16: rtdose frame 14
        WebDriverWait(driver, 60).until(lambda d: "Embedding of image #16" in d.find_element(By.ID, "summary").text,
                                        message="clicking a frame did not explain it")
        clicked = driver.find_element(By.ID, "neighbours").text
    finally:
        driver.quit()
    assert page.frames == 16 and page.inputs == 16
    assert page.neighbour_captions[0].startswith("cos 1.000 - IM0001")  # the MR's own copy in the reference set
    assert clicked.count("cos ") == 5 and not clicked.startswith("cos 1.000 - IM0001")
    assert page.neighbours == 5  # the whole reference set: four PNGs and the MR copy
    for expected in ("rtdose.dcm", "RTDOSE", "modality RTDOSE was not in the pretraining export", "MR_small.dcm",
                     "export (as the pretraining exporter wrote it)", "Embedding of image #1", "1024 values",
                     "Reference set", "5 images", "model input 224 x 224"):
        assert expected in page.text, f"{expected!r} is not on the page"
    with Image.open(shot) as image:
        assert image.size[0] >= 1200 and image.size[1] >= 1200
    assert list((root / "temp" / "gradio").rglob("rtdose.dcm")), "the upload must land in the app's temp folder"
    print(f"screenshot: {Path(shot)}")
