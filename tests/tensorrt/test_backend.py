"""The TensorRT backend: what can be checked without a GPU here, and real engines where TensorRT and a GPU exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnext_deploy import backends
from resnext_deploy.tensorrt import cuda_runtime
from resnext_deploy.tensorrt.backend import check_engine_matches, incompatibility, l4t_release, read_record
from resnext_deploy.cli import cli
from resnext_deploy.tensorrt.engine_plan import EngineSpec, plan_engines, trtexec_command
from resnext_deploy.errors import BadInputError, MissingDependencyError
from resnext_deploy.optional import available
from resnext_deploy.recipes import load_recipe

JETSONS = ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-agx-thor"]
HAVE_TRT_GPU = available("tensorrt") and cuda_runtime.gpu_info() is not None


@pytest.mark.parametrize("text,release", [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
     "36.4.3"),
    ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, DATE: Tue Feb 20 04:46:31 UTC 2024\n",
     "35.5.0"),
    ("not a tegra release file\n", None),
])
def test_l4t_release_from_nv_tegra_release(tmp_path, text, release):
    (tmp_path / "nv_tegra_release").write_text(text)
    assert l4t_release(tmp_path / "nv_tegra_release") == release
    assert l4t_release(tmp_path / "missing") is None


ORIN = {"tensorrt_version": "10.3.0.30", "gpu": "Orin (nvgpu)", "compute_capability": "8.7", "l4t": "36.4.3"}


def test_engine_recorded_for_another_machine_is_refused():
    assert incompatibility(ORIN, dict(ORIN, l4t="36.4.0")) is None  # same TensorRT and GPU: fine
    xavier = {"tensorrt_version": "8.5.2.2", "gpu": "Xavier", "compute_capability": "7.2", "l4t": "35.5.0"}
    why = incompatibility(ORIN, xavier)
    assert "TensorRT 10.3.0.30 when built, 8.5.2.2 here" in why and "compute capability 8.7 when built, 7.2 here" in why
    with pytest.raises(BadInputError, match="rebuild it here with `resnext-deploy compile --bundle"):
        check_engine_matches(Path("m.engine"), {"machine": ORIN}, xavier)
    check_engine_matches(Path("m.engine"), {"machine": ORIN}, dict(ORIN))


def test_engine_without_build_record_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BadInputError, match="compile --bundle"):
        read_record(engine)
    (tmp_path / "model.engine.json").write_text(json.dumps({"engine": {"machine": ORIN}}))
    assert read_record(engine)["machine"] == ORIN


def test_backend_is_registered_and_available_only_with_tensorrt_and_a_gpu():
    assert "tensorrt" in backends.names()
    assert backends.get("tensorrt").available() is HAVE_TRT_GPU


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_building_an_engine_without_tensorrt_says_what_to_install(tmp_path):
    from resnext_deploy.tensorrt.engines import engine_from_onnx

    with pytest.raises(MissingDependencyError, match="pip install tensorrt") as err:
        engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.engine", "fp16", load_recipe(target="x86-gpu").backend("tensorrt"))
    assert err.value.exit_code == 5


@pytest.mark.parametrize("target", JETSONS + ["x86-gpu"])
def test_shipped_recipes_plan_fp16_and_int8_with_dla_where_the_board_has_one(target):
    r = load_recipe(target=target)
    cfg = r.backend("tensorrt")
    assert r.enabled_backends() == ["tensorrt"] and cfg["precisions"] == ["fp16", "int8"]
    assert cfg["min_batch"] <= cfg["opt_batch"] <= cfg["max_batch"]
    has_dla = target in ("jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx")
    assert (cfg["dla_core"] >= 0) is has_dla
    specs = plan_engines(cfg)
    names = [s.name for s in specs]
    assert names[:2] == ["tensorrt-fp16", "tensorrt-int8"]
    assert len(specs) == (4 if has_dla else 2)
    gpu_int8 = specs[1]
    assert (gpu_int8.source, gpu_int8.calibration_cache, gpu_int8.flags) == ("qdq", False, ["INT8", "FP16"])
    for s in specs[2:]:
        assert s.dla_core == cfg["dla_core"] and s.gpu_fallback and s.min_batch == s.max_batch == cfg["opt_batch"]
        assert s.source == "fp32" and s.calibration_cache is (s.precision == "int8")
    assert r.data["device"] == ("gpu" if target == "x86-gpu" else "jetson")


def test_xavier_recipe_is_for_jetpack_5():
    cfg = load_recipe(target="jetson-xavier-nx").backend("tensorrt")
    assert cfg["tensorrt_version"].startswith("8.5") and cfg["jetpack"].startswith("5.")


def test_trtexec_command_for_a_dla_int8_engine():
    spec = EngineSpec("tensorrt-dla1-int8", "int8", "fp32", 1, True, True, 2, 2, 2, 512)
    assert trtexec_command(spec, "model-fp32.onnx", "input", (3, 224, 224), "e.engine") == (
        "trtexec --onnx=model-fp32.onnx --int8 --fp16 --calib=calibration.cache --shapes=input:2x3x224x224 "
        "--useDLACore=1 --allowGPUFallback --memPoolSize=workspace:512 --timingCacheFile=timing.cache --saveEngine=e.engine"
    )


@pytest.mark.parametrize("body,fragment", [
    ("[backends.tensorrt]\nprecisions = [\"int8\"]\nmin_batch = 4\nopt_batch = 2\n", "min_batch <= opt_batch"),
    ("[backends.tensorrt]\nprecisions = [\"fp32\"]\n", "'fp32'"),
    ("[backends.tensorrt]\nprecisions = [\"int8\"]\ndla_core = -2\n", "dla_core >= -1"),
    ("[backends.tensorrt]\nprecisions = [\"int8\"]\ngolden_tolerance = 1\n", "Unknown recipe key 'backends.tensorrt.golden_tolerance'"),
])
def test_bad_tensorrt_recipes_are_clean_errors(tmp_path, body, fragment):
    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(BadInputError, match=fragment):
        load_recipe(path)


def test_targets_lists_the_jetsons_and_x86_gpu():
    res = CliRunner().invoke(cli, ["targets"])
    assert res.exit_code == 0
    for t in JETSONS + ["x86-gpu", "x86-cpu"]:
        assert t in res.output
    assert "tensorrt:fp16+int8" in res.output


# --------------------------------------------------------------------------- with TensorRT and a GPU

def requires_tensorrt_gpu(fn):
    """Marked tensorrt + gpu, skipped with the reason when either is missing."""
    for mark in (
        pytest.mark.tensorrt,
        pytest.mark.gpu,
        pytest.mark.skipif(not available("tensorrt"), reason="TensorRT is not installed (JetPack, or pip from pypi.nvidia.com)"),
        pytest.mark.skipif(cuda_runtime.gpu_info() is None, reason="no NVIDIA GPU with a driver on this machine"),
    ):
        fn = mark(fn)
    return fn


X86_GPU_FAST = """
target = "x86-gpu"
device = "gpu"
[backends.tensorrt]
precisions = ["fp16", "int8"]
max_batch = 8
golden_images = 12
[calibration]
count = 128
[evaluation]
limit = 100
warmup = 2
iterations = 10
"""


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    """An x86-gpu build forced down the bundle path, so `compile --bundle` can be tested on a GPU machine."""
    from resnext_deploy.tensorrt import stage as tensorrt_stage
    from resnext_deploy.pipeline.build import build

    d = tmp_path_factory.mktemp("gpu")
    (d / "r.toml").write_text(X86_GPU_FAST)
    saved = tensorrt_stage.engines_here
    tensorrt_stage.engines_here = lambda recipe: "the test asks for the bundle path"
    try:
        res = build(model=None, recipe_path=d / "r.toml", out=d / "b")
    finally:
        tensorrt_stage.engines_here = saved
    return res.out_dir / "resnext_demo-x86-gpu-bundle"


@requires_tensorrt_gpu
def test_compile_bundle_builds_engines_that_match_the_golden_outputs(gpu_bundle):
    from resnext_deploy.tensorrt.bundle import read_bundle
    from resnext_deploy.tensorrt.ondevice import compile_bundle

    res = compile_bundle(gpu_bundle)
    assert res.passed, res.gate.summary()
    rows = {r["artifact"]: r for r in res.report["results"]}
    assert set(rows) == {"tensorrt-fp16", "tensorrt-int8"}
    assert rows["tensorrt-fp16"]["max_abs_logit_diff"] <= 0.1 and rows["tensorrt-int8"]["agreement"] == 1.0
    assert all(r["latency_ms"]["p50"] > 0 for r in rows.values())
    for p in res.engines:
        record = read_record(p)
        assert record["machine"]["gpu"] and record["machine"]["tensorrt_version"]
    assert (gpu_bundle / "engines" / "timing.cache").stat().st_size > 0
    manifest = read_bundle(gpu_bundle).manifest  # still verifies: engines were added, shipped files untouched
    assert {"tensorrt-fp16", "tensorrt-int8"} <= {a["name"] for a in manifest["artifacts"]}
    res2 = CliRunner().invoke(cli, ["compile", "--bundle", str(gpu_bundle)])  # rebuild reuses the timing cache
    assert res2.exit_code == 0, res2.output


@requires_tensorrt_gpu
def test_loading_an_engine_recorded_for_another_tensorrt_is_refused(gpu_bundle):
    from resnext_deploy.tensorrt.backend import TensorRtRunner, record_path
    from resnext_deploy.tensorrt.ondevice import compile_bundle

    engine = gpu_bundle / "engines" / "tensorrt-int8.engine"
    if not engine.exists():
        compile_bundle(gpu_bundle)
    rec = json.loads(record_path(engine).read_text())
    rec["engine"]["machine"]["tensorrt_version"] = "0.0.1"
    record_path(engine).write_text(json.dumps(rec))
    with pytest.raises(BadInputError, match="compile --bundle"):
        TensorRtRunner(engine)


@requires_tensorrt_gpu
def test_build_on_a_gpu_machine_builds_and_measures_the_engines(tmp_path):
    from resnext_deploy.pipeline.build import build

    (tmp_path / "r.toml").write_text(X86_GPU_FAST)
    res = build(model=None, recipe_path=tmp_path / "r.toml", out=tmp_path / "b")
    rows = {r["artifact"]: r for r in res.report["results"]}
    for name in ("tensorrt-fp16", "tensorrt-int8"):
        assert not rows[name].get("pending") and rows[name]["agreement"] >= 0.98
        assert np.isfinite(rows[name]["latency_ms"]["p50"])
