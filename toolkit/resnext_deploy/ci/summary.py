"""The job summary: the parity table and the gate as compact Markdown (GitHub's step summary, a merge request note)."""

from __future__ import annotations

from typing import Any, Dict, List

from ..evaluation.gate import GateResult
from ..host.load import UNDER_LOAD_WARNING
from ..report import COLUMNS, md_table, table_rows
from ..report.tables import timing_of
from .baseline import baseline_passed, comparison_table
from .junit import report_checks

#: (heading here, report.COLUMNS name): the columns a reviewer reads in a job summary, picked by name so a column
#: added to the console table cannot shift them
_COLUMNS = (("artifact", "artifact"), ("backend", "backend"), ("prec", "prec"), ("top-1 %", "top-1"),
            ("agree %", "agree"), ("agree conf %", "agree conf"), ("min cos", "min cos"), ("p50 ms", "p50 ms"),
            ("speedup", "speedup"), ("size", "size"))
_PICK = tuple(COLUMNS.index(name) for _, name in _COLUMNS)


def summary_markdown(report: Dict[str, Any]) -> str:
    """Parity table, gate verdict with every failed or skipped check, and the comparison with a baseline if any."""
    model = (report.get("model") or {}).get("name", "model")
    gate = GateResult.from_dict(report["gate"])
    ok = gate.passed and baseline_passed(report)
    checks = report_checks(report)
    failed = [c for c in checks if not c.passed]
    skipped = [c for c in checks if c.skipped]
    lines: List[str] = [
        f"### resnext-deploy: `{model}` on `{report.get('target')}`: {'PASSED' if ok else 'FAILED'}",
        "",
        f"{len(checks) - len(failed) - len(skipped)} checks passed, {len(failed)} failed, {len(skipped)} skipped.",
        "",
    ]
    lines += md_table([head for head, _ in _COLUMNS], [[row[i] if i < len(row) else "" for i in _PICK] for row in table_rows(report)])
    timing = timing_of(report)
    if timing["under_load"]:
        lines += ["", f"**{UNDER_LOAD_WARNING}** ({'; '.join(timing['reasons'][:2])})."]
    if failed:
        lines += ["", "**Failed:**", ""] + [f"- {c.line()}" for c in failed]
    if skipped:
        lines += ["", f"<details><summary>{len(skipped)} skipped</summary>", ""]
        lines += [f"- {c.line()}" for c in skipped] + ["", "</details>"]
    section = report.get("baseline")
    if section:
        lines += ["", f"**vs baseline** `{section['source']}` (built {section.get('created')}): "
                      f"{'PASSED' if section['passed'] else 'FAILED'}", ""]
        lines += comparison_table(section)
        if not section["latency_comparable"]:
            lines += ["", f"Latency not compared: {section['latency_not_comparable_because']}."]
    return "\n".join(lines) + "\n"
