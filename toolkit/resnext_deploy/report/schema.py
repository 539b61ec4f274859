"""Stage `report`: report.json (versioned schema) and writing the report files from it.

report.md and report.html are rebuilt from report.json alone (``resnext-deploy report DIR --out ...``
regenerates them from any past build): everything they show, the gallery's thumbnails included, is in it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..buildfolder.artifacts import atomic_file
from ..errors import BadInputError
from ..evaluation.gate import GateResult
from ..host.load import UNDER_LOAD_WARNING, timing_verdict

log = logging.getLogger(__name__)

REPORT_SCHEMA = "resnext-deploy/report"
REPORT_SCHEMA_VERSION = 1


def make_report(
    *,
    model: Dict[str, Any],
    target: str,
    reference: str,
    results: List[Dict[str, Any]],
    gate: GateResult,
    dataset: Dict[str, Any],
    stages: Optional[Dict[str, Any]] = None,
    notes: Optional[List[str]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    report = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "model": model,
        "target": target,
        "reference": reference,
        "dataset": dataset,
        "results": results,
        "gate": gate.to_dict(),
        "stages": stages or {},
        "notes": notes or [],
        # was the machine busy while latency was timed (host/load.py)? Then the report says so
        "timing": timing_verdict(results),
    }
    report.update(extra or {})
    return report


def read_report(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"Cannot read report '{path}': {exc}. Pass a build directory or its report.json.") from exc
    if data.get("schema") != REPORT_SCHEMA or data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise BadInputError(
            f"'{path}' is not a report of schema {REPORT_SCHEMA} v{REPORT_SCHEMA_VERSION} "
            f"(found {data.get('schema')} v{data.get('schema_version')}). Rebuild with this version."
        )
    return data


def _missing(*modules: str) -> List[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def write_report(report: Dict[str, Any], out_dir: Union[str, Path], extra_sections: Sequence[str] = (),
                 html: Optional[bool] = None) -> List[Path]:
    """Write report.json, the charts (SVG), report.md and report.html into ``out_dir`` (each atomically); returns
    the paths. ``extra_sections``: Markdown lines the caller derives from the report (fallback, sensitivity, ...).

    ``html``: True needs matplotlib, Jinja2 and markdown-it-py (the build extra); None (default) writes the charts
    and report.html when they are installed and says so when not (a device with only the runtime writes
    report.json and report.md); False writes report.json and report.md only.
    """
    out_dir = Path(out_dir)
    missing = _missing("matplotlib", "jinja2", "markdown_it") if html is not False else []
    if html is None and missing:
        log.warning("report.html and the charts not written: %s not installed (pip install 'resnext-deploy[build]')",
                    ", ".join(missing))
    pages = html is True or (html is None and not missing)
    charts: List[Any] = []
    if pages:
        from .charts import charts_from_report

        t = time.perf_counter()
        charts = charts_from_report(report)
        # what the charts cost this report (matplotlib's import included): recorded beside the build's stages
        report.setdefault("stages", {})["report_charts"] = time.perf_counter() - t
        log.info("report: %d charts in %.2f s", len(charts), report["stages"]["report_charts"])
    if report.get("timing", {}).get("under_load"):
        log.info("%s: %s", UNDER_LOAD_WARNING, "; ".join(report["timing"]["reasons"][:3]))
    from .markdown import render_markdown

    files = [("report.json", json.dumps(report, indent=2, sort_keys=False))] + [(c.name, c.svg) for c in charts]
    files.append(("report.md", render_markdown(report, extra_sections, charts)))
    if pages:
        from .html import html_from_report

        files.append(("report.html", html_from_report(report, extra_sections, charts)))
    paths = []
    for name, text in files:
        with atomic_file(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8", errors="backslashreplace")  # a name that is not UTF-8: escaped
        paths.append(out_dir / name)
    return paths
