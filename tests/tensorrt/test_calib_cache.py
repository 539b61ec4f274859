"""TensorRT calibration caches: the format, the round trip, and scales that match the ONNX beside them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper, shape_inference

from resnext_deploy.tensorrt.calib_cache import (
    CalibrationCache, cache_from_qdq, hex_scale, parse_calibration_cache, read_calibration_cache, scale_hex,
    scales_from_qdq, tensor_names, trt_version_tag, write_calibration_cache,
)
from resnext_deploy.errors import BadInputError


@pytest.mark.parametrize("version,tag", [("8.6.1", "8601"), ("8.5.2.2", "8502"), ("8.6.2.3", "8602"),
                                         ("10.3.0", "100300"), ("10.14.1.48", "101401"), ("10.0", "100000")])
def test_version_tag_is_nv_tensorrt_version(version, tag):
    assert trt_version_tag(version) == tag


def test_hex_is_big_endian_float32_bits():
    assert scale_hex(1.0) == "3f800000"
    assert scale_hex(1 / 128) == "3c000000"
    assert scale_hex(-2.0) == "c0000000"
    assert hex_scale("3f800000") == 1.0
    assert hex_scale("0") == 0.0  # TensorRT writes an unused tensor's scale as 0
    assert hex_scale("6ce3ee") == np.frombuffer(bytes.fromhex("006ce3ee")[::-1], "<f4")[0]


def test_round_trip_gives_back_the_same_scales_and_order(tmp_path):
    rng = np.random.default_rng(0)
    names = ["input", "/conv1/Conv_output_0", "/relu/Relu_output_0", "(Unnamed Layer* 3) [Shuffle]_output", "logits"]
    scales = {n: float(np.float32(s)) for n, s in zip(names, rng.uniform(1e-4, 2.0, len(names)))}
    path = write_calibration_cache(tmp_path / "c.cache", CalibrationCache("8601", "EntropyCalibration2", scales))
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert all(len(line.rsplit(": ", 1)[1]) == 8 for line in text.splitlines()[1:])
    back = read_calibration_cache(path)
    assert (back.version, back.algorithm) == ("8601", "EntropyCalibration2")
    assert list(back.scales) == names
    assert back.scales == scales  # bit-exact: float32 in, float32 out
    assert back.amax() == pytest.approx({n: s * 127 for n, s in scales.items()})


def test_relabel_for_another_tensorrt_keeps_scales():
    cache = CalibrationCache("100300", scales={"a": 0.5, "b": 0.25})
    other = cache.with_version("8.5.2")
    assert other.header == "TRT-8502-EntropyCalibration2" and other.scales == cache.scales
    assert cache.with_version("8601").header == "TRT-8601-EntropyCalibration2"
    assert parse_calibration_cache(other.to_text()).scales == cache.scales


def test_reader_takes_tensorrt_written_caches():
    text = "TRT-8203-EntropyCalibration2\r\n167: 3c009976\r\n(Unnamed Layer* 64) [Shuffle]_output: 0\r\n\r\n"
    cache = parse_calibration_cache(text)
    assert cache.version == "8203" and cache.scales["167"] == pytest.approx(2 ** -7 * (1 + 0x009976 / 2 ** 23), rel=1e-7)
    assert cache.scales["(Unnamed Layer* 64) [Shuffle]_output"] == 0.0


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("input: 3c009976\n", "not a TensorRT header"),
    ("TRT-8601-EntropyCalibration2\ninput 3c009976\n", "Line 2"),
    ("TRT-8601-EntropyCalibration2\ninput: xyz\n", "Line 2"),
    ("TRT-8601-EntropyCalibration2\na: 3c009976\na: 3c009976\n", "twice"),
])
def test_malformed_caches_are_clean_errors(text, fragment):
    with pytest.raises(BadInputError, match=fragment):
        parse_calibration_cache(text, "x.cache")


def test_writer_refuses_non_positive_scales(tmp_path):
    with pytest.raises(BadInputError, match="'b'"):
        write_calibration_cache(tmp_path / "c", CalibrationCache("8601", scales={"a": 0.1, "b": 0.0}))
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def demo_models(jetson_build):
    root = jetson_build.out_dir
    return root / "onnx" / "model-fp32.onnx", root / "onnx" / "model-int8-int8.onnx"


def test_cache_names_are_the_fp32_onnx_tensors_and_scales_are_the_qdq_scales(demo_models):
    fp32, qdq = demo_models
    cache = cache_from_qdq(qdq, "10.3.0")
    assert cache.header == "TRT-100300-EntropyCalibration2"
    names = set(tensor_names(fp32))
    assert cache.scales and set(cache.scales) <= names
    assert "input" in cache.scales and "logits" not in cache.scales  # no Q/DQ on the output
    proto = onnx.load(str(qdq))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    acts = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert set(cache.scales) == {n.input[0] for n in acts}
    for n in acts:
        assert np.float32(cache.scales[n.input[0]]) == inits[n.input[1]]


def _relu_outputs(model):
    """tensor -> the Relu output, for tensors read by a Relu and nothing else."""
    out = {}
    for node in model.graph.node:
        readers = [n for n in model.graph.node if node.output[0] in n.input]
        if len(readers) == 1 and readers[0].op_type == "Relu":
            out[node.output[0]] = readers[0].output[0]
    return out


def test_amax_is_the_calibration_range_of_each_tensor(demo_models, jetson_build):
    """scale * 127 = max |x| over the calibration images, for every tensor in the cache (minmax calibration).

    ONNX Runtime gives a tensor read only by a Relu the Relu's output range (its negatives are clipped anyway),
    which is also the range TensorRT uses when it fuses Conv + ReLU.
    """
    from resnext_deploy.data.datasets import load_calibration
    from resnext_deploy.models.demo.digits import DEMO_CALIB
    from resnext_deploy.preprocess import Preprocessing

    fp32, qdq = demo_models
    amax = cache_from_qdq(qdq, "8.6.1").amax()
    cal_cfg = jetson_build.manifest["recipe"]["calibration"]
    assert cal_cfg["method"] == "minmax"
    spec = Preprocessing.from_dict(jetson_build.manifest["preprocessing"])
    data = load_calibration(DEMO_CALIB, spec, cal_cfg["count"], cal_cfg["seed"]).data
    model = shape_inference.infer_shapes(onnx.load(str(fp32)))
    relu_of = _relu_outputs(model)
    assert any(n in amax for n in relu_of), "the demo has Conv -> Relu pairs"
    wanted = {relu_of.get(n, n) for n in amax} - {"input"}
    infos = {v.name: v for v in model.graph.value_info}
    model.graph.output.extend(infos[n] for n in sorted(wanted) if n in infos)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    seen = {"input": float(np.abs(data).max())}
    for i in range(0, len(data), 32):
        for name, value in zip(outs, sess.run(None, {"input": data[i : i + 32]})):
            seen[name] = max(seen.get(name, 0.0), float(np.abs(value).max()))
    for name in amax:
        assert amax[name] == pytest.approx(seen[relu_of.get(name, name)], rel=1e-5), name


def test_scales_from_an_asymmetric_model_are_refused(tmp_path, demo_models):
    from resnext_deploy.data.datasets import load_calibration
    from resnext_deploy.models.demo.digits import DEMO_CALIB
    from resnext_deploy.preprocess import Preprocessing
    from resnext_deploy.pipeline.quantize import qdq_from_onnx

    fp32, _ = demo_models
    spec = Preprocessing(resize=32, crop=32)
    out = qdq_from_onnx(fp32, tmp_path / "u8.onnx", load_calibration(DEMO_CALIB, spec, 16, 0).data, "uint8")
    with pytest.raises(BadInputError, match="zero-point 0"):
        scales_from_qdq(out.path)
