"""The report's tables as data: header cells and rows of strings, shared by the console, report.md, report.html,
the CI job summary (ci/summary.py) and the bench (bench/render.py). Rendering (padding, escaping, tags) is
the caller's: a table here is never a string."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from ..evaluation.evaluate import CONFIDENT_MARGIN
from ..evaluation.gate import GateResult


class Column(NamedTuple):
    name: str  # the console's short name (COLUMNS), stable: ci/summary.py picks columns by it
    header: str  # with its unit, for report.md / report.html
    definition: str  # said once, under the table


#: the parity table; ``speedup`` is defined against the float reference's batch-1 p50
PARITY: Sequence[Column] = (
    Column("artifact", "artifact", "the file the build made ((ref): the float reference every other row is compared with)"),
    Column("backend", "backend", "the runtime that ran it"),
    Column("prec", "precision", "the precision of its weights and compute"),
    Column("top-1", "top-1 %", "share of validation images whose most probable class is the label"),
    Column("top-5", "top-5 %", "share whose label is among the 5 most probable classes"),
    Column("agree", "agree %", "share of images whose top-1 class equals the float reference's"),
    Column("agree conf", "agree conf %", "agreement on the images where the reference's top-1 softmax probability "
           f"exceeds the runner-up's by >= {CONFIDENT_MARGIN:g}"),
    Column("max|dlogit|", "max |Δlogit|", "largest absolute difference of any logit from the reference's, over all images"),
    Column("min cos", "min cos", "lowest per-image cosine similarity of the logits to the reference's"),
    Column("p50 ms", "p50 ms", "median batch-1 latency after warm-up, in milliseconds"),
    Column("p99 ms", "p99 ms", "99th percentile of the batch-1 latency"),
    Column("img/s", "img/s", "throughput in images per second at the throughput batch size"),
    Column("speedup", "speedup ×", "float reference p50 / artifact p50 (above 1: faster than the reference)"),
    Column("size", "size", "bytes on disk (MB = 10^6 bytes)"),
)
COLUMNS = [c.name for c in PARITY]


def fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def reference_row(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    return next((r for r in report["results"] if r["artifact"] == report["reference"]), None)


def speedup(report: Dict[str, Any], row: Dict[str, Any]) -> Optional[float]:
    """float reference p50 / this row's p50 (batch 1); None when either is missing, or when the row was measured on
    the device (ci/device.py) and the reference on the workstation: a ratio across two machines means nothing."""
    if row.get("measured_on") == "device" and (reference_row(report) or {}).get("measured_on") != "device":
        return None
    ref = reference_row(report)
    ref_p50 = ((ref or {}).get("latency_ms") or {}).get("p50")
    p50 = (row.get("latency_ms") or {}).get("p50")
    return ref_p50 / p50 if ref_p50 and p50 else None


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    """The parity table: one row per artifact, as many cells as COLUMNS, speedup against the reference's p50."""
    rows = []
    for r in report["results"]:
        if r.get("pending"):
            why = "pending on device" + (f": {r['reason']}" if r.get("reason") else "")
            rows.append([r["artifact"], r.get("backend", ""), r.get("precision", ""), why] + [""] * (len(COLUMNS) - 4))
            continue
        lat = r.get("latency_ms") or {}
        s = speedup(report, r)
        rows.append([
            r["artifact"] + (" (ref)" if r["artifact"] == report["reference"] else ""),
            r["backend"],
            r["precision"],
            f"{r['top1'] * 100:.2f}",
            f"{r['top5'] * 100:.2f}",
            f"{r['agreement'] * 100:.2f}",
            # older reports lack it
            f"{r['agreement_confident'] * 100:.2f}" if r.get("agreement_confident") is not None else "",
            f"{r['max_abs_logit_diff']:.3g}",
            f"{r['min_cosine']:.5f}",
            f"{lat['p50']:.2f}" if lat.get("p50") is not None else "",
            f"{lat['p99']:.2f}" if lat.get("p99") is not None else "",
            f"{r['throughput_ips']:.0f}" if r.get("throughput_ips") else "",
            f"{s:.2f}x" if s else "",
            fmt_size(r["size_bytes"]) if r.get("size_bytes") is not None else "",
        ])
    return rows


def timing_of(report: Dict[str, Any]) -> Dict[str, Any]:
    """The report's ``timing`` verdict; judged from its rows when it has none (an evaluation JSON, an older report)."""
    from ..host.load import timing_verdict

    return report.get("timing") or timing_verdict(report.get("results", []))


def console_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 3) -> List[str]:
    """Padded columns: the first ``left`` left-aligned, the rest right-aligned (numbers)."""
    rows = [list(head)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    line = lambda row: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]


def render_table(report: Dict[str, Any], with_gate: bool = True) -> str:
    """The console's parity table (and the gate's one-line summary, and the timing warning when there is one)."""
    from ..host.load import UNDER_LOAD_WARNING

    out = console_table(COLUMNS, table_rows(report))
    timing = timing_of(report)
    if timing.get("under_load"):
        out += ["", f"WARNING: {UNDER_LOAD_WARNING} ({'; '.join(timing['reasons'][:3])}"
                + (f"; {len(timing['reasons']) - 3} more in report.json)" if len(timing["reasons"]) > 3 else ")")]
    if with_gate:
        out += ["", GateResult.from_dict(report["gate"]).summary()]
    return "\n".join(out)


GATE_HEAD = ["artifact", "check", "value", "threshold", "result"]


def gate_rows(checks: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """One row per check (report.json's dicts, so keys other branches add render too): failed checks say FAIL
    (with their ``reason`` when they carry one), skipped ones why."""
    rows = []
    for c in checks:
        if c.get("skipped"):
            value, result = "", f"skipped: {c['skipped']}"
        else:
            value = "n/a" if c.get("value") is None else f"{c['value']:.4g}"  # a check that could not be computed
            result = "pass" if c.get("passed") else "FAIL" + (f": {c['reason']}" if c.get("reason") else "")
        rows.append([c.get("artifact", ""), c.get("metric", ""), value, f"{c.get('op', '')} {c.get('threshold', 0):g}", result])
    return rows


def checks_first(gate: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Failed checks, then skipped ones: what a reader of a failed gate needs first."""
    checks = gate.get("checks", [])
    return [c for c in checks if not c.get("passed")] + [c for c in checks if c.get("passed") and c.get("skipped")]


def gate_counts(gate: Dict[str, Any]) -> Dict[str, int]:
    checks = gate.get("checks", [])
    return {"checks": len(checks), "failed": sum(not c.get("passed") for c in checks),
            "skipped": sum(bool(c.get("skipped")) for c in checks)}


E2E_HEAD = ["artifact", "e2e p50 ms", "e2e p99 ms", "e2e img/s", "model-only p50 ms", "model-only img/s",
            "e2e / model-only img/s", "batch-1 ms per stage"]


def end_to_end_rows(report: Dict[str, Any]) -> List[List[str]]:
    """Image file to label through the runtime (runtime/endtoend.py), beside the row's model-only numbers."""
    rows = []
    for r in report["results"]:
        e = r.get("end_to_end")
        if not isinstance(e, dict):
            continue
        f = lambda d, k, spec: format(d[k], spec) if isinstance(d.get(k), (int, float)) else ""  # noqa: E731
        lat, ips = r.get("latency_ms") or {}, r.get("throughput_ips")
        ratio = e["images_per_s"] / ips if isinstance(e.get("images_per_s"), (int, float)) and ips else None
        stages = ", ".join(f"{k} {v:.2f}" for k, v in (e.get("stages_ms") or {}).items())
        rows.append([r["artifact"], f(e, "p50_ms", ".2f"), f(e, "p99_ms", ".2f"), f(e, "images_per_s", ".1f"),
                     f(lat, "p50", ".2f"), "" if ips is None else f"{ips:.1f}", "" if ratio is None else f"{ratio:.2f}", stages])
    return rows


def end_to_end_note(report: Dict[str, Any]) -> str:
    """What the end-to-end rows measured: the files, their sizes, the shortcut, batch and threads."""
    e = next((r["end_to_end"] for r in report["results"] if isinstance(r.get("end_to_end"), dict)), None)
    if not e:
        return ""
    sizes = ", ".join(f"{k} ({v})" for k, v in (e.get("source_sizes") or {}).items())
    return (f"The runtime's own path (decode, resize, normalise, infer, softmax/top-k) on {e.get('images')} validation "
            f"files of sizes {sizes}; preprocessing shortcut `{e.get('preprocess_shortcut', 'none')}`. Batch 1: one file "
            f"at a time; img/s: all files, batch {e.get('batch')}, {e.get('workers')} preprocessing threads ahead of inference.")


def speedup_basis(report: Dict[str, Any]) -> str:
    """What the speedup column divides by, and the float each row runs at (bf16 rows: OpenVINO's CPU default)."""
    line = f"speedup: the batch-1 p50 of `{report['reference']}` (FP32, f32 arithmetic) divided by the artifact's."
    bf = next((r for r in report["results"] if r.get("precision") == "bf16" and r.get("latency_ms")), None)
    if bf:
        vs = [f"`{r['artifact']}` {bf['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x" for r in report["results"]
              if r.get("precision") == "int8" and r.get("latency_ms")]
        line += (f" `{bf['artifact']}` is the FP32 IR run with the bf16 inference hint, OpenVINO's default float on CPUs "
                 "with AMX or AVX512-BF16; its speedup is against the f32 reference too."
                 + (f" INT8 speedup against it (its p50 / theirs): {', '.join(vs)}." if vs else ""))
    return line


def device_lines(report: Dict[str, Any]) -> List[str]:
    """'tensorrt-int8: measured on the device (name: Orin NX, jetpack: 6.2)' for rows merged from a device."""
    out = []
    for r in report["results"]:
        d = r.get("device")
        if d:
            desc = ", ".join(f"{k}: {v}" for k, v in d.items() if not isinstance(v, (dict, list))) if isinstance(d, dict) else str(d)
            out.append(f"{r['artifact']}: measured on the device ({desc})")
    return out


def class_folders(d: Dict[str, Any]) -> str:
    """', 3 class folders matched by name to the labels from the model' (reports before it was recorded: '')."""
    classes = d.get("validation_classes")
    if not classes:
        return ""
    return (f", {len(classes)} class folder{'s' if len(classes) != 1 else ''} matched by name to the labels from "
            f"{d.get('labels_from') or 'the model'}")


def skipped_files(d: Dict[str, Any], which: str, code: Any = "`{}`".format) -> str:
    """' (2 files skipped: `a.jpg` (truncated), `b.txt` (not an image))': the first five; report.json has them all.
    ``code`` formats a file name (Markdown's backticks by default)."""
    n, files = d.get(f"{which}_skipped"), d.get(f"{which}_skipped_files") or []
    if not n:
        return ""
    shown = ", ".join(f"{code(Path(f['path']).name)} ({f['reason']})" for f in files[:5])
    more = f" and {n - 5} more, listed in report.json" if n > 5 else ""
    return f" ({n} file{'s' if n != 1 else ''} skipped{': ' + shown if shown else ''}{more})"
