"""report.md: GitHub-flavoured Markdown whose every table parses as one (cells escaped: a `|` in a cell once split
the parity table's header), the charts linked as the SVG files beside it."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

from ..evaluation.evaluate import CONFIDENT_MARGIN
from ..host.load import UNDER_LOAD_WARNING
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
    reference_row,
    class_folders,
    skipped_files,
    speedup_basis,
    table_rows,
    timing_of,
)
from .calibration import calibration_lines
from .gfm import md_safe, md_table
from .verdict import headline, host, machine, verdict


def gallery_lines(report: Dict[str, Any]) -> List[str]:
    """Per INT8 artifact, the disagreeing images as a table (thumbnails are in report.html)."""
    rows = [r for r in report["results"] if r.get("disagreements")]
    if not rows:
        return []
    lines = ["## The images INT8 gets wrong", "",
             "Validation images whose top-1 differs from the float reference's, "
             f"{(report.get('gallery') or {}).get('order', 'most confident flips first')}; margin = top-1 softmax "
             "probability minus the runner-up's. Thumbnails are in report.html.", ""]
    for r in rows:
        d = r["disagreements"]
        lines.append(f"**{r['artifact']}**: {d['count']} of {r.get('images', '?')} images disagree"
                     + (f", the first {len(d['images'])} shown" if d["count"] > len(d["images"]) else ""))
        lines.append("")
        if d["images"]:
            lines += md_table(["file", "float class", "float margin", f"{r['precision']} class", f"{r['precision']} margin"], [
                [f"`{i.get('path', i['index'])}`", i["reference"].get("label", i["reference"]["class"]), f"{i['reference']['margin']:.3f}",
                 i["artifact"].get("label", i["artifact"]["class"]), f"{i['artifact']['margin']:.3f}"] for i in d["images"]])
            lines.append("")
    return lines


def render_markdown(report: Dict[str, Any], extra_sections: Sequence[str] = (), charts: Sequence[Any] = ()) -> str:
    """The report as Markdown; ``extra_sections`` (Markdown lines derived from the report by the caller, e.g. the
    accuracy fallback's) go after the gate; ``charts`` (charts.Chart) are linked by file name."""
    m, d = report["model"], report["dataset"]
    ref = reference_row(report)
    lines = [
        f"# resnext-deploy report: {m.get('name', '?')} on {report['target']}",
        "",
        f"**{verdict(report)}**: {headline(report)}",
        "",
        f"- model: `{m.get('name')}` ({m.get('arch') or 'ONNX'}, {m.get('num_classes')} classes), source `{m.get('source')}`",
        f"- target: `{report['target']}`; machine: {machine(report)}" + (f", host `{host(report)}`" if host(report) else ""),
        f"- validation: {d.get('validation_images')} images from `{d.get('validation')}`" + class_folders(d) + skipped_files(d, "validation"),
        f"- calibration: {d.get('calibration_images')} images from `{d.get('calibration')}`, method "
        f"{d.get('calibration_method')}, seed {d.get('calibration_seed')}" + skipped_files(d, "calibration"),
        f"- reference (float model): `{report['reference']}`; agreement and logit error are measured against it",
        f"- latency: batch 1, percentiles after warm-up; throughput at batch {d.get('throughput_batch')}",
    ]
    if ref and ref.get("confident_images") is not None:
        lines.append(f"- confident images: {ref['confident_images']} of {ref['images']} (reference softmax margin "
                     f">= {CONFIDENT_MARGIN:g})")
    isa = report.get("isa")
    if isa:
        b = isa.get("build", {})
        lines.append(
            f"- CPU: measured on {b.get('model')} (ISA {b.get('isa')}"
            + (f", OpenVINO capped at {b['onednn_max_cpu_isa']}" if b.get("onednn_max_cpu_isa") else "")
            + f"); INT8 made for `{isa.get('target')}` CPUs, {isa.get('weight_range')} weights"
            + (" (INT8 accuracy measured with the build machine's kernels: see Notes)" if isa.get("kernels_differ") else "")
        )
    timing = timing_of(report)
    if timing.get("under_load"):
        lines += ["", f"> **Warning: {UNDER_LOAD_WARNING}.** " + "; ".join(timing["reasons"][:5])
                  + (f"; {len(timing['reasons']) - 5} more in report.json" if len(timing["reasons"]) > 5 else "")
                  + f". Rules: {timing.get('rules', '')}."]
    lines += ["", "## Parity", ""] + md_table([c.header for c in PARITY], table_rows(report))
    lines += [""] + [f"- **{c.header}**: {c.definition}" for c in PARITY[3:]]
    lines += [f"- {line}" for line in device_lines(report)]
    lines += ["", speedup_basis(report)]
    e2e = end_to_end_rows(report)
    if e2e:
        lines += ["", "## End to end (image file to label)", "", end_to_end_note(report), ""] + md_table(E2E_HEAD, e2e)
    first, n = checks_first(report["gate"]), gate_counts(report["gate"])
    lines += ["", "## Gate", "", f"**{'PASSED' if report['gate']['passed'] else 'FAILED'}**: {n['checks']} checks, "
              f"{n['failed']} failed, {n['skipped']} skipped.", ""]
    if first:
        lines += ["Failed and skipped checks:", ""] + md_table(GATE_HEAD, gate_rows(first)) + [""]
    details = f"<details><summary>All {n['checks']} checks</summary>"  # the only HTML of ours: kept as it is
    lines += [details, ""] + md_table(GATE_HEAD, gate_rows(report["gate"]["checks"]))
    lines += ["", "</details>"]
    lines += [""] + calibration_lines(report)
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.title}]({c.name})" for c in charts]
    lines += [""] + gallery_lines(report)
    execs = [(r["artifact"], (r.get("details") or {}).get("execution")) for r in report["results"]]
    execs = [(a, e) for a, e in execs if e]
    if execs:
        lines += ["", "## What the backend executes", ""]
        lines += [f"- `{a}`: {json.dumps(e, sort_keys=True)}" for a, e in execs]
    if extra_sections:
        lines += [""] + list(extra_sections)
    if report.get("stages"):
        lines += ["", "## Stages", ""] + md_table(["stage", "seconds"], [
            [k, f"{v:.2f}" if isinstance(v, (int, float)) else v] for k, v in report["stages"].items()])
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(line if line in (details, "</details>") else "\n".join(md_safe(part) for part in line.split("\n"))
                     for line in lines) + "\n"
