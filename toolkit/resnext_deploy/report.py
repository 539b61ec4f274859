"""Stage `report`: report.json (versioned schema), report.md, and the console parity table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .artifacts import atomic_file
from .errors import BadInputError
from .evaluate import CONFIDENT_MARGIN
from .gate import GateResult

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


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


COLUMNS = ["artifact", "backend", "prec", "top-1", "top-5", "agree", "agree conf", "max|dlogit|", "min cos", "p50 ms", "p99 ms", "img/s", "speedup", "size"]


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    """The parity table: one row per artifact, speedup against the reference's batch-1 p50."""
    ref = next((r for r in report["results"] if r["artifact"] == report["reference"]), None)
    ref_p50 = ref["latency_ms"]["p50"] if ref and ref.get("latency_ms") else None
    rows = []
    for r in report["results"]:
        if r.get("pending"):
            rows.append([r["artifact"], r["backend"], r["precision"]] + ["pending on device"] + [""] * (len(COLUMNS) - 4))
            continue
        p50 = r["latency_ms"]["p50"]
        rows.append([
            r["artifact"] + (" (ref)" if r["artifact"] == report["reference"] else ""),
            r["backend"],
            r["precision"],
            f"{r['top1'] * 100:.2f}",
            f"{r['top5'] * 100:.2f}",
            f"{r['agreement'] * 100:.2f}",
            # agreement on the images the float model is confident about (evaluate.CONFIDENT_MARGIN); older reports lack it
            f"{r['agreement_confident'] * 100:.2f}" if r.get("agreement_confident") is not None else "",
            f"{r['max_abs_logit_diff']:.3g}",
            f"{r['min_cosine']:.5f}",
            f"{p50:.2f}",
            f"{r['latency_ms']['p99']:.2f}",
            f"{r['throughput_ips']:.0f}",
            f"{ref_p50 / p50:.2f}x" if ref_p50 else "",
            _fmt_size(r["size_bytes"]),
        ])
    return rows


def render_table(report: Dict[str, Any], with_gate: bool = True) -> str:
    rows = [COLUMNS] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    line = lambda row: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    out = [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    if with_gate:
        out += ["", GateResult.from_dict(report["gate"]).summary()]
    return "\n".join(out)


def _skipped(d: Dict[str, Any], which: str) -> str:
    """' (2 files skipped: a.jpg (truncated), b.txt (not an image))': the first five; report.json has them all."""
    n, files = d.get(f"{which}_skipped"), d.get(f"{which}_skipped_files") or []
    if not n:
        return ""
    shown = ", ".join(f"`{Path(f['path']).name}` ({f['reason']})" for f in files[:5])
    more = f" and {n - 5} more, listed in report.json" if n > 5 else ""
    return f" ({n} file{'s' if n != 1 else ''} skipped{': ' + shown if shown else ''}{more})"


def _confident(report: Dict[str, Any]) -> str:
    """'; agree conf: on the 431 images where the reference's softmax margin is >= 0.2'."""
    ref = next((r for r in report["results"] if r["artifact"] == report["reference"]), None)
    if not ref or ref.get("confident_images") is None:
        return ""
    return (f"; agree conf: agreement on the {ref['confident_images']} of {ref['images']} images where the reference's "
            f"top-1 softmax probability exceeds the runner-up's by >= {CONFIDENT_MARGIN:g}")


def _speedup_basis(report: Dict[str, Any]) -> List[str]:
    """What the speedup column divides by, and the float each row runs at (bf16 rows: OpenVINO's CPU default)."""
    floats = [r for r in report["results"] if r.get("precision") == "bf16"]
    line = f"speedup: the batch-1 p50 of `{report['reference']}` (FP32, f32 arithmetic) divided by the artifact's."
    if floats:
        bf = floats[0]
        vs = [f"`{r['artifact']}` {bf['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x" for r in report["results"]
              if r.get("precision") == "int8" and r.get("latency_ms")]
        line += (f" `{bf['artifact']}` is the FP32 IR run with the bf16 inference hint, OpenVINO's default float on CPUs "
                 "with AMX or AVX512-BF16; its speedup is against the f32 reference too."
                 + (f" INT8 speedup against it (its p50 / theirs): {', '.join(vs)}." if vs else ""))
    return ["", line]


def end_to_end_lines(report: Dict[str, Any]) -> List[str]:
    """The end-to-end table: file to label through the runtime (runtime/endtoend.py) beside model-only numbers."""
    rows = [r for r in report["results"] if (r.get("end_to_end") or {}).get("p50_ms") is not None]
    if not rows:
        return []
    e0 = rows[0]["end_to_end"]
    sizes = ", ".join(f"{k} ({v})" for k, v in e0.get("source_sizes", {}).items())
    lines = ["", "## End to end (image file to label)", "",
             f"The runtime's own path (decode, resize, normalise, infer, softmax/top-k) on {e0['images']} validation "
             f"files of sizes {sizes}; preprocessing shortcut `{e0.get('preprocess_shortcut', 'none')}`. Batch 1: one file "
             f"at a time; img/s: all files, batch {e0['batch']}, {e0['workers']} preprocessing threads ahead of inference.",
             "", "| artifact | e2e p50 ms | e2e p99 ms | e2e img/s | model-only p50 ms | model-only img/s | e2e / model-only img/s | batch-1 ms per stage |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["end_to_end"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in e.get("stages_ms", {}).items())
        ratio = e["images_per_s"] / r["throughput_ips"] if r.get("throughput_ips") else None
        lines.append(f"| {r['artifact']} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {e['images_per_s']:.1f} | "
                     f"{r['latency_ms']['p50']:.2f} | {r['throughput_ips']:.1f} | {'' if ratio is None else f'{ratio:.2f}'} | {stages} |")
    return lines


def render_markdown(report: Dict[str, Any], extra_sections: Sequence[str] = ()) -> str:
    """The report as Markdown; ``extra_sections`` (Markdown lines from the caller, e.g. the accuracy fallback's) go
    after the gate and what the backend executes."""
    m, d = report["model"], report["dataset"]
    lines = [
        f"# resnext-deploy report: {m.get('name', '?')} on {report['target']}",
        "",
        f"- model: `{m.get('name')}` ({m.get('arch') or 'ONNX'}, {m.get('num_classes')} classes), source `{m.get('source')}`",
        f"- validation: {d.get('validation_images')} images from `{d.get('validation')}`"
        + _skipped(d, "validation"),
        f"- calibration: {d.get('calibration_images')} images from `{d.get('calibration')}`, method {d.get('calibration_method')}, seed {d.get('calibration_seed')}"
        + _skipped(d, "calibration"),
        f"- reference (float model): `{report['reference']}`; agreement and logit error are measured against it"
        + _confident(report),
        f"- latency: batch 1, percentiles after warm-up; throughput at batch {d.get('throughput_batch')}",
    ]
    isa = report.get("isa")
    if isa:
        b = isa.get("build", {})
        lines.append(
            f"- CPU: measured on {b.get('model')} (ISA {b.get('isa')}"
            + (f", OpenVINO capped at {b['onednn_max_cpu_isa']}" if b.get("onednn_max_cpu_isa") else "")
            + f"); INT8 made for `{isa.get('target')}` CPUs, {isa.get('weight_range')} weights"
            + (" (INT8 accuracy measured with the build machine's kernels: see Notes)" if isa.get("kernels_differ") else "")
        )
    lines += [
        "",
        "## Parity",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += _speedup_basis(report) + end_to_end_lines(report)
    gate = GateResult.from_dict(report["gate"])
    lines += ["", "## Gate", "", f"**{'PASSED' if gate.passed else 'FAILED'}**", "", "| artifact | metric | value | threshold | result |", "|---|---|---|---|---|"]
    for c in gate.checks:
        value, result = ("", f"skipped: {c.skipped}") if c.skipped else (f"{c.value:.4g}", "pass" if c.passed else "**FAIL**")
        lines.append(f"| {c.artifact} | {c.metric} | {value} | {c.op} {c.threshold:g} | {result} |")
    execs = [(r["artifact"], r.get("details", {}).get("execution")) for r in report["results"]]
    execs = [(a, e) for a, e in execs if e]
    if execs:
        lines += ["", "## What the backend executes", ""]
        for a, e in execs:
            lines.append(f"- `{a}`: {json.dumps(e, sort_keys=True)}")
    if extra_sections:
        lines += [""] + list(extra_sections)
    if report.get("stages"):
        lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
        for k, v in report["stages"].items():
            lines.append(f"| {k} | {v:.2f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: Dict[str, Any], out_dir: Union[str, Path], extra_sections: Sequence[str] = ()) -> List[Path]:
    """Write report.json, report.md and report.html (the Markdown, plots embedded) into ``out_dir`` (each atomically)."""
    from .html_report import html_page

    out_dir = Path(out_dir)
    paths = []
    md = render_markdown(report, extra_sections)
    title = f"resnext-deploy report: {report['model'].get('name', '?')} on {report['target']}"
    for name, text in (("report.json", json.dumps(report, indent=2, sort_keys=False)), ("report.md", md),
                       ("report.html", html_page(title, md, out_dir))):
        with atomic_file(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(out_dir / name)
    return paths
