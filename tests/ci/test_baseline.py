"""`report NEW --baseline OLD`: two demo builds pass; the collapsed-calibration build fails with exit 3 naming the
metric; the baseline is verified by its manifest before it is trusted; latency only where CPU and versions match."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from click.testing import CliRunner

from resnext_deploy.ci.baseline import compare_with_baseline, latency_comparable, load_baseline
from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK, BadInputError
from resnext_deploy.recipes import DEFAULTS


def _report(ci_builds, new, old, tmp_path, *extra):
    out = tmp_path / "r"
    args = ["report", str(ci_builds[new]), "--recipe", str(ci_builds["recipe"]), "--baseline", str(ci_builds[old]),
            "--out", str(out), "--junit", str(tmp_path / "junit.xml"), "--summary", str(tmp_path / "summary.md"), *extra]
    res = CliRunner().invoke(cli, args)
    return res, out


def test_two_demo_builds_pass_against_each_other(ci_builds, tmp_path, junit_schema):
    res, out = _report(ci_builds, "good2", "good1", tmp_path)
    assert res.exit_code == EXIT_OK, res.output
    assert "vs baseline PASSED" in res.output
    section = json.loads((out / "report.json").read_text())["baseline"]
    assert section["passed"] and section["source"] == str(ci_builds["good1"])
    compared = {r["artifact"] for r in section["rows"] if r["status"] == "compared"}
    assert {"onnx-fp32", "onnxruntime-int8", "openvino-int8"} <= compared
    drops = {c["artifact"]: c["value"] for c in section["checks"] if c["metric"] == "top1_drop_vs_baseline_pct"}
    assert set(drops) == compared and all(abs(v) <= 1.0 for v in drops.values())  # same model, data and seed
    assert "## vs baseline" in (out / "report.md").read_text() and "vs baseline" in (out / "report.html").read_text()
    junit_schema.validate(str(tmp_path / "junit.xml"))
    assert "**vs baseline**" in (tmp_path / "summary.md").read_text()


def test_the_collapsed_build_fails_against_the_baseline_with_exit_3_naming_the_metric(ci_builds, tmp_path, junit_schema):
    res, out = _report(ci_builds, "bad", "good1", tmp_path)
    assert res.exit_code == EXIT_GATE_FAILED, res.output
    assert "vs baseline FAILED: " in res.output and "top1_drop_vs_baseline_pct" in res.output
    section = json.loads((out / "report.json").read_text())["baseline"]
    failed = {c["artifact"] for c in section["checks"] if not c["passed"] and c["metric"] == "top1_drop_vs_baseline_pct"}
    assert {"onnxruntime-int8", "openvino-int8"} <= failed
    bad = {c["artifact"]: c["value"] for c in section["checks"] if c["metric"] == "top1_drop_vs_baseline_pct"}
    assert bad["onnxruntime-int8"] > 10 and bad["onnx-fp32"] == 0.0  # the float model is the same; INT8 collapsed
    xml = (tmp_path / "junit.xml").read_text()
    junit_schema.validate(xml)
    assert 'message="onnxruntime-int8: top1_drop_vs_baseline_pct = ' in xml
    md = (tmp_path / "summary.md").read_text()
    assert "**vs baseline**" in md and "FAILED" in md and "- onnxruntime-int8: top1_drop_vs_baseline_pct = " in md
    # the other way round the comparison is an improvement: the baseline's checks pass (the exit is the gate's alone)
    res2, out2 = _report(ci_builds, "good1", "bad", tmp_path / "reverse")
    assert res2.exit_code == EXIT_OK, res2.output
    assert json.loads((out2 / "report.json").read_text())["baseline"]["passed"]


def test_a_baseline_is_verified_before_it_is_trusted(ci_builds, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(ci_builds["good1"], edited)
    rep = json.loads((edited / "report.json").read_text())
    rep["results"][-1]["top1"] = 0.0  # a baseline someone made easier to beat
    (edited / "report.json").write_text(json.dumps(rep))
    res = CliRunner().invoke(cli, ["report", str(ci_builds["good2"]), "--recipe", str(ci_builds["recipe"]), "--baseline", str(edited)])
    assert res.exit_code == EXIT_BAD_INPUT and "differs from the sha256 its manifest recorded" in res.output

    versioned = tmp_path / "versioned"
    shutil.copytree(ci_builds["good1"], versioned)
    manifest = json.loads((versioned / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (versioned / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="manifest schema version 99"):
        load_baseline(versioned / "report.json")

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(ci_builds["good1"] / "report.json", bare / "report.json")
    with pytest.raises(BadInputError, match="no manifest.json beside its report.json"):
        load_baseline(bare)
    with pytest.raises(BadInputError, match="has no report.json"):
        load_baseline(tmp_path / "nowhere")


def test_latency_is_compared_only_when_cpu_and_versions_match(ci_builds):
    base = load_baseline(ci_builds["good1"])
    new_report = json.loads((ci_builds["good2"] / "report.json").read_text())
    new_manifest = json.loads((ci_builds["good2"] / "manifest.json").read_text())
    assert latency_comparable(base.manifest, new_manifest) == (True, "")  # two builds on this machine
    thresholds = dict(DEFAULTS["gates"]["baseline"], max_latency_increase_pct=25.0)
    section = compare_with_baseline(new_report, base, thresholds, new_manifest)
    old_p50 = {r["artifact"]: r["latency_ms"]["p50"] for r in base.report["results"]}
    for c in (c for c in section["checks"] if c["metric"] == "latency_increase_vs_baseline_pct"):
        new_p50 = next(r["latency_ms"]["p50"] for r in new_report["results"] if r["artifact"] == c["artifact"])
        assert c["value"] == pytest.approx((new_p50 / old_p50[c["artifact"]] - 1) * 100)
        assert c["passed"] == (c["value"] <= 25.0) and c["skipped"] is None

    other = copy.deepcopy(new_manifest)
    other["versions"]["onnxruntime"] = "0.0.1"
    other["isa"]["build"]["isa"] = "avx2" if base.manifest["isa"]["build"]["isa"] != "avx2" else "vnni"
    ok, why = latency_comparable(base.manifest, other)
    assert not ok and "onnxruntime" in why and "isa" in why
    section = compare_with_baseline(new_report, base, thresholds, other)
    lat = [c for c in section["checks"] if c["metric"] == "latency_increase_vs_baseline_pct"]
    assert lat and all(c["skipped"] and "onnxruntime" in c["skipped"] and c["passed"] for c in lat)
    assert not compare_with_baseline(new_report, base, thresholds, None)["latency_comparable"]
    # off (0, the default): no latency check at all, whatever the machines
    off = compare_with_baseline(new_report, base, DEFAULTS["gates"]["baseline"], new_manifest)
    assert not [c for c in off["checks"] if c["metric"].startswith("latency")]
    assert {c["metric"] for c in off["checks"]} == {"top1_drop_vs_baseline_pct", "size_increase_vs_baseline_pct"}
