"""The benchmark for people: a console table, bench.md, bench.png and bench.html (the plot embedded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..buildfolder.artifacts import atomic_file
from ..host.load import UNDER_LOAD_WARNING, timing_verdict
from ..report.gfm import md_table
from ..report.tables import console_table

#: the targets (bench/run.py) are set for this architecture; on any other they are not printed as met or missed
TARGET_ARCH = "resnext50_32x4d"

COLUMNS = ["configuration", "role", "prec", "p50 ms", "p90 ms", "p99 ms", "img/s", "first ms", "load s", "RSS MB",
           "agree", "cos", "vs PyTorch", "vs NNCF", "% peak"]


def _f(v: Optional[float], fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def table_rows(bench: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for r in bench["configurations"]:
        if "latency_ms" not in r:
            rows.append([r["name"], r["role"], r["precision"], "failed: " + (r.get("error") or "not measured")[:60]] + [""] * (len(COLUMNS) - 4))
            continue
        lat = r["latency_ms"]
        peak = r.get("peak_fraction", {}).get("batch1_p50")
        rows.append([
            r["name"], r["role"], r["precision"],
            _f(lat["p50"], ".2f"), _f(lat["p90"], ".2f"), _f(lat["p99"], ".2f"),
            _f(r.get("throughput_ips"), ".1f"), _f(r.get("first_inference_ms"), ".1f"), _f(r.get("load_s"), ".2f"),
            _f(r.get("peak_rss_mb"), ".0f"),
            _f(r["agreement"] * 100, ".1f") + "%" if "agreement" in r else "",
            _f(r.get("mean_cosine"), ".4f"),
            _f(r.get("p50_ratio_vs_pytorch"), ".3f") + "x" if "p50_ratio_vs_pytorch" in r else "",
            _f(r.get("p50_ratio_vs_nncf"), ".3f") + "x" if "p50_ratio_vs_nncf" in r else "",
            _f(peak * 100, ".0f") + "%" if peak is not None else "",
        ])
    return rows


E2E_COLUMNS = ["configuration", "mode", "p50 ms", "p99 ms", "img/s", "vs model-only", "top-1 vs float", "batch-1 ms per stage"]


def e2e_rows(bench: Dict[str, Any]) -> List[List[str]]:
    """One row per (configuration, end-to-end mode): file to label, beside the model-only batch-N img/s."""
    rows = []
    for r in bench["configurations"]:
        modes = ([("", r["end_to_end"])] if r.get("end_to_end") else []) + list((r.get("end_to_end_variants") or {}).items())
        for mode, e in modes:
            label = mode or ("typical" if "pipeline" in e else "runtime")
            if mode == "decode":
                label = "decode floor (no model)"
            model = r.get("throughput_ips")
            extra = f" (agrees {e['agreement_with_exact'] * 100:.0f}% with exact, min cos {e['min_cosine_to_exact']:.5f})" if "agreement_with_exact" in e else ""
            rows.append([r["name"], label + extra, _f(e.get("p50_ms"), ".1f"), _f(e.get("p99_ms"), ".1f"), _f(e.get("images_per_s"), ".1f"),
                         _f(e["images_per_s"] / model, ".2f") + "x" if model else "",
                         _f(e["top1_vs_float"] * 100, ".1f") + "%" if "top1_vs_float" in e else "",
                         ", ".join(f"{k} {v:.1f}" for k, v in (e.get("stages_ms") or {}).items())])
    return rows


def render_table(bench: Dict[str, Any]) -> str:
    """The console table: latency and throughput, and p50 as a fraction of PyTorch eager's and NNCF's."""
    out = console_table(COLUMNS, table_rows(bench))
    erows = e2e_rows(bench)
    if erows:
        out += ["", "end to end (image file to label):"] + console_table(E2E_COLUMNS, erows)
    timing = bench_timing(bench)
    if timing["under_load"]:
        out += ["", f"WARNING: {UNDER_LOAD_WARNING} ({'; '.join(timing['reasons'][:3])})"]
    if targets_apply(bench):
        out += ["", "targets:"] + [f"  [{_mark(t['met'])}] {t['name']}: {_value(t)}" for t in bench["targets"]]
    elif bench.get("targets"):
        out += ["", f"targets: set for {TARGET_ARCH}; not judged for {bench.get('arch') or 'this model'}"]
    return "\n".join(out)


def targets_apply(bench: Dict[str, Any]) -> bool:
    """The "1/8 of PyTorch"-style targets are ResNeXt-50 32x4d's: shown as met or missed only for it."""
    return bench.get("arch") == TARGET_ARCH


def bench_timing(bench: Dict[str, Any]) -> Dict[str, Any]:
    """host.load.timing_verdict over the bench's configurations and its load average around the timing."""
    mach = bench.get("machine") or {}
    during = mach.get("load_average_during") or {}
    snap = lambda la: {"load_1m": la[0], "cores": mach.get("cores")} if la else {}  # noqa: E731
    rows = [{"artifact": r["name"], "latency_ms": r["latency_ms"]} for r in bench.get("configurations", []) if "latency_ms" in r]
    return timing_verdict(rows, snap(during.get("before")), snap(during.get("after")))


def _mark(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def decisive(value: float, threshold: float, least: int = 3, most: int = 6) -> str:
    """``value`` with at least ``least`` decimals and as many more (up to ``most``) as it takes for the printed
    figure to differ from the threshold, so that a miss is visible: 0.99962 against 0.9999, never "1.000"."""
    for d in range(least, most + 1):
        text = f"{value:.{d}f}"
        if float(text) != threshold and (float(text) < threshold) == (value < threshold):
            return text
    return f"{value:.{most}f}"


def _value(t: Dict[str, Any]) -> str:
    if t["value"] is None:
        return "not measured in this run"
    least = 5 if "cosine" in str(t.get("metric", "")) else 3  # cosines to 5 digits: 0.9999 vs 0.99962 matters
    return f"{decisive(t['value'], t['threshold'], least)} ({t['op']} {t['threshold']:g})"


def target_figure(t: Dict[str, Any]) -> str:
    """A target as the console prints it: its value with the digits that decide it, the threshold, met or MISSED."""
    return f"{_value(t)} {_mark(t['met'])}"


def render_markdown(bench: Dict[str, Any], plot_name: Optional[str] = "bench.png") -> str:
    m, mach, b = bench["model"], bench["machine"], bench.get("build", {})
    load = mach.get("load_average_during", {})
    lines = [
        f"# resnext-deploy bench: {m.get('arch') or m.get('name')}",
        "",
        f"- model: `{m.get('name')}` ({m.get('arch') or 'ONNX'}, {m.get('num_classes')} classes), "
        f"{bench['macs_per_image']['gmacs']:.3f} GMAC per image ("
        + ", ".join(f"{k} {v:.3f}" for k, v in bench["macs_per_image"].get("by_op_gmacs", {}).items()) + ")",
        f"- machine: {mach['cpu']} (family {mach.get('cpu_family')}, model {mach.get('cpu_model')}), {mach['cores']} cores, "
        f"flags {', '.join(mach['flags'])}; clock {_f(mach.get('clock_mhz_measured'), '.0f') or '?'} MHz measured "
        f"({_f(mach.get('clock_mhz_nominal'), '.0f')} MHz nominal){', virtual machine' if mach.get('hypervisor') else ''}",
        f"- load average (1/5/15 min): at start {mach.get('load_average')}, before timing {load.get('before')}, after {load.get('after')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in bench["versions"].items()),
        f"- timing: {bench['options']['rounds']} interleaved rounds x {bench['options']['latency_iterations']} batch-1 runs and "
        f"{bench['options']['throughput_batches']} batch-{bench['options']['batch_size']} runs per configuration; "
        f"agreement on {bench['data'].get('images')} validation images",
    ]
    for name in ("int8", "bf16", "fp32"):
        p = bench.get(f"{name}_peak")
        if p:
            lines.append(f"- {name.upper()} peak: {p['cores']} cores x {p['macs_per_cycle_per_core']} MAC/cycle x {p['clock_mhz']:.0f} MHz "
                         f"({p['clock_source']}) = {p['gmacs']:.0f} GMAC/s" + (f"; {p['rule']}" if p.get("rule") else ""))
    timing = bench_timing(bench)
    if timing["under_load"]:
        lines += ["", f"> **Warning: {UNDER_LOAD_WARNING}.** " + "; ".join(timing["reasons"][:5]) + f". Rules: {timing['rules']}."]
    lines += ["", "## Results", ""] + md_table(COLUMNS, table_rows(bench))
    lines += ["", "p50/p90/p99: batch-1 latency (ms); img/s: batch-{} throughput; vs PyTorch / vs NNCF: p50 divided by theirs, "
              "the median over rounds of the per-round ratio (lower is faster); agree / cos: top-1 agreement with the float "
              "model and the mean cosine of the logits to its logits; % peak: batch-1 MAC rate over the "
              "machine's peak at the configuration's precision.".format(bench["options"]["batch_size"])]
    if plot_name:
        lines += ["", f"![latency and throughput]({plot_name})"]
    erows = e2e_rows(bench)
    if erows:
        e = bench.get("end_to_end") or {}
        lines += ["", "## End to end (image file to label)", "",
                  f"{e.get('files')} camera-size JPEGs ({', '.join(f'{k}: {v}' for k, v in (e.get('source_sizes') or {}).items())}); "
                  f"top-1 against {e.get('top1_reference')}; ours (runtime) and the typical pipeline agree on top-1 for "
                  f"{_f((e.get('ours_vs_typical_top1_agreement') or 0) * 100, '.1f')}% of the files. vs model-only: end-to-end img/s over "
                  f"the configuration's model-only batch-{bench['options']['batch_size']} img/s.", "",
                  ]
        lines += md_table(E2E_COLUMNS, erows)
    lines += ["", "## Targets", ""]
    if targets_apply(bench):
        lines += md_table(["target", "value", "result"], [[t["name"], _value(t), _mark(t["met"])] for t in bench["targets"]])
    else:
        lines += [f"The targets are set for ResNeXt-50 32x4d ({TARGET_ARCH}) at 224x224; they are not judged for "
                  f"{bench.get('arch') or 'this model'} (bench.json has the values).", ""]
    if b:
        lines += ["", "## Build", ""]
        if b.get("measured_here"):
            lines.append(f"- `resnext-deploy build` in a child process: wall {b['wall_s']:.1f} s, peak RSS {b['peak_rss_mb']:.0f} MB, "
                         f"exit code {b['exit_code']} (gate {'passed' if b.get('gate_passed') else 'failed'})")
        lines += [""] + md_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in (b.get("stages_s") or {}).items()
                                                        if isinstance(v, (int, float))])
    profiled = [r for r in bench["configurations"] if (r.get("profile") or {}).get("by_kind_ms")]
    if profiled:
        lines += ["", "## Where the time goes (batch 1, the runtime's own per-layer profiler, ms per inference)", ""]
        for r in profiled:
            p = r["profile"]
            parts = ", ".join(f"{k} {v:.2f}" for k, v in list(p["by_kind_ms"].items())[:6])
            lines.append(f"- `{r['name']}` ({p['tool']}, sum {p['total_ms']:.2f}): {parts}")
    lines += ["", "## What each configuration is", ""]
    for r in bench["configurations"]:
        prep = r.get("prepare") or {}
        extra = f" Prepared in {prep['seconds']:.1f} s, peak RSS {prep['peak_rss_mb']:.0f} MB." if "seconds" in prep else ""
        execution = (r.get("details") or {}).get("execution")
        exe = f" OpenVINO runs: {json.dumps(execution.get('convolutions_by_precision'))} convolutions by precision." if execution else ""
        threads = f" Threads: {json.dumps(r['threads'])}." if r.get("threads") else ""
        lines.append(f"- `{r['name']}`: {r['description']}.{extra}{exe}{threads}")
    if bench.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in bench["notes"]]
    return "\n".join(lines) + "\n"


def write_plot(bench: Dict[str, Any], path: Path) -> Path:
    """bench.png: the latency chart of bench.html (report/charts.py's latency bars), as a PNG."""
    from ..report.charts import write_chart

    chart = latency_chart(bench)
    if chart is None:
        raise ValueError("no configuration was timed: nothing to plot")
    return write_chart(chart, path)


def write_outputs(bench: Dict[str, Any], out: Path) -> List[Path]:
    """bench.json, bench.md, bench.png and bench.html (the Markdown with the plot embedded) in ``out``."""
    out = Path(out)
    paths = []
    with atomic_file(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(bench, indent=2, default=str))
    paths.append(out / "bench.json")
    png = write_plot(bench, out / "bench.png")
    paths.append(png)
    md = render_markdown(bench)
    with atomic_file(out / "bench.md") as tmp:
        tmp.write_text(md)
    paths.append(out / "bench.md")
    with atomic_file(out / "bench.html") as tmp:
        tmp.write_text(render_html(bench, md))
    paths.append(out / "bench.html")
    return paths


def latency_chart(bench: Dict[str, Any]) -> Any:
    """The report's latency chart (report/charts.py) over the bench's configurations: ours red, peers grey."""
    from ..report.charts import Bar, latency_bars

    rows = [r for r in bench["configurations"] if "latency_ms" in r]
    bars = [Bar(r["name"], r["latency_ms"]["p50"], r["latency_ms"].get("p90", r["latency_ms"]["p50"]), r["latency_ms"]["p99"],
                r.get("throughput_ips") or 0.0, {"ours": "#d62728", "variant": "#f2a0a0"}.get(r["role"], "#7f7f7f")) for r in rows]
    title = (f"{bench['model'].get('arch') or bench['model'].get('name')} on {bench['machine']['cpu']} "
             f"({bench['machine']['cores']} cores); red: our build (light: a variant), grey: peers")
    return latency_bars(bars, bench["options"]["batch_size"], title, name="bench-latency.svg") if bars else None


def render_html(bench: Dict[str, Any], md: str) -> str:
    """bench.html: bench.md through the report's page template, the latency chart inline as SVG."""
    from markupsafe import Markup

    from ..report.html import environment, html_from_markdown

    chart = latency_chart(bench)
    title = f"resnext-deploy bench: {bench['model'].get('arch') or bench['model'].get('name')}"
    body = html_from_markdown(md.splitlines()[1:])  # the title is the page's own <h1>
    return environment().get_template("page.html.j2").render(
        title=title, body=Markup(body), charts=[{"name": chart.name, "title": chart.title, "svg": Markup(chart.svg)}] if chart else [])
