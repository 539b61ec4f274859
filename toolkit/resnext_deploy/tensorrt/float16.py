"""FP16 ONNX models for strongly typed TensorRT (11.x): the float model and the Q/DQ model's float regions.

TensorRT 11 has no FP16 builder flag: a tensor's type in the ONNX is the precision it runs in, and whatever a
Q/DQ model leaves in FP32 runs in FP32. So the bundle ships, beside the FP32 models the weakly typed path uses,

- ``model-fp16.onnx``: the float model in FP16 with FP32 input and output (NVIDIA's route is ModelOpt AutoCast
  with ``keep_io_types=True``; this uses onnxconverter-common's float16 converter, the same conversion with
  ``keep_io_types=True``: FP32 I/O and a Cast at each end);
- ``model-int8-qdq-fp16.onnx``: the TensorRT Q/DQ model with its float regions, scales included, in FP16.
  FP16 scales need QuantizeLinear/DequantizeLinear-19, so that model is converted to opset 19 first
  (onnx.version_converter), which TensorRT 11's parser reads.

Both are conversions by real libraries (onnxconverter-common, onnx), not a hand-written caster.
Workstation only: needs onnx and onnxconverter-common (``pip install 'resnext-deploy[build]'``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Union

from ..buildfolder.artifacts import atomic_file
from ..errors import InternalError
from ..optional import require

log = logging.getLogger(__name__)

#: opset of the FP16 Q/DQ model: QuantizeLinear/DequantizeLinear take float16 scales from opset 19 on
QDQ_FP16_OPSET = 19


def _converter() -> Any:
    return require("onnxconverter_common.float16", "write the FP16 ONNX for strongly typed TensorRT (11.x)")


def _to_fp16(proto: Any) -> Any:
    # max_finite_val: clamp constants to FP16's range (65504) rather than onnxconverter-common's default 1e4,
    # which would clip large but legal BatchNorm-folded biases; min_positive_val: FP16's smallest subnormal.
    converter = _converter()
    with warnings.catch_warnings(record=True) as caught:  # one warning per clamped value: summarised instead
        warnings.simplefilter("always")
        out = converter.convert_float_to_float16(proto, keep_io_types=True, max_finite_val=65504.0,
                                                 min_positive_val=2.0 ** -24)
    clamped = [w for w in caught if "truncated" in str(w.message)]
    if clamped:
        log.info("FP16 conversion clamped %d constant(s) to FP16's range (e.g. %s)", len(clamped), clamped[0].message)
    return out


def fp16_from_onnx(fp32_path: Union[str, Path], out_path: Union[str, Path]) -> Path:
    """The FP32 ONNX as FP16 compute with FP32 input/output, written atomically to ``out_path``."""
    onnx = require("onnx", "write the FP16 ONNX")
    proto = _to_fp16(onnx.load(str(fp32_path)))
    onnx.checker.check_model(proto)
    with atomic_file(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out_path)


def fp16_qdq_from_qdq(qdq_path: Union[str, Path], out_path: Union[str, Path]) -> Path:
    """The Q/DQ ONNX with every float tensor (activations between Q/DQ, biases, scales) in FP16, FP32 I/O."""
    onnx = require("onnx", "write the FP16 Q/DQ ONNX")
    from onnx import version_converter

    proto = onnx.load(str(qdq_path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_FP16_OPSET:
        try:
            proto = version_converter.convert_version(proto, QDQ_FP16_OPSET)
        except Exception as exc:  # the converter raises several kinds for an op it cannot adapt
            raise InternalError(f"Could not convert '{qdq_path}' from opset {opset} to {QDQ_FP16_OPSET} "
                                f"(needed for FP16 Q/DQ scales): {exc}") from exc
    proto = _to_fp16(proto)
    onnx.checker.check_model(proto)
    with atomic_file(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out_path)
