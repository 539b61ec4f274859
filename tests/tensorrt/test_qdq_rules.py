"""The Q/DQ checker against TensorRT's rules: good graphs pass, each broken rule is caught and named."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from resnext_deploy.cli import cli
from resnext_deploy.tensorrt.qdq_rules import RULES, check_qdq_model

F, I8, U8, I32 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32


def _graph(
    act_zp=(I8, 0), weight_axis=0, weight_scale=None, opset=17, out_qdq=False, bias="float", zp_missing=False,
    act_scale=0.05, act_scale_per_channel=False, q_into_conv=False, contrib=False, scale_dtype=F, dynamic_scale=False,
):
    """x -> Q -> DQ -> Conv(W: int8 per-channel DQ, bias) -> Relu -> y, with one thing changed per knob."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    w_scale = np.full(w.shape[weight_axis], 0.01, np.float32) if weight_scale is None else np.asarray(weight_scale, np.float32)
    zp_type, zp_val = act_zp
    zp_np = np.array(zp_val, dtype={I8: np.int8, U8: np.uint8}[zp_type])
    act_s = np.full(3, act_scale, np.float32) if act_scale_per_channel else np.array(act_scale, np.float32)
    inits = [
        numpy_helper.from_array(act_s.astype({F: np.float32, TensorProto.FLOAT16: np.float16}[scale_dtype]), "x_scale"),
        numpy_helper.from_array(zp_np, "x_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
    ]
    dom = "com.microsoft" if contrib else ""
    q_inputs = ["x", "x_scale_dyn" if dynamic_scale else "x_scale"] + ([] if zp_missing else ["x_zp"])
    nodes = []
    if dynamic_scale:
        nodes.append(helper.make_node("Identity", ["x_scale"], ["x_scale_dyn"], name="scale_identity"))
    nodes += [
        helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="x_Q", domain=dom),
        helper.make_node("DequantizeLinear", ["xq"] + q_inputs[1:], ["xd"], name="x_DQ", domain=dom,
                         **({"axis": 1} if act_scale_per_channel else {})),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_DQ", axis=weight_axis),
    ]
    conv_in = ["xq" if q_into_conv else "xd", "w"]
    if bias == "float":
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
        conv_in.append("b")
    elif bias == "int32":
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(4, 0.0005, np.float32), "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="b_DQ", axis=0))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    out = "r"
    if out_qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "r_scale"), numpy_helper.from_array(np.array(0, np.int8), "r_zp")]
        nodes += [helper.make_node("QuantizeLinear", ["r", "r_scale", "r_zp"], ["rq"], name="r_Q"),
                  helper.make_node("DequantizeLinear", ["rq", "r_scale", "r_zp"], ["y"], name="r_DQ")]
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, F, [1, 4, 8, 8])], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)  # ir 8: what ONNX Runtime 1.14+ reads


#: one deliberately broken graph per rule: (rule, graph, the node the violation must name)
BROKEN = {
    "opset": (lambda: _graph(opset=12), "w_DQ"),
    "domain": (lambda: _graph(contrib=True), "x_Q"),
    "zero-point-missing": (lambda: _graph(zp_missing=True), "x_Q"),
    "zero-point-nonzero": (lambda: _graph(act_zp=(I8, 3)), "x_Q"),
    "uint8": (lambda: _graph(act_zp=(U8, 0)), "x_Q"),
    "dtype": (lambda: _graph(bias="int32"), "b_DQ"),
    "scale-constant": (lambda: _graph(dynamic_scale=True), "x_Q"),
    "scale-dtype": (lambda: _graph(scale_dtype=TensorProto.FLOAT16), "x_Q"),
    "scale-positive": (lambda: _graph(weight_scale=[0.01, 0.0, 0.01, -0.02]), "w_DQ"),
    "per-channel-activation": (lambda: _graph(act_scale_per_channel=True), "x_DQ"),
    "per-channel-axis": (lambda: _graph(weight_axis=1), "w_DQ"),
    "q-without-dq": (lambda: _graph(q_into_conv=True), "x_Q"),
    "graph-output": (lambda: _graph(out_qdq=True), "r_DQ"),
}


def test_a_tensorrt_style_graph_passes_and_runs():
    model = _graph()
    onnx.checker.check_model(model)
    report = check_qdq_model(model)
    assert report.passed and report.has_qdq, report.summary()
    assert (report.quantize_nodes, report.dequantize_nodes) == (1, 2)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (1, 4, 8, 8) and (y >= 0).all()


def test_every_rule_has_a_broken_graph_here():
    assert set(BROKEN) | {"no-qdq"} == set(RULES)


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_broken_rule_is_reported_with_the_node_name(rule):
    make, node = BROKEN[rule]
    report = check_qdq_model(make())
    assert not report.passed
    hits = [v for v in report.violations if v.rule == rule]
    assert hits, f"{rule} not reported; got {[str(v) for v in report.violations]}"
    assert node in {v.node for v in hits}
    assert node in report.summary() and f"[{rule}]" in report.summary()


def test_uint8_model_lists_every_violating_node():
    """Asymmetric uint8 activations break two rules at every activation Q/DQ; each node is listed."""
    model = _graph(act_zp=(U8, 128))
    report = check_qdq_model(model)
    by_rule = {}
    for v in report.violations:
        by_rule.setdefault(v.rule, set()).add(v.node)
    assert by_rule == {"uint8": {"x_Q", "x_DQ"}, "zero-point-nonzero": {"x_Q", "x_DQ"}}


def test_no_qdq_is_a_violation_only_when_required():
    fp = _graph()
    del fp.graph.node[:]  # an empty graph still parses; what matters is: no Q/DQ
    assert check_qdq_model(fp).passed
    req = check_qdq_model(fp, require_qdq=True)
    assert [v.rule for v in req.violations] == ["no-qdq"]


def test_demo_flavours(jetson_build):
    """The TensorRT flavour the build ships passes; ORT's uint8 flavour fails on every activation quantizer."""
    root = jetson_build.out_dir
    good = check_qdq_model(root / "onnx" / "model-int8-int8.onnx", require_qdq=True)
    assert good.passed and good.quantize_nodes >= 13, good.summary()
    assert jetson_build.report["qdq_check"]["passed"] is True


def test_uint8_flavour_of_the_demo_fails(tmp_path, jetson_build):
    from resnext_deploy.data.datasets import load_calibration
    from resnext_deploy.models.demo.digits import DEMO_CALIB
    from resnext_deploy.preprocess import Preprocessing
    from resnext_deploy.pipeline.quantize import qdq_from_onnx

    spec = Preprocessing.from_dict(jetson_build.manifest["preprocessing"])
    cal = load_calibration(DEMO_CALIB, spec, 32, 0)
    out = tmp_path / "u8.onnx"
    qdq_from_onnx(jetson_build.out_dir / "onnx" / "model-fp32.onnx", out, cal.data, "uint8")
    report = check_qdq_model(out)
    acts = [n for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear"]
    assert {v.node for v in report.violations if v.rule == "uint8"} >= {n.name for n in acts}
    assert any(v.rule == "dtype" and "bias" in v.message for v in report.violations)  # int32 bias DQ


def test_check_command_on_user_onnx(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_graph(), str(good))
    onnx.save(_graph(act_zp=(I8, 5), out_qdq=True), str(bad))
    r = CliRunner()
    res = r.invoke(cli, ["check", "--model", str(good)])
    assert res.exit_code == 0, res.output
    assert "meets TensorRT's Q/DQ rules" in res.output
    res = r.invoke(cli, ["check", "--model", str(bad)])
    assert res.exit_code == 2
    assert "x_Q (QuantizeLinear) [zero-point-nonzero]" in res.output and "r_DQ (DequantizeLinear) [graph-output]" in res.output
    assert "Traceback" not in res.output
