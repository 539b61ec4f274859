"""INT8 that stays right on every x86 CPU: 7-bit weights for the x86-cpu target, full range for x86-cpu-vnni,
the build machine's ISA in manifest and report, runtime.load's warning and ONNX Runtime's guard.

Where the expectation depends on this machine's ISA the test asserts per ISA. OpenVINO's CPU plugin honours
oneDNN's ONEDNN_MAX_CPU_ISA, so its AVX2 (saturating) path is exercised on any machine; ONNX Runtime's MLAS has
no such switch, so its AVX2 path is measured only where the CPU is one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resnext_deploy import backends, runtime
from resnext_deploy.host.cpu import host_cpu, parse_cpuinfo
from resnext_deploy.evaluation.evaluate import compare_logits, predict_all, topk_accuracy
from resnext_deploy.evaluation.gate import accuracy_checks
from resnext_deploy.data.datasets import load_labeled
from resnext_deploy.preprocess import Preprocessing
from resnext_deploy.recipes import load_recipe

needs_openvino = pytest.mark.skipif(not backends.get("openvino").available(), reason="openvino is not installed")
ZEN3 = parse_cpuinfo("model name\t: AMD EPYC 7763 64-Core Processor\nflags\t: sse4_2 avx fma avx2 bmi2\n")
HOST = host_cpu()


def _max_abs_weight(qdq: Path) -> int:
    proto = onnx.load(str(qdq))
    return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8)


@pytest.fixture(scope="module")
def vnni_build(tmp_path_factory):
    """The demo for x86-cpu-vnni (full-range weights), quickly, without the fallback (it must not hide saturation)."""
    from resnext_deploy.pipeline.build import build

    recipe = tmp_path_factory.mktemp("recipes") / "vnni.toml"
    recipe.write_text(
        'target = "x86-cpu-vnni"\n[quantize]\nisa_class = "vnni"\n[backends.onnxruntime]\nprecisions = ["fp32", "int8"]\n'
        '[backends.openvino]\nprecisions = ["int8"]\n[evaluation]\nwarmup = 1\niterations = 5\n[fallback]\nenabled = false\n'
    )
    return build(model=None, recipe_path=recipe, out=tmp_path_factory.mktemp("vnni-build") / "x86-cpu-vnni")


def test_recipes_name_their_cpu_class_and_weight_range():
    from resnext_deploy.pipeline.quantize import weight_range_for

    expect = {"x86-cpu": ("x86-64", "7bit"), "x86-cpu-vnni": ("vnni", "full"), "x86-cpu-amx": ("vnni", "full"), "jetson-orin-nano": ("none", "full"), "x86-gpu": ("none", "full")}
    for target, (isa, weights) in expect.items():
        q = load_recipe(target=target).section("quantize")
        assert (q["isa_class"], weight_range_for(q)) == (isa, weights)


def test_default_x86_int8_stays_close_to_float_on_this_cpu(demo_build):
    """The check that was missing: plain INT8 of the default recipe (the fallback never ran) keeps min logit
    cosine >= 0.98 and agreement >= 98% against float, for ONNX Runtime and OpenVINO, on whatever CPU runs this."""
    report = demo_build.report
    assert "fallback" not in report, f"the fallback ran on {HOST.model} ({HOST.isa}): {report.get('fallback', {}).get('excluded')}"
    rows = {r["artifact"]: r for r in report["results"]}
    for name in ("onnxruntime-int8", "openvino-int8"):
        assert rows[name]["min_cosine"] >= 0.98 and rows[name]["agreement"] >= 0.98, (name, HOST.isa, rows[name])
        assert rows[name]["top1"] >= rows["onnx-fp32"]["top1"] - 1.0


def test_manifest_and_report_name_the_build_isa_and_the_target_class(demo_build):
    out, manifest, report = demo_build.out_dir, demo_build.manifest, demo_build.report
    assert manifest["isa"]["build"]["isa"] == HOST.isa and manifest["isa"]["target"] == "x86-64"
    arts = {a["name"]: a for a in manifest["artifacts"]}
    for name in ("onnx-int8-uint8", "onnxruntime-int8", "openvino-int8"):
        assert arts[name]["settings"]["weight_range"] == "7bit", name
    assert _max_abs_weight(out / arts["onnx-int8-uint8"]["path"]) == 64  # ORT's reduce_range: [-64, 64]
    assert report["isa"] == {"build": HOST.to_dict(), "target": "x86-64", "weight_range": "7bit",
                             "kernels_differ": HOST.exact_u8s8 is True}
    md = (out / "report.md").read_text()
    assert f"measured on {HOST.model} (ISA {HOST.isa}" in md and "made for `x86-64` CPUs, 7bit weights" in md
    measured_note = any("measured with the build machine's kernels" in n for n in report["notes"])
    if HOST.exact_u8s8:  # a VNNI/AMX build machine is not the weakest CPU the x86-cpu target covers
        assert measured_note
    else:
        assert not measured_note


def test_vnni_target_keeps_full_range_weights(vnni_build):
    arts = {a["name"]: a for a in vnni_build.manifest["artifacts"]}
    assert arts["onnx-int8-uint8"]["settings"]["weight_range"] == "full"
    assert _max_abs_weight(vnni_build.out_dir / arts["onnx-int8-uint8"]["path"]) == 127
    assert vnni_build.manifest["isa"]["target"] == "vnni"


def test_full_range_on_a_cpu_without_vnni_is_warned_and_ort_guarded(vnni_build, monkeypatch, caplog):
    """Loading on this machine warns exactly when it has no VNNI; on a Zen 3 (its ISA given to the check) it warns,
    names the CPU and the safe target, and ONNX Runtime runs with session.x64quantprecision."""
    from resnext_deploy.runtime import classifier

    with caplog.at_level(logging.WARNING, logger="resnext_deploy.runtime"):
        with runtime.load(vnni_build.out_dir, backend="onnxruntime", precision="int8") as clf:
            here = clf.details["x64quantprecision"]
    warned = [r.getMessage() for r in caplog.records if "no VNNI" in r.getMessage()]
    assert bool(warned) == (HOST.exact_u8s8 is False) and here == (HOST.exact_u8s8 is False)

    caplog.clear()
    monkeypatch.setattr(classifier, "host_cpu", lambda: ZEN3)
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.runtime"):
        with runtime.load(vnni_build.out_dir, backend="onnxruntime", precision="int8") as clf:
            assert clf.details["x64quantprecision"] is True
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "AMD EPYC 7763" in msg and "ISA avx2" in msg and "--target x86-cpu" in msg and "x64quantprecision" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.runtime"):
        with runtime.load(vnni_build.out_dir, backend="onnxruntime", precision="fp32"):
            pass
    assert not [r for r in caplog.records if "no VNNI" in r.getMessage()]  # FP32 has nothing to saturate


@needs_openvino
def test_openvino_full_range_warns_without_a_guard(vnni_build, monkeypatch, caplog):
    from resnext_deploy.runtime import classifier

    monkeypatch.setattr(classifier, "host_cpu", lambda: ZEN3)
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.runtime"):
        with runtime.load(vnni_build.out_dir, backend="openvino", precision="int8"):
            pass
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "openvino-int8 has full-range INT8 weights (made for vnni CPUs)" in msg and "openvino has no runtime guard" in msg


def test_seven_bit_artifacts_load_without_a_warning_anywhere(demo_build, monkeypatch, caplog):
    from resnext_deploy.runtime import classifier

    monkeypatch.setattr(classifier, "host_cpu", lambda: ZEN3)
    with caplog.at_level(logging.WARNING, logger="resnext_deploy.runtime"):
        with runtime.load(demo_build.out_dir, backend="onnxruntime", precision="int8"):
            pass
    assert not [r for r in caplog.records if "no VNNI" in r.getMessage()]


def _ort_logits(model: Path, data: np.ndarray, guard: str, optimized: Path = None) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1" if guard == "on" else "0")
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: data})[0]


def _uint8_initializers(path: Path) -> int:
    return sum(1 for i in onnx.load(str(path)).graph.initializer if i.data_type == onnx.TensorProto.UINT8)


def test_ort_guard_is_exact_and_leaves_seven_bit_weights_alone(vnni_build, demo_build, tmp_path):
    """session.x64quantprecision rewrites full-range int8 weights to uint8 (U8U8 kernels, which cannot saturate)
    and leaves 7-bit weights as they are (their U8S8 kernels are exact already)."""
    spec = Preprocessing.from_dict(vnni_build.manifest["preprocessing"])
    data = np.asarray(load_labeled(vnni_build.manifest["inputs"]["validation"]["folder"], spec, None).data)
    ref = _ort_logits(vnni_build.out_dir / "onnx" / "model-fp32.onnx", data, "off")
    full = vnni_build.out_dir / "onnx" / "model-int8-uint8.onnx"
    guarded = _ort_logits(full, data, "on", tmp_path / "full-on.onnx")
    plain = _ort_logits(full, data, "off", tmp_path / "full-off.onnx")
    err = compare_logits(guarded, ref)
    assert err["min_cosine"] >= 0.98 and err["agreement"] >= 0.98, (HOST.isa, err)
    if _uint8_initializers(tmp_path / "full-on.onnx") == _uint8_initializers(tmp_path / "full-off.onnx"):
        pytest.fail(f"ORT did not rewrite the full-range weights with the guard on {HOST.model} ({HOST.isa})")
    if HOST.exact_u8s8:  # VNNI: U8S8 cannot saturate, so the exact U8U8 path gives the very same logits
        np.testing.assert_array_equal(guarded, plain)
    seven = demo_build.out_dir / "onnx" / "model-int8-uint8.onnx"
    _ort_logits(seven, data[:8], "on", tmp_path / "7-on.onnx")
    _ort_logits(seven, data[:8], "off", tmp_path / "7-off.onnx")
    assert _uint8_initializers(tmp_path / "7-on.onnx") == _uint8_initializers(tmp_path / "7-off.onnx")


_CHILD = """
import json, sys
import numpy as np
import openvino as ov
data = np.load(sys.argv[2])
compiled = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[3], np.concatenate([compiled(data[i:i + 8])[0] for i in range(0, len(data), 8)]))
"""


def _openvino_avx2(model: Path, data: Path, out: Path) -> np.ndarray:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    subprocess.run([sys.executable, "-c", _CHILD, str(model), str(data), str(out)], check=True, env=env, timeout=300)
    return np.load(out)


@needs_openvino
@pytest.mark.skipif(HOST.isa in ("x86-64", "unknown"), reason=f"needs an AVX2 (or newer) x86 CPU; this is {HOST.isa}")
def test_openvino_avx2_kernels_saturate_full_range_and_not_seven_bit(vnni_build, demo_build, tmp_path):
    """OpenVINO with oneDNN capped at AVX2 (a no-op on an AVX2 machine): the u8s8 saturation is real, and the
    x86-cpu target's 7-bit weights keep INT8 at the float model's answers."""
    spec = Preprocessing.from_dict(vnni_build.manifest["preprocessing"])
    val = load_labeled(vnni_build.manifest["inputs"]["validation"]["folder"], spec, None)
    data, labels = np.asarray(val.data), np.asarray(val.labels)
    np.save(tmp_path / "data.npy", data)
    with backends.get("onnxruntime").load(vnni_build.out_dir / "onnx" / "model-fp32.onnx", {}) as runner:
        ref = predict_all(runner, data, 8)
    seven_logits = _openvino_avx2(demo_build.out_dir / "openvino" / "model-int8.xml", tmp_path / "data.npy", tmp_path / "7.npy")
    full_logits = _openvino_avx2(vnni_build.out_dir / "openvino" / "model-int8.xml", tmp_path / "data.npy", tmp_path / "f.npy")
    seven, full = compare_logits(seven_logits, ref), compare_logits(full_logits, ref)
    assert seven["min_cosine"] >= 0.98 and seven["agreement"] >= 0.98, seven
    assert full["min_cosine"] < 0.95, f"full-range INT8 did not saturate under AVX2 kernels: {full}"
    print(json.dumps({"avx2_7bit": seven, "avx2_full": full}))
    # The default gate sees it: saturation keeps top-1 within its 1 point here, and only the logit cosine shows it.
    gates = load_recipe(target="x86-cpu").section("gates")
    ref_top1 = topk_accuracy(ref, labels, 1)
    saturated = accuracy_checks("saturated", dict(full, top1=topk_accuracy(full_logits, labels, 1)), ref_top1, gates)
    assert "min_cosine" in {c.metric for c in saturated if not c.passed}, saturated
    assert all(c.passed for c in accuracy_checks("7-bit", dict(seven, top1=topk_accuracy(seven_logits, labels, 1)), ref_top1, gates))


@pytest.mark.parametrize("body, needle", [
    ('[quantize]\nisa_class = "avx2"\n', "isa_class in x86-64 | vnni | none"),
    ('[quantize]\nweight_range = "6bit"\n', "weight_range in auto | 7bit | full"),
    ('[backends.onnxruntime]\nprecisions = ["int8"]\nx64quantprecision = "yes"\n', "x64quantprecision"),
])
def test_bad_isa_keys_are_named(tmp_path, body, needle):
    from resnext_deploy.errors import BadInputError

    recipe = tmp_path / "r.toml"
    recipe.write_text('target = "x86-cpu"\n[backends.openvino]\nprecisions = ["int8"]\n' + body)
    with pytest.raises(BadInputError, match=needle.replace("|", r"\|")):
        load_recipe(recipe)
