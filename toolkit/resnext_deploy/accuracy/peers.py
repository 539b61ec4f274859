"""The peer: NNCF's ``quantize_with_accuracy_control`` (OpenVINO backend) on the same model, images and budget.

NNCF quantizes the OpenVINO model its own way (min-max ranges, symmetric activations, bias correction),
validates it with a metric we give it (top-1 accuracy on the validation images, the gate's
``max_top1_drop`` as an absolute drop) and, while the drop is too large, reverts groups of quantizers
to float, most harmful first. Which layers it left in float we read from the model it returns: a
convolution or matrix multiplication whose weights do not pass through a FakeQuantize runs in float.
Its log (captured, not printed) says what it reverted and the metrics it saw.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from .. import backends
from ..evaluation.evaluate import TimingConfig, evaluate_runner
from ..optional import require

log = logging.getLogger(__name__)

WEIGHTED_OV_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
_METRIC = re.compile(r"Metric of (\w+) model: ([0-9.eE+-]+)")


def overflow_fix_for(isa: Optional[str] = None) -> str:
    """The ``nncf.OverflowFix`` NNCF's documentation calls for on a CPU of class ``isa`` (None = the kernels
    OpenVINO runs here: this CPU's, capped by ONEDNN_MAX_CPU_ISA).

    Without VNNI (AVX2, AVX-512) NNCF recommends FIRST_LAYER, its default: half the weight range on the first
    convolution only. With VNNI or AMX nothing saturates, so the fair peer keeps the full range: DISABLE.
    """
    from ..host.cpu import exact_u8s8, onednn_isa

    return "disable" if exact_u8s8(isa or onednn_isa()) else "first_layer_only"


def nncf_advanced_parameters(overflow_fix: str) -> Any:
    """NNCF's AdvancedQuantizationParameters with ``overflow_fix`` ("enable" | "first_layer_only" | "disable")."""
    require("nncf", "quantize with NNCF")
    from nncf import OverflowFix
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _onnx_name(ov_name: str) -> str:
    """OpenVINO's name for a converted ONNX node's op: '/layer1/.../conv1/Conv/WithoutBiases' -> '/layer1/.../conv1/Conv'."""
    return re.sub(r"/WithoutBiases$", "", ov_name)


def _weights_quantized(op: Any, depth: int = 8) -> bool:
    """Whether ``op``'s weights (input 1) come through a FakeQuantize or from an integer constant.

    NNCF's OpenVINO models hold quantized weights either as FakeQuantize on a float constant or, once
    compressed, as int8 constant -> Convert -> (Subtract) -> Multiply; float weights are a float constant
    (a grouped convolution's through a Reshape). Follows the data input (input 0) back from the weights.
    """
    node = op.input_value(1).get_node()
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return bool(node.get_element_type().is_integral())
        if node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def layer_precisions(model: Any) -> Dict[str, List[str]]:
    """{"int8": [...], "float": [...]}: the weighted layers of an OpenVINO model by the precision of their weights."""
    out: Dict[str, List[str]] = {"int8": [], "float": []}
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_OV_OPS and op.get_input_size() >= 2:
            out["int8" if _weights_quantized(op) else "float"].append(_onnx_name(op.get_friendly_name()))
    return out


def _reverted_from_log(lines: List[str]) -> List[str]:
    """Operation names NNCF listed as reverted to float (its final report)."""
    for line in reversed(lines):
        if "were reverted back to the floating-point precision" in line:
            return [s.strip() for s in line.split("\n")[1:] if s.strip()]
    return []


@contextlib.contextmanager
def captured_nncf_log() -> Iterator[_Capture]:
    """NNCF's log lines kept in a handler instead of its own stdout handler (library code must not print)."""
    nncf_log = logging.getLogger("nncf")
    capture, saved = _Capture(), list(nncf_log.handlers)
    for h in saved:
        nncf_log.removeHandler(h)
    nncf_log.addHandler(capture)
    try:
        yield capture
    finally:
        nncf_log.removeHandler(capture)
        for h in saved:
            nncf_log.addHandler(h)


def _peer_record(version: str, lines: List[str], max_drop_pct: float, overflow_fix: str, max_layers: Optional[int],
                 seconds: float, layers: Dict[str, List[str]], xml: Path) -> Dict[str, Any]:
    """What the study records of NNCF's run: its settings, metrics and reverted layers from its log."""
    metrics = dict(_METRIC.findall("\n".join(lines)))
    return {
        "tool": "nncf.quantize_with_accuracy_control",
        "nncf_version": version,
        "metric": "top-1 accuracy",
        "max_drop": max_drop_pct / 100.0,
        "drop_type": "ABSOLUTE",
        "overflow_fix": overflow_fix,
        "max_num_iterations": max_layers,
        "seconds": seconds,
        "initial_metric": float(metrics["initial"]) if "initial" in metrics else None,
        "quantized_metric": float(metrics["quantized"]) if "quantized" in metrics else None,
        "reverted_operations": _reverted_from_log(lines),
        "float_layers": layers["float"],
        "int8_layers": len(layers["int8"]),
        "model": str(xml),
        "log": [line for line in lines if "Metric of" in line or "Accuracy drop" in line or "reverted" in line.lower()
                or "Algorithm completed" in line or "could not achieve" in line],
    }


def nncf_accuracy_control(
    fp32_path: Union[str, Path],
    calibration: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    max_drop_pct: float,
    out_dir: Union[str, Path],
    ov_settings: Optional[Dict[str, Any]] = None,
    timing: Optional[TimingConfig] = None,
    reference: Optional[np.ndarray] = None,
    max_layers: Optional[int] = None,
    overflow_fix: Optional[str] = None,
) -> Dict[str, Any]:
    """Run NNCF's accuracy control on ``fp32_path``, save its IR in ``out_dir``, measure it like our artifacts.

    ``max_drop_pct`` is the top-1 budget in percentage points; ``max_layers`` caps NNCF's iterations
    (groups reverted), as our ``fallback.max_excluded_layers`` caps ours. ``overflow_fix``: NNCF's
    OverflowFix (None = the one for this CPU, overflow_fix_for).
    """
    nncf = require("nncf", "compare with NNCF's quantize_with_accuracy_control")
    ov = require("openvino", "compare with NNCF's quantize_with_accuracy_control")
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    overflow_fix = overflow_fix or overflow_fix_for()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ov.Core().read_model(str(fp32_path))
    calib_ds = nncf.Dataset([np.ascontiguousarray(calibration[i : i + 1]) for i in range(len(calibration))])
    val_ds = nncf.Dataset([(np.ascontiguousarray(images[i : i + 1]), int(labels[i])) for i in range(len(images))])

    def validate(compiled: Any, items: Any) -> Any:
        output = compiled.outputs[0]
        correct = [float(np.argmax(compiled(x)[output]) == y) for x, y in items]
        return float(np.mean(correct)) if correct else 0.0, correct

    restorer = AdvancedAccuracyRestorerParameters(**({"max_num_iterations": int(max_layers)} if max_layers else {}))
    t = time.perf_counter()
    with captured_nncf_log() as capture:
        quantized = nncf.quantize_with_accuracy_control(
            model, calib_ds, val_ds, validate, max_drop=max_drop_pct / 100.0, drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calibration), advanced_accuracy_restorer_parameters=restorer,
            advanced_quantization_parameters=nncf_advanced_parameters(overflow_fix),
        )
    seconds = time.perf_counter() - t
    xml = out_dir / "model-int8.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    layers = layer_precisions(quantized)
    result = _peer_record(getattr(nncf, "__version__", "unknown"), capture.lines, max_drop_pct, overflow_fix, max_layers, seconds, layers, xml)
    if reference is not None:
        with backends.get("openvino").load(xml, ov_settings or {}) as runner:
            m, _ = evaluate_runner("nncf-accuracy-control", runner, images, labels, reference, timing or TimingConfig(), "int8",
                                   sum(p.stat().st_size for p in (xml, xml.with_suffix(".bin"))))
        result["metrics"] = m.to_dict()
    log.info("NNCF accuracy control: %d layers in float, %.1f s", len(layers["float"]), seconds)
    return result
