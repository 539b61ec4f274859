"""The bf16 rung (issue 22): x86-cpu-amx builds openvino-bf16 where the CPU has BF16 arithmetic and gates it like
the others; elsewhere the build says why it skipped the rung. INT8's float layers run at the float rung's precision."""

from __future__ import annotations

import json

import pytest

from resnext_deploy import backends
from resnext_deploy.recipes import load_recipe


@pytest.fixture(scope="module")
def amx_build(tmp_path_factory):
    """The demo on the shipped x86-cpu-amx recipe, quickly (few images, no fallback)."""
    from resnext_deploy.pipeline.build import build

    recipe = tmp_path_factory.mktemp("amx-recipe") / "amx.toml"
    recipe.write_text('target = "x86-cpu-amx"\n[backends.onnxruntime]\nprecisions = []\n[calibration]\ncount = 64\n'
                      '[evaluation]\nlimit = 100\nwarmup = 1\niterations = 5\n[fallback]\nenabled = false\n')
    return build(model=None, target="x86-cpu-amx", recipe_path=recipe, out=tmp_path_factory.mktemp("amx-build") / "x86-cpu-amx")


def test_the_amx_recipe_asks_the_openvino_backend_for_bf16():
    recipe = load_recipe(target="x86-cpu-amx")
    assert recipe.backend("openvino")["precisions"] == ["fp32", "bf16", "int8"]
    assert "bf16" in backends.get("openvino").precisions
    assert recipe.section("quantize")["isa_class"] == "vnni"


def test_bf16_rung_is_built_and_gated_or_skipped_with_a_reason(amx_build):
    reason = backends.get("openvino").cannot_build("bf16")
    arts = {a.name: a for a in amx_build.artifacts}
    report = json.loads((amx_build.out_dir / "report.json").read_text())
    gated = {c.artifact for c in amx_build.gate.checks}
    int8 = arts["openvino-int8"]
    if reason:  # this machine: no BF16 arithmetic
        assert "openvino-bf16" not in arts and "openvino-bf16" not in gated
        assert report["skipped_rungs"] == [{"artifact": "openvino-bf16", "reason": reason}]
        assert any(n.startswith("openvino-bf16 was not built") and "BF16" in n for n in report["notes"])
        assert int8.settings["float_layers_precision"] == "f32"  # the float rung that was measured here
    else:  # AMX / AVX512-BF16: built, gated, run in bf16, and INT8's float layers follow it
        bf16 = arts["openvino-bf16"]
        assert bf16.precision == "bf16" and bf16.settings["float_layers_precision"] == "bf16"
        assert {"agreement", "min_cosine"} <= {c.metric for c in amx_build.gate.checks if c.artifact == "openvino-bf16"}
        row = next(r for r in report["results"] if r["artifact"] == "openvino-bf16")
        assert row["details"]["execution"]["inference_precision"] == "bf16" and row["min_cosine"] > 0.999
        assert int8.settings["float_layers_precision"] == "bf16"
        assert "bf16 inference hint" in (amx_build.out_dir / "report.md").read_text()
    fp32 = next(r for r in report["results"] if r["artifact"] == "openvino-fp32")
    assert fp32["details"]["execution"]["inference_precision"] == "f32"  # the f32 reference stays f32


def test_a_bf16_ir_carries_its_hint_and_runs_anywhere(tmp_path):
    """The bf16 artifact's hint lives in the IR (rt_info runtime_options): the runner compiles it with bf16 on any
    CPU; OpenVINO executes bf16 where the CPU has it and f32 elsewhere, and the runner's details say which."""
    import numpy as np

    from resnext_deploy.buildfolder.artifacts import Artifact
    from resnext_deploy.recipes import defaults

    torch = pytest.importorskip("torch")
    onnx_path = tmp_path / "tiny.onnx"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4)).eval()
    x = torch.randn(1, 3, 16, 16)
    model(x)
    torch.onnx.export(model, (x,), str(onnx_path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input": {0: "n"}}, dynamo=False)
    be = backends.get("openvino")
    settings = dict(defaults()["backends"]["openvino"], precisions=["fp32", "bf16"], static_batches=[1])
    src = Artifact.from_files("onnx-fp32", [onnx_path], tmp_path, kind="onnx", backend="onnx", precision="fp32")
    bf16 = be.compile(src, tmp_path / "ov", "bf16", settings, root=tmp_path)
    fp32 = be.compile(src, tmp_path / "ov", "fp32", settings, root=tmp_path)
    assert bf16.settings["float_layers_precision"] == "bf16" and bf16.settings["compile_config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert fp32.settings["float_layers_precision"] == "f32"
    data = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with be.load(bf16.abspath(tmp_path), settings) as r16, be.load(fp32.abspath(tmp_path), settings) as r32:
        assert r16.details["ir_precision_hint"] == "bf16" and r32.details["ir_precision_hint"] is None
        runs = "bf16" if be.cannot_build("bf16") is None else "f32"
        assert r16.details["execution"]["inference_precision"] == runs
        assert r32.details["execution"]["inference_precision"] == "f32"
        a, b = r16.infer(data), r32.infer(data)
    tol = 0.05 if runs == "bf16" else 1e-5
    assert np.allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))
