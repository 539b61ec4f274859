"""`report BUILD --device DEVICE_REPORT`: a device report (compile --bundle without TensorRT, here) merged into the
build's report, gate, JUnit, job summary and manifest; an edited one or one from another bundle refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from resnext_deploy.ci.baseline import load_baseline
from resnext_deploy.ci.device import read_device_report, seal
from resnext_deploy.cli import cli
from resnext_deploy.errors import ArtifactIntegrityError
from resnext_deploy.buildfolder.manifest import read_manifest

BUNDLE = "resnext_demo-jetson-orin-nx-bundle"
ENGINES = {"tensorrt-fp16", "tensorrt-int8", "tensorrt-dla0-fp16", "tensorrt-dla0-int8"}


@pytest.fixture(scope="module")
def device_report(jetson_build, tmp_path_factory):
    """The bundle unpacked "on the device" (a copy) and compiled there: exit 7 and its report.json."""
    device = tmp_path_factory.mktemp("device") / BUNDLE
    shutil.copytree(jetson_build.out_dir / BUNDLE, device)
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(device)])
    assert res.exit_code == 7, res.output
    return device / "report.json"


@pytest.fixture
def build_copy(jetson_build, tmp_path):
    out = tmp_path / "jetson-orin-nx"
    shutil.copytree(jetson_build.out_dir, out)
    return out


def test_merge_puts_the_device_rows_and_checks_into_report_gate_junit_summary(build_copy, device_report, tmp_path):
    before = json.loads((build_copy / "report.json").read_text())
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(device_report), "--junit",
                                   str(tmp_path / "j.xml"), "--summary", str(tmp_path / "s.md")])
    assert res.exit_code == 7, res.output  # every check passed, the engines are still pending on the device
    rep = json.loads((build_copy / "report.json").read_text())
    rows = {r["artifact"]: r for r in rep["results"]}
    assert {n for n, r in rows.items() if r.get("pending")} == ENGINES
    assert all("TensorRT engines were not built" in rows[e]["reason"] for e in ENGINES)
    assert rows["bundle-onnxruntime-qdq"]["measured_on"] == "device"
    assert rows["onnx-int8-int8"] == next(r for r in before["results"] if r["artifact"] == "onnx-int8-int8")
    device_checks = [c for c in rep["gate"]["checks"] if c["artifact"].startswith("bundle-onnxruntime-")]
    assert {c["metric"] for c in device_checks} == {"golden_agreement", "golden_max_abs_logit_diff", "golden_min_cosine"}
    workstation = [c for c in rep["gate"]["checks"] if c["artifact"] == "onnx-int8-int8" and not c.get("skipped")]
    assert workstation and rep["gate"]["passed"]
    # device rows are never held to the workstation's accuracy gates (golden images only)
    assert not [c for c in rep["gate"]["checks"] if c["artifact"].startswith("bundle-") and c["metric"] == "top1_drop_pct"]
    junit = (tmp_path / "j.xml").read_text()
    assert "bundle-onnxruntime-qdq" in junit and "golden_min_cosine" in junit
    assert "bundle-onnxruntime-qdq" in (tmp_path / "s.md").read_text()
    m = read_manifest(build_copy)
    sealed = json.loads(device_report.read_text())["device_report"]["sha256"]
    assert m["device"]["sha256_sealed"] == sealed and m["device"]["engines_pending"] == sorted(ENGINES)
    assert (build_copy / "device-report.json").read_bytes() == device_report.read_bytes()
    assert m["reports"]["device-report.json"]
    assert load_baseline(build_copy).report["device"]["bundle"] == BUNDLE  # verified: it can serve as a baseline
    regate = CliRunner().invoke(cli, ["report", str(build_copy), "--baseline", str(build_copy)])
    assert regate.exit_code == 0 and "gate PASSED" in regate.output, regate.output
    again = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(device_report)])
    assert again.exit_code == 7, again.output  # merging again replaces the device's rows and notes, never doubles them
    twice = json.loads((build_copy / "report.json").read_text())
    assert [r["artifact"] for r in twice["results"]] == [r["artifact"] for r in rep["results"]]
    assert twice["notes"] == rep["notes"] and len(twice["gate"]["checks"]) == len(rep["gate"]["checks"])


def test_an_edited_device_report_is_refused(build_copy, device_report, tmp_path):
    data = json.loads(device_report.read_text())
    row = next(r for r in data["results"] if r["artifact"] == "bundle-onnxruntime-qdq")
    row["max_abs_logit_diff"] = row["max_abs_logit_diff"] / 2
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(ArtifactIntegrityError, match="altered after the device wrote it"):
        read_device_report(edited)
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(edited)])
    assert res.exit_code == 2 and "edited.json" in res.output and "altered" in res.output
    assert not (build_copy / "device-report.json").exists()  # nothing merged


def test_a_report_from_another_bundle_is_refused_by_file(build_copy, device_report, tmp_path):
    data = json.loads(device_report.read_text())
    sec = data.pop("device_report")
    files = dict(sec["bundle_files"], **{"model-int8-qdq.onnx": "0" * 64})  # as a rebuilt bundle would differ
    other = tmp_path / "other.json"
    other.write_text(json.dumps(seal(data, sec["bundle"], files, sec["engines"])))  # a well-sealed report
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(other)])
    assert res.exit_code == 2, res.output
    assert "different bundle" in res.output and "model-int8-qdq.onnx (device 000000000000" in res.output
    renamed = dict(data)
    (tmp_path / "renamed.json").write_text(json.dumps(seal(renamed, "resnext_demo-jetson-agx-orin-bundle",
                                                           sec["bundle_files"], sec["engines"])))
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(tmp_path / "renamed.json")])
    assert res.exit_code == 2 and "resnext_demo-jetson-agx-orin-bundle" in res.output


def test_a_failed_device_check_fails_the_merged_gate(build_copy, device_report, tmp_path):
    data = json.loads(device_report.read_text())
    sec = data.pop("device_report")
    for c in data["gate"]["checks"]:
        if c["artifact"] == "bundle-onnxruntime-fp16" and c["metric"] == "golden_max_abs_logit_diff":
            c["threshold"], c["passed"] = 1e-9, False
    data["gate"]["passed"] = False
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(seal(data, sec["bundle"], sec["bundle_files"], sec["engines"])))
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(failing)])
    assert res.exit_code == 3, res.output
    assert "bundle-onnxruntime-fp16: golden_max_abs_logit_diff" in res.output


def test_device_needs_a_build_with_a_bundle(build_copy, device_report):
    m = json.loads((build_copy / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["kind"] != "tensorrt-bundle"]  # as an x86-cpu build's
    (build_copy / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(device_report)])
    assert res.exit_code == 2 and "made no TensorRT bundle" in res.output
