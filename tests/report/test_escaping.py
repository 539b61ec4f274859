"""Issue 28, part 5: no name or label reaches a reader as markup or a terminal as a control sequence.

report.md is rendered with markdown-it's CommonMark preset with HTML enabled (what GitLab, Jenkins plugins and IDE
previews do) and opened in Chromium: before the change an ``onload`` from a folder name ran."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from markdown_it import MarkdownIt

from resnext_deploy.names import shown
from resnext_deploy.report.gfm import md_safe, md_table

HOSTILE = [
    '<img src=x onerror="document.title=\'pwned\'">',
    "`x`<svg onload=\"document.title='pwned'\">",
    "\\`<img src=x onerror=\"document.title='pwned'\">`",
    "``a`<iframe srcdoc=x onload=\"document.title='pwned'\">``",
    "<script>document.title='pwned'</script>",
    "<javascript:alert(1)>",
]


def _page() -> str:
    lines = [f"- folder `{h}`, label {h}" for h in HOSTILE] + [""] + md_table(["file", "label"], [[h, h] for h in HOSTILE])
    body = "\n".join(md_safe(line) for line in lines)
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(body)


def test_markdown_renders_no_element_from_a_name():
    html = _page()
    for tag in ("<img", "<svg", "<script", "<iframe", "<a href=\"javascript"):
        assert tag not in html


def test_control_characters_are_shown_escaped():
    osc52 = "photos\x1b]52;c;cm0gLXJmIH4=\x07"
    assert shown(osc52) == "photos\\x1b]52;c;cm0gLXJmIH4=\\x07"
    assert shown("bad\udcffname.png") == "bad\\xffname.png"
    assert shown("Ünïcode ok") == "Ünïcode ok"
    assert shown("rtl\u202eexe.png") == "rtl\\u202eexe.png"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_rendered_report_md_runs_nothing_in_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    page.write_text(f"<!doctype html><html><head><title>clean</title></head><body>{_page()}</body></html>", encoding="utf-8")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    try:
        driver.get(page.as_uri())
        assert driver.title == "clean"  # no handler ran
        counts = driver.execute_script(
            "return ['img','svg','script','iframe'].map(t => document.body.getElementsByTagName(t).length)")
        assert counts == [0, 0, 0, 0]
        text = driver.find_element("tag name", "body").text
        assert "onerror=" in text  # the names are shown, as text
        assert len(driver.find_elements("css selector", "table tr")) == len(HOSTILE) + 1
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
