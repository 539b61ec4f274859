"""One chart module: every chart (report SVG, sensitivity PNG, bench PNG) is drawn by report/charts.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from resnext_deploy.report.charts import sensitivity_chart, write_chart  # noqa: E402

TOOLKIT = Path(__file__).resolve().parents[2] / "toolkit" / "resnext_deploy"

RANKING = {
    "layers": [{"node": f"/layer{i}/conv{i}/Conv", "score": 10.0 ** -i} for i in range(6)],
    "images": 32, "ranked_by": "logit NSR", "baseline": {"uint8": {"nsr": 0.0123}},
}


def test_one_drawing_two_formats(tmp_path):
    chart = sensitivity_chart(RANKING, top=5, highlight=["/layer1/conv1/Conv"], name="s.svg")
    svg = write_chart(chart, tmp_path / "s.svg")
    png = write_chart(chart, tmp_path / "s.png")
    assert svg.read_text() == chart.svg and chart.svg.startswith("<svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same drawing: the title and the log rule (scores span 1e4 > 100x) are in both
    ax = chart.figure.axes[0]
    assert ax.get_xscale() == "log" and "orange: the 1 layers" in ax.get_title()
    assert "fully quantized logit NSR uint8: 0.0123" in ax.get_title()


def test_no_module_outside_the_chart_module_draws_or_touches_the_global_backend():
    """pyplot and matplotlib.use() change process-wide state; only report/charts.py builds figures."""
    offenders = []
    for path in TOOLKIT.rglob("*.py"):
        if path.name == "charts.py" and path.parent.name == "report":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith(("matplotlib.pyplot", "matplotlib.figure", "matplotlib.backends")) for n in names):
                offenders.append(str(path.relative_to(TOOLKIT)))
            if isinstance(node, ast.Attribute) and node.attr == "use" and getattr(node.value, "id", "") == "matplotlib":
                offenders.append(f"{path.relative_to(TOOLKIT)}: matplotlib.use")
    assert offenders == []
