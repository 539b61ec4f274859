"""`report BUILD --device DEVICE_REPORT`: a device report (compile --bundle without TensorRT, here) merged into the
build's report, gate, JUnit, job summary and manifest; an edited, unsigned, forged or otherwise-signed one, or one
from another bundle, refused by name."""

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
from resnext_deploy.buildfolder.signing import create_key, load_signing_key, parse_public_key

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


@pytest.fixture(scope="module")
def key(device_report, device_key):
    """The device's signing key: the one compile --bundle made on first use and signed with."""
    return load_signing_key(device_key)


def _merge(build, report, key_text, *extra):
    return CliRunner().invoke(cli, ["report", str(build), "--device", str(report), "--device-key", key_text, *extra])


def test_merge_puts_the_device_rows_and_checks_into_report_gate_junit_summary(build_copy, device_report, key, tmp_path):
    before = json.loads((build_copy / "report.json").read_text())
    res = _merge(build_copy, device_report, key.public.text, "--junit", str(tmp_path / "j.xml"), "--summary",
                 str(tmp_path / "s.md"))
    assert res.exit_code == 7, res.output  # every check passed, the engines are still pending on the device
    assert f"signed by device key {key.public.key_id}" in res.output
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
    assert rep["device"]["signed_by"] == m["device"]["signed_by"] == key.public.key_id
    assert f"signed by device key {key.public.key_id}" in (build_copy / "report.md").read_text()
    assert (build_copy / "device-report.json").read_bytes() == device_report.read_bytes()
    assert m["reports"]["device-report.json"]
    assert load_baseline(build_copy).report["device"]["bundle"] == BUNDLE  # verified: it can serve as a baseline
    regate = CliRunner().invoke(cli, ["report", str(build_copy), "--baseline", str(build_copy)])
    assert regate.exit_code == 0 and "gate PASSED" in regate.output, regate.output
    again = _merge(build_copy, device_report, key.public.text)
    assert again.exit_code == 7, again.output  # merging again replaces the device's rows and notes, never doubles them
    twice = json.loads((build_copy / "report.json").read_text())
    assert [r["artifact"] for r in twice["results"]] == [r["artifact"] for r in rep["results"]]
    assert twice["notes"] == rep["notes"] and len(twice["gate"]["checks"]) == len(rep["gate"]["checks"])


def test_an_edited_device_report_is_refused(build_copy, device_report, key, tmp_path):
    data = json.loads(device_report.read_text())
    row = next(r for r in data["results"] if r["artifact"] == "bundle-onnxruntime-qdq")
    row["max_abs_logit_diff"] = row["max_abs_logit_diff"] / 2
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(ArtifactIntegrityError, match="altered after the device wrote it"):
        read_device_report(edited, key.public)
    res = _merge(build_copy, edited, key.public.text)
    assert res.exit_code == 2 and "edited.json" in res.output and "altered" in res.output
    assert not (build_copy / "device-report.json").exists()  # nothing merged


def _forged(device_report):
    """The issue's forgery: invented TensorRT rows (p50 0.05 ms), every check passed, the sha256 recomputed."""
    data = json.loads(device_report.read_text())
    sec = data.pop("device_report")
    for r in data["results"]:
        if r.get("pending"):
            r.pop("pending"), r.pop("reason")
            r.update(latency_ms={"p50": 0.05, "p90": 0.05, "p99": 0.05}, top1=1.0, agreement=1.0, max_abs_logit_diff=0.0)
    for c in data["gate"]["checks"]:
        c["passed"] = True
        c.pop("skipped", None)
    data["gate"]["passed"] = True
    return data, sec


def test_a_forged_report_with_a_recomputed_sha256_is_refused(build_copy, device_report, key, tmp_path):
    data, sec = _forged(device_report)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(seal(data, sec["bundle"], sec["bundle_files"], sec["engines"])))  # no key: unsigned
    res = _merge(build_copy, forged, key.public.text)
    assert res.exit_code == 2, res.output
    assert "forged.json' is not signed" in res.output and "gate PASSED" not in res.output
    # signed, but by a key of the forger's own: refused naming both keys
    other = create_key(tmp_path / "forger-key")
    forged.write_text(json.dumps(seal(data, sec["bundle"], sec["bundle_files"], sec["engines"], other)))
    res = _merge(build_copy, forged, key.public.text)
    assert res.exit_code == 2 and f"signed by key {other.public.key_id}, not by the pinned key {key.public.key_id}" in res.output
    # the device's real signature copied onto the forged content: the signature does not verify
    sealed = seal(data, sec["bundle"], sec["bundle_files"], sec["engines"])
    sealed["device_report"]["signature"] = json.loads(device_report.read_text())["device_report"]["signature"]
    forged.write_text(json.dumps(sealed))
    res = _merge(build_copy, forged, key.public.text)
    assert res.exit_code == 2 and "does not verify" in res.output and "altered after it was signed" in res.output
    assert not (build_copy / "device-report.json").exists()  # nothing merged


def test_no_pinned_key_refuses_and_says_which_key_signed(build_copy, device_report, key):
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(device_report)])
    assert res.exit_code == 2, res.output
    assert f"signed by key {key.public.key_id}, but no key is pinned" in res.output and "--device-key" in res.output
    res = _merge(build_copy, device_report, "not-a-key")
    assert res.exit_code == 2 and "'not-a-key' is neither an Ed25519 public key" in res.output


def test_the_recipe_pins_the_device_key(build_copy, device_report, key, jetson_recipe, tmp_path):
    recipe = tmp_path / "pinned.toml"
    recipe.write_text(jetson_recipe.read_text() + f'\n[signing]\ndevice_key = "{key.public.text}"\n')
    res = CliRunner().invoke(cli, ["report", str(build_copy), "--device", str(device_report), "--recipe", str(recipe)])
    assert res.exit_code == 7 and f"signed by device key {key.public.key_id}" in res.output, res.output
    hex_key = parse_public_key(key.public.text).raw.hex()  # the same key as hex, from a file
    (tmp_path / "device.pub").write_text(hex_key + "\n")
    assert _merge(build_copy, device_report, str(tmp_path / "device.pub")).exit_code == 7


def test_a_report_from_another_bundle_is_refused_by_file(build_copy, device_report, key, tmp_path):
    data = json.loads(device_report.read_text())
    sec = data.pop("device_report")
    files = dict(sec["bundle_files"], **{"model-int8-qdq.onnx": "0" * 64})  # as a rebuilt bundle would differ
    other = tmp_path / "other.json"
    other.write_text(json.dumps(seal(data, sec["bundle"], files, sec["engines"], key)))  # well sealed and signed
    res = _merge(build_copy, other, key.public.text)
    assert res.exit_code == 2, res.output
    assert "different bundle" in res.output and "model-int8-qdq.onnx (device 000000000000" in res.output
    renamed = dict(data)
    (tmp_path / "renamed.json").write_text(json.dumps(seal(renamed, "resnext_demo-jetson-agx-orin-bundle",
                                                           sec["bundle_files"], sec["engines"], key)))
    res = _merge(build_copy, tmp_path / "renamed.json", key.public.text)
    assert res.exit_code == 2 and "resnext_demo-jetson-agx-orin-bundle" in res.output


def test_a_failed_device_check_fails_the_merged_gate(build_copy, device_report, key, tmp_path):
    data = json.loads(device_report.read_text())
    sec = data.pop("device_report")
    for c in data["gate"]["checks"]:
        if c["artifact"] == "bundle-onnxruntime-fp16" and c["metric"] == "golden_max_abs_logit_diff":
            c["threshold"], c["passed"] = 1e-9, False
    data["gate"]["passed"] = False
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(seal(data, sec["bundle"], sec["bundle_files"], sec["engines"], key)))
    res = _merge(build_copy, failing, key.public.text)
    assert res.exit_code == 3, res.output
    assert "bundle-onnxruntime-fp16: golden_max_abs_logit_diff" in res.output


def test_device_needs_a_build_with_a_bundle(build_copy, device_report, key):
    m = json.loads((build_copy / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["kind"] != "tensorrt-bundle"]  # as an x86-cpu build's
    (build_copy / "manifest.json").write_text(json.dumps(m))
    res = _merge(build_copy, device_report, key.public.text)
    assert res.exit_code == 2 and "made no TensorRT bundle" in res.output
