"""Every chart resnext-deploy draws, with matplotlib: the report's (from report.json alone, SVG inline in
report.html and files beside report.md), the sensitivity ranking's and the bench's PNGs. One figure per chart, saved
as SVG or PNG by :func:`write_chart`: the same code, the same scales, whatever the format. Each report chart
function returns None when the report has nothing to draw (e.g. no sensitivity analysis).

Matplotlib's object API (Figure + a canvas) is used, never pyplot: no global backend, no window, no state
shared with the caller's plots.
"""

from __future__ import annotations

import io
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..optional import require

REF_COLOUR, INT8_COLOUR, FLOAT_COLOUR, HIGHLIGHT = "#222222", "#d62728", "#1f77b4", "#ff7f0e"


class Chart(NamedTuple):
    name: str  # the file name beside report.md
    title: str  # alt text and caption
    svg: str
    figure: Any = None  # the matplotlib Figure, for a PNG of the same drawing (write_chart)


def _figure(width: float, height: float) -> Any:
    require("matplotlib", "draw the report's charts")
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=72)
    FigureCanvasSVG(fig)
    return fig


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    # text stays text (smaller, searchable); a fixed hash salt keeps the SVG's ids the same run to run
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "resnext-deploy"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML declaration or DOCTYPE


def _chart(name: str, title: str, fig: Any) -> Chart:
    return Chart(name, title, _svg(fig), fig)


def write_chart(chart: Chart, path: Any, dpi: int = 110) -> Any:
    """The chart as a file, its format from the suffix (.svg: the same text as inline; .png: matplotlib's Agg),
    written atomically. Returns the path."""
    from pathlib import Path

    from ..buildfolder.artifacts import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".svg":
            tmp.write_text(chart.svg)
        else:
            chart.figure.savefig(str(tmp), format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight")
    return path


def log_scale_if_wide(ax: Any, values: Sequence[float], axis: str = "x", ratio: float = 20.0) -> None:
    """A log axis when the positive values span more than ``ratio`` (and none is zero or negative): one rule for
    every chart, so the same numbers get the same scale in the report, the sensitivity plot and the bench."""
    vals = [float(v) for v in values]
    if vals and min(vals) > 0 and max(vals) / min(vals) > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _measured(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [r for r in report["results"] if not r.get("pending") and r.get("latency_ms") and r.get("top1") is not None]


def _colour(report: Dict[str, Any], r: Dict[str, Any]) -> str:
    if r["artifact"] == report["reference"]:
        return REF_COLOUR
    return INT8_COLOUR if r.get("precision") == "int8" else FLOAT_COLOUR


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats on both axes (lower latency x, higher accuracy y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_latency(report: Dict[str, Any]) -> Optional[Chart]:
    rows = _measured(report)
    if not rows:
        return None
    pts = [(r["latency_ms"]["p50"], r["top1"] * 100) for r in rows]
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="#999999", lw=1.2, zorder=1,
            label="Pareto front (nothing is both faster and more accurate)")
    for k, (r, (x, y)) in enumerate(zip(rows, pts)):
        is_ref = r["artifact"] == report["reference"]
        ax.scatter([x], [y], s=110 if is_ref else 45, marker="*" if is_ref else "o", color=_colour(report, r), zorder=2)
        # labels staggered up and down: artifacts of equal accuracy sit on one line
        ax.annotate(r["artifact"] + (" (float reference)" if is_ref else ""), (x, y), textcoords="offset points",
                    xytext=(4, (10, -14, 22, -26)[k % 4]), fontsize=8, color=_colour(report, r),
                    arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "lw": 0.6})
    log_scale_if_wide(ax, [p[0] for p in pts])
    ax.margins(0.12)
    ax.set_xlabel("batch-1 latency p50 (ms); left is faster")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs latency (red: INT8, blue: float, star: the float reference)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _chart("chart-accuracy-latency.svg", "Accuracy vs latency", fig)


class Bar(NamedTuple):
    name: str
    p50: float
    p90: float
    p99: float
    throughput: float
    colour: str


def latency_bars(bars: Sequence[Bar], batch: Any, title: str, name: str = "chart-latency.svg") -> Chart:
    """p50/p90/p99 per row at batch 1 (left) and throughput at ``batch`` (right); the report's and the bench's."""
    fig = _figure(10.0, 0.42 * len(bars) + 1.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ys = list(range(len(bars)))
    h = 0.26
    for k, (pct, shade) in enumerate((("p50", 1.0), ("p90", 0.65), ("p99", 0.35))):
        ax1.barh([y + (k - 1) * h for y in ys], [getattr(b, pct) for b in bars], height=h,
                 color=[b.colour for b in bars], alpha=shade, label=pct)
    ax1.set_yticks(ys)
    ax1.set_yticklabels([b.name for b in bars], fontsize=8)
    ax1.invert_yaxis()
    log_scale_if_wide(ax1, [b.p99 for b in bars] + [b.p50 for b in bars])
    ax1.set_xlabel("batch-1 latency (ms): p50, p90, p99 (lighter)")
    ax1.legend(fontsize=7, loc="lower right")
    ax2.barh(ys, [b.throughput for b in bars], color=[b.colour for b in bars])
    for y, b in zip(ys, bars):
        ax2.text(b.throughput, y, f" {b.throughput:.0f}", va="center", fontsize=7)
    ax2.set_yticks(ys)
    ax2.set_yticklabels([])
    ax2.invert_yaxis()
    ax2.set_xlabel(f"throughput at batch {batch} (images/s); higher is better")
    fig.suptitle(title, fontsize=10)
    return _chart(name, "Latency percentiles at batch 1 and throughput", fig)


def latency(report: Dict[str, Any]) -> Optional[Chart]:
    rows = _measured(report)
    if not rows:
        return None
    batch = (report.get("dataset") or {}).get("throughput_batch") or rows[0].get("throughput_batch")
    bars = [Bar(r["artifact"], r["latency_ms"]["p50"], r["latency_ms"].get("p90", r["latency_ms"]["p50"]),
                r["latency_ms"]["p99"], r.get("throughput_ips") or 0.0, _colour(report, r)) for r in rows]
    return latency_bars(bars, batch, "Latency and throughput (red: INT8, blue: float, black: the float reference)")


def sensitivity_chart(d: Dict[str, Any], top: int = 25, highlight: Sequence[str] = (),
                      name: str = "chart-sensitivity.svg") -> Chart:
    """The ``top`` most sensitive layers of a sensitivity ranking (accuracy/sensitivity.py's dict), the layers in
    ``highlight`` (those the fallback left in float) in orange."""
    rows = d["layers"][:top]
    marked = set(highlight)
    fig = _figure(8.0, 1.2 + 0.26 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    short = lambda n: re.sub(r"/(Conv|MatMul|Gemm)$", "", n).strip("/")  # noqa: E731
    ys = list(range(len(rows)))
    scores = [max(float(r["score"]), 0.0) for r in rows]
    ax.barh(ys, scores, color=[HIGHLIGHT if r["node"] in marked else "#2c7fb8" for r in rows])
    ax.set_yticks(ys)
    ax.set_yticklabels([short(r["node"]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    log_scale_if_wide(ax, scores, ratio=100.0)
    ax.set_xlabel(d.get("ranked_by") or "sensitivity score")
    base = ", ".join(f"{fl}: {b['nsr']:.3g}" for fl, b in sorted((d.get("baseline") or {}).items()))
    title = f"Per-layer INT8 sensitivity ({d.get('images')} images, top {len(rows)} of {len(d['layers'])} layers)"
    if base:
        title += f"\nfully quantized logit NSR {base}"
    if marked:
        title += f"\norange: the {len(marked)} layers the accuracy fallback left in float"
    ax.set_title(title, fontsize=9)
    return _chart(name, "Per-layer INT8 sensitivity", fig)


def sensitivity(report: Dict[str, Any], top: int = 25) -> Optional[Chart]:
    d = report.get("sensitivity")
    if not d or not d.get("layers"):
        return None
    fb = report.get("fallback") or {}
    return sensitivity_chart(d, top, (fb.get("excluded") or []) if fb.get("passed") else ())


def per_class(report: Dict[str, Any], named: int = 40) -> Optional[Chart]:
    """Per INT8 artifact, each class's top-1 change from the float reference (percentage points). Up to ``named``
    classes get a bar each with their name; beyond that (ImageNet's 1000) the changes are drawn sorted."""
    rows = [r for r in report["results"] if r.get("per_class_top1") and r.get("precision") == "int8"]
    if not rows:
        return None
    names = (report.get("model") or {}).get("labels") or []
    fig = _figure(10.0, 2.3 * len(rows) + 0.6)
    for k, r in enumerate(rows):
        pc = r["per_class_top1"]
        classes = [c for c, (a, b) in enumerate(zip(pc["reference"], pc["artifact"])) if a is not None and b is not None]
        delta = [(pc["artifact"][c] - pc["reference"][c]) * 100 for c in classes]
        ax = fig.add_subplot(len(rows), 1, k + 1)
        if len(classes) <= named:
            ax.bar(range(len(classes)), delta, color=[INT8_COLOUR if v < 0 else FLOAT_COLOUR for v in delta])
            ax.set_xticks(range(len(classes)))
            ax.set_xticklabels([str(names[c]) if c < len(names) else str(c) for c in classes], fontsize=7,
                               rotation=90 if len(classes) > 12 else 0)
        else:
            order = sorted(range(len(delta)), key=lambda i: delta[i])
            ax.bar(range(len(order)), [delta[i] for i in order], width=1.0,
                   color=[INT8_COLOUR if delta[i] < 0 else FLOAT_COLOUR for i in order])
            ax.set_xlabel(f"{len(classes)} classes, sorted by change", fontsize=8)
        ax.axhline(0, color="#444444", lw=0.8)
        worst = min(delta) if delta else 0.0
        ax.set_ylabel("pt", fontsize=8)
        ax.set_title(f"{r['artifact']}: per-class top-1 change vs float (worst {worst:+.1f} pt, "
                     f"{sum(v < 0 for v in delta)} classes lose, {sum(v > 0 for v in delta)} gain)", fontsize=9)
    fig.tight_layout()
    return _chart("chart-per-class.svg", "Per-class top-1 change, float to INT8", fig)


def clip_rates(report: Dict[str, Any], top: int = 40) -> Optional[Chart]:
    """Per quantized tensor, the worst ``top``: the share of validation values outside its
    calibrated range (pipeline/calibration_check.py), one bar colour per Q/DQ flavour."""
    c = report.get("calibration_check")
    if not c or not c.get("clip"):
        return None
    flavours = sorted(c["clip"])
    worst = sorted({r["tensor"] for f in flavours for r in c["clip"][f]["tensors"][:top]},
                   key=lambda t: -max(next((r["rate"] for r in c["clip"][f]["tensors"] if r["tensor"] == t), 0.0) for f in flavours))[:top]
    if not worst:
        return None
    fig = _figure(8.0, 1.4 + 0.22 * len(worst))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(flavours)
    for k, f in enumerate(flavours):
        rate = {r["tensor"]: r["rate"] for r in c["clip"][f]["tensors"]}
        ax.barh([i + k * height for i in range(len(worst))], [rate.get(t, 0.0) * 100 for t in worst], height=height,
                color=(INT8_COLOUR, FLOAT_COLOUR)[k % 2], label=f"{f} activations")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(worst))])
    ax.set_yticklabels([t.strip("/")[-48:] for t in worst], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("validation values outside the calibrated range (%)")
    ax.set_title(f"Held-out clip rate per quantized tensor (worst {len(worst)}, {c['images']['validation']} validation images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return Chart("chart-clip-rate.svg", "Held-out clip rate per quantized tensor", _svg(fig))


def convergence(report: Dict[str, Any], top: int = 12) -> Optional[Chart]:
    """The calibrated range of the ``top`` most moving tensors at N/4, N/2 and N images, relative to N's."""
    c = (report.get("calibration_check") or {}).get("convergence")
    if not c or not c.get("tensors") or len(c["points"]) < 2:
        return None
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for r in c["tensors"][:top]:
        last = r["widths"][-1] or 1.0
        ax.plot(c["points"], [w / last for w in r["widths"]], marker="o", lw=1,
                color=HIGHLIGHT if r["change"] > c["threshold"] else "#2c7fb8", label=r["tensor"].strip("/")[-40:])
    ax.axhline(1 - c["threshold"], color="#444444", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(c["points"])
    ax.set_xticklabels([str(p) for p in c["points"]])
    ax.set_xlabel("calibration images")
    ax.set_ylabel("range / range at N")
    ax.set_title(f"Convergence of the {c['method']} ranges (orange: moving more than {c['threshold'] * 100:g} % "
                 f"between the last two points; dashed: the threshold)", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    return Chart("chart-calibration-convergence.svg", "Convergence of the calibrated scales", _svg(fig))


CHARTS: Sequence[Callable[[Dict[str, Any]], Optional[Chart]]] = (accuracy_vs_latency, latency, sensitivity, per_class,
                                                                 clip_rates, convergence)


def charts_from_report(report: Dict[str, Any]) -> List[Chart]:
    """Every chart the report has data for, in reading order."""
    return [c for c in (f(report) for f in CHARTS) if c is not None]
