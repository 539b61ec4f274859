"""TensorFlow SavedModel -> ONNX: tf2onnx, then the NCHW rewrite of a Keras export, compared with TensorFlow.

tf2onnx (models/savedmodel.py) writes the signature's graph as TensorFlow computes it: NHWC input with a Transpose
around each conv, BatchNorm as Mul/Add. It then goes through the same rewrites as a Keras export
(keras_onnx.keras_onnx_from_raw: the NCHW entry named ``input``/``logits``, frozen Pad amounts, ONNX Runtime's
transpose optimizer, BatchNorm folded into the convs, onnxslim), and the result is compared with TensorFlow's own
outputs of the signature (max abs logit difference, the recipe's export.tolerance). The saved_model format plug-in
(models/formats/saved_model.py) calls it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ...buildfolder.artifacts import Artifact, atomic_file
from ...errors import BadInputError, DeployError
from ...optional import require
from ..savedmodel import LoadedSavedModel, raw_onnx_from_savedmodel, tensorflow_predict
from .keras_onnx import keras_onnx_from_raw
from .torch_onnx import SIMPLIFY_ADVICE, ExportFailedError, ExportResult, require_close, run_onnx

log = logging.getLogger(__name__)


def stable_node_names(proto: Any) -> None:
    """Name every node ``/<op>``, ``/<op>_1``, ... in graph order, in place (the torch exporter's style).

    tf2onnx names nodes from a counter global to the process (``Conv__66``), so converting the same SavedModel twice
    gives other names; the accuracy fallback re-exports and leaves nodes in float by name, so the names must not
    depend on what ran before."""
    seen: Dict[str, int] = {}
    for node in proto.graph.node:
        k = seen.get(node.op_type, 0)
        seen[node.op_type] = k + 1
        node.name = f"/{node.op_type}" + (f"_{k}" if k else "")


def onnx_from_savedmodel(
    loaded: LoadedSavedModel,
    out_path: Union[str, Path],
    sample: np.ndarray,
    opset: int = 17,
    tolerance: float = 1e-3,
    simplify: bool = True,
    parent: Optional[str] = None,
    root: Optional[Path] = None,
) -> ExportResult:
    """Convert a loaded SavedModel's signature to a checked, simplified ONNX taking NCHW ``input`` and compare it
    with TensorFlow on ``sample`` (a preprocessed float32 NCHW batch of real images, 2+ so the dynamic batch is used).

    Raises BadInputError when tf2onnx cannot convert the signature or the ONNX differs from TensorFlow by more than
    ``tolerance`` (max abs logit difference); ExportFailedError when the rewrites or the ONNX checker fail.
    Nothing is left at ``out_path`` on failure.
    """
    onnx = require("onnx", "export to ONNX")
    if opset < 17:
        raise BadInputError(f"ONNX opset {opset} is too old: use opset >= 17 (recipe export.opset).")
    h, w, c = loaded.signature.input_hwc
    if tuple(sample.shape[1:]) != (c, h, w):
        raise BadInputError(f"The images are preprocessed to {tuple(sample.shape[1:])} (C, H, W) but the SavedModel takes "
                            f"(H, W, C) = {(h, w, c)}. Give the preprocessing a crop of {h}.")
    out_path = Path(out_path)
    expected = tensorflow_predict(loaded, sample)
    t = time.perf_counter()
    raw = raw_onnx_from_savedmodel(loaded, opset)
    seconds = time.perf_counter() - t
    nodes_before = len(raw.graph.node)
    with atomic_file(out_path) as tmp:
        try:
            proto = keras_onnx_from_raw(raw, simplify)
            stable_node_names(proto)
        except DeployError:
            raise
        except Exception as exc:  # onnx, onnxruntime and onnxslim raise many types
            detail = " ".join(str(exc).split())[:300]
            raise ExportFailedError(f"The ONNX tf2onnx made from '{loaded.path}' failed its checks or simplification "
                                    f"({type(exc).__name__}: {detail}). Set export.simplify = false in the recipe to keep "
                                    "the converted graph.") from exc
        onnx.save(proto, str(tmp))
        nodes_after = len(proto.graph.node)
        diff = float(np.abs(expected - run_onnx(tmp, sample)).max())
        log.info("savedmodel export: tf2onnx %.2f s, %d -> %d nodes, max |onnx - tensorflow| = %.3g on %d images",
                 seconds, nodes_before, nodes_after, diff, len(sample))
        require_close(diff, tolerance, f"TensorFlow (the SavedModel '{loaded.path}')", len(sample), SIMPLIFY_ADVICE)
    art = Artifact.from_files(
        "onnx-fp32", [out_path], root, kind="onnx", backend="onnx", precision="fp32", parent=parent, stage="export",
        settings={"opset": opset, "simplified": simplify, "source": "saved_model", "input_layout": "NCHW",
                  "signature": loaded.signature.name, "tensorflow_version": loaded.tensorflow_version,
                  "compared_with": "tensorflow", "max_abs_diff_vs_tensorflow": diff, "tf2onnx_seconds": round(seconds, 3)},
    )
    return ExportResult(art, diff, tolerance, simplify, nodes_before, nodes_after)


def check_savedmodel(loaded: LoadedSavedModel, opset: int = 17, tolerance: float = 1e-3, simplify: bool = True) -> Dict[str, Any]:
    """`check` of a SavedModel: the signature converts (tf2onnx + the rewrites + onnx.checker) and the ONNX agrees
    with TensorFlow within ``tolerance`` on two seeded random inputs (`check` is given no images; the export compares
    on real ones). The check's record, with a one-line ``summary``. Raises as :func:`onnx_from_savedmodel` does."""
    h, w, c = loaded.signature.input_hwc
    sample = np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="resnext-deploy-savedmodel-") as tmp:
        res = onnx_from_savedmodel(loaded, Path(tmp) / "model.onnx", sample, opset, tolerance, simplify)
    sig = loaded.signature
    summary = (f"{loaded.path}: TensorFlow SavedModel, signature '{sig.name}' ({sig.input_name} (batch, {h}, {w}, {c}) -> "
               f"{sig.output_name} (batch, {sig.num_classes})); tf2onnx converted it ({res.nodes_before} -> "
               f"{res.nodes_after} ONNX nodes after the rewrites), onnx.checker passed, max |onnx - tensorflow| = "
               f"{res.max_abs_diff:.3g} on 2 random inputs (tolerance {res.tolerance:g}). The architecture check runs "
               "on PyTorch and Keras models only.")
    return {"passed": True, "checks": ["tf2onnx conversion", "onnx.checker", "onnx vs tensorflow (random inputs)"],
            "signature": sig.to_dict(), "tensorflow_version": loaded.tensorflow_version, "export": res.to_dict(),
            "summary": summary}
