"""JUnit XML from a report: one testsuite per artifact, one testcase per gate check.

The file validates against the JUnit schema Jenkins publishes (junit-4.xsd, the one GitLab's and Azure's readers
accept too): ``<skipped>`` carries its reason as text (that schema allows no attributes on it), a testcase's
metric, value and threshold are in its name and ``<system-out>``, and a failure's message is the console line.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from typing import Any, Dict, List

from ..evaluation.gate import Check


def report_checks(report: Dict[str, Any]) -> List[Check]:
    """Every check of a report: the gate's, then those against the baseline (if it was compared with one)."""
    checks = [Check(**c) for c in report["gate"]["checks"]]
    baseline = report.get("baseline") or {}
    return checks + [Check(**c) for c in baseline.get("checks", [])]


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def junit_from_report(report: Dict[str, Any]) -> str:
    """The report's checks as a JUnit XML document (a string)."""
    model = (report.get("model") or {}).get("name", "model")
    target = report.get("target", "")
    rows = {r["artifact"]: r for r in report.get("results", [])}
    checks = report_checks(report)
    order = [a for a in rows if any(c.artifact == a for c in checks)]
    order += sorted({c.artifact for c in checks} - set(order))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", name=f"resnext-deploy {model} on {target}", tests=str(len(checks)),
                      failures=str(sum(not c.passed for c in checks)), errors="0", time="0")
    for artifact in order:
        mine = [c for c in checks if c.artifact == artifact]
        row = rows.get(artifact, {})
        suite = ET.SubElement(root, "testsuite", name=f"{target}/{artifact}", tests=str(len(mine)),
                              failures=str(sum(not c.passed for c in mine)), errors="0",
                              skipped=str(sum(bool(c.skipped) for c in mine)), time="0", timestamp=stamp,
                              package=f"resnext-deploy.{model}.{target}")
        props = ET.SubElement(suite, "properties")
        for name, value in (("model", model), ("target", target), ("artifact", artifact),
                            ("backend", row.get("backend", "")), ("precision", row.get("precision", ""))):
            ET.SubElement(props, "property", name=name, value=str(value))
        for c in mine:
            case = ET.SubElement(suite, "testcase", name=f"{c.metric} {c.op} {c.threshold:g}",
                                 classname=f"resnext-deploy.{model}.{target}.{artifact}", time="0")
            if c.skipped:
                ET.SubElement(case, "skipped").text = c.skipped
            elif not c.passed:
                failure = ET.SubElement(case, "failure", message=c.line(), type="gate")
                failure.text = (f"{c.metric} could not be computed: {c.reason}, needs {c.op} {c.threshold:g}"
                                if c.value is None else f"{c.metric} = {_fmt(c.value)}, needs {c.op} {c.threshold:g}")
            ET.SubElement(case, "system-out").text = (
                f"metric: {c.metric}\nvalue: {_fmt(c.value) or 'not measured'}\nthreshold: {c.op} {c.threshold:g}\n"
                + (f"reason: {c.reason}\n" if c.reason else "")
            )
    indent = getattr(ET, "indent", None)  # Python 3.9+; on 3.8 (JetPack 5) the file is one line, equally valid
    if indent is not None:
        indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
