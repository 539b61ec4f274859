"""Bias correction (pipeline/bias_correction.py) on the demo build's float model: the int32 and float biases move by
the measured shift, the model still agrees with float, and TensorRT's placement runs on top of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resnext_deploy.data.datasets import load_calibration
from resnext_deploy.pipeline.quantize import qdq_from_onnx


def _biases(path: Path) -> dict:
    """Each conv's bias initializer (float, or the int32 one behind its DequantizeLinear), by name."""
    g = onnx.load(str(path)).graph
    dq_input = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    names = {dq_input.get(n.input[2], n.input[2]) for n in g.node if n.op_type == "Conv" and len(n.input) > 2}
    return {t.name: numpy_helper.to_array(t) for t in g.initializer if t.name in names}


@pytest.mark.parametrize("flavour", ["uint8", "int8"])
def test_bias_correction_moves_biases_and_keeps_agreement(demo_build, tmp_path, flavour):
    import onnxruntime as ort
    from resnext_deploy.models.demo.digits import DEMO_PREPROCESSING

    fp32 = Path(demo_build.out_dir) / "onnx" / "model-fp32.onnx"
    cal = load_calibration(Path(demo_build.report["dataset"]["calibration"]), DEMO_PREPROCESSING, 64, 0)
    plain = qdq_from_onnx(fp32, tmp_path / "plain.onnx", cal.data, flavour, root=tmp_path, weight_range="7bit")
    fixed = qdq_from_onnx(fp32, tmp_path / "fixed.onnx", cal.data, flavour, root=tmp_path, weight_range="7bit",
                          bias_correction=True)
    bc = fixed.settings["bias_correction"]
    assert bc["convs"] >= 10 and bc["images"] == 64 and bc["largest_shift"] > 0
    assert "bias_correction" not in plain.settings
    if flavour == "int8":
        assert fixed.settings["qdq_placement"]  # TensorRT's placement ran on the corrected model
    before, after = _biases(tmp_path / "plain.onnx"), _biases(tmp_path / "fixed.onnx")
    moved = [n for n in before if not np.array_equal(before[n], after[n])]
    assert len(moved) == bc["convs"]
    x = np.asarray(cal.data[:64], np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    ref, out = run(fp32), run(tmp_path / "fixed.onnx")
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.98
