"""Q/DQ placed where TensorRT fuses Conv+Add: one test per rule on ONNX Runtime's real int8 output, the fusion
warnings on any model, and accuracy no worse than ONNX Runtime's own placement (demo, ONNX Runtime CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnext_deploy.pipeline import quantize
from resnext_deploy.tensorrt import qdq_placement
from resnext_deploy.tensorrt.qdq_rules import FUSION_RULES, OnnxGraph, check_qdq_model, residual_adds

F = TensorProto.FLOAT


def _conv(name, x, out, cin, cout, rng, k=3):
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.2).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")
    return helper.make_node("Conv", [x, w.name, b.name], [out], name=name, pads=[k // 2] * 4), [w, b]


def residual_net(path):
    """stem -> identity block (conv, relu, conv, + x, relu) -> projection block (+ 1x1 conv shortcut) -> pool -> fc."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(name, x, out, cin, cout, k=3):
        n, i = _conv(name, x, out, cin, cout, rng, k)
        nodes.append(n)
        inits.extend(i)

    conv("stem", "input", "s", 3, 8)
    nodes.append(helper.make_node("Relu", ["s"], ["s_r"], name="stem_relu"))
    conv("b1.conv1", "s_r", "b1c1", 8, 8)
    nodes.append(helper.make_node("Relu", ["b1c1"], ["b1r1"], name="b1.relu1"))
    conv("b1.conv2", "b1r1", "b1c2", 8, 8)
    nodes.append(helper.make_node("Add", ["b1c2", "s_r"], ["b1a"], name="b1.add"))
    nodes.append(helper.make_node("Relu", ["b1a"], ["b1o"], name="b1.relu_out"))
    conv("b2.conv1", "b1o", "b2c1", 8, 16)
    nodes.append(helper.make_node("Relu", ["b2c1"], ["b2r1"], name="b2.relu1"))
    conv("b2.conv2", "b2r1", "b2c2", 16, 16)
    conv("b2.down", "b1o", "b2d", 8, 16, k=1)
    nodes.append(helper.make_node("Add", ["b2d", "b2c2"], ["b2a"], name="b2.add"))  # shortcut first: order must not matter
    nodes.append(helper.make_node("Relu", ["b2a"], ["b2o"], name="b2.relu_out"))
    nodes.append(helper.make_node("GlobalAveragePool", ["b2o"], ["p"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flatten"))
    fc_w = numpy_helper.from_array((rng.standard_normal((5, 16)) * 0.3).astype(np.float32), "fc.w")
    fc_b = numpy_helper.from_array(np.zeros(5, np.float32), "fc.b")
    inits += [fc_w, fc_b]
    nodes.append(helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("input", F, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", F, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The net quantized by ONNX Runtime (int8 flavour): as ORT places Q/DQ, and re-placed by our pass."""
    d = tmp_path_factory.mktemp("placement")
    fp32 = residual_net(d / "fp32.onnx")
    data = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    real = qdq_placement.place_file
    qdq_placement.place_file = lambda path: qdq_placement.Placement()
    try:
        quantize.qdq_from_onnx(fp32, d / "ort.onnx", data, "int8", calibration_cache=d / "ranges.json")
    finally:
        qdq_placement.place_file = real
    art = quantize.qdq_from_onnx(fp32, d / "ours.onnx", data, "int8", calibration_cache=d / "ranges.json")
    return {"fp32": fp32, "ort": d / "ort.onnx", "ours": d / "ours.onnx", "placement": art.settings["qdq_placement"],
            "data": data}


def _graph(path):
    return OnnxGraph(onnx.load(str(path)))


def _adds(g):
    return {ra.name: ra for ra in residual_adds(g)}


def test_the_backbone_is_told_from_the_shortcut_for_identity_and_projection_blocks(models):
    adds = _adds(_graph(models["fp32"]))
    assert set(adds) == {"b1.add", "b2.add"}
    assert adds["b1.add"].conv.name == "b1.conv2" and adds["b1.add"].backbone == 0
    assert adds["b2.add"].conv.name == "b2.conv2" and adds["b2.add"].backbone == 1  # the 1x1 shortcut is the residual


def test_rule1_no_qdq_between_a_conv_and_the_add_it_feeds(models):
    g_ort, g = _graph(models["ort"]), _graph(models["ours"])
    for name, ra in _adds(g_ort).items():  # ORT puts Q/DQ there: what the rule is about
        assert g_ort.real_source(ra.add.input[ra.backbone])[1]
    for name, ra in _adds(g).items():
        src, passed = g.real_source(ra.add.input[ra.backbone])
        assert passed == [] and g.producer[src].name == ra.conv.name, name
    assert sorted(models["placement"]["removed_conv_add"]) == ["b1.add", "b2.add"]


def test_rule2_q_dq_on_each_residual_input(models):
    g = _graph(models["ours"])
    for name, ra in _adds(g).items():
        dq = g.producer[ra.add.input[ra.residual]]
        assert dq.op_type == "DequantizeLinear", name
        assert g.producer[dq.input[0]].op_type == "QuantizeLinear"
    assert models["placement"]["unquantized_residuals"] == []


def test_rule3_no_qdq_on_add_outputs_nor_graph_outputs(models):
    g = _graph(models["ours"])
    for name, ra in _adds(g).items():
        assert [c.op_type for c, _ in g.consumers[ra.add.output[0]]] == ["Relu"], name
        relu = g.consumers[ra.add.output[0]][0][0]
        assert [c.op_type for c, _ in g.consumers[relu.output[0]]] == ["QuantizeLinear"]  # the ReLU's output is
    assert g.producer["logits"].op_type == "Gemm"
    report = check_qdq_model(models["ours"], require_qdq=True)
    assert report.passed and report.warnings == []
    # the Q/DQ that went: one pair per rule-1 Conv output and per Add output
    ort = check_qdq_model(models["ort"])
    assert (ort.quantize_nodes - report.quantize_nodes, ort.dequantize_nodes - report.dequantize_nodes) == (4, 4)


def test_fusion_warnings_name_the_add_and_the_nodes_on_ort_placement(models, caplog):
    with caplog.at_level("WARNING"):
        report = check_qdq_model(models["ort"])
    assert report.passed  # legal for TensorRT, only slower
    got = sorted((w.rule, w.node) for w in report.warnings)
    assert got == [("add-output-qdq", "b1.add"), ("add-output-qdq", "b2.add"),
                   ("conv-add-qdq", "b1.add"), ("conv-add-qdq", "b2.add")]
    conv_add = next(w for w in report.warnings if w.rule == "conv-add-qdq" and w.node == "b2.add")
    assert "'b2.conv2'" in conv_add.message and "QuantizeLinear" in conv_add.message
    assert "b1.add" in caplog.text and "block TensorRT's Conv+Add fusion" in report.summary()
    assert set(FUSION_RULES) == {w.rule for w in report.warnings} | {"residual-unquantized"}


def test_an_unquantized_residual_input_is_reported(models, tmp_path):
    proto = onnx.load(str(models["ours"]))
    g = OnnxGraph(proto)
    ra = _adds(g)["b1.add"]
    dq = g.producer[ra.add.input[ra.residual]]
    ra.add.input[ra.residual] = g.real_source(dq.output[0])[0]  # the float tensor, bypassing its Q/DQ
    report = check_qdq_model(proto)
    assert [(w.rule, w.node) for w in report.warnings] == [("residual-unquantized", "b1.add")]
    # the pass gives it back the quantizer's own Q/DQ of that tensor (no new scale)
    placed = qdq_placement.place_for_fusion(proto)
    assert placed.quantized_residuals == ["b1.add"] and check_qdq_model(proto).warnings == []


def test_a_float_model_gets_no_fusion_warnings(models):
    assert check_qdq_model(models["fp32"]).warnings == []


def test_re_placed_model_is_at_least_as_close_to_float_in_onnxruntime(models):
    import onnxruntime as ort

    def run(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {"input": models["data"]})[0]

    ref = run(models["fp32"])
    err_ort = np.abs(run(models["ort"]) - ref).max()
    err_ours = np.abs(run(models["ours"]) - ref).max()
    assert err_ours <= err_ort * 1.05 + 1e-6  # fewer quantization points: no worse


@pytest.fixture(scope="module")
def nano_build(tmp_path_factory):
    """The demo for jetson-orin-nano (fast settings): the bundle a user gets."""
    from resnext_deploy.pipeline.build import build

    d = tmp_path_factory.mktemp("nano")
    (d / "r.toml").write_text('target = "jetson-orin-nano"\ndevice = "jetson"\n[backends.tensorrt]\n'
                              'precisions = ["fp16", "int8"]\n[calibration]\ncount = 64\n[evaluation]\n'
                              'limit = 100\nwarmup = 1\niterations = 5\n')
    return build(model=None, recipe_path=d / "r.toml", out=d / "b")


def test_orin_nano_bundle_qdq_model_is_placed_for_fusion(nano_build):
    bundle = nano_build.out_dir / "resnext_demo-jetson-orin-nano-bundle"
    g = _graph(bundle / "model-int8-qdq.onnx")
    adds = _adds(g)
    assert len(adds) == 3  # the demo's three projection blocks
    for name, ra in adds.items():
        assert g.real_source(ra.add.input[ra.backbone])[1] == [], name
        assert g.producer[ra.add.input[ra.residual]].op_type == "DequantizeLinear", name
        assert all(c.op_type != "QuantizeLinear" for c, _ in g.consumers[ra.add.output[0]]), name
    report = check_qdq_model(bundle / "model-int8-qdq.onnx", require_qdq=True)
    assert report.passed and report.warnings == []
    assert not (bundle / "calibration.cache").exists()  # no DLA on Orin Nano: no implicit INT8 path to serve


def test_demo_accuracy_no_worse_than_ort_placement(nano_build, tmp_path):
    """Same calibration ranges, ORT's placement vs ours, on the demo's validation images (ONNX Runtime CPU)."""
    from resnext_deploy import backends
    from resnext_deploy.evaluation.evaluate import compare_logits, predict_all, topk_accuracy
    from resnext_deploy.data.datasets import load_calibration, load_labeled
    from resnext_deploy.pipeline.source import data_folders, resolve_model
    from resnext_deploy.recipes import load_recipe

    recipe = load_recipe(target="jetson-orin-nano")
    src = resolve_model(None)
    calib, val = data_folders(src, recipe, None, None)
    cal = load_calibration(calib, src.preprocessing, 64, 0)
    vals = load_labeled(val, src.preprocessing, 300)
    fp32 = nano_build.out_dir / "onnx" / "model-fp32.onnx"
    real = qdq_placement.place_file
    qdq_placement.place_file = lambda path: qdq_placement.Placement()
    try:
        quantize.qdq_from_onnx(fp32, tmp_path / "ort.onnx", cal.data, "int8", calibration_cache=tmp_path / "r.json")
    finally:
        qdq_placement.place_file = real
    quantize.qdq_from_onnx(fp32, tmp_path / "ours.onnx", cal.data, "int8", calibration_cache=tmp_path / "r.json")
    ort = backends.get("onnxruntime")
    logits = {}
    for name in ("fp32", "ort", "ours"):
        with ort.load(fp32 if name == "fp32" else tmp_path / f"{name}.onnx", recipe.backend("onnxruntime")) as r:
            logits[name] = predict_all(r, vals.data, 16)
    top1 = {k: topk_accuracy(v, vals.labels, 1) for k, v in logits.items()}
    cmp = {k: compare_logits(logits[k], logits["fp32"]) for k in ("ort", "ours")}
    assert top1["ours"] >= top1["ort"] - 1e-9
    assert cmp["ours"]["agreement"] >= cmp["ort"]["agreement"] - 1e-9
    assert cmp["ours"]["mean_cosine"] >= cmp["ort"]["mean_cosine"] - 2e-4
