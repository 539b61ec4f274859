"""Which TensorRT engines a recipe asks for, how each is built, and the equivalent trtexec command line.

One plan serves the workstation (pending rows in the report, the bundle README) and the device
(`compile --bundle`), so both always agree on the engine names and settings. Standard library only.

- GPU FP16: from the FP32 ONNX with the FP16 flag.
- GPU INT8: explicit quantization from the Q/DQ ONNX (INT8 + FP16 flags: layers without Q/DQ run in FP16).
- DLA (when the recipe sets ``dla_core >= 0``): the same precisions on that DLA core with GPU fallback and a
  static batch (DLA has no dynamic shapes). DLA INT8 uses the FP32 ONNX plus the calibration cache
  (implicit quantization), the DLA path NVIDIA documents for scales that come from a Q/DQ model.

The plan is the same for every TensorRT; the source model and flags per TensorRT are device_plan.source_for's:
strongly typed TensorRT (11.x) builds the same engines from the FP16 ONNX and the FP16-region Q/DQ ONNX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence


@dataclass(frozen=True)
class EngineSpec:
    name: str  # e.g. tensorrt-int8, tensorrt-dla0-fp16
    precision: str  # fp16 | int8
    source: str  # "fp32" (the float ONNX) | "qdq" (the TensorRT-ready Q/DQ ONNX)
    dla_core: int  # -1: GPU
    gpu_fallback: bool
    calibration_cache: bool  # INT8 scales from the calibration cache (implicit quantization)
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mb: int

    @property
    def flags(self) -> List[str]:
        return ["INT8", "FP16"] if self.precision == "int8" else ["FP16"]

    @property
    def quantization(self) -> str:
        if self.precision != "int8":
            return "none"
        return "implicit (calibration cache)" if self.calibration_cache else "explicit (Q/DQ)"

    @property
    def device(self) -> str:
        return f"DLA core {self.dla_core}" + (" + GPU fallback" if self.gpu_fallback else "") if self.dla_core >= 0 else "GPU"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(flags=self.flags, quantization=self.quantization, device=self.device)
        return d


def plan_engines(settings: Dict[str, Any]) -> List[EngineSpec]:
    """The engines of a recipe's ``backends.tensorrt`` section, GPU ones first."""
    specs = []
    batch = (int(settings["min_batch"]), int(settings["opt_batch"]), int(settings["max_batch"]))
    ws = int(settings["workspace_mb"])
    for precision in settings["precisions"]:
        specs.append(EngineSpec(f"tensorrt-{precision}", precision, "qdq" if precision == "int8" else "fp32", -1,
                                False, False, batch[0], batch[1], batch[2], ws))
    core = int(settings.get("dla_core", -1))
    if core >= 0:
        for precision in settings["precisions"]:
            specs.append(EngineSpec(f"tensorrt-dla{core}-{precision}", precision, "fp32", core,
                                    bool(settings["gpu_fallback"]), precision == "int8",
                                    batch[1], batch[1], batch[1], ws))
    return specs


def _shape(batch: int, chw: Sequence[int]) -> str:
    return "x".join(str(d) for d in (batch,) + tuple(chw))


def trtexec_command(
    spec: EngineSpec, onnx_file: str, input_name: str, chw: Sequence[int], engine_file: str,
    cache_file: str = "calibration.cache", timing_cache_file: str = "timing.cache", strongly_typed: bool = False,
) -> str:
    """The trtexec line that builds the same engine as ``spec`` (for a device without resnext-deploy).

    ``strongly_typed``: TensorRT 11's trtexec, which has no --fp16, --int8 or --calib (``onnx_file`` is then the
    FP16 ONNX or the FP16-region Q/DQ ONNX).
    """
    parts = ["trtexec", f"--onnx={onnx_file}"]
    if not strongly_typed:
        parts += ["--int8", "--fp16"] if spec.precision == "int8" else ["--fp16"]
        if spec.calibration_cache:
            parts.append(f"--calib={cache_file}")
    if spec.min_batch == spec.max_batch:
        parts.append(f"--shapes={input_name}:{_shape(spec.opt_batch, chw)}")
    else:
        parts += [f"--minShapes={input_name}:{_shape(spec.min_batch, chw)}",
                  f"--optShapes={input_name}:{_shape(spec.opt_batch, chw)}",
                  f"--maxShapes={input_name}:{_shape(spec.max_batch, chw)}"]
    if spec.dla_core >= 0:
        parts.append(f"--useDLACore={spec.dla_core}")
        if spec.gpu_fallback:
            parts.append("--allowGPUFallback")
    parts += [f"--memPoolSize=workspace:{spec.workspace_mb}", f"--timingCacheFile={timing_cache_file}",
              f"--saveEngine={engine_file}"]
    return " ".join(parts)
