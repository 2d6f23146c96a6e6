"""The app in a real browser: headless Chromium driven by Selenium (the browser test and the screenshot script).

Uses Debian's ``chromium`` and ``chromedriver`` (``apt-get install chromium chromium-driver``),
found on ``PATH`` or at ``/usr/bin``; Selenium Manager is never asked to download anything,
and Chromium's own background traffic (updates, sync, metrics) is switched off.
:func:`upload_and_wait` loads the page, uploads files into the upload panel, and waits until
the frames, the model inputs and the nearest reference images are on the page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError

__all__ = ["PageState", "find_chromium", "full_page_screenshot", "headless_chromium", "upload_and_wait"]

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
_INSTALL = "install Debian's browser and driver: apt-get install chromium chromium-driver"


def find_chromium() -> tuple[str, str]:
    """The paths of the Chromium browser and of chromedriver.

    Raises:
        MissingExtraError: either is missing (the message names the apt packages).
    """
    browser = next((found for name in _CHROMIUM_NAMES if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                              else None)
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        raise MissingExtraError(f"the browser test needs {' and '.join(missing)}, not found on PATH: {_INSTALL}")
    return str(browser), str(driver)


def headless_chromium(*, width: int = 1400, height: int = 1800) -> Any:
    """A headless Chromium ``selenium.webdriver.Chrome`` (quit it when done)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise MissingExtraError("the browser test needs selenium: pip install 'rnet-hub[test]'") from exc
    browser, driver = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@dataclass(frozen=True)
class PageState:
    """What the page showed once the analysis finished."""

    text: str
    frames: int
    inputs: int
    neighbours: int
    neighbour_captions: tuple[str, ...]


def _images(driver: Any, elem_id: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")


def upload_and_wait(driver: Any, url: str, files: Sequence[str | os.PathLike[str]], *, frames: int,
                    timeout: float = 90.0, also: Sequence[str] = ()) -> PageState:
    """Open ``url``, upload ``files``, and wait until ``frames`` images, their model inputs, at least one
    neighbour and an element for each CSS selector in ``also`` (``"#cam img"``) are shown.
    Raises selenium's ``TimeoutException`` with what was missing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout, poll_frequency=0.25)
    upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#files input[type=file]"),
                        message="the upload panel never appeared")[0]
    upload.send_keys("\n".join(str(Path(f).resolve()) for f in files))

    def done(d: Any) -> bool:
        return (len(_images(d, "frames")) >= frames and len(_images(d, "inputs")) >= frames
                and len(_images(d, "neighbours")) >= 1 and "Embedding of image" in d.find_element(By.ID, "summary").text
                and all(d.find_elements(By.CSS_SELECTOR, selector) for selector in also))

    wait.until(done, message=f"the page never showed {frames} frames, their model inputs and the neighbours")
    body = driver.find_element(By.TAG_NAME, "body").text
    captions = tuple(e.text for e in driver.find_elements(By.CSS_SELECTOR, "#neighbours .caption-label, "
                                                                           "#neighbours figcaption") if e.text)
    return PageState(text=body, frames=len(_images(driver, "frames")), inputs=len(_images(driver, "inputs")),
                     neighbours=len(_images(driver, "neighbours")), neighbour_captions=captions)


def full_page_screenshot(driver: Any, path: str | os.PathLike[str], *, width: int = 1400) -> Path:
    """Resize the window to the whole page and save a PNG screenshot at ``path``."""
    height = int(driver.execute_script("return Math.max(document.body.scrollHeight, "
                                       "document.documentElement.scrollHeight)"))
    driver.set_window_size(width, min(max(height + 40, 800), 6000))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(target)):
        raise OSError(f"the browser could not write the screenshot {target}")
    return target
