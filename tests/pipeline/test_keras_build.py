"""The Keras demo end to end: x86-cpu (ONNX Runtime + OpenVINO INT8) and a Jetson bundle, as the PyTorch demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnext_deploy.models.demo.digits import DEMO_PREPROCESSING, DEMO_VAL
from resnext_deploy.models.demo.keras import KERAS_DEMO
from resnext_deploy.optional import require_keras

keras = require_keras("test the Keras demo")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_x86(tmp_path_factory, quick_timing):
    from resnext_deploy.pipeline.build import build

    return build(model=KERAS_DEMO, target="x86-cpu", recipe_path=quick_timing("x86-cpu"),
                 out=tmp_path_factory.mktemp("keras-build") / "x86-cpu")


@pytest.fixture(scope="module")
def keras_jetson(tmp_path_factory, quick_timing):
    from resnext_deploy.pipeline.build import build

    return build(model=KERAS_DEMO, target="jetson-orin-nano", recipe_path=quick_timing("jetson-orin-nano"),
                 out=tmp_path_factory.mktemp("keras-jetson") / "nano")


def test_shipped_keras_demo_and_its_sidecar():
    side = json.loads((KERAS_DEMO.parent / (KERAS_DEMO.name + ".json")).read_text())
    assert side["preprocessing"] == DEMO_PREPROCESSING.to_dict() and side["labels"] == [str(i) for i in range(10)]
    assert side["val_top1"] >= 0.9 and KERAS_DEMO.stat().st_size < 1_000_000


def test_x86_build_passes_with_every_artifact(keras_x86, demo_build):
    assert keras_x86.passed, keras_x86.gate.summary()
    rows = {r["artifact"]: r for r in keras_x86.report["results"]}
    torch_rows = {r["artifact"]: r for r in demo_build.report["results"]}
    # the same artifacts as the PyTorch demo, with the Keras model's own row where PyTorch eager stands
    assert set(rows) - {"keras-fp32"} == set(torch_rows) - {"pytorch-fp32"}
    # every section of the PyTorch demo's report; the fallback's, when plain INT8 missed the gate on this CPU's
    # weight range (measured on AVX2, 7-bit weights: OpenVINO INT8 -1.4 pp top-1; 3 convs in float passed)
    assert set(demo_build.report) <= set(keras_x86.report)
    assert set(keras_x86.report) - set(demo_build.report) <= {"fallback", "sensitivity"}
    for name, row in rows.items():
        assert set(row) == set(torch_rows["pytorch-fp32" if name == "keras-fp32" else name]), name
    side = json.loads((KERAS_DEMO.parent / (KERAS_DEMO.name + ".json")).read_text())
    assert rows["keras-fp32"]["agreement"] == 1.0 and rows["keras-fp32"]["top1"] == pytest.approx(side["val_top1"])
    for name, row in rows.items():
        if row["precision"] == "int8":
            assert row["agreement"] >= 0.95, (name, row["agreement"])
    assert keras_x86.report["model"]["kind"] == "keras" and keras_x86.report["model"]["loaded_as"] == "keras"


def test_export_is_simplified_and_matches_keras(keras_x86):
    exp = keras_x86.report["export"]
    assert exp["source"] == "keras" and exp["input_layout"] == "NCHW"
    assert exp["max_abs_diff"] <= exp["tolerance"] == 1e-3
    assert exp["nodes_after"] < exp["nodes_before"] / 4
    import onnx

    proto = onnx.load(str(keras_x86.out_dir / "onnx" / "model-fp32.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    # BatchNorm folded into the convs, the layout transposes cancelled, the "same" pad inside the conv
    assert ops.count("Conv") == 15 and "Sub" not in ops and "Div" not in ops and "Pad" not in ops
    assert ops.count("Transpose") <= 2 and ops[0] == "Conv"
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]


def test_onnx_logits_equal_keras_logits_on_real_images(keras_x86):
    from resnext_deploy.models.keras import keras_predict, load_keras_model
    from resnext_deploy.data.datasets import load_labeled
    from resnext_deploy.models.export.torch_onnx import run_onnx

    batch = np.asarray(load_labeled(DEMO_VAL, DEMO_PREPROCESSING, limit=32).data)
    expected = keras_predict(load_keras_model(KERAS_DEMO).model, batch)
    got = run_onnx(keras_x86.out_dir / "onnx" / "model-fp32.onnx", batch)
    assert np.abs(expected - got).max() <= 1e-3
    assert (expected.argmax(1) == got.argmax(1)).all()


def test_manifest_records_the_preprocessing_and_runtime_predicts(keras_x86):
    from resnext_deploy import runtime

    manifest = json.loads((keras_x86.out_dir / "manifest.json").read_text())
    assert manifest["preprocessing"] == DEMO_PREPROCESSING.to_dict()
    assert manifest["preprocessing"]["layout"] == "NCHW"
    png = sorted((DEMO_VAL / "7").glob("*.png"))[0]
    clf = runtime.load(keras_x86.out_dir)
    assert clf.predict(png, top_k=1)[0].label == "7"


def test_jetson_bundle_with_the_same_report_fields(keras_jetson, jetson_build):
    assert keras_jetson.passed, keras_jetson.gate.summary()
    bundle = keras_jetson.out_dir / "resnext_keras_demo-jetson-orin-nano-bundle"
    assert bundle.is_dir() and (keras_jetson.out_dir / f"{bundle.name}.tar.gz").is_file()
    assert {"model-fp32.onnx", "model-int8-qdq.onnx", "manifest.json"} <= {p.name for p in bundle.iterdir()}
    assert set(jetson_build.report) <= set(keras_jetson.report)
    assert set(keras_jetson.report) - set(jetson_build.report) <= {"fallback", "sensitivity"}
    rows = {r["artifact"]: r for r in keras_jetson.report["results"]}
    assert [n for n in rows if rows[n].get("pending")] == ["tensorrt-fp16", "tensorrt-int8"]
    assert rows["keras-fp32"]["agreement"] == 1.0
