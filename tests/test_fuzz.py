"""A fuzz pass that stays (issue 28, part 7): property-based tests over the parsers of what users hand us.

Whatever the bytes, each reader either returns or raises our BadInputError (exit 2): never another exception (exit 4),
never a hang. The budget is fixed and derandomized so CI time is bounded and a failure reproduces: 4 properties x
FUZZ_EXAMPLES examples, no deadline (a loaded CI machine is slow, not wrong)."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resnext_deploy.errors import BadInputError  # noqa: E402

FUZZ_EXAMPLES = 100
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _png(width: int, height: int, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


@FUZZ
@given(width=st.integers(0, 1 << 20), height=st.integers(0, 1 << 20), body=st.binary(max_size=256),
       junk=st.binary(max_size=64))
def test_image_headers(tmp_path, width, height, body, junk):
    """PNG headers with any size (a strip of 1 x 1,000,000 included) and any body: a BadInputError or a crop."""
    from PIL import Image

    from resnext_deploy.preprocess import Preprocessing, preprocess_file

    path = tmp_path / "x.png"
    path.write_bytes(_png(width, height, body) + junk)
    Image.MAX_IMAGE_PIXELS = 89_478_485
    try:
        out = preprocess_file(path, Preprocessing(resize=32, crop=32))
    except BadInputError:
        return
    assert out.shape == (3, 32, 32)


_toml_value = st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True, allow_infinity=True),
                        st.booleans(), st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3))
_KEYS = ["evaluation.batch_size", "evaluation.iterations", "evaluation.warmup", "evaluation.limit", "export.opset",
         "export.tolerance", "calibration.count", "calibration.percentile", "calibration.method", "gates.min_agreement",
         "gates.min_cosine", "fallback.subset", "quantize.isa_class", "backends.onnxruntime.threads", "preprocess.resize"]


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return str(v)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(_KEYS), _toml_value, max_size=4))
def test_recipe_toml(tmp_path, values):
    """Any mix of values at the recipe's keys: a Recipe whose numbers are within RANGES, or a BadInputError."""
    from resnext_deploy.recipes import RANGES, load_recipe

    tables = {}
    for key, v in values.items():
        section, name = key.rsplit(".", 1)
        tables.setdefault(section, []).append(f"{name} = {_toml(v)}")
    path = tmp_path / "r.toml"
    path.write_text('extends = "x86-cpu"\n' + "".join(f"[{s}]\n" + "\n".join(v) + "\n" for s, v in tables.items()))
    try:
        recipe = load_recipe(path)
    except BadInputError:
        return
    for key, (low, high, _) in RANGES.items():
        section, name = key.split(".", 1)
        value = recipe.section(section)
        for part in name.split("."):
            value = value[part]
        assert value >= low and (high is None or value <= high), key


@FUZZ
@given(header=st.one_of(st.binary(max_size=64), st.dictionaries(
    st.text(max_size=6), st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "X"]),
                                                "shape": st.lists(st.integers(-2, 1 << 40), max_size=4),
                                                "data_offsets": st.lists(st.integers(-2, 1 << 40), max_size=3)}),
    max_size=3).map(lambda d: json.dumps(d).encode())), claimed=st.one_of(st.none(), st.integers(0, 1 << 63)),
    payload=st.binary(max_size=64))
def test_safetensors_headers(tmp_path, header, claimed, payload):
    """Any header length and JSON: the loader reads or refuses; nothing is allocated from the claimed sizes."""
    from resnext_deploy.models.trust import safetensors_load

    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if claimed is None else claimed) + header + payload)
    try:
        safetensors_load(path)
    except BadInputError:
        pass


@FUZZ
@given(data=st.binary(max_size=512), dims=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=4),
       location=st.text(max_size=12), length=st.integers(-1, 1 << 50))
def test_onnx_headers(tmp_path, data, dims, location, length):
    """Random protobuf bytes, and an initializer with any dims and any external-data record: scan_onnx reads or
    refuses (BadInputError), never reads outside the model's folder or allocates from the claimed sizes."""
    from onnx import TensorProto, helper

    from resnext_deploy.models.onnx_inputs import scan_onnx

    (tmp_path / "a").mkdir(exist_ok=True)
    raw = tmp_path / "a" / "raw.onnx"
    raw.write_bytes(data)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [t])
    made = tmp_path / "a" / "made.onnx"
    made.write_bytes(helper.make_model(graph).SerializeToString())
    (tmp_path / "a" / "w.data").write_bytes(bytes(16))
    for path in (raw, made):
        try:
            scan_onnx(path, quantized_ok=False)
        except BadInputError:
            pass
