"""A real headless Chromium for browser tests: Debian's `chromium` and `chromium-driver` (apt,
installed by `make system`), driven by Selenium. No browser is downloaded at run time.

In CI (`CI=true`) a missing browser fails the test, so a browser test can never pass by being
skipped; on a developer's machine without Chromium it is skipped with the command to install it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Fail in CI, skip elsewhere, when Debian's Chromium or its driver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not found: run `make system` (apt chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium WebDriver; closed on exit. Loopback and local files only."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def broken_images(driver) -> list[str]:
    """The `src` of every <img> on the page that did not load (naturalWidth 0)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80));"
    )


def artifact_dir() -> Path:
    """Where browser tests keep their screenshots (`TLEARN_TEST_ARTIFACTS`, default
    `test-artifacts/` in the working directory), kept after the run for people to look at."""
    path = Path(os.environ.get("TLEARN_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
