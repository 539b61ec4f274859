"""End to end on the demo: the build directory, the numbers, the manifest, the gate, re-runs."""

from __future__ import annotations

import json

from click.testing import CliRunner

from resnext_deploy.buildfolder.artifacts import sha256_file
from resnext_deploy.cli import cli
from resnext_deploy.errors import EXIT_GATE_FAILED, EXIT_OK
from resnext_deploy.buildfolder.manifest import read_manifest, verify_artifacts
from resnext_deploy.report import read_report


def test_build_directory_has_every_artifact(demo_build):
    out = demo_build.out_dir
    for rel in [
        "manifest.json", "report.json", "report.md",
        "onnx/model-fp32.onnx", "onnx/model-int8-uint8.onnx",
        "onnxruntime/model-fp32.ort.onnx", "onnxruntime/model-int8.ort.onnx",
        "openvino/model-fp32.xml", "openvino/model-fp32.bin", "openvino/model-int8.xml", "openvino/model-int8.bin",
    ]:
        assert (out / rel).is_file(), rel
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging directories left behind"


def test_int8_within_one_point_of_fp32_on_both_backends(demo_build):
    rows = {r["artifact"]: r for r in demo_build.report["results"]}
    ref = rows["onnx-fp32"]
    assert ref["top1"] >= 0.97  # the demo model is really trained
    assert rows["pytorch-fp32"]["top1"] == ref["top1"]
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        assert rows[name]["agreement"] == 1.0
        assert rows[name]["max_abs_logit_diff"] < 1e-3
    for name in ("onnxruntime-int8", "openvino-int8"):
        assert (ref["top1"] - rows[name]["top1"]) * 100 <= 1.0, name
        assert rows[name]["agreement"] >= 0.98
        assert 0.99 < rows[name]["min_cosine"] <= 1.0
        # INT8 really is smaller than FP32 on disk
        assert rows[name]["size_bytes"] < rows[name.replace("int8", "fp32")]["size_bytes"]
    assert demo_build.gate.passed
    assert demo_build.report["dataset"]["validation_images"] == 500


def test_report_latency_fields_are_consistent(demo_build):
    for r in demo_build.report["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_ips"] > 0 and r["throughput_batch"] == 8
        assert r["images"] == 500


def test_openvino_runs_int8_convolutions_and_records_the_precision_hint(demo_build):
    rows = {r["artifact"]: r for r in demo_build.report["results"]}
    exe = rows["openvino-int8"]["details"]["execution"]
    assert exe["inference_precision"] == "f32"
    precisions = exe["convolutions_by_precision"]
    assert sum(v for k, v in precisions.items() if k in ("u8", "i8")) == 13  # every conv runs in int8
    assert rows["openvino-fp32"]["details"]["execution"]["convolutions_by_precision"] == {"f32": 13}
    manifest = read_manifest(demo_build.out_dir)
    ov = [a for a in manifest["artifacts"] if a["backend"] == "openvino"]
    assert {a["settings"]["inference_precision"] for a in ov} == {"f32"}


def test_manifest_hashes_match_the_files(demo_build):
    out = demo_build.out_dir
    manifest = read_manifest(out)
    assert verify_artifacts(manifest, out) == []
    for name, digest in manifest["reports"].items():
        assert sha256_file(out / name) == digest
    names = {a["name"]: a for a in manifest["artifacts"]}
    assert names["onnxruntime-int8"]["parent"] == "onnx-int8-uint8"
    # both runtimes compile the uint8-activation Q/DQ model on x86 (the faster flavour for each)
    assert names["openvino-int8"]["parent"] == "onnx-int8-uint8"
    assert names["onnx-int8-uint8"]["parent"] == "onnx-fp32" and "onnx-int8-int8" not in names
    assert manifest["preprocessing"]["crop"] == 32
    assert manifest["inputs"]["model"]["sha256"] == sha256_file(manifest["inputs"]["model"]["path"])
    assert {"onnxruntime", "openvino", "onnx", "numpy"} <= set(manifest["versions"])
    assert manifest["recipe"]["calibration"]["method"] == "minmax"


def test_tampering_is_detected(demo_build, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_build.out_dir, copy)
    with open(copy / "openvino" / "model-int8.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    assert verify_artifacts(read_manifest(copy), copy) == ["openvino/model-int8.bin: sha256 differs from the manifest"]


def test_cli_build_prints_the_table_and_rerun_replaces_the_build(tmp_path, fast_recipe):
    out = tmp_path / "b"
    runner = CliRunner()
    first = runner.invoke(cli, ["-q", "build", "--recipe", str(fast_recipe), "--out", str(out)])
    assert first.exit_code == EXIT_OK, first.output
    assert "openvino-int8" in first.output and "gate PASSED" in first.output
    before = json.loads((out / "manifest.json").read_text())["created"]
    (out / "stray-file").write_text("left by someone")
    second = runner.invoke(cli, ["-q", "build", "--recipe", str(fast_recipe), "--out", str(out)])
    assert second.exit_code == EXIT_OK, second.output
    assert not (out / "stray-file").exists()  # replaced whole, not merged
    manifest = read_manifest(out)
    assert verify_artifacts(manifest, out) == []
    assert read_report(out)["gate"]["passed"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert manifest["created"] >= before


def test_gate_fails_for_real_when_calibration_collapses(collapsed_build):
    """One constant image as calibration: activation ranges collapse, INT8 is useless, the gate says so.

    Plain INT8 only (the session's collapsed build, tests/conftest.py): the accuracy fallback (on by default) would
    leave the stem conv in float and pass."""
    out, no_fallback = collapsed_build["out"], collapsed_build["recipe"]
    assert collapsed_build["exit_code"] == EXIT_GATE_FAILED, collapsed_build["output"]
    assert "gate FAILED" in collapsed_build["output"]
    report = read_report(out)
    assert report["gate"]["passed"] is False
    failed = {c["artifact"] for c in report["gate"]["checks"] if not c["passed"]}
    assert {"onnxruntime-int8", "openvino-int8"} <= failed
    assert report["dataset"]["calibration_images"] == 1
    # The report command re-gates a build with the same verdict
    again = CliRunner().invoke(cli, ["report", str(out), "--recipe", str(no_fallback), "--json"])
    assert again.exit_code == EXIT_GATE_FAILED
    regated = json.loads(again.output)
    assert regated["export"] == report["export"] and regated["check"] == report["check"]  # build sections kept


def test_a_lenient_recipe_passes_the_same_collapsed_build(tmp_path, fast_recipe, collapsed_build):
    out = collapsed_build["out"]
    lenient = tmp_path / "lenient.toml"
    # every accuracy check off: the drop, MLPerf's ratio, and agreement on all and on confident images
    lenient.write_text(fast_recipe.read_text() + "\n[gates]\nmax_top1_drop = 100.0\nmin_top1_ratio = 0.0\nmin_agreement = 0.0\n"
                       "min_agreement_confident = 0.0\nmin_cosine = 0.0\n")
    res = CliRunner().invoke(cli, ["report", str(out), "--recipe", str(lenient), "--out", str(tmp_path / "r")])
    assert res.exit_code == EXIT_OK, res.output
    assert (tmp_path / "r" / "report.md").is_file()
