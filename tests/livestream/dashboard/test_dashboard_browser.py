"""The dashboard in a real headless browser (Debian's Chromium via Selenium) on
``livestream demo``: the page updates live, its count matches
``livestream status --json``, every picture loads and every plot has points.

Screenshots go to ``$LIVESTREAM_ARTEFACTS`` (default: the test's tmp folder)
``/dashboard-*.png``; the test prints where.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.livestream.conftest import in_ci

pytestmark = pytest.mark.slow

N_EXPOSURES = 5
PLOTS = ("defocus", "resolution", "motion", "astigmatism")


def _driver_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        if in_ci():
            pytest.fail("chromium and chromium-driver must be installed in CI")
        pytest.skip(
            "chromium / chromedriver not installed (apt: chromium chromium-driver)"
        )
    return browser, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    browser_path, driver_path = _driver_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,2200", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LIVESTREAM_ARTEFACTS", tmp_path / "artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder}")
    return folder


def _wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _start_demo(project: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The demo in a process (its output in ``log``) and its dashboard URL."""
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [
                sys.executable, "-m", "livestream.cli.main", "demo",
                "--exposures", str(N_EXPOSURES), "--interval-s", "1.5",
                "--size-px", "512", "--workers", "1", "--metrics-port", "0",
                "--dashboard-port", "0", "--project", str(project),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def url() -> str | None:
        found = re.search(r"^dashboard: (http://\S+)$", log.read_text(), re.MULTILINE)
        if found is None and demo.poll() is not None:
            raise AssertionError(
                f"the demo exited {demo.returncode}: {log.read_text()}"
            )
        return None if found is None else found.group(1)

    return demo, _wait(url, 120, "the demo's dashboard URL")


def _count(driver: Any) -> int:
    text = driver.find_element("id", "n-exposures").text
    return int(text) if text.isdigit() else 0


def _images_loaded(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "const imgs = [...document.images].filter(i => i.src && !i.hidden"
            " && i.closest('#viewer') === null);"
            " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        )
    )


def test_the_page_follows_the_demo_live(
    tmp_path: Path, browser: Any, artefacts: Path
) -> None:
    log = tmp_path / "demo.log"
    try:
        _follow_the_demo(tmp_path, log, browser, artefacts)
    except AssertionError:
        browser.save_screenshot(str(artefacts / "dashboard-failure.png"))
        print("page:", browser.find_element("id", "live").text)
        print("demo output:", log.read_text()[-4000:])
        raise


def _follow_the_demo(tmp_path: Path, log: Path, browser: Any, artefacts: Path) -> None:
    project = tmp_path / "project"
    demo, url = _start_demo(project, log)
    try:
        browser.get(url)
        browser.execute_script("window.__noReload = 'still the same page';")
        _wait(lambda: _count(browser) >= 1, 120, "a first exposure on the page")
        first = _count(browser)
        _wait(lambda: _count(browser) > first, 120, "a new exposure without reload")
        _wait(
            lambda: browser.find_elements("css selector", "#thumbnails img"),
            120,
            "a first micrograph thumbnail",
        )
        assert browser.execute_script("return window.__noReload") == (
            "still the same page"
        )
        _wait(
            lambda: browser.find_element("id", "live").text == "live",
            15,
            "the event stream's badge to say live",
        )
        _wait(lambda: _images_loaded(browser), 60, "every image to load")
        widths = browser.execute_script(
            "return [...document.querySelectorAll('#thumbnails img')]"
            ".map(i => i.naturalWidth)"
        )
        assert widths
        assert all(w > 0 for w in widths)
        browser.save_screenshot(str(artefacts / "dashboard-live.png"))
        browser.find_elements("css selector", "#thumbnails .thumb")[0].click()
        _wait(
            lambda: browser.execute_script(
                "const i = document.getElementById('viewer-picks');"
                " return i.complete && i.naturalWidth > 0;"
            ),
            20,
            "the enlarged micrograph",
        )
        browser.save_screenshot(str(artefacts / "dashboard-enlarged.png"))
        browser.find_element("id", "viewer-close").click()
        assert demo.wait(timeout=240) == 0
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=30)
    # the page keeps its last state after the demo stopped
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "livestream.cli.main", "status",
             "--project", str(project), "--json"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    assert status["n_exposures"] == N_EXPOSURES
    # at shutdown the service told the page, which read the final state
    _wait(lambda: _count(browser) == N_EXPOSURES, 15, "the page's final count")
    assert browser.find_element("id", "live").text == "stopped"
    assert browser.find_element("id", "state").text == "stopped"
    for name in PLOTS:
        points = browser.find_element("id", f"plot-{name}").get_attribute("data-points")
        assert int(points or 0) > 0, name
