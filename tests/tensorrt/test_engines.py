"""The one engine builder's API use per TensorRT generation, checked without TensorRT.

TensorRT cannot be installed here, so these tests drive engines.py with stand-ins that expose exactly the Python
API members each generation has (from NVIDIA's API docs and the 10.x -> 11.x migration guide) and nothing else:
a name the builder reaches that the generation lacks is an AttributeError. They check which calls are made, not
that an engine works; real engines are tested where TensorRT and a GPU exist (test_backend.py).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from resnext_deploy.errors import InternalError
from resnext_deploy.evaluation.gate import Check
from resnext_deploy.tensorrt import engines
from resnext_deploy.tensorrt.engine_plan import EngineSpec, plan_engines, trtexec_command
from resnext_deploy.tensorrt.ondevice import platform_note, select_engine
from resnext_deploy.tensorrt.platforms import find_row, ships_calibration_cache, target_summary


def api(generation: str, dla_cores: int = 0):
    """A stand-in ``tensorrt`` module with the members of 8.5, 10.x or 11.x only; records the calls made."""
    calls = []
    weak = generation != "11"

    def names(**members):
        return types.SimpleNamespace(**members)

    flags = {"GPU_FALLBACK": "GPU_FALLBACK"}
    if weak:
        flags.update(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY")
    creation = {"STRONGLY_TYPED": 1} if generation != "8.5" else {}
    if generation in ("8.5", "10"):
        creation["EXPLICIT_BATCH"] = 0

    class ILogger:
        ERROR, INTERNAL_ERROR, WARNING, INFO = range(4)

        def __init__(self):
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, lo, opt, hi))

    class TimingCache:
        def serialize(self):
            return b"timing"

    slots = ["default_device_type", "DLA_core", "_timing"] + (["int8_calibrator"] if weak else [])

    class Config:
        __slots__ = slots  # 11.x: no int8_calibrator to assign

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", size))

        def add_optimization_profile(self, p):
            calls.append(("profile",))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def create_timing_cache(self, blob):
            return TimingCache()

        def set_timing_cache(self, cache, ignore):
            return True

        def get_timing_cache(self):
            return TimingCache()

    if weak:
        Config.set_calibration_profile = lambda self, p: calls.append(("calibration_profile",))

    class Network:
        def get_input(self, i):
            return names(name="input", shape=(-1, 3, 8, 8))

    class Builder:
        def __init__(self, logger):
            self.num_DLA_cores = dla_cores

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build",))
            return b"plan"

    if generation == "8.5":
        Builder.max_batch_size = 1  # implicit batch still exists in 8.x
    if weak:
        Builder.platform_has_fast_fp16 = True
        Builder.platform_has_fast_int8 = True

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data, path):
            calls.append(("parse", path))
            return True

    module = names(
        __version__={"8.5": "8.5.2.2", "10": "10.3.0.30", "11": "11.4.1.2"}[generation],
        BuilderFlag=names(**flags), NetworkDefinitionCreationFlag=names(**creation), ILogger=ILogger,
        Builder=Builder, OnnxParser=OnnxParser, IBuilderConfig=Config, ICudaEngine=names(num_io_tensors=0),
        MemoryPoolType=names(WORKSPACE="WORKSPACE"), DeviceType=names(DLA="DLA", GPU="GPU"),
    )
    if weak:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        module.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    module.calls = calls
    return module


SETTINGS = {"workspace_mb": 64, "min_batch": 1, "opt_batch": 1, "max_batch": 4, "gpu_fallback": True}


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not parsed by the stand-in")
    return p


def _flags(trt):
    return [c[1] for c in trt.calls if c[0] == "flag"]


def test_features_are_detected_not_read_from_the_version():
    f85, f10, f11 = (engines.features(api(g)) for g in ("8.5", "10", "11"))
    assert (f85.weakly_typed, f85.implicit_batch, f85.calibrator) == (True, True, True)
    assert (f10.weakly_typed, f10.implicit_batch, f10.calibrator) == (True, False, True)
    assert (f11.weakly_typed, f11.implicit_batch, f11.calibrator, f11.typing) == (False, False, False, "strong")
    relabelled = api("11")
    relabelled.__version__ = "10.99"  # a version string says nothing: the API does
    assert engines.features(relabelled).typing == "strong"


def test_the_stand_in_for_11_lacks_every_name_the_migration_guide_removed():
    trt = api("11")
    holders = {"BuilderFlag": trt.BuilderFlag, "NetworkDefinitionCreationFlag": trt.NetworkDefinitionCreationFlag,
               "Builder": trt.Builder, "IBuilderConfig": trt.IBuilderConfig}
    for name in engines.REMOVED_IN_11:
        owner, attr = name.split(".")
        assert not hasattr(holders[owner], attr), name
    with pytest.raises(AttributeError):
        trt.IBuilderConfig().int8_calibrator = object()


@pytest.mark.parametrize("precision,dla", [("fp16", -1), ("int8", -1), ("int8", 0), ("fp16", 0)])
def test_strongly_typed_builds_reach_none_of_the_removed_names(tmp_path, onnx_file, precision, dla):
    trt = api("11", dla_cores=1)
    rec = engines.engine_from_onnx(onnx_file, tmp_path / "e.engine", precision, SETTINGS, dla_core=dla,
                                   timing_cache=tmp_path / "timing.cache", trt=trt)
    assert ("create_network", 0) in trt.calls and ("build",) in trt.calls
    assert _flags(trt) == (["GPU_FALLBACK"] if dla >= 0 else [])  # no precision flag
    assert rec["typing"] == "strong" and rec["flags"] == _flags(trt)
    assert rec["quantization"] == ("explicit (Q/DQ)" if precision == "int8" else "none")
    assert (tmp_path / "e.engine").read_bytes() == b"plan" and (tmp_path / "e.engine.json").is_file()


def test_strongly_typed_refuses_a_calibration_cache(tmp_path, onnx_file):
    with pytest.raises(InternalError, match="no INT8 calibrator"):
        engines.engine_from_onnx(onnx_file, tmp_path / "e.engine", "int8", SETTINGS, calibration_cache=b"TRT-1",
                                 trt=api("11"))


def test_tensorrt_8_5_builds_explicit_batch_with_flags_and_the_cache_calibrator(tmp_path, onnx_file):
    trt = api("8.5", dla_cores=2)
    rec = engines.engine_from_onnx(onnx_file, tmp_path / "e.engine", "int8", SETTINGS, dla_core=1,
                                   calibration_cache=b"TRT-8502-EntropyCalibration2\n", batch=(2, 2, 2), trt=trt)
    assert ("create_network", 1 << 0) in trt.calls
    assert _flags(trt) == ["FP16", "INT8", "GPU_FALLBACK"] and ("calibration_profile",) in trt.calls
    assert rec["quantization"] == "implicit (calibration cache)" and rec["typing"] == "weak"
    assert rec["profile"]["min"] == [2, 3, 8, 8] and rec["dla_core"] == 1


def test_tensorrt_10_creates_the_network_without_flags(tmp_path, onnx_file):
    trt = api("10")
    rec = engines.engine_from_onnx(onnx_file, tmp_path / "e.engine", "fp16", SETTINGS, trt=trt)
    assert ("create_network", 0) in trt.calls and rec["flags"] == ["FP16"]


def _models(tmp_path, keys=("fp32", "qdq", "fp16", "qdq-fp16")):
    out = {}
    for k in keys:
        out[k] = tmp_path / f"{k}.onnx"
        out[k].write_bytes(b"x")
    return out


def test_one_build_loop_picks_the_models_per_typing_and_refuses_dla_where_there_is_none(tmp_path):
    specs = plan_engines(dict(SETTINGS, precisions=["fp16", "int8"], dla_core=0))
    assert len(specs) == 4
    # JetPack 7.2's TensorRT 10.16 on an Orin: weakly typed, no DLA
    built = engines.build_engines(specs, _models(tmp_path), tmp_path, SETTINGS, b"cache", trt=api("10", dla_cores=0))
    assert [b.refused is None for b in built] == [True, True, False, False]
    assert "needs DLA core 0" in built[2].refused and "0 DLA core(s)" in built[2].refused
    assert [b.onnx.name for b in built[:2]] == ["fp32.onnx", "qdq.onnx"]
    # TensorRT 11.4.1 on AGX Orin: strongly typed, DLA back: the FP16 models, DLA INT8 from Q/DQ (no cache)
    trt = api("11", dla_cores=2)
    built = engines.build_engines(specs, _models(tmp_path), tmp_path, SETTINGS, None, trt=trt)
    assert all(b.refused is None for b in built)
    assert [b.onnx.name for b in built] == ["fp16.onnx", "qdq-fp16.onnx", "fp16.onnx", "qdq-fp16.onnx"]
    assert all(b.record["quantization"] != "implicit (calibration cache)" for b in built)


def test_a_bundle_without_the_strongly_typed_models_is_refused_clearly(tmp_path):
    specs = plan_engines(dict(SETTINGS, precisions=["fp16"], dla_core=-1))
    built = engines.build_engines(specs, _models(tmp_path, ("fp32", "qdq")), tmp_path, SETTINGS, trt=api("11"))
    assert built[0].record is None and "needs the fp16 ONNX for strongly typed TensorRT 11.4.1.2" in built[0].refused


def test_dla_int8_without_a_shipped_cache_is_refused_on_weak_typing(tmp_path):
    specs = plan_engines(dict(SETTINGS, precisions=["int8"], dla_core=0))
    built = engines.build_engines(specs, _models(tmp_path), tmp_path, SETTINGS, None, trt=api("10", dla_cores=1))
    assert built[0].refused is None and "does not ship" in built[1].refused


def test_strongly_typed_trtexec_lines_have_no_precision_flags():
    spec = EngineSpec("tensorrt-dla0-int8", "int8", "fp32", 0, True, True, 1, 1, 1, 512)
    line = trtexec_command(spec, "model-int8-qdq-fp16.onnx", "input", (3, 8, 8), "e.engine", strongly_typed=True)
    assert "--int8" not in line and "--fp16" not in line and "--calib" not in line
    assert "--useDLACore=0 --allowGPUFallback" in line


def _row(name, precision, p50):
    return {"artifact": name, "precision": precision, "latency_ms": {"p50": p50}}


def test_the_faster_engine_that_passes_the_golden_checks_is_selected():
    rows = [_row("tensorrt-fp16", "fp16", 2.0), _row("tensorrt-int8", "int8", 2.4)]  # grouped INT8 can lose
    sel = select_engine(rows, [Check("tensorrt-int8", "golden_min_cosine", 0.999, 0.99, ">=", True)])
    assert sel["selected"] == "tensorrt-fp16" and "also passed: tensorrt-int8 2.400 ms" in sel["why"]
    rows[1]["latency_ms"]["p50"] = 1.0
    failed = [Check("tensorrt-int8", "golden_min_cosine", 0.9, 0.99, ">=", False)]
    sel = select_engine(rows, failed)
    assert sel["selected"] == "tensorrt-fp16" and "failed the golden checks: tensorrt-int8" in sel["why"]
    assert [c["passed_golden"] for c in sel["candidates"]] == [True, False]
    sel = select_engine(rows + [{"artifact": "tensorrt-dla0-int8", "pending": True}], [])
    assert sel["selected"] == "tensorrt-int8"
    none = select_engine(rows, failed + [Check("tensorrt-fp16", "golden_agreement", 0.5, 1.0, ">=", False)])
    assert none["selected"] is None and "none passed" in none["why"]


@pytest.mark.parametrize("target,version,jetson,key", [
    ("jetson-xavier-nx", "8.5.2.2", True, "jetpack-5.1"),
    ("jetson-orin-nx", "10.3.0.30", True, "jetpack-6.2"),
    ("jetson-orin-nx", "10.16.0.1", True, "jetpack-7.2"),
    ("jetson-agx-orin", "11.4.1.2", True, "jetpack-7.2.2-trt11"),
    ("jetson-agx-orin", "11.6.0", True, "jetpack-7.2.2-trt11"),
    ("jetson-agx-thor", "10.13.2", True, "jetpack-7.0"),
    ("x86-gpu", "11.4.1", False, "pip-trt11"),
    ("x86-gpu", "10.9.0", False, "pip-trt10"),
    ("jetson-orin-nano", "11.4.1", True, None),  # TensorRT 11 is not for Orin Nano
    ("jetson-agx-orin", "11.3.0", True, None),  # before 11.4.1: no JetPack support
    ("x86-gpu", "10.3.0", True, None),  # an x86 target's rows are not a Jetson's
])
def test_the_device_row_is_found_from_tensorrt_and_jetson(target, version, jetson, key):
    row = find_row(target, version, jetson)
    assert (row.key if row else None) == key
    note = platform_note(target, version, jetson, "36.4.3" if jetson else None, "weak")
    assert ("matches the" in note) is (key is not None) and version in note


def test_calibration_cache_ships_only_where_an_implicit_dla_path_exists():
    assert ships_calibration_cache("jetson-xavier-nx", 0) and ships_calibration_cache("jetson-orin-nx", 0)
    assert not ships_calibration_cache("jetson-orin-nano", -1) and not ships_calibration_cache("jetson-agx-thor", -1)
    assert not ships_calibration_cache("x86-gpu", -1)
    assert ships_calibration_cache("my-own-board", 0)  # unknown rows: ship it, the device decides


def test_targets_show_jetpack_tensorrt_python_and_dla():
    from click.testing import CliRunner

    from resnext_deploy.cli import cli

    out = CliRunner().invoke(cli, ["targets"]).output
    assert "jetson-agx-thor" in out
    thor = target_summary("jetson-agx-thor")
    assert thor[0] == "JetPack 7.0 / 7.1: TensorRT 10.13, CUDA 13.0, Python 3.12, no DLA"
    assert all("no DLA" in r for r in thor)
    assert target_summary("jetson-xavier-nx") == ["JetPack 5.1.x: TensorRT 8.5.2, CUDA 11.4, Python 3.8, DLA"]
    agx = target_summary("jetson-agx-orin")
    assert agx[1].endswith("no DLA") and agx[2].endswith("DLA, strongly typed")
    for row in thor + agx:
        assert row in out


def test_fp16_models_stay_close_to_float_in_onnxruntime(tmp_path):
    """The FP16 ONNX (FP32 I/O) and the FP16-region Q/DQ ONNX: real converters, run by ONNX Runtime (CPU)."""
    import onnx
    import onnxruntime as ort

    from resnext_deploy.pipeline.quantize import qdq_from_onnx
    from resnext_deploy.tensorrt.float16 import QDQ_FP16_OPSET, fp16_from_onnx, fp16_qdq_from_qdq
    from tests.tensorrt.test_qdq_placement import residual_net

    fp32 = residual_net(tmp_path / "fp32.onnx")
    data = np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    qdq_from_onnx(fp32, tmp_path / "qdq.onnx", data, "int8")
    fp16 = fp16_from_onnx(fp32, tmp_path / "fp16.onnx")
    qdq16 = fp16_qdq_from_qdq(tmp_path / "qdq.onnx", tmp_path / "qdq16.onnx")

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": data})[0]

    for path in (fp16, qdq16):
        m = onnx.load(str(path))
        assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O
        assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    q16 = onnx.load(str(qdq16))
    assert next(o.version for o in q16.opset_import if o.domain in ("", "ai.onnx")) == QDQ_FP16_OPSET
    scales = {n.input[1] for n in q16.graph.node if n.op_type == "DequantizeLinear"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in q16.graph.initializer if i.name in scales)
    ref, ref_q = run(fp32), run(tmp_path / "qdq.onnx")
    scale = np.abs(ref).max()
    assert np.abs(run(fp16) - ref).max() <= 0.01 * scale
    assert np.abs(run(qdq16) - ref_q).max() <= 0.05 * scale
