"""TensorRT calibration caches: write one from a Q/DQ model's activation scales, read one back.

The format TensorRT's calibrators read and write (and trtexec's ``--calib``):

    TRT-<version>-EntropyCalibration2
    <tensor name>: <8 hex digits>

one line per activation tensor, the hex being the big-endian IEEE-754 float32 bit pattern of the scale,
``scale = amax / 127``. ``<version>`` is TensorRT's NV_TENSORRT_VERSION (8.5.2 -> 8502, 10.3.0 -> 100300):
TensorRT ignores a cache whose header names another version, so ``with_version`` re-labels the cache
for the TensorRT on the device (the scales come from our calibration, not from TensorRT's).

The names are the float model's tensor names: a cache is for the FP32 ONNX it ships beside (implicit
quantization, e.g. on DLA), and the Q/DQ model's QuantizeLinear inputs carry exactly those names.
Reading and writing need only the standard library (this runs on the device, Python 3.8+).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

from ..buildfolder.artifacts import atomic_file
from ..errors import BadInputError

#: the calibrator class trtexec reads a cache with; our scales come from the recipe's calibration method
DEFAULT_ALGORITHM = "EntropyCalibration2"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
QMAX = 127.0

_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{1,8})$")


def trt_version_tag(version: str) -> str:
    """TensorRT's NV_TENSORRT_VERSION for a version string: '8.5.2.2' -> '8502', '10.3.0' -> '100300'."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    if len(parts) < 2:
        raise BadInputError(f"'{version}' is not a TensorRT version (expected e.g. 8.6.1 or 10.3.0).")
    major, minor, patch = (parts + [0])[:3]
    # NvInferVersion.h: TensorRT <= 9 encodes major*1000, TensorRT >= 10 major*10000.
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def scale_hex(scale: float) -> str:
    """8 hex digits: the big-endian float32 bit pattern of ``scale``."""
    return struct.pack(">f", scale).hex()


def hex_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


@dataclass
class CalibrationCache:
    """A calibration cache: header fields and tensor -> scale (amax / 127), in file order."""

    version: str
    algorithm: str = DEFAULT_ALGORITHM
    scales: Dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def amax(self) -> Dict[str, float]:
        return {k: v * QMAX for k, v in self.scales.items()}

    def to_text(self) -> str:
        return "\n".join([self.header] + [f"{k}: {scale_hex(v)}" for k, v in self.scales.items()]) + "\n"

    def to_bytes(self) -> bytes:
        return self.to_text().encode("utf-8")

    def with_version(self, version: str) -> "CalibrationCache":
        """The same scales labelled for another TensorRT (``version`` as '8.6.1' or as the tag '8601')."""
        tag = version if version.isdigit() else trt_version_tag(version)
        return CalibrationCache(tag, self.algorithm, dict(self.scales))


def parse_calibration_cache(text: str, source: str = "<cache>") -> CalibrationCache:
    """Parse cache text; a malformed line is a BadInputError naming its line number."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BadInputError(f"The calibration cache '{source}' is empty.")
    head = _HEADER.match(lines[0].strip())
    if not head:
        raise BadInputError(
            f"The calibration cache '{source}' starts with '{lines[0][:60]}', not a TensorRT header like "
            "'TRT-8601-EntropyCalibration2'."
        )
    cache = CalibrationCache(head.group(1), head.group(2))
    for no, line in enumerate(lines[1:], start=2):
        m = _LINE.match(line.strip())
        if not m:
            raise BadInputError(f"Line {no} of the calibration cache '{source}' is not '<tensor>: <hex scale>': '{line[:80]}'.")
        name, value = m.group(1), hex_scale(m.group(2))
        if name in cache.scales:
            raise BadInputError(f"Tensor '{name}' appears twice in the calibration cache '{source}' (line {no}).")
        cache.scales[name] = value
    return cache


def read_calibration_cache(path: Union[str, Path]) -> CalibrationCache:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"Cannot read the calibration cache '{path}': {exc}.") from exc
    return parse_calibration_cache(text, str(path))


def write_calibration_cache(path: Union[str, Path], cache: CalibrationCache) -> Path:
    """Write ``cache`` atomically; every scale must be finite and > 0."""
    bad = [k for k, v in cache.scales.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise BadInputError(f"Calibration scales must be finite and > 0; '{bad[0]}' has {cache.scales[bad[0]]}.")
    if cache.algorithm not in ALGORITHMS:
        raise BadInputError(f"Unknown calibration algorithm '{cache.algorithm}'; TensorRT knows {', '.join(ALGORITHMS)}.")
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(cache.to_bytes())
    return path


def scales_from_qdq(qdq_path: Union[str, Path]) -> Dict[str, float]:
    """Activation scales of a symmetric int8 Q/DQ model: QuantizeLinear input tensor -> scale, in graph order.

    Weights (constant inputs) are skipped: TensorRT computes weight scales itself. Needs ``onnx``.
    """
    from ..optional import require
    from .qdq_rules import OnnxGraph

    onnx = require("onnx", "read the Q/DQ model's scales")
    g = OnnxGraph(onnx.load(str(qdq_path)))
    scales: Dict[str, float] = {}
    for node in g.nodes:
        if node.op_type != "QuantizeLinear" or g.is_weight(node.input[0]):
            continue
        scale = g.array(node.input[1])
        zp = g.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1 or (zp is not None and zp.reshape(-1)[0] != 0):
            raise BadInputError(
                f"QuantizeLinear '{node.name}' in '{qdq_path}' is not per-tensor symmetric (zero-point 0); a "
                "TensorRT calibration cache needs the 'int8' flavour (resnext-deploy quantize --activations int8)."
            )
        # One tensor can be quantized by several Q nodes (dedicated pairs); they share one scale.
        scales.setdefault(node.input[0], float(scale.reshape(-1)[0]))
    return scales


def cache_from_qdq(qdq_path: Union[str, Path], tensorrt_version: str, algorithm: str = DEFAULT_ALGORITHM) -> CalibrationCache:
    """The calibration cache for the FP32 model a symmetric int8 Q/DQ model was quantized from."""
    return CalibrationCache(trt_version_tag(tensorrt_version), algorithm, scales_from_qdq(qdq_path))


def tensor_names(onnx_path: Union[str, Path]) -> List[str]:
    """Every tensor an ONNX graph computes or takes (graph inputs and node outputs). Needs ``onnx``."""
    from ..optional import require

    onnx = require("onnx", "read ONNX tensor names")
    graph = onnx.load(str(onnx_path)).graph
    return [i.name for i in graph.input] + [o for n in graph.node for o in n.output]
