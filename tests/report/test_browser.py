"""report.html in a real headless browser (Debian's chromium + chromium-driver, driven by selenium).

Checks what a reader sees: no console errors, every table's rows as wide as its header (from the DOM), the
verdict banner as report.json says, the charts, and the gallery's length. A screenshot of each page is kept
in $RESNEXT_DEPLOY_ARTIFACTS (CI keeps that folder) or tests/.artifacts/.

Without chromium the tests skip; CI installs it: apt-get install -y chromium chromium-driver.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from resnext_deploy.report.verdict import verdict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("RESNEXT_DEPLOY_ARTIFACTS") or Path(__file__).resolve().parents[1] / ".artifacts")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")

# every table: [header cells, [cells of each body row]]
TABLE_SHAPES = """
return Array.from(document.querySelectorAll('table')).map(function (t) {
  var head = t.tHead ? t.tHead.rows[0] : t.rows[0];
  var body = Array.from(t.rows).filter(function (r) { return r !== head; });
  return [t.id || '', head.cells.length, body.map(function (r) { return r.cells.length; })];
});
"""


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)  # never Selenium Manager's download
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def check_page(driver, out: Path, report: dict, shot: str) -> None:
    driver.get((out / "report.html").resolve().as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    shapes = driver.execute_script(TABLE_SHAPES)
    assert len(shapes) >= 3  # parity, the failed/skipped or full gate list, stages
    for table_id, head, rows in shapes:
        assert rows and all(n == head for n in rows), (table_id, head, rows)
    banner = driver.find_element("id", "verdict")
    assert banner.get_attribute("data-verdict") == verdict(report)
    assert banner.text.splitlines()[0] == verdict(report)
    charts = driver.find_elements("css selector", "figure.chart svg")
    assert len(charts) >= 3 and all(c.size["width"] > 100 for c in charts)
    for r in report["results"]:
        d = r.get("disagreements")
        if d is None:
            continue
        entries = driver.find_elements("css selector", f'.gallery[data-artifact="{r["artifact"]}"] .entry')
        assert len(entries) == min(d["cap"], d["count"]), r["artifact"]
        imgs = driver.find_elements("css selector", f'.gallery[data-artifact="{r["artifact"]}"] .entry img')
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)  # thumbnails decode
    # the full list of checks is collapsed; it opens
    details = driver.find_element("id", "all-checks")
    assert details.get_attribute("open") is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 100, 16000))
    assert driver.save_screenshot(str(ARTIFACTS / shot))


def test_demo_report_in_a_browser(browser, demo_build):
    check_page(browser, demo_build.out_dir, demo_build.report, "report-demo.png")


def test_hostile_report_in_a_browser(browser, hostile_report):
    _, out, report = hostile_report
    assert verdict(report) == "FAILED"
    assert any(len((r.get("disagreements") or {}).get("images", [])) for r in report["results"])  # a gallery to count
    check_page(browser, out, report, "report-hostile.png")
