"""TensorRT's rules for a Q/DQ (explicitly quantized) ONNX, checked on any machine, without TensorRT.

The rules come from onnx-tensorrt's operator table (docs/operators.md: QuantizeLinear/DequantizeLinear
take int8 only and need a zero-point of 0), its importer (QuantDequantLinearHelper: scales must be
positive, per-channel scales only on weights with one scale per output channel, TensorRT 8.6 needs the
zero-point input and reads scales as float32) and TensorRT's developer guide on explicit quantization.
Every violation names the node, so a user can find it in Netron.

Runs on JetPack's Python 3.8: no 3.9+ syntax; ``onnx`` is imported lazily.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import BadInputError

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

#: rule id -> what it checks (shown by `resnext-deploy check` and the README)
RULES: Dict[str, str] = {
    "opset": "Q/DQ needs opset >= 10, per-channel (per-axis) Q/DQ needs opset >= 13",
    "domain": "Q/DQ must be the standard ONNX ops, not com.microsoft contrib ops",
    "zero-point-missing": "every Q/DQ gives its zero-point input (TensorRT 8.6 requires it; without it ONNX means uint8)",
    "zero-point-nonzero": "zero-points are all 0: TensorRT quantizes symmetrically",
    "uint8": "no uint8 activations or weights: TensorRT quantizes to signed int8",
    "dtype": "quantized tensors are int8 (e.g. no int32 bias DequantizeLinear: TensorRT rejects it)",
    "scale-constant": "scales are constants (initializers or Constant nodes)",
    "scale-dtype": "scales are float32 (TensorRT 8.6 reads them as float32)",
    "scale-positive": "scales are finite and > 0",
    "per-channel-activation": "activations are quantized per tensor (one scale); per-channel only on weights",
    "per-channel-axis": "per-channel weight scales lie on the output-channel axis, one per channel",
    "q-without-dq": "a QuantizeLinear output feeds only DequantizeLinear nodes",
    "graph-output": "no graph output is produced by a QuantizeLinear or DequantizeLinear",
    "no-qdq": "the model has Q/DQ nodes (an INT8 engine from explicit quantization needs them)",
}

#: placements that are legal but stop TensorRT fusing a Conv with the residual Add it feeds (warnings, not errors).
#: From TensorRT's Q/DQ placement recommendations and its quant_resnet50 example: Q/DQ on the residual input of
#: the Add, none between the Conv and the Add, none on the Add's output when an activation follows it.
FUSION_RULES: Dict[str, str] = {
    "conv-add-qdq": "no Q/DQ between a Conv and the residual Add it feeds (TensorRT fuses Conv+Add only without it)",
    "residual-unquantized": "the residual (identity) input of each Conv+Add is quantized (Q/DQ on it)",
    "add-output-qdq": "no Q/DQ on the output of a Conv+Add that feeds an activation (the activation's output is quantized)",
}

# ONNX TensorProto element types (numbers from onnx.proto; no onnx import needed to name them)
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                10: "float16", 11: "float64", 16: "bfloat16", 17: "float8e4m3fn", 21: "uint4", 22: "int4"}
_UINT8, _INT8, _FLOAT = 2, 3, 1


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node."""

    rule: str
    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}) [{self.rule}]: {self.message}"


@dataclass
class QdqReport:
    """What the checker found in one model."""

    model: str
    opset: int
    quantize_nodes: int
    dequantize_nodes: int
    violations: List[Violation] = field(default_factory=list)
    warnings: List[Violation] = field(default_factory=list)  # FUSION_RULES: legal, but slower in TensorRT

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def has_qdq(self) -> bool:
        return bool(self.quantize_nodes or self.dequantize_nodes)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "opset": self.opset,
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
            "passed": self.passed,
            "violations": [asdict(v) for v in self.violations],
            "fusion_warnings": [asdict(v) for v in self.warnings],
        }

    def summary(self) -> str:
        head = (f"{self.model}: {self.quantize_nodes} QuantizeLinear, {self.dequantize_nodes} DequantizeLinear, "
                f"opset {self.opset}")
        if self.passed and not self.has_qdq:
            return f"{head}: no Q/DQ nodes, nothing to check (TensorRT builds such a model in float or from a calibration cache)"
        lines = [f"{head}: meets TensorRT's Q/DQ rules ({len(RULES)} rules checked)"] if self.passed else (
            [f"{head}: {len(self.violations)} violation(s) of TensorRT's Q/DQ rules"] + [f"  - {v}" for v in self.violations])
        if self.warnings:
            lines.append(f"  {len(self.warnings)} placement(s) that block TensorRT's Conv+Add fusion (slower, not wrong):")
            lines += [f"  - {v}" for v in self.warnings]
        return "\n".join(lines)


class OnnxGraph:
    """The parts of an ONNX graph the rules look at: constants, producers, consumers, dtypes."""

    def __init__(self, proto: Any) -> None:
        from ..optional import require

        onnx = require("onnx", "check Q/DQ models")
        self.numpy_helper = onnx.numpy_helper
        g = proto.graph
        self.nodes = list(g.node)
        self.outputs = {o.name for o in g.output}
        self.constants: Dict[str, Any] = {}
        self.dtypes: Dict[str, int] = {}
        for init in g.initializer:
            self.constants[init.name] = init
            self.dtypes[init.name] = init.data_type
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            if vi.type.HasField("tensor_type"):
                self.dtypes.setdefault(vi.name, vi.type.tensor_type.elem_type)
        self.producer: Dict[str, Any] = {}
        self.consumers: Dict[str, List[Tuple[Any, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for idx, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, idx))
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
                        self.dtypes[node.output[0]] = attr.t.data_type

    def array(self, name: str) -> Any:
        """The value of a constant tensor as numpy, or None."""
        t = self.constants.get(name)
        return None if t is None else self.numpy_helper.to_array(t)

    def is_weight(self, name: str) -> bool:
        """A constant, or a QuantizeLinear of a constant (weights with their own Q/DQ pair)."""
        if name in self.constants:
            return True
        prod = self.producer.get(name)
        return prod is not None and prod.op_type == "QuantizeLinear" and prod.input[0] in self.constants


    def real_source(self, name: str) -> Tuple[str, List[Any]]:
        """The tensor ``name`` carries before any Q/DQ (DQ <- Q <- x gives x) and the Q/DQ nodes passed."""
        passed: List[Any] = []
        prod = self.producer.get(name)
        while prod is not None and prod.op_type in QDQ_OPS and prod.input[0] not in self.constants:
            passed.append(prod)
            name = prod.input[0]
            prod = self.producer.get(name)
        return name, passed

    def distances(self, name: str) -> Dict[str, int]:
        """Every tensor ``name`` is computed from -> how many compute nodes (Q/DQ not counted) lie between them."""
        from collections import deque

        dist = {name: 0}
        todo = deque([name])
        while todo:
            t = todo.popleft()
            prod = self.producer.get(t)
            if prod is None:
                continue
            step = 0 if prod.op_type in QDQ_OPS else 1
            for inp in prod.input:
                if not inp or inp in self.constants:
                    continue
                d = dist[t] + step
                if d < dist.get(inp, 1 << 30):
                    dist[inp] = d
                    (todo.appendleft if step == 0 else todo.append)(inp)
        return dist


@dataclass(frozen=True)
class ResidualAdd:
    """An Add of a Conv's output (the backbone, which TensorRT fuses into the Conv) and a residual input."""

    add: Any
    backbone: int  # index of the Add input coming from the fused Conv
    residual: int
    conv: Any

    @property
    def name(self) -> str:
        return str(self.add.name or self.add.output[0])


def residual_adds(g: OnnxGraph) -> List[ResidualAdd]:
    """The Adds TensorRT can fuse with a Conv: two computed inputs, one of them a Conv's output.

    Which input is the backbone follows ModelOpt's rule for residual Adds: from the inputs' lowest common
    ancestor, the longer path is the backbone (the block's convolutions), the shorter the shortcut (identity,
    or the projection Conv of a downsampling block). The backbone must come from a Conv.
    """
    out: List[ResidualAdd] = []
    for node in g.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in g.constants for i in node.input):
            continue
        d0, d1 = g.distances(node.input[0]), g.distances(node.input[1])
        common = set(d0) & set(d1)
        if not common:
            continue
        lca = min(common, key=lambda t: (d0[t] + d1[t], t))
        if d0[lca] == d1[lca]:
            continue  # symmetric branches: no shortcut to tell apart
        backbone = 0 if d0[lca] > d1[lca] else 1
        conv = g.producer.get(g.real_source(node.input[backbone])[0])
        if conv is not None and conv.op_type == "Conv":
            out.append(ResidualAdd(node, backbone, 1 - backbone, conv))
    return out


#: activations TensorRT fuses after Conv+Add (the Q/DQ then belongs on their output)
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh")


def fusion_warnings(g: OnnxGraph) -> List[Violation]:
    """Q/DQ placements (FUSION_RULES) that keep TensorRT from fusing each Conv with the residual Add it feeds."""
    out: List[Violation] = []
    if not any(n.op_type in QDQ_OPS for n in g.nodes):
        return out  # a float model: nothing placed
    for ra in residual_adds(g):
        add = ra.add
        src, passed = g.real_source(add.input[ra.backbone])
        if passed:
            out.append(Violation("conv-add-qdq", ra.name, "Add",
                                 f"Q/DQ ({', '.join(n.name or n.op_type for n in passed)}) sits between Conv "
                                 f"'{ra.conv.name}' and this Add; TensorRT fuses Conv+Add only when the Conv output "
                                 "reaches the Add unquantized."))
        res = g.producer.get(add.input[ra.residual])
        if res is None or res.op_type != "DequantizeLinear":
            out.append(Violation("residual-unquantized", ra.name, "Add",
                                 f"its residual input '{add.input[ra.residual]}' has no Q/DQ; TensorRT wants the "
                                 "residual input quantized so the Add runs in INT8 inside the fused Conv."))
        for q, _ in g.consumers.get(add.output[0], []):
            if q.op_type != "QuantizeLinear":
                continue
            after = [c for dq, _ in g.consumers.get(q.output[0], []) for c, _ in g.consumers.get(dq.output[0], [])]
            if after and all(c.op_type in FUSED_ACTIVATIONS for c in after):
                out.append(Violation("add-output-qdq", ra.name, "Add",
                                     f"its output is quantized ('{q.name}') before {after[0].op_type} "
                                     f"'{after[0].name}'; TensorRT fuses Conv+Add+{after[0].op_type} and wants "
                                     "the Q/DQ after the activation only."))
    return out


def _label(node: Any, index: int) -> str:
    return node.name or f"<unnamed {node.op_type} #{index} -> {node.output[0] if node.output else '?'}>"


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else default  # AttributeProto.INT == 2
    return default


def _weight_axis(consumer: Any, index: int, rank: int) -> Optional[int]:
    """The output-channel axis of a weight input, or None when the consumer has no rule here."""
    if consumer.op_type == "Conv" and index == 1:
        return 0  # [K, C/g, kh, kw]
    if consumer.op_type == "ConvTranspose" and index == 1:
        return 1  # [C, K/g, kh, kw]
    if consumer.op_type == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul" and index == 1:
        return rank - 1
    return None


def _quantized_dtype(node: Any, g: OnnxGraph) -> Optional[int]:
    """The integer type a Q produces or a DQ consumes (ONNX: the zero-point's type)."""
    if len(node.input) > 2 and node.input[2]:
        dt = g.dtypes.get(node.input[2])
        if dt:
            return dt
    if node.op_type == "DequantizeLinear":
        src = node.input[0]
        if src in g.dtypes:
            return g.dtypes[src]
        prod = g.producer.get(src)
        if prod is not None and prod.op_type == "QuantizeLinear":
            return _quantized_dtype(prod, g)
    for a in node.attribute:  # opset 21 output_dtype
        if a.name == "output_dtype" and a.i:
            return a.i
    return _UINT8 if node.op_type == "QuantizeLinear" else None  # ONNX's default without a zero-point


def _check_node(node: Any, index: int, g: OnnxGraph, opset: int) -> List[Violation]:
    import numpy as np

    out: List[Violation] = []
    name = _label(node, index)

    def bad(rule: str, message: str) -> None:
        out.append(Violation(rule, name, node.op_type, message))

    if node.domain not in ("", "ai.onnx"):
        bad("domain", f"is in domain '{node.domain}'; TensorRT's parser only knows the standard ONNX op. "
                      "Quantize without contrib ops (ONNX Runtime: UseQDQContribOps=False).")
    if opset < 10:
        bad("opset", f"the model's opset is {opset}; QuantizeLinear/DequantizeLinear need opset >= 10 (use 13+).")

    data = node.input[0]
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.array(scale_name) if scale_name else None
    if scale is None:
        bad("scale-constant", f"scale '{scale_name}' is computed at run time; TensorRT needs a constant scale.")
    else:
        if g.dtypes.get(scale_name) != _FLOAT:
            dt = _DTYPE_NAMES.get(g.dtypes.get(scale_name, 0), "unknown")
            bad("scale-dtype", f"scale '{scale_name}' is {dt}; TensorRT 8.6 reads Q/DQ scales as float32.")
        flat = np.asarray(scale, dtype=np.float64).reshape(-1)
        bad_vals = flat[~(np.isfinite(flat) & (flat > 0))]
        if bad_vals.size:
            bad("scale-positive", f"scale '{scale_name}' has {bad_vals.size} value(s) that are not finite and > 0 "
                                  f"(e.g. {bad_vals[0]:g}); TensorRT requires positive scales.")

    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not zp_name:
        bad("zero-point-missing", "has no zero-point input; TensorRT 8.6 requires one (int8 zeros), and without it "
                                  "ONNX defines the quantized type as uint8.")
    else:
        zp = g.array(zp_name)
        if zp is not None and np.any(np.asarray(zp) != 0):
            nz = np.asarray(zp).reshape(-1)
            bad("zero-point-nonzero", f"zero-point '{zp_name}' is {nz[nz != 0][0]} (not 0); TensorRT quantizes "
                                      "symmetrically. Quantize with symmetric activations and weights.")

    qtype = _quantized_dtype(node, g)
    if qtype == _UINT8:
        what = "weights" if g.is_weight(data) else "activations"
        bad("uint8", f"quantizes {what} to uint8 ('{data}'); TensorRT quantizes to signed int8 only. "
                     "Use int8 activations (resnext-deploy: the 'int8' flavour).")
    elif qtype is not None and qtype != _INT8:
        dt = _DTYPE_NAMES.get(qtype, str(qtype))
        hint = " A bias must stay float for TensorRT (ONNX Runtime: QuantizeBias=False)." if qtype == 6 else ""
        bad("dtype", f"quantized tensor '{data}' is {dt}; TensorRT's Q/DQ take int8 here.{hint}")

    per_axis = scale is not None and np.asarray(scale).size > 1
    if per_axis and opset < 13:
        bad("opset", f"has {np.asarray(scale).size} scales (per-axis) but the model's opset is {opset}; "
                     "per-axis Q/DQ needs opset >= 13.")
    if per_axis and not g.is_weight(data):
        bad("per-channel-activation", f"activation '{data}' has {np.asarray(scale).size} scales; TensorRT quantizes "
                                      "activations per tensor (one scale).")
    if per_axis and g.is_weight(data) and node.op_type == "DequantizeLinear":
        out += _check_weight_axis(node, name, g, np.asarray(scale).size)

    if node.op_type == "QuantizeLinear":
        for consumer, _ in g.consumers.get(node.output[0], []):
            if consumer.op_type != "DequantizeLinear":
                bad("q-without-dq", f"its int8 output '{node.output[0]}' feeds {consumer.op_type} "
                                    f"'{consumer.name}'; TensorRT expects each QuantizeLinear to be followed by "
                                    "DequantizeLinear.")
                break
    if set(node.output) & g.outputs:
        bad("graph-output", f"produces graph output '{sorted(set(node.output) & g.outputs)[0]}'; TensorRT wants "
                            "no Q/DQ on graph outputs (leave the last layer's output in float).")
    return out


def _check_weight_axis(node: Any, name: str, g: OnnxGraph, count: int) -> List[Violation]:
    out = []
    src = node.input[0]
    if src not in g.constants:  # Q -> DQ on a float weight: look at the float constant
        src = g.producer[src].input[0]
    weight = g.array(src)
    rank = weight.ndim
    axis = _attr(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    for consumer, idx in g.consumers.get(node.output[0], []):
        want = _weight_axis(consumer, idx, rank)
        if want is None:
            continue
        if axis != want:
            out.append(Violation("per-channel-axis", name, node.op_type,
                                 f"weight '{src}' of {consumer.op_type} '{consumer.name}' is quantized along axis "
                                 f"{axis}; its output channels are axis {want}."))
        elif weight.shape[want] != count:
            out.append(Violation("per-channel-axis", name, node.op_type,
                                 f"weight '{src}' has {weight.shape[want]} output channels but {count} scales."))
    return out


def _opset(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def check_qdq_model(model: Union[str, Path, Any], require_qdq: bool = False) -> QdqReport:
    """Check an ONNX model (path or ModelProto) against TensorRT's Q/DQ rules; lists every violation."""
    from ..optional import require

    onnx = require("onnx", "check Q/DQ models")
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise BadInputError(f"The ONNX model '{path}' does not exist.")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and others for a broken file
            raise BadInputError(f"'{path}' is not a readable ONNX model ({exc}).") from exc
        label = str(path)
    else:
        proto, label = model, model.graph.name or "<model>"
    g = OnnxGraph(proto)
    opset = _opset(proto)
    qdq = [(i, n) for i, n in enumerate(g.nodes) if n.op_type in QDQ_OPS]
    report = QdqReport(label, opset, sum(1 for _, n in qdq if n.op_type == "QuantizeLinear"),
                       sum(1 for _, n in qdq if n.op_type == "DequantizeLinear"))
    for i, node in qdq:
        report.violations += _check_node(node, i, g, opset)
    report.warnings = fusion_warnings(g)
    if report.warnings:
        log.warning("%s: %d Q/DQ placement(s) block TensorRT's Conv+Add fusion: %s", label, len(report.warnings),
                    "; ".join(f"{w.node} [{w.rule}]" for w in report.warnings))
    if require_qdq and not qdq:
        report.violations.append(Violation("no-qdq", label, "model", "has no QuantizeLinear/DequantizeLinear nodes; "
                                           "an explicitly quantized INT8 engine needs a Q/DQ model."))
    return report
