"""Screenshots of builds' report.html in headless chromium, the page size, and the time the charts take.

    python benchmarks/report_pages.py BUILD_DIR [BUILD_DIR ...] --out benchmarks/results/report

For each build: rebuilds the charts from its report.json three times (the first in a fresh process, so
matplotlib's import is counted; that is what a build pays), records the page's size and the build's own
`stages.report_charts`, and saves a full-page screenshot (Debian's chromium + chromium-driver, via selenium).
Writes report_pages.json beside the screenshots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLD = """
import json, sys, time
t = time.perf_counter()
from resnext_deploy.report.charts import charts_from_report
charts = charts_from_report(json.load(open(sys.argv[1])))
print(json.dumps({"seconds": time.perf_counter() - t, "charts": [c.name for c in charts]}))
"""


def chart_seconds(report_json: Path) -> dict:
    cold = json.loads(subprocess.run([sys.executable, "-c", COLD, str(report_json)], check=True, capture_output=True,
                                     text=True).stdout)
    from resnext_deploy.report.charts import charts_from_report

    report = json.loads(report_json.read_text())
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        charts_from_report(report)
        warm.append(time.perf_counter() - t)
    return {"cold_s": cold["seconds"], "warm_s": min(warm), "charts": cold["charts"]}


def screenshot(page: Path, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 16000))
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--names", default="", help="comma-separated names for the screenshots (default: the folder names)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.names.split(",") if n] or [b.name for b in args.builds]
    results = {}
    for name, build in zip(names, args.builds):
        report = json.loads((build / "report.json").read_text())
        row = {"page_kb": (build / "report.html").stat().st_size / 1024,
               "report_json_kb": (build / "report.json").stat().st_size / 1024,
               "build_stage_report_charts_s": report.get("stages", {}).get("report_charts"),
               "build_total_s": report.get("stages", {}).get("total"),
               "timing_under_load": report.get("timing", {}).get("under_load"),
               **chart_seconds(build / "report.json")}
        screenshot(build / "report.html", args.out / f"report-{name}.png")
        results[name] = row
        print(name, json.dumps(row))
    (args.out / "report_pages.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
