"""Stage `export`: PyTorch module -> checked, simplified ONNX with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ..artifacts import Artifact, atomic_file
from ..errors import BadInputError, InternalError
from ..optional import require

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    artifact: Artifact
    max_abs_diff: float
    tolerance: float
    simplified: bool
    nodes_before: int
    nodes_after: int

    def to_dict(self) -> Dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "simplified": self.simplified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
        }


def _torch_export(model: Any, sample: Any, path: Path, opset: int) -> None:
    torch = require("torch", "export to ONNX")
    kwargs = dict(
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript-based exporter: fast, one self-contained file, BN folded into Conv,
            # readable tensor names (/layer1/layer1.0/conv1/Conv_output_0) that reports can show.
            torch.onnx.export(model, (sample,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (sample,), str(path), **kwargs)


def simplify_onnx(model_proto: Any) -> Any:
    """onnxslim: constant folding, dead-node and identity elimination, shape-op fusion."""
    onnxslim = require("onnxslim", "simplify the ONNX graph")
    return onnxslim.slim(model_proto)


def onnx_from_torch(
    model: Any,
    out_path: Union[str, Path],
    sample: np.ndarray,
    opset: int = 17,
    tolerance: float = 1e-3,
    simplify: bool = True,
    parent: Optional[str] = None,
    root: Optional[Path] = None,
) -> ExportResult:
    """Export ``model`` (eval mode) to ONNX, check it, infer shapes, simplify, and compare to PyTorch.

    ``sample`` is a preprocessed float32 NCHW batch of real images (2+ images, so the dynamic batch
    axis is exercised). Raises BadInputError when the ONNX output differs from PyTorch by more than
    ``tolerance``.
    """
    torch = require("torch", "export to ONNX")
    onnx = require("onnx", "export to ONNX")
    if opset < 17:
        raise BadInputError(f"ONNX opset {opset} is too old: use opset >= 17 (recipe export.opset).")
    out_path = Path(out_path)
    model = model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample[:1]))
    with atomic_file(out_path) as tmp:
        try:
            _torch_export(model, x, tmp, opset)
        except Exception as exc:  # the exporter's errors are many and unstructured
            raise InternalError(f"torch.onnx.export failed for this model: {exc}") from exc
        proto = onnx.load(str(tmp))
        nodes_before = len(proto.graph.node)
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        if simplify:
            proto = simplify_onnx(proto)
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        nodes_after = len(proto.graph.node)
        with torch.no_grad():
            expected = model(torch.from_numpy(np.ascontiguousarray(sample))).numpy()
        got = run_onnx(tmp, sample)
        diff = float(np.abs(expected - got).max())
        log.info("export: %d -> %d nodes, max |onnx - torch| = %.3g on %d images", nodes_before, nodes_after, diff, len(sample))
        if not np.isfinite(diff) or diff > tolerance:
            raise BadInputError(
                f"The exported ONNX differs from PyTorch by {diff:.3g} (max abs logit difference on "
                f"{len(sample)} real images), above the tolerance {tolerance:g}. Check the model for "
                "training-only behaviour in eval mode, or raise export.tolerance in the recipe."
            )
    art = Artifact.from_files(
        "onnx-fp32", [out_path], root, kind="onnx", backend="onnx", precision="fp32", parent=parent, stage="export",
        settings={"opset": opset, "simplified": simplify, "max_abs_diff_vs_torch": diff},
    )
    return ExportResult(art, diff, tolerance, simplify, nodes_before, nodes_after)


def run_onnx(path: Union[str, Path], batch: np.ndarray) -> np.ndarray:
    """Reference inference with ONNX Runtime's CPU provider (no graph optimizations beyond basic)."""
    ort = require("onnxruntime", "run ONNX models")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: batch.astype(np.float32)})[0]


def onnx_input_info(path: Union[str, Path]) -> Dict[str, Any]:
    """Input name and shape of an ONNX model a user brings (for `--model model.onnx`)."""
    onnx = require("onnx", "read ONNX models")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"'{path}' is not a readable ONNX model ({exc}). Re-export it.") from exc
    if len(proto.graph.input) == 0 or len(proto.graph.output) == 0:
        raise BadInputError(f"The ONNX model '{path}' has no graph inputs or outputs.")
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]
    out_dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in proto.graph.output[0].type.tensor_type.shape.dim
    ]
    return {"input": inp.name, "shape": dims, "output": proto.graph.output[0].name, "output_shape": out_dims, "opset": max(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)}
