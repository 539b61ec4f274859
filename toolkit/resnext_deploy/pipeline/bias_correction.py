"""Bias correction of a Q/DQ model: each quantized conv's mean output shift under quantization, folded into its bias.

The fast bias correction of NNCF and AIMET, on our Q/DQ ONNX so every backend gets it. The shift of a conv's output
channel c is, for the mean input (a conv is linear, so the mean of its output is the conv of its input's mean, up to
the zero padding at the borders)::

    shift[c] = sum_{k,i,j} (Wq[c,k,i,j] - W[c,k,i,j]) * mean(x)[k]

with W the float weights, Wq the dequantized int8 weights and x what the conv reads inside the Q/DQ model. The means
come from one pass of the Q/DQ model over calibration images, so each conv is corrected for its own weights'
rounding only, not for what earlier convs left: no correction is counted twice. (The input's own rounding is left
alone: with uint8 activations ONNX Runtime drops a ReLU into the Q/DQ pair, so "the input before Q" is not the float
model's input and comparing the two would undo the ReLU.) The bias (float, or int32 behind a DequantizeLinear)
becomes bias - shift.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..optional import require

log = logging.getLogger(__name__)

MAX_IMAGES = 256  # calibration images the means are taken on


def _producers(graph: Any) -> Dict[str, Any]:
    return {o: n for n in graph.node for o in n.output}


def _dequantized(inits: Dict[str, Any], dq: Any) -> Optional[np.ndarray]:
    """A DequantizeLinear of initializers, as float (per-channel along axis 0 or per-tensor)."""
    from onnx import numpy_helper

    if dq is None or dq.op_type != "DequantizeLinear" or any(i not in inits for i in dq.input if i):
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    shape = (-1,) + (1,) * (q.ndim - 1) if np.ndim(scale) == 1 and q.ndim > 1 else ()
    return (q - np.reshape(zp, shape)) * np.reshape(scale, shape) if shape else (q - zp) * scale


def _targets(qdq: Any, fp32_inits: Dict[str, np.ndarray]) -> List[Dict[str, Any]]:
    """The convs to correct: quantized weights with a float original, a bias, and their input tensors."""
    inits = {t.name: t for t in qdq.graph.initializer}
    prod = _producers(qdq.graph)
    out = []
    for node in qdq.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
            continue
        wdq = prod.get(node.input[1])
        wq = _dequantized(inits, wdq)
        w = fp32_inits.get(wdq.input[0].replace("_quantized", "")) if wdq is not None else None
        if wq is None or w is None or w.shape != wq.shape:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        out.append({"node": node, "w": w.astype(np.float64), "wq": wq, "x": node.input[0], "group": group})
    return out


def _means(qdq: Any, tensors: List[str], images: Any, batch: int) -> Dict[str, np.ndarray]:
    """Per-channel means (over batch, height, width) of ``tensors`` in the Q/DQ model over ``images``."""
    import onnx
    from onnx import TensorProto, helper

    ort = require("onnxruntime", "correct the biases")
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    del model.graph.output[:]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    for i, t in enumerate(tensors):
        if opset >= 18:
            model.graph.initializer.append(helper.make_tensor(f"_bc{i}_axes", TensorProto.INT64, [3], [0, 2, 3]))
            model.graph.node.append(helper.make_node("ReduceMean", [t, f"_bc{i}_axes"], [f"_bc{i}"], keepdims=0))
        else:
            model.graph.node.append(helper.make_node("ReduceMean", [t], [f"_bc{i}"], axes=[0, 2, 3], keepdims=0))
        model.graph.output.append(helper.make_tensor_value_info(f"_bc{i}", TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sums: List[np.ndarray] = [np.zeros(1)] * len(tensors)
    n = min(len(images), MAX_IMAGES)
    for s in range(0, n, batch):
        x = np.asarray(images[s:min(s + batch, n)], np.float32)
        outs = sess.run(None, {name: x})
        sums = [acc + o.astype(np.float64) * len(x) for acc, o in zip(sums, outs)]
    return {t: acc / n for t, acc in zip(tensors, sums)}


def _shift(t: Dict[str, Any], mean: np.ndarray) -> np.ndarray:
    """Each output channel's mean shift for a (grouped) conv whose input has the per-channel ``mean``."""
    c_out, c_in_g = t["w"].shape[:2]
    per_group = c_out // t["group"]
    shift = np.empty(c_out)
    for g in range(t["group"]):
        sl = slice(g * per_group, (g + 1) * per_group)
        ins = slice(g * c_in_g, (g + 1) * c_in_g)
        shift[sl] = (t["wq"][sl] - t["w"][sl]).sum(axis=(2, 3)) @ mean[ins]
    return shift


def _fold(qdq: Any, node: Any, shift: np.ndarray) -> bool:
    """bias -= shift, in the float bias initializer or the int32 one behind its DequantizeLinear."""
    from onnx import numpy_helper

    inits = {t.name: t for t in qdq.graph.initializer}
    dq = _producers(qdq.graph).get(node.input[2])
    name = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else node.input[2]
    if name not in inits:
        return False
    b = numpy_helper.to_array(inits[name])
    if dq is not None and dq.op_type == "DequantizeLinear":
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        new = np.clip(np.round(b.astype(np.float64) - shift / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(b.dtype)
    else:
        new = (b.astype(np.float64) - shift).astype(b.dtype)
    inits[name].CopyFrom(numpy_helper.from_array(new, name))
    return True


def correct_biases(fp32_path: Union[str, Path], qdq_path: Union[str, Path], images: Any, batch: int = 16) -> Dict[str, Any]:
    """Fold each quantized conv's mean output shift into its bias, in ``qdq_path`` (rewritten in place); returns what
    was done: the convs corrected and the largest shift relative to the output's scale."""
    onnx = require("onnx", "correct the biases")
    from onnx import numpy_helper

    fp32 = onnx.load(str(fp32_path))
    qdq = onnx.load(str(qdq_path))
    targets = _targets(qdq, {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer})
    if not targets:
        return {"convs": 0, "images": 0}
    means = _means(qdq, sorted({t["x"] for t in targets}), images, batch)
    done, largest = 0, 0.0
    for t in targets:
        shift = _shift(t, means[t["x"]])
        if _fold(qdq, t["node"], shift):
            done += 1
            largest = max(largest, float(np.abs(shift).max()))
    onnx.save(qdq, str(qdq_path))
    log.info("bias correction: %d convs, largest shift %.4g", done, largest)
    return {"convs": done, "images": min(len(images), MAX_IMAGES), "largest_shift": largest}
