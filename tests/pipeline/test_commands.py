"""Each stage alone, on artifacts passed by path, and the properties of what each writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from resnext_deploy.cli import cli
from resnext_deploy.models.export.torch_onnx import run_onnx
from resnext_deploy.preprocess import Preprocessing
from resnext_deploy.recipes import DEFAULTS, list_targets, load_recipe


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """export -> quantize (both flavours) -> compile, each via the CLI."""
    d = tmp_path_factory.mktemp("chain")
    r = CliRunner()
    for args in (
        ["export", "--out", str(d / "m.onnx")],
        ["quantize", "--onnx", str(d / "m.onnx"), "--out", str(d / "u8.onnx"), "--activations", "uint8"],
        ["quantize", "--onnx", str(d / "m.onnx"), "--out", str(d / "s8.onnx"), "--activations", "int8"],
        ["compile", "--onnx", str(d / "s8.onnx"), "--backend", "openvino", "--precision", "int8", "--out", str(d / "ov")],
        ["compile", "--onnx", str(d / "u8.onnx"), "--backend", "onnxruntime", "--precision", "int8", "--out", str(d / "ort")],
    ):
        res = r.invoke(cli, ["-q", *args])
        assert res.exit_code == 0, (args, res.output)
    return d


def test_export_is_opset17_dynamic_batch_and_matches_torch(chain):
    proto = onnx.load(str(chain / "m.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    meta = json.loads((chain / "m.onnx.json").read_text())
    assert meta["export"]["max_abs_diff"] < 1e-4
    assert meta["preprocessing"]["crop"] == 32
    # the dynamic batch really works
    x = np.random.RandomState(0).randn(5, 3, 32, 32).astype(np.float32)
    assert run_onnx(chain / "m.onnx", x).shape == (5, 10)


def _zero_points(path: Path):
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    acts, weights = [], []
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = inits[n.input[2]]
            (weights if n.input[0] in inits else acts).append(zp)
    return proto, acts, weights


def test_uint8_flavour_has_uint8_activations(chain):
    _, acts, _ = _zero_points(chain / "u8.onnx")
    assert acts and all(z.dtype == np.uint8 for z in acts)


def test_int8_flavour_is_tensorrt_style(chain):
    proto, acts, _ = _zero_points(chain / "s8.onnx")
    assert acts and all(z.dtype == np.int8 and not z.any() for z in acts)
    outputs = {o.name for o in proto.graph.output}
    producers = [n for n in proto.graph.node if set(n.output) & outputs]
    assert [n.op_type for n in producers] == ["Gemm"]  # no Q/DQ on the graph output
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    conv_weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                      and inits[n.input[0]].ndim == 4]
    assert conv_weight_dq
    for n in conv_weight_dq:  # per output channel, symmetric
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)
        assert not inits[n.input[2]].any()


def test_calibration_is_deterministic(tmp_path, chain):
    r = CliRunner()
    for name in ("a.onnx", "b.onnx"):
        assert r.invoke(cli, ["-q", "quantize", "--onnx", str(chain / "m.onnx"), "--out", str(tmp_path / name)]).exit_code == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_evaluate_and_report_by_path(chain, tmp_path):
    r = CliRunner()
    ev = tmp_path / "eval.json"
    res = r.invoke(cli, ["-q", "evaluate", str(chain / "ov" / "model-int8.xml"), str(chain / "ort" / "model-int8.ort.onnx"),
                         "--reference", str(chain / "m.onnx"), "--out", str(ev)])
    assert res.exit_code == 0, res.output
    data = json.loads(ev.read_text())
    assert [x["backend"] for x in data["results"]] == ["onnxruntime", "openvino", "onnxruntime"]
    assert all(x["agreement"] >= 0.98 for x in data["results"])
    res = r.invoke(cli, ["report", str(ev)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.md").is_file()
    strict = tmp_path / "strict.toml"
    strict.write_text('[backends.openvino]\nprecisions = ["int8"]\n[gates]\nmin_cosine = 1.0\n')
    assert r.invoke(cli, ["report", str(ev), "--recipe", str(strict), "--out", str(tmp_path / "s")]).exit_code == 3  # INT8 logits differ
    beyond = tmp_path / "beyond.toml"  # a threshold no result can meet is refused up front, not failed at the gate
    beyond.write_text('[backends.openvino]\nprecisions = ["int8"]\n[gates]\nmin_agreement = 1.01\n')
    res = r.invoke(cli, ["report", str(ev), "--recipe", str(beyond), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "gates.min_agreement = 1.01" in res.output


def test_recipes_defaults_and_overrides(tmp_path):
    assert "x86-cpu" in list_targets()
    r = load_recipe(target="x86-cpu")
    assert r.enabled_backends() == ["onnxruntime", "openvino"]
    assert r.backend("openvino")["inference_precision"] == "f32"
    assert r.backend("onnxruntime")["activations"] == "uint8"
    mine = tmp_path / "mine.toml"
    mine.write_text('[backends.openvino]\nprecisions = ["int8"]\n[gates]\nmax_top1_drop = 2\n')
    r = load_recipe(mine)
    assert r.enabled_backends() == ["openvino"]
    assert r.section("gates")["max_top1_drop"] == 2
    assert r.section("calibration") == DEFAULTS["calibration"]  # untouched sections keep the defaults
    assert r.target == "mine"


def test_targets_command_lists_recipes():
    res = CliRunner().invoke(cli, ["targets"])
    assert res.exit_code == 0 and "x86-cpu" in res.output


def test_every_command_has_help():
    r = CliRunner()
    top = r.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, cmd in cli.commands.items():
        res = r.invoke(cli, [name, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, name


def test_preprocessing_resize_crop_normalize():
    from PIL import Image
    from resnext_deploy.preprocess import preprocess_image

    img = Image.new("RGB", (400, 300), (255, 0, 0))
    spec = Preprocessing()
    x = preprocess_image(img, spec)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = (np.array([1.0, 0.0, 0.0]) - np.array(spec.mean)) / np.array(spec.std)
    assert np.allclose(x[:, 100, 100], expected, atol=1e-5)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
