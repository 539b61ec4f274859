"""The INT8 models a user would make with the other tools, with those tools' defaults, on our images.

- NNCF: ``nncf.quantize(openvino_model, nncf.Dataset(images))``, every argument at its default (preset
  PERFORMANCE, min-max ranges, fast bias correction, subset_size 300) but the OverflowFix, which is the one
  NNCF's documentation calls for on the CPU running the bench (FIRST_LAYER, its default, without VNNI;
  DISABLE with VNNI or AMX), compiled like our FP32 IR.
- ONNX Runtime: ``quantize_static(fp32.onnx, out.onnx, reader)``, every argument at its default (QDQ,
  int8 activations and weights, per-tensor weights, min-max), run with ORT's default session options.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from ..buildfolder.artifacts import atomic_file
from ..optional import require

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: calibration batch of the ORT reader: the quantizer's default reader is the user's, so we pick one
ORT_READER_BATCH = 8


def nncf_default_int8(source: PathLike, out: PathLike, calibration: np.ndarray, overflow_fix: Optional[str] = None) -> Dict[str, Any]:
    """NNCF's default post-training quantization of the OpenVINO model (IR or ONNX) ``source``, with ``overflow_fix``
    (None: the OverflowFix NNCF calls for on this CPU, accuracy.peers.overflow_fix_for); saves IR ``out``."""
    from ..accuracy.peers import nncf_advanced_parameters, overflow_fix_for

    nncf = require("nncf", "quantize with NNCF (the benchmark's peer)")
    ov = require("openvino", "quantize with NNCF (the benchmark's peer)")
    model = ov.Core().read_model(str(source))
    dataset = nncf.Dataset([np.ascontiguousarray(calibration[i : i + 1]) for i in range(len(calibration))])
    overflow_fix = overflow_fix or overflow_fix_for()
    quantized = nncf.quantize(model, dataset, advanced_parameters=nncf_advanced_parameters(overflow_fix))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The IR is two files: write both beside their final names, then rename (bin first, the xml names it).
    tmp_xml = out.with_name(f".tmp-{out.name}")
    ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
    tmp_xml.with_suffix(".bin").replace(out.with_suffix(".bin"))
    tmp_xml.replace(out)
    return {"tool": "nncf.quantize (defaults)", "overflow_fix": overflow_fix, "nncf_version": getattr(nncf, "__version__", "unknown"),
            "calibration_images": int(len(calibration)), "path": str(out)}


def ort_default_int8(source: PathLike, out: PathLike, calibration: np.ndarray) -> Dict[str, Any]:
    """ONNX Runtime's ``quantize_static`` with its defaults on the FP32 ONNX ``source``; saves ``out``."""
    quant = require("onnxruntime.quantization", "quantize with ONNX Runtime (the benchmark's peer)")
    ort = require("onnxruntime", "quantize with ONNX Runtime (the benchmark's peer)")
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class _Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(0, len(calibration), ORT_READER_BATCH))

        def get_next(self) -> Any:
            i = next(self._it, None)
            return None if i is None else {name: np.ascontiguousarray(calibration[i : i + ORT_READER_BATCH])}

    with atomic_file(out) as tmp:
        quant.quantize_static(str(source), str(tmp), _Reader())
    return {"tool": "onnxruntime.quantization.quantize_static (defaults)", "onnxruntime_version": ort.__version__,
            "calibration_images": int(len(calibration)), "reader_batch": ORT_READER_BATCH, "path": str(out)}


PREPARERS: Dict[str, Callable[[PathLike, PathLike, np.ndarray], Dict[str, Any]]] = {
    "nncf-int8": nncf_default_int8,
    "ort-int8-default": ort_default_int8,
}
