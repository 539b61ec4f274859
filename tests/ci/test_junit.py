"""JUnit XML and the job summary: valid against Jenkins' schema, every check listed, failures and skips as CI shows them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from click.testing import CliRunner

from resnext_deploy.ci.junit import junit_from_report, report_checks
from resnext_deploy.ci.summary import summary_markdown
from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_GATE_FAILED, EXIT_OK
from resnext_deploy.evaluation.gate import Check


def _cases(xml_text):
    root = ET.fromstring(xml_text)
    return root, [(suite.get("name"), case) for suite in root.iter("testsuite") for case in suite.iter("testcase")]


def test_every_check_of_a_build_is_a_testcase_and_the_file_is_valid(demo_build, junit_schema):
    text = junit_from_report(demo_build.report)
    junit_schema.validate(text)
    root, cases = _cases(text)
    checks = demo_build.gate.checks
    assert len(cases) == len(checks) == int(root.get("tests")) > 0
    # one testsuite per gated artifact, named target/artifact, one testcase per check
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {f"x86-cpu/{c.artifact}" for c in checks}
    for c in checks:
        suite = suites[f"x86-cpu/{c.artifact}"]
        case = next(k for k in suite.iter("testcase") if k.get("name") == f"{c.metric} {c.op} {c.threshold:g}")
        out = case.find("system-out").text
        assert f"metric: {c.metric}" in out and f"threshold: {c.op} {c.threshold:g}" in out
        assert f"value: {c.value:.6g}" in out
        assert (case.find("failure") is None) == c.passed
    assert root.get("failures") == "0"


def test_a_failed_check_is_a_failure_whose_message_is_the_console_line(ci_builds, junit_schema, tmp_path):
    xml_path, md_path = tmp_path / "j.xml", tmp_path / "s.md"
    res = CliRunner().invoke(cli, ["report", str(ci_builds["bad"]), "--recipe", str(ci_builds["recipe"]),
                                   "--junit", str(xml_path), "--summary", str(md_path)])
    assert res.exit_code == EXIT_GATE_FAILED, res.output
    text = xml_path.read_text()
    junit_schema.validate(text)
    root, cases = _cases(text)
    report = json.loads((ci_builds["bad"] / "report.json").read_text())
    failed = [Check(**c) for c in report["gate"]["checks"] if not c["passed"]]
    assert failed and int(root.get("failures")) == len(failed) == sum(c.find("failure") is not None for _, c in cases)
    messages = {c.find("failure").get("message") for _, c in cases if c.find("failure") is not None}
    assert messages == {c.line() for c in failed}
    for line in messages:
        assert line in res.output  # the console says the same
    md = md_path.read_text()
    assert "FAILED" in md and all(f"- {line}" in md for line in messages)
    assert "| onnxruntime-int8 |" in md


def test_pending_engines_are_skipped_testcases(jetson_build, junit_schema, tmp_path):
    report = jetson_build.report
    text = junit_from_report(report)
    junit_schema.validate(text)
    root, cases = _cases(text)
    skipped = [(s, c) for s, c in cases if c.find("skipped") is not None]
    pending = [r["artifact"] for r in report["results"] if r.get("pending")]
    assert pending and {s.split("/", 1)[1] for s, _ in skipped} == set(pending)
    assert all("compile --bundle" in c.find("skipped").text for _, c in skipped)
    assert len(cases) == len(report_checks(report))
    for suite in root.iter("testsuite"):
        n_skipped = sum(c.find("skipped") is not None for c in suite.iter("testcase"))
        assert suite.get("skipped") == str(n_skipped)
    md = summary_markdown(report)
    assert f"{len(skipped)} skipped" in md and "pending on device" in md


def test_github_step_summary_is_appended_when_set(demo_build, tmp_path, monkeypatch):
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    res = CliRunner().invoke(cli, ["report", str(demo_build.out_dir), "--json"])
    assert res.exit_code == EXIT_OK, res.output
    json.loads(res.stdout)  # --json stays JSON on stdout
    text = step.read_text()
    assert text.startswith("earlier step\n") and "### resnext-deploy: `resnext_demo` on `x86-cpu`: PASSED" in text
    assert "| openvino-int8 |" in text


def test_junit_and_summary_go_with_a_gate(tmp_path):
    res = CliRunner().invoke(cli, ["compile", "--onnx", "m.onnx", "--backend", "openvino", "--precision", "int8",
                                   "--out", str(tmp_path), "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 2 and "--junit/--summary go with --bundle" in res.output


def test_build_writes_junit_and_summary_itself(ci_builds, junit_schema):
    d = ci_builds["good1"].parent
    for name in ("good1", "bad"):
        report = json.loads((ci_builds[name] / "report.json").read_text())
        text = (d / f"{name}.junit.xml").read_text()
        junit_schema.validate(text)
        root, cases = _cases(text)
        assert len(cases) == len(report["gate"]["checks"])
        assert int(root.get("failures")) == sum(not c["passed"] for c in report["gate"]["checks"])
        md = (d / f"{name}.summary.md").read_text()
        assert md == summary_markdown(report) and ("PASSED" if report["gate"]["passed"] else "FAILED") in md.splitlines()[0]


def test_summary_cells_sit_under_their_headings(demo_build):
    """Each cell is the report's own number for its heading (a column added to the console table once shifted them)."""
    report = demo_build.report
    lines = [ln for ln in summary_markdown(report).splitlines() if ln.startswith("| ")]
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    for line in lines[1:1 + len(report["results"])]:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        row = next(r for r in report["results"] if cells["artifact"].startswith(r["artifact"]))
        assert cells["top-1 %"] == f"{row['top1'] * 100:.2f}" and cells["agree %"] == f"{row['agreement'] * 100:.2f}"
        assert cells["min cos"] == f"{row['min_cosine']:.5f}"
        assert cells["speedup"].endswith("x") and cells["size"].endswith("B")
