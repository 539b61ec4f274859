"""A build against a previous one (the baseline): artifact by artifact, top-1, agreement, cosine, p50 and size.

The baseline is a build directory or its report.json with manifest.json beside it (what a CI job keeps as the
main branch's artifact). Its manifest is checked first (schema version, and the sha256 it recorded for
report.json), so an edited or re-gated report is refused rather than trusted. Latency is compared only when the
two manifests name the same CPU and the same library versions; otherwise its check is skipped with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..buildfolder.artifacts import sha256_file
from ..errors import ArtifactIntegrityError, BadInputError
from ..evaluation.gate import Check, GateResult, skipped_check
from ..buildfolder.manifest import read_manifest
from ..report import read_report

log = logging.getLogger(__name__)

#: manifest "versions" entries that do not change what a kernel costs (the OS kernel build string)
_NOT_COMPARED = ("platform",)


@dataclass
class Baseline:
    report: Dict[str, Any]
    manifest: Dict[str, Any]
    source: Path


def _paths(path: Path) -> Tuple[Path, Path]:
    if path.is_dir():
        return path / "report.json", path / "manifest.json"
    return path, path.parent / "manifest.json"


def load_baseline(path: Union[str, Path]) -> Baseline:
    """Read a baseline build (directory, or report.json with manifest.json beside it), verified by its manifest."""
    path = Path(path)
    report_path, manifest_path = _paths(path)
    if not report_path.is_file():
        raise BadInputError(f"The baseline '{path}' has no report.json. Pass a build directory (or its report.json) "
                            "made by `resnext-deploy build`.")
    if not manifest_path.is_file():
        raise BadInputError(f"The baseline '{path}' has no manifest.json beside its report.json: keep both (the manifest "
                            "vouches for the report) when storing a build as the baseline.")
    manifest = read_manifest(manifest_path)
    recorded = (manifest.get("reports") or {}).get("report.json")
    if not recorded:
        raise BadInputError(f"The baseline manifest '{manifest_path}' records no sha256 for report.json, so the report "
                            "cannot be verified. Use a build directory made by `resnext-deploy build`.")
    if sha256_file(report_path) != recorded:
        raise ArtifactIntegrityError(
            f"The baseline report '{report_path}' differs from the sha256 its manifest recorded ({recorded[:12]}...): it "
            "was edited or re-gated after the build. Store the build's own report.json and manifest.json as the baseline."
        )
    return Baseline(read_report(report_path), manifest, path)


def manifest_beside(source: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The manifest of the build a report belongs to (None for an evaluation JSON outside a build)."""
    _, manifest_path = _paths(Path(source))
    return read_manifest(manifest_path) if manifest_path.is_file() else None


def latency_comparable(old: Dict[str, Any], new: Optional[Dict[str, Any]]) -> Tuple[bool, str]:
    """Whether two builds' latencies can be compared: same CPU (model and ISA) and library versions."""
    if new is None:
        return False, "the new report has no manifest.json beside it (its CPU and versions are unknown)"
    diffs = []
    old_isa, new_isa = (old.get("isa") or {}).get("build") or {}, (new.get("isa") or {}).get("build") or {}
    for key in ("isa", "onednn_max_cpu_isa"):
        if old_isa.get(key) != new_isa.get(key):
            diffs.append(f"{key} {old_isa.get(key)} vs {new_isa.get(key)}")
    ov, nv = old.get("versions") or {}, new.get("versions") or {}
    for key in sorted(set(ov) | set(nv)):
        if key not in _NOT_COMPARED and ov.get(key) != nv.get(key):
            diffs.append(f"{key} '{ov.get(key)}' vs '{nv.get(key)}'")
    if diffs:
        return False, "not comparable: " + "; ".join(diffs) + " (baseline vs new)"
    return True, ""


_FIELDS = ("top1", "agreement", "min_cosine", "p50_ms", "size_bytes")


def _numbers(row: Dict[str, Any]) -> Dict[str, Any]:
    return {"top1": row.get("top1"), "agreement": row.get("agreement"), "min_cosine": row.get("min_cosine"),
            "p50_ms": (row.get("latency_ms") or {}).get("p50"), "size_bytes": row.get("size_bytes")}


def compare_with_baseline(report: Dict[str, Any], baseline: Baseline, thresholds: Dict[str, Any],
                          manifest: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The "vs baseline" section of ``report``: rows for every artifact, checks under the recipe's
    ``[gates.baseline]`` thresholds, and whether they passed (the CLI's exit code is 3 when they did not)."""
    old_rows = {r["artifact"]: r for r in baseline.report["results"]}
    comparable, why_not = latency_comparable(baseline.manifest, manifest)
    max_drop = float(thresholds["max_top1_drop_vs_baseline"])
    max_lat = float(thresholds["max_latency_increase_pct"])
    max_size = float(thresholds["max_size_increase_pct"])
    rows: List[Dict[str, Any]] = []
    checks: List[Check] = []
    for r in report["results"]:
        name = r["artifact"]
        old = old_rows.get(name)
        if old is None:
            rows.append({"artifact": name, "status": "not in the baseline", "new": _numbers(r), "old": None})
            continue
        if r.get("pending") or old.get("pending"):
            rows.append({"artifact": name, "status": "pending on device", "new": None, "old": None})
            why = "pending on device: no numbers to compare here"
            checks.append(skipped_check(name, "top1_drop_vs_baseline_pct", max_drop, "<=", why))
            continue
        new_n, old_n = _numbers(r), _numbers(old)
        rows.append({"artifact": name, "status": "compared", "new": new_n, "old": old_n})
        drop = (old_n["top1"] - new_n["top1"]) * 100.0
        checks.append(Check(name, "top1_drop_vs_baseline_pct", drop, max_drop, "<=", drop <= max_drop + 1e-9))
        if max_lat > 0:
            if not comparable:
                checks.append(skipped_check(name, "latency_increase_vs_baseline_pct", max_lat, "<=", why_not))
            elif old_n["p50_ms"] and new_n["p50_ms"]:
                inc = (new_n["p50_ms"] / old_n["p50_ms"] - 1.0) * 100.0
                checks.append(Check(name, "latency_increase_vs_baseline_pct", inc, max_lat, "<=", inc <= max_lat))
        if max_size > 0 and old_n["size_bytes"] and new_n["size_bytes"] is not None:
            inc = (new_n["size_bytes"] / old_n["size_bytes"] - 1.0) * 100.0
            checks.append(Check(name, "size_increase_vs_baseline_pct", inc, max_size, "<=", inc <= max_size + 1e-9))
    gone = [n for n in old_rows if n not in {r["artifact"] for r in report["results"]}]
    passed = all(c.passed for c in checks)
    log.info("vs baseline %s: %d checks, %s", baseline.source, len(checks), "passed" if passed else "FAILED")
    return {
        "source": str(baseline.source),
        "created": baseline.manifest.get("created"),
        "target": baseline.report.get("target"),
        "model_sha256": (baseline.report.get("model") or {}).get("source_sha256"),
        "latency_comparable": comparable,
        "latency_not_comparable_because": why_not,
        "thresholds": {k: thresholds[k] for k in ("max_top1_drop_vs_baseline", "max_latency_increase_pct", "max_size_increase_pct")},
        "rows": rows,
        "missing_from_new": gone,
        "checks": [asdict(c) for c in checks],
        "passed": passed,
    }


def baseline_passed(report: Dict[str, Any]) -> bool:
    """True when the report has no baseline section or its checks passed."""
    return bool((report.get("baseline") or {}).get("passed", True))


def baseline_summary(section: Dict[str, Any]) -> str:
    """One console line, like the gate's: ``vs baseline PASSED (12 checks)`` or the failures."""
    gate = GateResult(section["passed"], [Check(**c) for c in section["checks"]])
    return "vs baseline " + gate.summary()[len("gate "):]


def _pct(new: Optional[float], old: Optional[float]) -> str:
    return f"{(new / old - 1.0) * 100.0:+.1f}%" if new is not None and old else ""


def comparison_table(section: Dict[str, Any]) -> List[str]:
    """The rows as a Markdown table: old -> new and the change, per artifact."""
    lines = ["| artifact | top-1 % (base -> new) | agree % | min cos | p50 ms | size |", "|---|---|---|---|---|---|"]
    for row in section["rows"]:
        o, n = row.get("old"), row.get("new")
        if row["status"] != "compared":
            lines.append(f"| {row['artifact']} | {row['status']} | | | | |")
            continue
        top1 = f"{o['top1'] * 100:.2f} -> {n['top1'] * 100:.2f} ({(n['top1'] - o['top1']) * 100:+.2f} pt)"
        agree = f"{o['agreement'] * 100:.2f} -> {n['agreement'] * 100:.2f}"
        cos = f"{o['min_cosine']:.4f} -> {n['min_cosine']:.4f}"
        p50 = f"{o['p50_ms']:.3f} -> {n['p50_ms']:.3f} ({_pct(n['p50_ms'], o['p50_ms'])})"
        size = f"{_pct(n['size_bytes'], o['size_bytes'])}"
        lines.append(f"| {row['artifact']} | {top1} | {agree} | {cos} | {p50} | {size} |")
    return lines


def markdown_section(section: Dict[str, Any]) -> List[str]:
    """The "vs baseline" section of report.md."""
    verdict = "PASSED" if section["passed"] else "FAILED"
    lines = ["## vs baseline", "", f"**{verdict}** against `{section['source']}` (built {section.get('created')}, "
             f"target {section.get('target')})", ""]
    lines += comparison_table(section)
    if not section["latency_comparable"]:
        lines += ["", f"Latency is not compared: {section['latency_not_comparable_because']}."]
    if section["missing_from_new"]:
        lines += ["", "In the baseline but not in this build: " + ", ".join(f"`{n}`" for n in section["missing_from_new"])]
    lines += ["", "| artifact | metric | value | threshold | result |", "|---|---|---|---|---|"]
    for c in (Check(**d) for d in section["checks"]):
        value, result = c.value_text(), c.result_text()
        lines.append(f"| {c.artifact} | {c.metric} | {value} | {c.op} {c.threshold:g} | {result} |")
    return lines
