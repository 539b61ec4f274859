"""The top of the report: the verdict, the machine, and the one sentence that matters."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .tables import reference_row, speedup

PASSED, FAILED, PENDING = "PASSED", "FAILED", "PENDING ON DEVICE"


def verdict(report: Dict[str, Any]) -> str:
    """FAILED when a check failed; PENDING ON DEVICE when all passed but some artifacts are measured on the device
    (exit code 7); else PASSED. A comparison with a baseline that failed fails the verdict too."""
    if not report["gate"]["passed"] or (report.get("baseline") or {}).get("passed") is False:
        return FAILED
    if any(r.get("pending") for r in report["results"]):
        return PENDING
    return PASSED


def machine(report: Dict[str, Any]) -> str:
    """'AMD Ryzen 7 5800X (ISA avx2), 2 cores': the CPU latency was measured on (host(): on which host)."""
    parts: List[str] = []
    b = (report.get("isa") or {}).get("build") or {}
    lat = next(((r.get("details") or {}).get("measured", {}).get("latency") for r in report["results"]
                if (r.get("details") or {}).get("measured", {}).get("latency")), None) or {}
    cpu = b.get("model") or lat.get("cpu")
    if cpu:
        parts.append(f"{cpu}" + (f" (ISA {b['isa']})" if b.get("isa") else ""))
    load = next(((r.get("load") or {}).get("before") for r in report["results"] if r.get("load")), None) or {}
    if load.get("cores"):
        parts.append(f"{load['cores']} cores")
    return ", ".join(parts) or "not recorded"


def host(report: Dict[str, Any]) -> Optional[str]:
    """The host name latency was measured on (a name, not a word: render it as code)."""
    for r in report["results"]:
        h = ((r.get("details") or {}).get("measured") or {}).get("latency", {}).get("host")
        if h:
            return str(h)
    return None


def _best_quantized(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The INT8 artifact to headline: the fastest whose checks all pass, else the fastest measured one."""
    failed = {c["artifact"] for c in report["gate"].get("checks", []) if not c.get("passed", True)}
    rows = [r for r in report["results"] if r.get("precision") == "int8" and not r.get("pending") and r.get("latency_ms")]
    if not rows:
        return None
    ok = [r for r in rows if r["artifact"] not in failed] or rows
    return min(ok, key=lambda r: r["latency_ms"]["p50"])


def headline(report: Dict[str, Any]) -> str:
    """'openvino-int8: 3.4x faster than float, top-1 -0.0 pt, 97.2 % agreement' (or why there is no such line)."""
    best, ref = _best_quantized(report), reference_row(report)
    if best is None or ref is None:
        pending = [r["artifact"] for r in report["results"] if r.get("pending")]
        return (f"No INT8 artifact measured here; pending on the device: {', '.join(pending)}." if pending
                else "No INT8 artifact in this build.")
    s = speedup(report, best)
    speed = (f"{s:.1f}x faster than float" if s >= 1 else f"{1 / s:.1f}x slower than float") if s else "speed not measured"
    return (f"{best['artifact']}: {speed}, top-1 {(best['top1'] - ref['top1']) * 100:+.1f} pt, "
            f"{best['agreement'] * 100:.1f} % agreement")
