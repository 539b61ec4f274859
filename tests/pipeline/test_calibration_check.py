"""Calibration diagnostics (pipeline/calibration_check.py) on the shared demo build: clip rates, convergence,
calibration/validation overlap, coverage, and the report's section and charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_deploy.errors import BadInputError
from resnext_deploy.evaluation.gate import GateResult
from resnext_deploy.pipeline.calibration_check import CheckSettings, check_calibration, leakage_gate, summary_line
from resnext_deploy.data.datasets import load_calibration, load_labeled
from resnext_deploy.recipes import calibration_settings


def _inputs(demo_build):
    d = demo_build.report["dataset"]
    from resnext_deploy.models.demo.digits import DEMO_PREPROCESSING

    onnx_dir = Path(demo_build.out_dir) / "onnx"
    return (onnx_dir / "model-fp32.onnx", {"uint8": onnx_dir / "model-int8-uint8.onnx"}, Path(d["calibration"]),
            load_labeled(Path(d["validation"]), DEMO_PREPROCESSING), DEMO_PREPROCESSING)


def test_build_reports_clip_rates_and_charts(demo_build):
    c = demo_build.report["calibration_check"]
    clip = c["clip"]["uint8"]
    assert len(clip["tensors"]) >= 10  # every quantized activation of the demo net
    rates = [r["rate"] for r in clip["tensors"]]
    assert rates == sorted(rates, reverse=True) and 0 < clip["max"] == rates[0] < 0.2
    assert c["leakage"]["shared"] == 0 and c["coverage"]["labelled"] and not c["coverage"]["empty"]
    assert sum(c["coverage"]["per_class"].values()) == c["images"]["calibration"] == 256
    assert c["convergence"]["points"] == [64, 128, 256]
    # the default count is big enough: its typical ranges settled (no warning), though min-max ranges keep moving more
    conv = c["convergence"]
    assert conv["threshold"] == 0.05 and not conv["moving"] and conv["max_change"] < 0.03
    assert conv["minmax_max_change"] > conv["max_change"] and not any("still move" in w for w in c["warnings"])
    assert c["images"]["clip_rate_sample"] == 128 < c["images"]["validation"]
    out = Path(demo_build.out_dir)
    md = (out / "report.md").read_text()
    assert "## Calibration" in md and "Held-out clip rate" in md and clip["tensors"][0]["tensor"] in md
    html = (out / "report.html").read_text()
    for chart in ("chart-clip-rate", "chart-calibration-convergence"):
        assert (out / f"{chart}.svg").is_file() and f'id="{chart}"' in html
    assert summary_line(c).startswith("calibration: clip rate (uint8) max ")


def test_calib_equal_to_val_warns_with_the_count(demo_build):
    fp32, qdq, _, val, spec = _inputs(demo_build)
    cal = load_calibration(Path(demo_build.report["dataset"]["validation"]), spec, 64, 0)
    c = check_calibration(fp32, qdq, cal, val, CheckSettings(leakage="refuse"))
    assert c["leakage"]["shared"] == c["leakage"]["identical"] == 64
    assert any("share 64 images" in w for w in c["warnings"])
    gate = leakage_gate(GateResult(True, []), c)
    assert not gate.passed and gate.checks[-1].value == 64
    assert leakage_gate(GateResult(True, []), dict(c, leakage_policy="warn")).passed


def test_eight_images_name_the_moving_tensors(demo_build):
    fp32, qdq, calib_dir, val, spec = _inputs(demo_build)
    c = check_calibration(fp32, qdq, load_calibration(calib_dir, spec, 8, 0), val, CheckSettings())  # the recipe's default
    conv = c["convergence"]
    assert conv["points"] == [2, 4, 8] and conv["moving"] and conv["threshold"] == 0.05
    assert all(r["change"] > 0.05 for r in conv["tensors"] if r["tensor"] in conv["moving"])
    warning = next(w for w in c["warnings"] if "still move" in w)
    assert all(f"'{t}'" in warning for t in conv["moving"][:10]) and f"Add about {conv['add_images']}" in warning
    assert conv["add_images"] >= 8
    assert c["leakage"]["shared"] == 0  # a sample of the calibration folder shares nothing with validation


def test_recipe_checks_its_calibration_keys():
    with pytest.raises(BadInputError, match="calibration.leakage"):
        calibration_settings({"leakage": "maybe"})
    assert calibration_settings({"leakage": "refuse"})["leakage"] == "refuse"
