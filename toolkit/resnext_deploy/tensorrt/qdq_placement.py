"""Re-place the Q/DQ of ONNX Runtime's int8 model where TensorRT fuses it (a graph pass with the onnx API).

ONNX Runtime's quantizer puts Q/DQ on every Conv output that feeds an Add and on both inputs and the output
of the Add. TensorRT's Q/DQ placement recommendations (and its quant_resnet50 example; ModelOpt's ONNX PTQ
places it the same way) want, for each Conv+Add of a residual block:

1. no Q/DQ between the Conv and the Add it feeds, so that TensorRT fuses the Add into the Conv;
2. Q/DQ on the residual (identity or projection) input of the Add, so that the fused Add runs in INT8;
3. no Q/DQ on the Add's output when an activation (ReLU) follows: Conv+Add+ReLU fuse and the ReLU's
   output carries the Q/DQ the next layers read.

The pass only removes or re-wires Q/DQ that the quantizer placed, and reuses the quantizer's own scales when
rule 2 needs a Q/DQ on a residual input that lacks one; it never computes a scale. Which Add input is the
backbone is decided by ``qdq_rules.residual_adds`` (the rule ModelOpt uses). ``qdq_rules.fusion_warnings``
reports what this pass fixes, on any model. Needs ``onnx``; no 3.9+ syntax.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

from ..errors import InternalError
from .qdq_rules import FUSED_ACTIVATIONS, OnnxGraph, fusion_warnings, residual_adds

log = logging.getLogger(__name__)


@dataclass
class Placement:
    """What the pass changed in one model."""

    residual_adds: int = 0
    removed_conv_add: List[str] = field(default_factory=list)  # Q/DQ pairs taken off Conv -> Add (rule 1)
    removed_add_output: List[str] = field(default_factory=list)  # Q/DQ pairs taken off Add outputs (rule 3)
    quantized_residuals: List[str] = field(default_factory=list)  # residual inputs given an existing Q/DQ (rule 2)
    unquantized_residuals: List[str] = field(default_factory=list)  # residual inputs with no scale to reuse
    quantize_nodes: int = 0
    dequantize_nodes: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _rewire(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _drop_unused_qdq(graph: Any) -> List[str]:
    """Remove Q/DQ nodes whose outputs nobody reads (repeat: a Q feeding only a removed DQ goes too)."""
    removed: List[str] = []
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return removed
        for n in dead:
            removed.append(n.name)
            graph.node.remove(n)


def place_for_fusion(proto: Any) -> Placement:
    """Apply the three rules to ``proto`` (a ModelProto, changed in place); returns what changed."""
    graph = proto.graph
    g = OnnxGraph(proto)
    result = Placement()
    adds = residual_adds(g)
    result.residual_adds = len(adds)
    for ra in adds:
        add = ra.add
        # Rule 1: the Conv's float output straight into the Add.
        src, passed = g.real_source(add.input[ra.backbone])
        if passed:
            add.input[ra.backbone] = src
            result.removed_conv_add.append(ra.name)
        # Rule 3: the Add's float output straight into the activation after it.
        for q, _ in list(g.consumers.get(add.output[0], [])):
            if q.op_type != "QuantizeLinear":
                continue
            dqs = [dq for dq, _ in g.consumers.get(q.output[0], [])]
            after = [c for dq in dqs for c, _ in g.consumers.get(dq.output[0], [])]
            if dqs and after and all(c.op_type in FUSED_ACTIVATIONS for c in after):
                for dq in dqs:
                    _rewire(graph, dq.output[0], add.output[0])
                result.removed_add_output.append(ra.name)
        # Rule 2: the residual input through a Q/DQ, with the scale the quantizer gave that tensor.
        res = add.input[ra.residual]
        prod = g.producer.get(res)
        if prod is None or prod.op_type != "DequantizeLinear":
            dq = _existing_dq(g, res)
            if dq is not None:
                add.input[ra.residual] = dq
                result.quantized_residuals.append(ra.name)
            else:
                result.unquantized_residuals.append(ra.name)
    removed = _drop_unused_qdq(graph)
    if result.unquantized_residuals:
        log.warning("residual inputs left in float (no scale from the quantizer, e.g. layers kept in float): %s",
                    ", ".join(result.unquantized_residuals))
    result.quantize_nodes = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    result.dequantize_nodes = sum(1 for n in graph.node if n.op_type == "DequantizeLinear")
    log.info("Q/DQ placed for TensorRT's Conv+Add fusion: %d residual Adds, %d Q/DQ nodes removed",
             len(adds), len(removed))
    return result


def _existing_dq(g: OnnxGraph, tensor: str) -> Any:
    """The output of a DequantizeLinear of a QuantizeLinear of ``tensor`` already in the graph, or None."""
    for q, _ in g.consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq, _ in g.consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return None


def without_unused_initializers(proto: Any) -> Any:
    """The model with the scales and zero points the moved Q/DQ left unused removed (onnx-graphsurgeon's cleanup).

    ONNX Runtime warns once per orphan at every session ("Removing initializer ... not used by any node") and
    TensorRT's parser carries them too. graphsurgeon drops the model's metadata_props: they are copied back.
    """
    from ..optional import require

    gs = require("onnx_graphsurgeon", "remove the unused initializers of the Q/DQ model")
    graph = gs.import_onnx(proto)
    graph.cleanup()
    clean = gs.export_onnx(graph)
    clean.ir_version = proto.ir_version
    clean.producer_name, clean.producer_version = proto.producer_name, proto.producer_version
    del clean.metadata_props[:]
    clean.metadata_props.extend(proto.metadata_props)
    return clean


def place_file(path: Union[str, Path]) -> Placement:
    """Re-place the Q/DQ of the ONNX file ``path`` in place (the caller writes it atomically), checked after."""
    from ..optional import require

    onnx = require("onnx", "place Q/DQ for TensorRT")
    proto = onnx.load(str(path))
    result = place_for_fusion(proto)
    proto = without_unused_initializers(proto)
    onnx.checker.check_model(proto)
    left = fusion_warnings(OnnxGraph(proto))
    unexpected = [w for w in left if w.rule != "residual-unquantized"]
    if unexpected:
        raise InternalError("The Q/DQ placement pass left placements that block Conv+Add fusion: "
                            + "; ".join(str(w) for w in unexpected))
    onnx.save(proto, str(path))
    return result
