"""Headless Chromium for tests and benchmarks (Debian's ``chromium`` and
``chromium-driver`` packages, driven by selenium): no download, no network."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def missing() -> str | None:
    """What is not installed, or None when a headless Chromium can be started."""
    if not any(shutil.which(name) for name in CHROMIUM):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if shutil.which(DRIVER) is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def headless_chromium(width: int = 1280, height: int = 1600) -> Any:
    """A selenium WebDriver of a headless Chromium (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(path for name in CHROMIUM if (path := shutil.which(name)))
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--disable-extensions", "--no-first-run",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which(DRIVER)), options=options)


def load_ms(driver: Any, url: str) -> float:
    """Open ``url`` and return the browser's own figure for the full load: navigation
    start to the end of the load event, in milliseconds (Navigation Timing)."""
    driver.get(url)
    timing = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return n ? n.loadEventEnd - n.startTime : -1;")
    return float(timing)
