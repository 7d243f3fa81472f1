"""Drive the annotation page in headless Chromium: open, edit, mark, save, reload, export.

Needs selenium (PyPI) and Debian's ``chromium`` + ``chromium-driver`` (``apt-get install -y
chromium chromium-driver``); without them the test is skipped with that reason. The
screenshot lands in ``$EDITALIGN_ARTIFACTS`` (default ``build/test-artifacts``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from test_annotate import XSS, serve  # the same server helper and hostile data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or not CHROMIUM or not DRIVER,
    reason="browser test needs `pip install selenium` and `apt-get install -y chromium "
           "chromium-driver` (missing: " + ", ".join(
               name for name, ok in (("selenium", webdriver is not None),
                                     ("chromium", CHROMIUM), ("chromedriver", DRIVER))
               if not ok) + ")")

ARTIFACTS = Path(os.environ.get("EDITALIGN_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "build" / "test-artifacts"))


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="editalign-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout=60):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def _text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def test_open_edit_mark_save_reload_export_in_chromium(tmp_path, browser):
    with serve(tmp_path) as (_, base):
        d = browser
        d.get(base + "/")
        _wait(d, lambda d: _text(d, "position").startswith("1 / 12"))
        # hostile data is shown as text and never runs
        assert XSS in _text(d, "prompt")
        assert d.find_elements(By.CSS_SELECTOR, "#prompt *, #diff img, #diff script") == []
        assert d.execute_script("return window.__xss === undefined")

        name = d.find_element(By.ID, "annotator")
        name.clear()
        name.send_keys("Ada")
        d.execute_script("arguments[0].dispatchEvent(new Event('change'))", name)
        _wait(d, lambda d: "not annotated yet" in _text(d, "status"))

        original = d.find_element(By.ID, "original").get_property("value")
        start = original.index("Berlin")
        d.execute_script("arguments[0].focus(); arguments[0].setSelectionRange(arguments[1], "
                         "arguments[2]);", d.find_element(By.ID, "original"), start, start + 6)
        d.find_element(By.ID, "mark").click()
        assert "Berlin" in _text(d, "spans")

        editor = d.find_element(By.ID, "editor")
        editor.clear()
        editor.send_keys(original.replace("Berlin", "Paris"))
        _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#diff ins"))
        deleted = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#diff del")]
        added = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#diff ins")]
        assert deleted == ["Berlin"] and added == ["Paris"]
        assert "unsaved" in _text(d, "dirty")
        colour = d.find_element(By.CSS_SELECTOR, "#diff del").value_of_css_property(
            "background-color")
        assert colour.startswith("rgba(255, 215, 213")  # red for deletions
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "annotate-edit.png"))

        d.find_element(By.ID, "save").click()
        _wait(d, lambda d: "saved (version 1)" in _text(d, "status"))

        d.refresh()
        _wait(d, lambda d: "saved version 1" in _text(d, "status"))
        assert d.find_element(By.ID, "editor").get_property("value") == original.replace(
            "Berlin", "Paris")
        assert "Berlin" in _text(d, "spans") and [e.text for e in d.find_elements(
            By.CSS_SELECTOR, "#diff ins")] == ["Paris"]

        d.find_element(By.ID, "export").click()
        _wait(d, lambda d: "exported 1 pairs" in _text(d, "status"))
        d.save_screenshot(str(ARTIFACTS / "annotate-saved.png"))
        assert d.execute_script("return window.__xss === undefined")
    rows = [json.loads(line) for line in (tmp_path / "edits.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == "q0" and rows[0]["meta"]["annotator"] == "Ada"
    assert rows[0]["revised"] == original.replace("Berlin", "Paris")
    assert rows[0]["meta"]["error_spans"][0]["start"] == start
    assert (ARTIFACTS / "annotate-edit.png").stat().st_size > 1000
