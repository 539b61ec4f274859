"""A Jetson build on a machine without TensorRT: the bundle, its archive, the pending report, compile --bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from resnext_deploy.tensorrt.bundle import read_bundle, verify_bundle
from resnext_deploy.tensorrt.calib_cache import read_calibration_cache, scales_from_qdq, tensor_names
from resnext_deploy.cli import cli
from resnext_deploy.errors import BadInputError
from resnext_deploy.buildfolder.manifest import read_manifest, verify_artifacts
from resnext_deploy.tensorrt.qdq_rules import check_qdq_model

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_FILES = {
    "README.md", "manifest.json", "recipe.toml", "model-fp32.onnx", "model-int8-qdq.onnx", "calibration.cache",
    "model-fp16.onnx", "model-int8-qdq-fp16.onnx",
    "golden/inputs.npy", "golden/reference-fp32.npy", "golden/reference-int8-qdq.npy", "golden/golden.json",
    "wheels/resnext_deploy-0.1.0-py3-none-any.whl", "requirements.txt", "dependencies.txt", "SHA256SUMS",
}
ENGINES = ["tensorrt-fp16", "tensorrt-int8", "tensorrt-dla0-fp16", "tensorrt-dla0-int8"]


@pytest.fixture(scope="module")
def bundle_dir(jetson_build):
    return jetson_build.out_dir / "resnext_demo-jetson-orin-nx-bundle"


def _files(root: Path):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_build_ends_in_a_bundle_and_its_archive(jetson_build, bundle_dir):
    assert jetson_build.passed
    assert _files(bundle_dir) == BUNDLE_FILES
    assert (jetson_build.out_dir / "resnext_demo-jetson-orin-nx-bundle.tar.gz").is_file()
    assert verify_bundle(bundle_dir) == []
    # the build's own manifest lists every bundle file and the archive, and they verify
    manifest = read_manifest(jetson_build.out_dir)
    art = next(a for a in manifest["artifacts"] if a["name"] == "tensorrt-bundle")
    assert set(art["files"]) == {"resnext_demo-jetson-orin-nx-bundle.tar.gz"} | {
        f"resnext_demo-jetson-orin-nx-bundle/{f}" for f in BUNDLE_FILES}
    assert verify_artifacts(manifest, jetson_build.out_dir) == []


def test_report_marks_engines_pending_and_gates_the_qdq_model(jetson_build):
    rows = {r["artifact"]: r for r in jetson_build.report["results"]}
    assert [n for n in rows if rows[n].get("pending")] == ENGINES
    assert all(rows[n]["backend"] == "tensorrt" and "compile --bundle" in rows[n]["reason"] for n in ENGINES)
    q = rows["onnx-int8-int8"]  # the model TensorRT's INT8 engine is built from, measured in ONNX Runtime
    assert q["backend"] == "onnxruntime" and q["precision"] == "int8" and q["images"] == 100
    assert q["agreement"] >= 0.98 and q["max_abs_logit_diff"] > 0
    gated = {c["artifact"] for c in jetson_build.report["gate"]["checks"] if not c.get("skipped")}
    assert "onnx-int8-int8" in gated and not gated & set(ENGINES)
    # the engines' checks are listed as skipped (CI shows them so), with the reason, and do not fail the gate
    skipped = [c for c in jetson_build.report["gate"]["checks"] if c.get("skipped")]
    assert {c["artifact"] for c in skipped} == set(ENGINES)
    assert all(c["passed"] and c["value"] is None and "compile --bundle" in c["skipped"] for c in skipped)
    measured = {c["metric"] for c in jetson_build.report["gate"]["checks"] if c["artifact"] == "onnx-int8-int8"}
    assert {c["metric"] for c in skipped if c["artifact"] == ENGINES[0]} == measured
    md = (jetson_build.out_dir / "report.md").read_text()
    assert md.count("pending on device") == len(ENGINES)


def test_manifest_hashes_and_contents(bundle_dir):
    b = read_bundle(bundle_dir)
    m = b.manifest
    assert m["schema"] == "resnext-deploy/manifest" and m["target"] == "jetson-orin-nx"
    assert {a["name"]: a["path"] for a in m["artifacts"]} == {"onnx-fp32": "model-fp32.onnx", "onnx-int8-int8": "model-int8-qdq.onnx"}
    assert set(b.info["files"]) == BUNDLE_FILES - {"manifest.json", "model-fp32.onnx", "model-int8-qdq.onnx", "SHA256SUMS"}
    assert [e["name"] for e in b.info["engines"]] == ENGINES
    dla_int8 = b.info["engines"][3]
    assert (dla_int8["source"], dla_int8["calibration_cache"], dla_int8["min_batch"], dla_int8["max_batch"]) == ("fp32", True, 1, 1)
    assert m["preprocessing"]["crop"] == 32 and m["labels"] == [str(i) for i in range(10)]
    assert b.tensorrt["dla_core"] == 0 and b.recipe["evaluation"]["iterations"] == 5
    assert b.info["qdq_check"]["passed"] and check_qdq_model(bundle_dir / "model-int8-qdq.onnx", require_qdq=True).passed


def test_golden_outputs_recomputed_with_onnxruntime_match(bundle_dir):
    b = read_bundle(bundle_dir)
    g = b.golden
    assert g.inputs.shape == (12, 3, 32, 32) and g.inputs.dtype == np.float32
    assert len(g.labels) == 12 and sorted(set(g.labels.tolist())) == list(range(10))  # spread over every class
    sess = ort.InferenceSession(str(bundle_dir / "model-fp32.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": g.inputs})[0], g.reference_fp32, rtol=1e-5, atol=1e-5)
    q = ort.InferenceSession(str(bundle_dir / "model-int8-qdq.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(q.run(None, {"input": g.inputs})[0], g.reference_qdq, rtol=1e-5, atol=1e-5)
    assert (g.reference_fp32.argmax(1) == g.labels).mean() >= 0.9


def test_calibration_cache_matches_the_fp32_onnx_beside_it(bundle_dir):
    cache = read_calibration_cache(bundle_dir / "calibration.cache")
    assert cache.header == "TRT-100300-EntropyCalibration2"
    assert set(cache.scales) <= set(tensor_names(bundle_dir / "model-fp32.onnx"))
    assert cache.scales == scales_from_qdq(bundle_dir / "model-int8-qdq.onnx")


def test_readme_has_the_trtexec_lines(bundle_dir):
    text = (bundle_dir / "README.md").read_text()
    for fragment in [
        "resnext-deploy compile --bundle .",
        "trtexec --onnx=model-fp32.onnx --fp16 --minShapes=input:1x3x32x32 --optShapes=input:1x3x32x32 --maxShapes=input:8x3x32x32",
        "trtexec --onnx=model-int8-qdq.onnx --int8 --fp16",
        "--saveEngine=engines/tensorrt-int8.engine",
        "--timingCacheFile=engines/timing.cache",
        "--memPoolSize=workspace:1024",
        "trtexec --onnx=model-fp32.onnx --int8 --fp16 --calib=calibration.cache --shapes=input:1x3x32x32 --useDLACore=0 --allowGPUFallback",
        "TRT-100300-EntropyCalibration2",
    ]:
        assert fragment in text, fragment


def test_archive_unpacked_elsewhere_is_complete(jetson_build, bundle_dir, tmp_path):
    tar = jetson_build.out_dir / "resnext_demo-jetson-orin-nx-bundle.tar.gz"
    with tarfile.open(tar) as t:
        names = t.getnames()
        assert all(n == bundle_dir.name or n.startswith(bundle_dir.name + "/") for n in names)
        t.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    copy = tmp_path / bundle_dir.name
    assert _files(copy) == BUNDLE_FILES
    b = read_bundle(copy)
    np.testing.assert_array_equal(b.golden.inputs, read_bundle(bundle_dir).golden.inputs)
    for f in BUNDLE_FILES:
        assert (copy / f).read_bytes() == (bundle_dir / f).read_bytes(), f


def test_a_damaged_bundle_is_refused_naming_the_file(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / "golden" / "reference-fp32.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "golden" / "reference-fp32.npy").write_bytes(bytes(data))
    (copy / "calibration.cache").unlink()
    with pytest.raises(BadInputError) as err:
        read_bundle(copy)
    assert "golden/reference-fp32.npy: sha256 differs" in str(err.value) and "calibration.cache: missing" in str(err.value)
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(copy)])
    assert res.exit_code == 2 and "calibration.cache: missing" in res.output


def test_compile_bundle_without_tensorrt_checks_what_it_can_and_exits_7(bundle_dir, tmp_path):
    """No TensorRT here: hashes verified, golden inputs through the ONNX models (ONNX Runtime), engines pending."""
    copy = tmp_path / bundle_dir.name
    shutil.copytree(bundle_dir, copy)
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(copy), "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 7, res.output
    assert "TensorRT engines NOT built" in res.output and "Traceback" not in res.output
    assert not (copy / "engines").exists()  # no engine, nothing pretending to be one
    report = json.loads((copy / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["results"]}
    assert {n for n, r in rows.items() if r.get("pending")} == set(ENGINES)
    assert all("TensorRT engines were not built" in rows[e]["reason"] for e in ENGINES)
    measured = {n: r for n, r in rows.items() if not r.get("pending")}
    assert set(measured) == {"bundle-onnxruntime-fp32", "bundle-onnxruntime-fp16", "bundle-onnxruntime-qdq",
                             "bundle-onnxruntime-qdq-fp16"}
    assert measured["bundle-onnxruntime-fp32"]["max_abs_logit_diff"] < 1e-4  # the references were ORT's too
    g = read_bundle(copy).golden
    assert all(r["images"] == len(g.inputs) for r in measured.values())
    gated = {c["artifact"] for c in report["gate"]["checks"] if not c.get("skipped")}
    assert gated == {"bundle-onnxruntime-fp32", "bundle-onnxruntime-fp16", "bundle-onnxruntime-qdq"}
    assert {c["artifact"] for c in report["gate"]["checks"] if c.get("skipped")} == set(ENGINES)
    assert report["gate"]["passed"] and report["measured_on"] == "device" and report["engines_built"] is False
    assert any("NOT built" in n for n in report["notes"]) and any("not gated" in n for n in report["notes"])
    assert report["device_report"]["sha256"] and "model-int8-qdq.onnx" in report["device_report"]["bundle_files"]
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()


def test_compile_bundle_fails_3_when_a_model_misses_the_tolerance(bundle_dir, tmp_path):
    """A check that fails without TensorRT is exit 3, not 7: the FP16 tolerance tightened below the measured error."""
    copy = tmp_path / bundle_dir.name
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["recipe"]["backends"]["tensorrt"]["fp16_max_abs_diff"] = 1e-9
    (copy / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(copy)])
    assert res.exit_code == 3, res.output
    assert "bundle-onnxruntime-fp16: golden_max_abs_logit_diff" in res.output


def test_compile_needs_onnx_options_or_a_bundle():
    res = CliRunner().invoke(cli, ["compile", "--backend", "openvino"])
    assert res.exit_code == 2 and "--onnx" in res.output
    res = CliRunner().invoke(cli, ["compile", "--bundle", "x", "--precision", "int8"])
    assert res.exit_code == 2


_DEVICE_SCRIPT = r"""
import importlib.abc, json, sys
BLOCKED = {"torch", "onnx", "onnxruntime", "openvino", "PIL", "tomli", "nncf", "sklearn", "matplotlib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked on the device: {name}")
sys.meta_path.insert(0, Block())
from resnext_deploy.tensorrt.bundle import read_bundle
from resnext_deploy.errors import MissingDependencyError
from resnext_deploy.tensorrt.ondevice import compile_bundle
import resnext_deploy.tensorrt.backend, resnext_deploy.tensorrt.calib_cache, resnext_deploy.tensorrt.qdq_rules, resnext_deploy.cli
b = read_bundle(sys.argv[1])
try:
    compile_bundle(sys.argv[1])
    outcome = "built"
except MissingDependencyError as exc:
    outcome = f"exit {exc.exit_code}: {exc}"
print(json.dumps({"golden": list(b.golden.inputs.shape), "outcome": outcome,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_the_device_path_needs_only_numpy(bundle_dir):
    """Reading the bundle and `compile --bundle` import nothing but numpy (and TensorRT, absent here)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "toolkit"))
    proc = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, str(bundle_dir)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["golden"] == [12, 3, 32, 32] and out["heavy"] == []
    # neither TensorRT nor onnxruntime (blocked): nothing can check the models, and the message says what to install
    assert out["outcome"].startswith("exit 5:") and "TensorRT" in out["outcome"] and "pip3 install onnxruntime" in out["outcome"]


def test_cli_build_for_a_jetson_exits_0_and_shows_pending(jetson_recipe, tmp_path):
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(jetson_recipe), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert res.output.count("pending on device") == len(ENGINES) and "gate PASSED" in res.output
    assert (tmp_path / "b" / "resnext_demo-jetson-orin-nx-bundle.tar.gz").is_file()


def test_runtime_loads_the_bundle_before_its_engines_exist(bundle_dir):
    """Before `compile --bundle`, the runtime runs the bundle's ONNX in ONNX Runtime: the golden references."""
    from resnext_deploy import runtime

    g = read_bundle(bundle_dir).golden
    with runtime.load(bundle_dir) as clf:
        assert clf.backend == "onnxruntime"
        np.testing.assert_allclose(clf.logits(g.inputs), g.reference_qdq if clf.precision == "int8" else g.reference_fp32,
                                   rtol=1e-4, atol=1e-4)


def test_golden_tolerances_with_real_int8_logits(bundle_dir):
    """The device's checks, fed the Q/DQ model's real logits: they pass the recipe's INT8 tolerances and fail
    tolerances tighter than the measured error."""
    from resnext_deploy.evaluation.evaluate import compare_logits
    from resnext_deploy.tensorrt.ondevice import golden_checks

    b = read_bundle(bundle_dir)
    cmp = compare_logits(b.golden.reference_qdq, b.golden.reference_fp32)
    assert 0 < cmp["max_abs_logit_diff"] < b.tensorrt["int8_max_abs_diff"]
    checks = golden_checks("tensorrt-int8", "int8", cmp, b.tensorrt)
    assert [c.metric for c in checks] == ["golden_agreement", "golden_max_abs_logit_diff", "golden_min_cosine"]
    assert all(c.passed for c in checks)
    strict = dict(b.tensorrt, int8_max_abs_diff=cmp["max_abs_logit_diff"] / 2, int8_min_cosine=1.0)
    failed = {c.metric for c in golden_checks("tensorrt-int8", "int8", cmp, strict) if not c.passed}
    assert failed == {"golden_max_abs_logit_diff", "golden_min_cosine"}


def test_bundle_manifest_carries_the_workstation_gate(bundle_dir, jetson_build):
    gate = read_bundle(bundle_dir).manifest["gate"]
    assert gate["passed"] is True
    assert {c["artifact"] for c in gate["checks"] if not c.get("skipped")} == {"onnx-int8-int8"}


def test_int8_vs_fp16_note_says_which_is_faster():
    from resnext_deploy.tensorrt.ondevice import int8_vs_fp16_notes

    rows = [{"artifact": n, "latency_ms": {"p50": p}} for n, p in
            (("tensorrt-fp16", 1.0), ("tensorrt-int8", 1.25), ("tensorrt-dla0-fp16", 4.0), ("tensorrt-dla0-int8", 2.0))]
    notes = int8_vs_fp16_notes(rows)
    assert len(notes) == 2
    assert "tensorrt-int8 vs tensorrt-fp16" in notes[0] and "0.80x" in notes[0] and "not faster" in notes[0]
    assert "tensorrt-dla0-int8 vs tensorrt-dla0-fp16" in notes[1] and "2.00x" in notes[1] and "(faster" in notes[1]


_ORT_SESSIONS = r"""
import sys, onnxruntime as ort
so = ort.SessionOptions()
so.log_severity_level = 2  # warnings: ORT's notice of an initializer unused in the file ("not used by any node")
for f in sys.argv[1:]:
    ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
print("ok")
"""


def test_shipped_models_carry_no_unused_initializers(bundle_dir):
    """ONNX Runtime logs no 'Removing initializer ... not used by any node' for any model the bundle ships."""
    import onnx

    models = sorted(bundle_dir.glob("*.onnx"))
    assert len(models) == 4
    for path in models:
        m = onnx.load(str(path))
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        assert [t.name for t in m.graph.initializer if t.name not in used] == [], path.name
    proc = subprocess.run([sys.executable, "-c", _ORT_SESSIONS] + [str(p) for p in models], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert "not used by any node" not in proc.stderr and "Removing initializer" not in proc.stderr, proc.stderr[:2000]


def test_predict_on_the_jetson_build_says_what_runs_and_that_engines_are_pending(jetson_build, bundle_dir):
    images = sorted((ROOT / "calibration" / "digits" / "val" / "3").glob("*.png"))[:2]
    res = CliRunner().invoke(cli, ["predict", "--build", str(jetson_build.out_dir), "--top-k", "1"] + [str(p) for p in images])
    assert res.exit_code == 0, res.output
    assert "using onnx-int8-int8 (onnxruntime, int8)" in res.output
    assert "no TensorRT engines yet for jetson-orin-nx: they are pending on the device" in res.output
    res = CliRunner().invoke(cli, ["predict", "--build", str(jetson_build.out_dir), "--json"] + [str(p) for p in images])
    assert res.exit_code == 0 and "pending on the device" in res.output  # --json too (stderr; stdout is the JSON)
    res = CliRunner().invoke(cli, ["predict", "--build", str(bundle_dir), "--top-k", "1"] + [str(p) for p in images])
    assert res.exit_code == 0 and "using onnx-int8-int8 (onnxruntime, int8)" in res.output
    assert "note:" not in res.output  # on the bundle the runtime's own warning says it (runtime/selection.py)


# ------------------------------------------------------------------ what the device checks before using a bundle


def _edited_copy(bundle_dir, tmp_path, edit):
    copy = tmp_path / bundle_dir.name
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / "manifest.json").read_text())
    edit(m, copy)
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def test_manifest_paths_outside_the_bundle_are_refused_unopened(bundle_dir, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("not the bundle's")

    def escape(m, copy):
        m["bundle"]["files"]["../../../etc/hostname"] = "0" * 64

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "a", escape))])
    assert res.exit_code == 2 and "'../../../etc/hostname', which leads outside the bundle" in res.output, res.output

    def link(m, copy):  # a symbolic link out of the bundle, its hash rewritten consistently
        (copy / "golden" / "golden.json").unlink()
        (copy / "golden" / "golden.json").symlink_to(outside)
        m["bundle"]["files"]["golden/golden.json"] = hashlib.sha256(outside.read_bytes()).hexdigest()

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "b", link))])
    assert res.exit_code == 2 and "'golden/golden.json', which leads outside the bundle" in res.output, res.output

    def absolute(m, copy):
        m["artifacts"][0]["files"] = {"/etc/hostname": "0" * 64}

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "c", absolute))])
    assert res.exit_code == 2 and "'/etc/hostname': only relative paths inside the bundle" in res.output


def test_unsafe_engine_names_and_out_of_range_tolerances_are_refused(bundle_dir, tmp_path):
    def name(m, copy):
        m["bundle"]["engines"][0]["name"] = "../../.bashrc"

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "a", name))])
    assert res.exit_code == 2 and "engine name '../../.bashrc' is not a safe file name" in res.output, res.output
    assert not (tmp_path / "a" / bundle_dir.name / "report.json").exists()

    def tolerances(m, copy):
        m["recipe"]["backends"]["tensorrt"].update(int8_min_cosine=-1.5, int8_max_abs_diff=1e9)

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "b", tolerances))])
    assert res.exit_code == 2 and "int8_max_abs_diff = 1000000000.0" in res.output and "int8_min_cosine = -1.5" in res.output

    def gates(m, copy):  # the recipe's own range checks (recipes.RANGES), as on the workstation
        m["recipe"]["evaluation"]["iterations"] = 0

    res = CliRunner().invoke(cli, ["compile", "--bundle", str(_edited_copy(bundle_dir, tmp_path / "c", gates))])
    assert res.exit_code == 2 and "evaluation.iterations = 0" in res.output, res.output


def test_sha256sums_and_the_hash_pinned_wheel(bundle_dir, tmp_path):
    """`sha256sum -c SHA256SUMS` passes on the bundle; pip installs the wheel only with the sha256 requirements.txt pins."""
    done = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle_dir, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {ln.split("  ", 1)[1] for ln in (bundle_dir / "SHA256SUMS").read_text().splitlines()}
    assert listed == BUNDLE_FILES - {"SHA256SUMS"}
    deps = (bundle_dir / "dependencies.txt").read_text()
    assert "cryptography>=41" in deps and "numpy>=1.21" in deps and "torch" not in deps
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--require-hashes", "-r",
           "requirements.txt"]
    ok = subprocess.run(pip, cwd=copy, capture_output=True, text=True)
    assert ok.returncode == 0 and "Would install resnext-deploy" in ok.stdout, ok.stdout + ok.stderr
    wheel = next((copy / "wheels").glob("*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # a swapped wheel
    bad = subprocess.run(pip, cwd=copy, capture_output=True, text=True)
    assert bad.returncode != 0 and "DO NOT MATCH THE HASHES" in bad.stderr
    checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=copy, capture_output=True, text=True)
    assert checked.returncode != 0 and f"wheels/{wheel.name}: FAILED" in checked.stdout
    readme = (bundle_dir / "README.md").read_text()
    order = [readme.index(s) for s in ("tar xzf", "sha256sum -c SHA256SUMS", "-r dependencies.txt",
                                        "--no-deps --require-hashes -r requirements.txt", "resnext-deploy compile --bundle .")]
    assert order == sorted(order)


def test_the_readme_install_section_comes_from_the_manifest(bundle_dir):
    """The README's install block and its words are the template's, from manifest.json's bundle.install alone."""
    from resnext_deploy.tensorrt.handoff import device_steps
    from resnext_deploy.tensorrt.readme import render_readme

    readme = (bundle_dir / "README.md").read_text()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    install = manifest["bundle"]["install"]
    wheel = bundle_dir / install["wheel"]
    assert install["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"{install['wheel']} --hash=sha256:{install['wheel_sha256']}" in (bundle_dir / "requirements.txt").read_text()
    assert (bundle_dir / "dependencies.txt").read_text().splitlines()[2:] == install["requires"]
    section = readme.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    assert "```bash\nsha256sum -c SHA256SUMS\npython3 -m pip install -r dependencies.txt\n" \
           "python3 -m pip install --no-deps --require-hashes -r requirements.txt\n```" in section
    assert f"`{install['wheel']}`" in section and install["wheel_sha256"] in section
    assert all(r in section for r in install["requires"])
    # any past bundle's README can be rebuilt from its manifest
    assert render_readme(manifest, device_steps(bundle_dir.name, f"{bundle_dir.name}.tar.gz")) == readme


def test_a_workstation_signed_bundle_is_verified_where_the_device_pins_its_key(jetson_recipe, tmp_path):
    from resnext_deploy.buildfolder.signing import create_key

    ws = create_key(tmp_path / "workstation-key")
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(jetson_recipe), "--out", str(tmp_path / "b"),
                                   "--sign-key", str(ws.path)])
    assert res.exit_code == 0, res.output
    assert f"manifest signed by workstation key {ws.public.key_id}" in res.output
    tar = tmp_path / "b" / "resnext_demo-jetson-orin-nx-bundle.tar.gz"
    assert f"tarball sha256: {hashlib.sha256(tar.read_bytes()).hexdigest()}" in res.output
    signed = tmp_path / "b" / "resnext_demo-jetson-orin-nx-bundle"
    device = tmp_path / "device" / signed.name
    shutil.copytree(signed, device)
    ok = CliRunner().invoke(cli, ["compile", "--bundle", str(device), "--workstation-key", str(ws.path) + ".pub"])
    assert ok.exit_code == 7 and f"signed by the pinned workstation key {ws.public.key_id}" in ok.output, ok.output
    assert json.loads((device / "report.json").read_text())["device_report"]["bundle_signed_by"] == ws.public.key_id
    # a swapped wheel with the manifest and SHA256SUMS rewritten consistently: the signature no longer verifies
    swapped = tmp_path / "swapped" / signed.name
    shutil.copytree(signed, swapped)
    wheel = next((swapped / "wheels").glob("*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    m = json.loads((swapped / "manifest.json").read_text())
    m["bundle"]["files"][f"wheels/{wheel.name}"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (swapped / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(swapped), "--workstation-key", ws.public.text])
    assert res.exit_code == 2 and "does not verify" in res.output, res.output
    other = create_key(tmp_path / "other")
    res = CliRunner().invoke(cli, ["compile", "--bundle", str(signed), "--workstation-key", other.public.text])
    assert res.exit_code == 2 and f"signed by key {ws.public.key_id}, not by the pinned key {other.public.key_id}" in res.output


def test_an_unsigned_bundle_is_refused_where_a_workstation_key_is_pinned(bundle_dir, tmp_path, device_key):
    from resnext_deploy.buildfolder.signing import create_key

    ws = create_key(tmp_path / "ws")
    pin = device_key.parent / "config" / "resnext-deploy" / "workstation-key.pub"  # the device's pinned key file
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(ws.public.text + "\n")
    try:
        res = CliRunner().invoke(cli, ["compile", "--bundle", str(bundle_dir)])
    finally:
        pin.unlink()
    assert res.exit_code == 2 and "manifest.json' is not signed" in res.output, res.output
