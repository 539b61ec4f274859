"""report.html from report.json: Jinja2 with autoescaping, one self-contained file (CSS, SVG charts and PNG
thumbnails inline; no network; readable without JavaScript, which only adds sortable columns)."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence

from ..host.load import UNDER_LOAD_WARNING
from ..optional import require
from .calibration import calibration_lines
from .gallery import DEFAULT_CAP
from .tables import (
    E2E_HEAD,
    GATE_HEAD,
    PARITY,
    checks_first,
    device_lines,
    end_to_end_note,
    end_to_end_rows,
    gate_counts,
    gate_rows,
    skipped_files,
    speedup_basis,
    table_rows,
    timing_of,
)
from .verdict import headline, host, machine, verdict

TEMPLATE = "report.html.j2"
_IMAGE_LINE = re.compile(r"^\s*!\[[^\]]*\]\([^)]*\)\s*$")


def environment() -> Any:
    """The Jinja2 environment of the package's templates (report/templates/, shipped as package data)."""
    jinja2 = require("jinja2", "write report.html")
    return jinja2.Environment(loader=jinja2.PackageLoader("resnext_deploy.report", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def html_from_markdown(lines: Sequence[str]) -> str:
    """Markdown sections other modules write (fallback, sensitivity, baseline, where numbers come from) as HTML:
    markdown-it-py, CommonMark with GFM tables, raw HTML off (escaped). Image lines are dropped: their plots
    are drawn inline as charts, and the page loads nothing from disk."""
    markdown_it = require("markdown_it", "write report.html")
    md = markdown_it.MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render("\n".join(line for line in lines if not _IMAGE_LINE.match(line)))


def _gallery(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    thumbs = (report.get("gallery") or {}).get("thumbnails") or {}
    out = []
    for r in report["results"]:
        d = r.get("disagreements")
        if not d:
            continue
        entries = [{"path": i.get("path", str(i["index"])), "name": str(i.get("path", i["index"])).replace("\\", "/").rsplit("/", 1)[-1],
                    "thumbnail": thumbs.get(i.get("path", "")), "reference": i["reference"], "artifact": i["artifact"]}
                   for i in d["images"]]
        out.append({"artifact": r["artifact"], "precision": r.get("precision", ""), "count": d["count"],
                    "images": r.get("images"), "cap": d.get("cap", DEFAULT_CAP), "entries": entries})
    return out


def html_from_report(report: Dict[str, Any], extra_sections: Sequence[str] = (), charts: Sequence[Any] = ()) -> str:
    """The page. ``extra_sections``: Markdown lines derived from the report (as for report.md); ``charts``: charts.Chart."""
    from markupsafe import Markup

    execs = [(r["artifact"], (r.get("details") or {}).get("execution")) for r in report["results"]]
    d = report["dataset"]
    view = {
        "title": f"resnext-deploy report: {report['model'].get('name', '?')} on {report['target']}",
        "verdict": verdict(report),
        "headline": headline(report),
        "machine": machine(report),
        "host": host(report),
        "model": report["model"],
        "target": report["target"],
        "reference": report["reference"],
        "dataset": d,
        "validation_skipped": skipped_files(d, "validation", str),
        "calibration_skipped": skipped_files(d, "calibration", str),
        "isa": report.get("isa"),
        "timing": timing_of(report),
        "under_load_warning": UNDER_LOAD_WARNING,
        "parity_head": [c.header for c in PARITY],
        "parity_rows": table_rows(report),
        "definitions": [(c.header, c.definition) for c in PARITY[3:]],
        "device_lines": device_lines(report),
        "e2e_head": E2E_HEAD,
        "e2e_rows": end_to_end_rows(report),
        "e2e_note": end_to_end_note(report),
        "speedup_basis": speedup_basis(report),
        "gate_passed": bool(report["gate"]["passed"]),
        "gate_counts": gate_counts(report["gate"]),
        "gate_head": GATE_HEAD,
        "first_rows": gate_rows(checks_first(report["gate"])),
        "all_rows": gate_rows(report["gate"].get("checks", [])),
        "charts": [{"name": c.name, "title": c.title, "svg": Markup(c.svg)} for c in charts],
        "gallery": _gallery(report),
        "gallery_order": (report.get("gallery") or {}).get("order", ""),
        "execs": [(a, e) for a, e in execs if e],
        "calibration_html": Markup(html_from_markdown(calibration_lines(report))),
        "extra_html": Markup(html_from_markdown(extra_sections)) if extra_sections else "",
        "stages": report.get("stages") or {},
        "notes": report.get("notes") or [],
    }
    return environment().get_template(TEMPLATE).render(**view)
