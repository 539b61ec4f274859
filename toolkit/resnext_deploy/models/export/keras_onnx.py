"""Stage `export` for Keras models: Keras (torch backend) -> NCHW ONNX, simplified and checked against Keras.

``model.export(format="onnx")`` on the torch backend writes what Keras computes: NHWC in, a Transpose around
every conv (torch convs are NCHW), BatchNorm as Sub/Mul/Add and "same" padding as a Pad whose amounts are
computed from the input's shape. The raw graph is made deployable in steps, each a plain ONNX rewrite:

1. :func:`nchw_entry` puts a Transpose (NCHW -> NHWC) at the entry and names the input/output ``input``/``logits``,
   so calibration, the backends, the runtime and the manifest see the same NCHW model as a PyTorch export.
2. :func:`freeze_pads`: the Pad amounts are evaluated (ONNX Runtime, two batch sizes, must agree) and stored as
   constants. onnxslim folds that shape arithmetic wrongly (measured: the stride-2 "same" pad moved from after
   to before, a 0.008 logit error), so it never sees it.
3. ONNX Runtime's basic (portable, standard-ops) graph optimization: its transpose optimizer pushes the layout
   Transposes through the elementwise ops until they cancel, the entry Transpose with them.
4. :func:`fold_affine_into_conv`: the per-channel Sub/Mul/Add/Div now right after each Conv (BatchNorm) go into
   the Conv's weights and bias.
5. onnxslim: Pad into Conv, Gemm fusion, constant folding, dead nodes.

The result is compared with Keras's own outputs on real images (max abs logit difference, the recipe's
export.tolerance), like the PyTorch export.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ...buildfolder.artifacts import Artifact, atomic_file
from ...errors import BadInputError, DeployError
from ...optional import require, require_keras
from .torch_onnx import (INPUT_NAME, OUTPUT_NAME, SIMPLIFY_ADVICE, ExportFailedError, ExportResult, require_close,
                         run_onnx, simplify_onnx)

log = logging.getLogger(__name__)


def nchw_entry(proto: Any, layout: str = "NCHW") -> Any:
    """Name the graph's input ``input`` and output ``logits``; with ``layout`` "NCHW", take (N, C, H, W) and
    transpose it to the NHWC the Keras graph computes on ("NHWC": keep Keras's input as it is)."""
    onnx = require("onnx", "rewrite the ONNX graph")
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportFailedError(f"The Keras ONNX has {len(graph.input)} inputs and {len(graph.output)} outputs; one image "
                                "input and one logits output are needed.")
    old_in, old_out = graph.input[0].name, graph.output[0].name
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:]:
        raise ExportFailedError(f"The Keras ONNX takes input of shape {dims}; expected (batch, H, W, C).")
    _, h, w, c = dims
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = OUTPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    if layout == "NHWC":
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old_in:
                    node.input[i] = INPUT_NAME
        graph.input[0].name = INPUT_NAME
        graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        return proto
    new_in = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", c, h, w])
    transpose = onnx.helper.make_node("Transpose", [INPUT_NAME], [old_in], name="/keras/nchw_to_nhwc", perm=[0, 2, 3, 1])
    graph.input.pop()
    graph.input.append(new_in)
    graph.node.insert(0, transpose)
    return proto


def freeze_pads(proto: Any) -> int:
    """Replace every Pad's computed amounts by a constant (evaluated at batch 1 and 3; they must agree).
    Returns how many were frozen."""
    onnx = require("onnx", "rewrite the ONNX graph")
    ort = require("onnxruntime", "evaluate the ONNX graph")
    consts = {i.name for i in proto.graph.initializer}
    names = [n.input[1] for n in proto.graph.node
             if n.op_type == "Pad" and len(n.input) > 1 and n.input[1] and n.input[1] not in consts]
    names = list(dict.fromkeys(names))
    if not names:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    values = [sess.run(names, {inp.name: np.zeros([b] + shape[1:], np.float32)}) for b in (1, 3)]
    for name, one, three in zip(names, *values):
        if not np.array_equal(one, three):
            continue  # depends on the batch size: leave it computed
        for node in list(proto.graph.node):  # the computed value becomes a constant; its producers die in onnxslim
            if name in node.output:
                node.output[list(node.output).index(name)] = name + "__computed"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(one, dtype=np.int64), name))
    return len(names)


def optimize_basic(proto: Any) -> Any:
    """ONNX Runtime's basic graph optimizations (standard ONNX ops only, portable), saved as ONNX."""
    onnx = require("onnx", "rewrite the ONNX graph")
    ort = require("onnxruntime", "optimize the ONNX graph")
    with tempfile.TemporaryDirectory(prefix="resnext-deploy-keras-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        out = onnx.load(opts.optimized_model_filepath)
    keep = {"", "ai.onnx"}
    used = {n.domain for n in out.graph.node}
    for imp in list(out.opset_import):  # ORT lists every domain it knows; keep the ones the graph uses
        if imp.domain not in keep and imp.domain not in used:
            out.opset_import.remove(imp)
    return out


def _per_channel(value: np.ndarray, channels: int, nhwc: bool = False) -> Optional[np.ndarray]:
    """``value`` as a (channels,) vector when it broadcasts per channel over an NCHW (or NHWC) tensor, else None."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), dtype=np.float32)
    shape = tuple(value.shape)
    ok = ((channels,), (1, channels), (1, 1, channels), (1, 1, 1, channels)) if nhwc else ((channels, 1, 1), (1, channels, 1, 1))
    if shape in ok:
        return value.reshape(channels).astype(np.float32)
    return None


def fold_affine_into_conv(proto: Any) -> int:
    """Fold per-channel constant Add/Sub/Mul/Div that directly follow a Conv (BatchNorm in inference), or follow
    it through a Transpose to NHWC, into the Conv's weight and bias. Returns the number of nodes folded."""
    onnx = require("onnx", "rewrite the ONNX graph")
    nh = onnx.numpy_helper
    graph = proto.graph
    folded = 0
    outputs = {o.name for o in graph.output}
    while True:
        inits = {i.name: i for i in graph.initializer}
        consumers: Dict[str, List[Any]] = {}
        for n in graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        changed = False
        for conv in graph.node:
            if conv.op_type != "Conv" or conv.input[1] not in inits or conv.output[0] in outputs:
                continue
            users = consumers.get(conv.output[0], [])
            through = None  # a Transpose NCHW -> NHWC between the Conv and the op
            if len(users) == 1 and users[0].op_type == "Transpose" and users[0].output[0] not in outputs and \
                    [list(a.ints) for a in users[0].attribute if a.name == "perm"] == [[0, 2, 3, 1]]:
                through = users[0]
                users = consumers.get(through.output[0], [])
            if len(users) != 1 or users[0].op_type not in ("Add", "Sub", "Mul", "Div"):
                continue
            op = users[0]
            fed = through.output[0] if through is not None else conv.output[0]
            if op.input[0] == fed and op.input[1] in inits:
                const = nh.to_array(inits[op.input[1]])
            elif op.op_type in ("Add", "Mul") and op.input[1] == fed and op.input[0] in inits:
                const = nh.to_array(inits[op.input[0]])
            else:
                continue
            weight = nh.to_array(inits[conv.input[1]]).astype(np.float32)
            cv = _per_channel(const, weight.shape[0], nhwc=through is not None)
            if cv is None:
                continue
            has_bias = len(conv.input) > 2 and conv.input[2] in inits
            bias = nh.to_array(inits[conv.input[2]]).astype(np.float32) if has_bias else np.zeros(weight.shape[0], np.float32)
            if op.op_type == "Add":
                bias = bias + cv
            elif op.op_type == "Sub":
                bias = bias - cv
            elif op.op_type == "Mul":
                weight, bias = weight * cv.reshape(-1, *([1] * (weight.ndim - 1))), bias * cv
            else:
                weight, bias = weight / cv.reshape(-1, *([1] * (weight.ndim - 1))), bias / cv
            wname, bname = f"{conv.name or conv.output[0]}.folded{folded}.weight", f"{conv.name or conv.output[0]}.folded{folded}.bias"
            graph.initializer.extend([nh.from_array(weight.astype(np.float32), wname), nh.from_array(bias.astype(np.float32), bname)])
            conv.input[1] = wname
            if has_bias:
                conv.input[2] = bname
            else:
                conv.input.append(bname)
            if through is not None:
                through.output[0] = op.output[0]
            else:
                conv.output[0] = op.output[0]
            graph.node.remove(op)
            folded += 1
            changed = True
            break  # the consumer map is stale now
        if not changed:
            return folded


def keras_onnx_from_raw(proto: Any, simplify: bool = True, layout: str = "NCHW") -> Any:
    """Steps 1-5 of the module docstring on a raw Keras export (``simplify`` False: only step 1)."""
    onnx = require("onnx", "check the ONNX graph")
    proto = nchw_entry(proto, layout)
    if simplify:
        freeze_pads(proto)
        proto = optimize_basic(proto)
        fold_affine_into_conv(proto)
        proto = simplify_onnx(proto)
    onnx.checker.check_model(proto)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def onnx_from_keras(
    model: Any,
    out_path: Union[str, Path],
    sample: np.ndarray,
    opset: int = 17,
    tolerance: float = 1e-3,
    simplify: bool = True,
    parent: Optional[str] = None,
    root: Optional[Path] = None,
    layout: str = "NCHW",
) -> ExportResult:
    """Export a Keras model (torch backend) to a checked, simplified ONNX taking NCHW ``input`` and compare it
    with Keras on ``sample`` (a preprocessed float32 NCHW batch of real images, 2+ so the dynamic batch is used).

    Raises BadInputError when the ONNX differs from Keras by more than ``tolerance`` (max abs logit difference),
    ExportFailedError when Keras's exporter or the ONNX checker rejects the model.
    """
    keras = require_keras("export Keras models")
    onnx = require("onnx", "export to ONNX")
    from ..keras import input_hwc, keras_predict

    if opset < 17:
        raise BadInputError(f"ONNX opset {opset} is too old: use opset >= 17 (recipe export.opset).")
    h, w, c = input_hwc(model)
    if tuple(sample.shape[1:]) != (c, h, w):
        raise BadInputError(f"The images are preprocessed to {tuple(sample.shape[1:])} (C, H, W) but the Keras model takes "
                            f"(H, W, C) = {(h, w, c)}. Give the preprocessing a crop of {h} (or a model taking {c}-channel images).")
    out_path = Path(out_path)
    expected = keras_predict(model, sample)  # also the call Keras's exporter needs before it can trace
    t = time.perf_counter()
    with atomic_file(out_path) as tmp:
        raw_path = tmp.with_name(tmp.name + ".raw.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.export(str(raw_path), format="onnx", verbose=False, opset_version=opset,
                             input_signature=[keras.InputSpec(shape=(None, h, w, c), dtype="float32")])
            raw = onnx.load(str(raw_path))
        except DeployError:
            raise
        except Exception as exc:  # Keras and torch's exporter raise many types
            detail = " ".join(str(exc).split())[:300]
            raise ExportFailedError(f"Keras could not export the model to ONNX ({type(exc).__name__}: {detail}). "
                                    "Run `resnext-deploy check --model ...` first; layers without an ONNX form must go.") from exc
        finally:
            raw_path.unlink(missing_ok=True)
        seconds = time.perf_counter() - t
        nodes_before = len(raw.graph.node)
        try:
            proto = keras_onnx_from_raw(raw, simplify, layout)
        except DeployError:
            raise
        except Exception as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ExportFailedError(f"The Keras ONNX failed its checks or simplification ({type(exc).__name__}: {detail}). "
                                    "Set export.simplify = false in the recipe to keep the raw graph.") from exc
        onnx.save(proto, str(tmp))
        nodes_after = len(proto.graph.node)
        feed = sample if layout == "NCHW" else np.ascontiguousarray(sample.transpose(0, 2, 3, 1))
        got = run_onnx(tmp, feed)
        diff = float(np.abs(expected - got).max())
        log.info("keras export: %d -> %d nodes in %.2f s, max |onnx - keras| = %.3g on %d images",
                 nodes_before, nodes_after, seconds, diff, len(sample))
        require_close(diff, tolerance, "Keras", len(sample), SIMPLIFY_ADVICE)
    art = Artifact.from_files(
        "onnx-fp32", [out_path], root, kind="onnx", backend="onnx", precision="fp32", parent=parent, stage="export",
        settings={"opset": opset, "simplified": simplify, "source": "keras", "input_layout": layout,
                  "max_abs_diff_vs_keras": diff, "keras_export_seconds": round(seconds, 3)},
    )
    return ExportResult(art, diff, tolerance, simplify, nodes_before, nodes_after)
