"""report.md is GitHub-flavoured Markdown whose every table parses as one (markdown-it-py, tables on); report.html
renders the same report through the Jinja2 templates, escaped."""

from __future__ import annotations

import re

import pytest

from resnext_deploy.evaluation.gate import GateResult, skipped_check
from resnext_deploy.host.load import timing_verdict
from resnext_deploy.report import make_report, md_table, render_markdown, render_table
from resnext_deploy.report.gfm import md_cell

markdown_it = pytest.importorskip("markdown_it")

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def table_problems(md: str) -> list:
    """Every table block (consecutive lines starting with '|') must parse as a markdown-it table whose header
    has as many cells as each row, in the parsed tokens and in the source (markdown-it pads short rows)."""
    parser = markdown_it.MarkdownIt("commonmark").enable("table")
    tokens = parser.parse(md)
    lines = md.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append((i, j))
            i = j
        else:
            i += 1
    parsed = {}
    for k, t in enumerate(tokens):
        if t.type == "table_open":
            depth, cells_per_row, row = 0, [], None
            for u in tokens[k + 1:]:
                if u.type == "table_close":
                    break
                if u.type == "tr_open":
                    row = 0
                elif u.type in ("th_open", "td_open"):
                    row += 1
                elif u.type == "tr_close":
                    cells_per_row.append(row)
            parsed[t.map[0]] = cells_per_row
    problems = []
    for start, end in blocks:
        if start not in parsed:
            problems.append(f"line {start + 1}: not parsed as a table: {lines[start]}")
            continue
        cells = parsed[start]
        if any(c != cells[0] for c in cells):
            problems.append(f"line {start + 1}: cells per row {cells}")
        src = [len(_UNESCAPED_PIPE.findall(line.strip())) - 1 for line in lines[start:end]]
        if any(c != src[0] for c in src):
            problems.append(f"line {start + 1}: source cells per line {src}")
    return problems


def synthetic_report(**extra):
    """A report with everything that once broke a table: pipes in names, a pending row, skipped and failed checks,
    end-to-end numbers and a device row (contracts of other branches, rendered when present)."""
    lat = {"p50": 2.0, "p90": 2.2, "p99": 2.5, "mean": 2.1}
    row = dict(backend="onnxruntime", precision="fp32", images=10, top1=0.9, top5=1.0, agreement=1.0, agreement_confident=1.0,
               confident_images=9, max_abs_logit_diff=0.0, mean_cosine=1.0, min_cosine=1.0, latency_ms=lat, throughput_ips=100.0,
               throughput_batch=8, size_bytes=1000, details={})
    results = [dict(row, artifact="onnx-fp32"),
               dict(row, artifact="weird|name-int8", precision="int8", top1=0.8, agreement=0.9, latency_ms=dict(lat, p50=1.0),
                    end_to_end={"p50_ms": 3.5, "p99_ms": 4.0, "images_per_s": 280.0, "source_sizes": {"640x480": 10}},
                    device={"name": "Orin|NX", "jetpack": "6.2"}),
               {"artifact": "tensorrt-int8", "backend": "tensorrt", "precision": "int8", "pending": True,
                "reason": "no TensorRT here | built on the device"}]
    checks = [skipped_check("tensorrt-int8", "agreement", 0.95, ">=", "pending | on device")]
    gate = GateResult(False, checks + GateResult.from_dict({"passed": False, "checks": [
        {"artifact": "weird|name-int8", "metric": "agreement", "value": 0.9, "threshold": 0.95, "op": ">=", "passed": False}]}).checks)
    dataset = {"validation": "v|al", "validation_images": 10, "calibration": "c", "calibration_images": 4, "throughput_batch": 8}
    return make_report(model={"name": "m|odel", "arch": "resnext_demo", "num_classes": 10}, target="x86-cpu",
                       reference="onnx-fp32", results=results, gate=gate, dataset=dataset,
                       stages={"a|b": 1.0}, notes=["a | note"], extra=extra)


def test_cells_escape_pipes_and_line_breaks():
    assert md_cell("max|dlogit|") == "max\\|dlogit\\|"
    assert md_cell("a\nb") == "a b"
    with pytest.raises(ValueError):
        md_table(["a"], [["1", "2"]])
    assert md_table(["a", "b"], [["1"]])[-1] == "| 1 |  |"


def test_every_table_of_a_hostile_report_parses_with_as_many_cells_as_its_header():
    report = synthetic_report()
    md = render_markdown(report, ["## Extra", "", *md_table(["x|y", "z"], [["1|2", "3"]])])
    assert table_problems(md) == []
    assert "max \\|Δlogit\\|" in md  # the header that broke the table, escaped
    assert "| weird\\|name-int8 |" in md
    assert "pending on device: no TensorRT here \\| built on the device" in md
    assert "weird|name-int8: measured on the device (name: Orin|NX, jetpack: 6.2)" in md
    assert "## End to end" in md and "| 3.50 | 4.00 | 280.0 |" in md and "640x480 (10)" in md
    # the verdict first, failed and skipped checks before the full list
    assert md.index("**FAILED**") < md.index("## Parity") < md.index("Failed and skipped checks") < md.index("<details>")
    assert "speedup ×**: float reference p50 / artifact p50" in md


def test_the_old_hand_made_table_would_have_failed_this_check():
    broken = "| a | max|dlogit| |\n|---|---|\n| 1 | 2 |\n"
    assert table_problems(broken)


def test_under_load_is_said_in_markdown_and_console():
    report = synthetic_report()
    assert not report["timing"]["under_load"]
    report["results"][0]["load"] = {"before": {"load_1m": 5.0, "cores": 2}, "after": {"load_1m": 5.0, "cores": 2}}
    report["timing"] = timing_verdict(report["results"])
    assert report["timing"]["under_load"]
    assert "measured under load" in render_markdown(report) and "measured under load" in render_table(report)


def test_build_reports_parse(hostile_report):
    _, out, _ = hostile_report
    md = (out / "report.md").read_text()
    assert table_problems(md) == []
    for name in ("chart-accuracy-latency.svg", "chart-latency.svg", "chart-per-class.svg", "chart-sensitivity.svg"):
        assert f"]({name})" in md and (out / name).read_text().startswith("<svg")


def test_html_escapes_and_keeps_every_row_as_wide_as_its_header(tmp_path):
    from html.parser import HTMLParser

    from resnext_deploy.report import write_report

    report = synthetic_report()
    report["model"]["name"] = "<script>alert(1)</script>"
    report["gate"]["checks"][1]["reason"] = "labels do not match"  # helper contract: failed checks may carry a reason
    write_report(report, tmp_path, ["## From elsewhere", "", "<b>raw</b> | not a table", "", "![plot](gone.png)"])
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "&lt;b&gt;raw&lt;/b&gt;" in page and "gone.png" not in page
    assert "&#34;" not in page.split("<svg", 1)[0]  # no attribute rendered as an escaped string
    assert 'data-verdict="FAILED"' in page and "FAIL: labels do not match" in page
    assert "pending on device: no TensorRT here | built on the device" in page

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.row = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.row = 0
            elif tag in ("td", "th") and self.row is not None:
                self.row += 1

        def handle_endtag(self, tag):
            if tag == "tr":
                self.tables[-1].append(self.row)
                self.row = None

    t = Tables()
    t.feed(page)
    assert len(t.tables) >= 4 and all(len(set(rows)) == 1 for rows in t.tables), t.tables
    assert t.tables[0][0] == 14  # the parity table: 14 columns, max |Δlogit| one of them
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chart-accuracy-latency.svg", "chart-latency.svg", "report.html", "report.json", "report.md"]


def test_no_speedup_across_machines_for_rows_measured_on_the_device():
    """A device row's p50 over the workstation reference's would compare two machines: the cell stays empty."""
    from resnext_deploy.report.tables import speedup

    report = {"reference": "onnx-fp32", "results": [
        {"artifact": "onnx-fp32", "latency_ms": {"p50": 4.0}},
        {"artifact": "openvino-int8", "latency_ms": {"p50": 2.0}},
        {"artifact": "tensorrt-int8", "latency_ms": {"p50": 1.0}, "measured_on": "device"},
    ]}
    assert speedup(report, report["results"][1]) == 2.0
    assert speedup(report, report["results"][2]) is None
