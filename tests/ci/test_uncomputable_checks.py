"""A check that cannot be computed is a failed check with its reason in report.json, report.md and the JUnit file."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

from resnext_deploy.ci.junit import junit_from_report
from resnext_deploy.evaluation.gate import apply_gates
from resnext_deploy.recipes import DEFAULTS
from resnext_deploy.report import make_report, write_report


def test_a_zero_float_top1_fails_top1_ratio_visibly_everywhere(demo_build, junit_schema, tmp_path):
    base = demo_build.report
    results = copy.deepcopy(base["results"])
    for r in results:  # what a validation set whose labels do not match the model gives: nothing right
        r["top1"] = 0.0
    gate = apply_gates(results, base["reference"], DEFAULTS["gates"])
    report = make_report(model=base["model"], target=base["target"], reference=base["reference"], results=results,
                         gate=gate, dataset=base["dataset"])
    write_report(report, tmp_path)
    assert not gate.passed
    ratio = [c for c in gate.failures() if c.metric == "top1_ratio"]
    assert ratio and len(ratio) == len({c.artifact for c in gate.checks})  # one per gated artifact, none dropped

    saved = json.loads((tmp_path / "report.json").read_text())
    rows = [c for c in saved["gate"]["checks"] if c["metric"] == "top1_ratio"]
    assert saved["gate"]["passed"] is False and len(rows) == len(ratio)
    assert all(c["value"] is None and c["passed"] is False and "float reference's top-1 is 0" in c["reason"] for c in rows)

    md = (tmp_path / "report.md").read_text()
    assert "**FAILED**" in md
    for c in ratio:
        assert f"| {c.artifact} | top1_ratio | n/a | >= 0.99 | FAIL: the float reference's top-1 is 0" in md

    text = junit_from_report(saved)
    junit_schema.validate(text)
    root = ET.fromstring(text)
    cases = [k for k in root.iter("testcase") if k.get("name") == "top1_ratio >= 0.99"]
    assert len(cases) == len(ratio)
    for k in cases:
        failure = k.find("failure")
        assert failure is not None and "could not be computed: the float reference's top-1 is 0" in failure.get("message")
        assert "reason: the float reference's top-1 is 0" in k.find("system-out").text
    assert int(root.get("failures")) == len(gate.failures())
