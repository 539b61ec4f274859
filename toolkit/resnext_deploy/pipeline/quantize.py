"""Stage `quantize`: FP32 ONNX + calibration images -> INT8 QDQ ONNX, with ONNX Runtime's quantizer.

Two activation flavours from the same weights rule (symmetric int8, per output channel):
  - "uint8": asymmetric uint8 activations, what ONNX Runtime's CPU kernels run fastest (u8s8);
  - "int8":  symmetric int8 activations with zero-point 0, float biases and no Q/DQ on graph outputs:
             TensorRT's rules for explicit quantization (see qdq_rules.py); OpenVINO reads it as fast.
             Each backend may then re-place its Q/DQ (Backend.place_qdq: TensorRT's Conv+Add fusion).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact, atomic_file
from ..errors import BadInputError, InternalError
from ..optional import require
from ..recipes import calibration_settings
from .bias_correction import correct_biases

log = logging.getLogger(__name__)

FLAVOURS = ("uint8", "int8")
WEIGHT_RANGES = ("7bit", "full")


def weight_range_for(section: Dict[str, Any]) -> str:
    """The weight range a recipe's ``[quantize]`` section asks for: "7bit" | "full".

    "auto" follows ``isa_class``: INT8 for any x86-64 CPU ("x86-64") gets 7-bit weights, because without
    VNNI the u8s8 kernels of ONNX Runtime and OpenVINO sum pairs of products in saturating int16 and
    255 * 64 * 2 fits where 255 * 127 * 2 does not (see host/cpu.py); VNNI/AMX CPUs ("vnni") and GPUs ("none")
    keep the full int8 range.
    """
    wr = section.get("weight_range", "auto")
    if wr == "auto":
        return "7bit" if section.get("isa_class", "x86-64") == "x86-64" else "full"
    if wr not in WEIGHT_RANGES:
        raise BadInputError(f"quantize.weight_range = '{wr}' is not one of auto, {', '.join(WEIGHT_RANGES)}.")
    return wr
# ORT's calibration session holds about 2.7x a batch's intermediate tensors (ResNeXt-50: 126 MB of activations
# per 224x224 image, ~340 MB measured; batch 16 peaked at 5.5 GB, batch 8 at 2.8 GB). Min-max ranges do not depend
# on the batch, so the batch is the largest (up to CALIB_BATCH) that keeps this under CALIB_MEMORY_MB.
CALIB_BATCH = 16
CALIB_MEMORY_MB = 2048
_CALIB_MEMORY_FACTOR = 2.7


def isa_record(section: Dict[str, Any], weight_range: str) -> Tuple[Dict[str, Any], List[str]]:
    """The report's ``isa`` entry (build machine's CPU, target class, weight range) and the notes it calls for."""
    from ..host.cpu import exact_u8s8, host_cpu, kernels_differ

    host, target = host_cpu(), section.get("isa_class", "x86-64")
    record = {"build": host.to_dict(), "target": target, "weight_range": weight_range,
              "kernels_differ": kernels_differ(host.isa, target)}
    kernels = {True: "uint8 x int8 in int32, no saturation", False: "uint8 x int8 pairs summed in saturating int16",
               None: "not an x86 CPU"}[exact_u8s8(host.isa)]
    cap = host.to_dict().get("onednn_max_cpu_isa")
    notes: List[str] = []
    if record["kernels_differ"]:
        notes.append(
            f"INT8 accuracy here was measured with the build machine's kernels ({host.model}, ISA {host.isa}: {kernels}"
            + (f"; OpenVINO capped at {cap}" if cap else "") + f"), not those of every CPU of the target class "
            f"'{target}'. " + ("The 7-bit weights cannot saturate on CPUs without VNNI, so the numbers should carry over."
                               if weight_range == "7bit" else
                               "On a CPU with VNNI the full-range weights do not saturate, so the accuracy there may differ.")
        )
    if target == "x86-64" and weight_range == "full":
        notes.append("quantize.weight_range = 'full' for isa_class 'x86-64': on x86 CPUs without VNNI (AVX2-only, "
                     "AVX-512 without VNNI) these INT8 artifacts can saturate and lose accuracy.")
        log.warning("full-range INT8 weights for any x86-64 CPU: they can saturate on CPUs without VNNI")
    return record, notes


def activation_mb_per_image(proto: Any) -> Optional[float]:
    """MB of intermediate tensors one image produces (shape inference; symbolic dims count as 1), or None."""
    onnx = require("onnx", "quantize to INT8")
    if not proto.graph.value_info:
        try:
            proto = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # a model shape inference cannot follow: no estimate
            return None
    sizes: Dict[str, int] = {}  # by name: a model shape-inferred twice may list a tensor twice
    for vi in proto.graph.value_info:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
        sizes[vi.name] = n * 4  # float32 in the calibration session
    total = sum(sizes.values())
    return total / 2**20 if total else None


def calibration_batch(proto: Any, cap: int = CALIB_BATCH) -> int:
    """Images per calibration batch: as many as keep ORT's calibration session under CALIB_MEMORY_MB, at most ``cap``."""
    per_image = activation_mb_per_image(proto)
    if not per_image:
        return 8
    return int(max(1, min(cap, CALIB_MEMORY_MB // (per_image * _CALIB_MEMORY_FACTOR))))


# Histogram calibration as TensorRT does it: 2048 bins, an entropy threshold searched over windows of 128
# quantized bins. ORT's entropy calibrator defaults to 128 and 128 (one candidate threshold: min-max), and
# quantize_static does not pass bin counts through (only CalibPercentile, CalibTensorRangeSymmetric, ...),
# so histogram methods run ORT's own calibrator here with these counts and hand quantize_static its ranges.
HISTOGRAM_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


def _histogram_ranges_to_cache(
    fp32_path: Union[str, Path], images: np.ndarray, input_name: str, method: str, cal: Dict[str, Any],
    batch: int, per_image_mb: Optional[float], cache: Path, progress: Optional[Callable[[int, int], None]],
) -> None:
    """ORT's entropy / percentile calibrator with explicit bin counts; writes its ranges as ORT's JSON cache."""
    import tempfile

    quant = require("onnxruntime.quantization", "quantize to INT8")
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options: Dict[str, Any] = {"num_bins": HISTOGRAM_BINS}
    if method == "entropy":
        options["num_quantized_bins"] = ENTROPY_QUANTIZED_BINS
        kind = quant.CalibrationMethod.Entropy
    else:
        options["percentile"] = cal["percentile"]
        kind = quant.CalibrationMethod.Percentile
    # ORT's histogram calibrator keeps every intermediate tensor until collect_data returns; feeding it a chunk
    # at a time (its histograms merge across calls) bounds the memory as for min-max.
    chunk = max(batch, int(CALIB_MEMORY_MB // ((per_image_mb or 1.0) * _CALIB_MEMORY_FACTOR)) // batch * batch)
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp_dir:
        calibrator = quant.create_calibrator(
            Path(fp32_path), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(Path(tmp_dir) / "augmented.onnx"), calibrate_method=kind, extra_options=options,
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # ORT's histogram calibrator prints its progress; we log it
            for start in range(0, len(images), chunk):
                part = images[start : start + chunk]
                calibrator.collect_data(_calibration_reader(
                    part, input_name, (lambda done, _n, s=start: progress(s + done, len(images))) if progress else None, batch))
            ranges = calibrator.compute_data()
        for line in printed.getvalue().splitlines():
            log.debug("ORT calibrator: %s", line)
        save_tensors_data(ranges, cache)


def _calibration_reader(data: np.ndarray, input_name: str, progress: Optional[Callable[[int, int], None]],
                        batch: int = 8) -> Any:
    quant = require("onnxruntime.quantization", "quantize to INT8")

    class _Reader(quant.CalibrationDataReader):
        """Feeds the preprocessed calibration images in fixed-size batches, in order."""

        def __init__(self) -> None:
            # a generator: a lazy image list (datasets.ImageList) is decoded one batch at a time
            self._chunks: Iterator[np.ndarray] = (data[i : i + batch] for i in range(0, len(data), batch))
            self._done = 0

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            self._done += len(chunk)
            if progress:
                progress(self._done, len(data))
            return {input_name: chunk.astype(np.float32)}

        def rewind(self) -> None:
            self.__init__()

    return _Reader()


class _QuietPreprocessAdvice(logging.Filter):
    """ORT's quantizer logs 'Please consider pre-processing' on the root logger for every model without
    its pre-processing tag; our export already ran shape inference and simplification, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _output_producers(proto: Any) -> List[str]:
    """Op types whose outputs are graph outputs: TensorRT wants no Q/DQ there."""
    outs = {o.name for o in proto.graph.output}
    return sorted({n.op_type for n in proto.graph.node if any(o in outs for o in n.output)})


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`qdq_from_onnx` quantizes (the CLI and the build make one from the recipe: ``from_recipe``).

    ``calibration`` is the recipe's ``[calibration]`` section (method, percentile, ...; None = the defaults),
    checked by the same code that checks recipes. ``exclude_nodes`` are node names left in float (the fallback
    of accuracy-driven quantization); ``quantize_nodes``, when given, are the only nodes quantized (per-layer
    sensitivity analysis). ``calibration_cache`` is ORT's JSON cache of activation ranges: written by the first
    call, read by later ones (which then skip calibration), so variants of one model share one calibration; the
    ranges depend only on the float model, the images and the method (not on the flavour), and a model quantized
    from the cache is byte-identical to one calibrated afresh. ``weight_range`` is "7bit" (ORT's reduce_range:
    weights in [-64, 64], safe on CPUs without VNNI) or "full"; None = the recipe default (weight_range_for).
    ``bias_correction`` folds each quantized conv's mean output shift on the calibration images into its bias
    (bias_correction.py), before TensorRT's placement, so every backend gets it. ``parent``: the artifact's parent.
    """

    flavour: str = "uint8"
    calibration: Optional[Dict[str, Any]] = None
    exclude_nodes: Sequence[str] = ()
    quantize_nodes: Sequence[str] = ()
    weight_range: Optional[str] = None
    bias_correction: bool = False
    calibration_cache: Union[str, Path, None] = None
    parent: Optional[str] = "onnx-fp32"

    @classmethod
    def from_recipe(cls, recipe: Any, flavour: str, **changes: Any) -> "QuantizeOptions":
        """The options a recipe asks for: its calibration, weight range and bias correction."""
        q = recipe.section("quantize")
        return cls(flavour=flavour, calibration=recipe.section("calibration"), weight_range=weight_range_for(q),
                   bias_correction=bool(q["bias_correction"]), **changes)

    def checked(self) -> "QuantizeOptions":
        """These options with the weight range resolved, or a BadInputError naming the bad value."""
        if self.flavour not in FLAVOURS:
            raise BadInputError(f"Unknown activation flavour '{self.flavour}'; use one of {FLAVOURS}.")
        wr = self.weight_range
        if wr is None:
            from ..recipes import DEFAULTS

            wr = weight_range_for(DEFAULTS["quantize"])
        if wr not in WEIGHT_RANGES:
            raise BadInputError(f"Unknown weight range '{wr}'; use one of {WEIGHT_RANGES}.")
        return replace(self, weight_range=wr)


def _quantizer_extra_options(proto: Any, flavour: str) -> Dict[str, Any]:
    """ORT quantizer's extra_options: symmetric per-channel weights; TensorRT's rules for the int8 flavour."""
    extra: Dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": flavour == "int8",
        # Conv weights are per output channel (axis 0); Gemm's weight (transB=1) too.
        "QDQOpTypePerChannelSupportToAxis": {"Gemm": 0, "MatMul": 1},
    }
    if flavour == "int8":
        extra["OpTypesToExcludeOutputQuantization"] = _output_producers(proto)
        # Keep biases in float: TensorRT's DequantizeLinear takes only int8 input, and an int32 bias DQ
        # fails to parse ("only activation types allowed as input to this layer"). A float bias is
        # what TensorRT expects: it adds it in the fused convolution.
        extra["QuantizeBias"] = False
    return extra


def _quantize_static(fp32_path: Path, tmp: Path, images: np.ndarray, proto: Any, opts: QuantizeOptions, batch: int,
                     progress: Optional[Callable[[int, int], None]]) -> None:
    """ORT's quantize_static into ``tmp``; histogram methods get their ranges through ORT's cache file first."""
    quant = require("onnxruntime.quantization", "quantize to INT8")
    cal = calibration_settings(opts.calibration)
    method, input_name = cal["method"], proto.graph.input[0].name
    methods = {"minmax": quant.CalibrationMethod.MinMax, "percentile": quant.CalibrationMethod.Percentile,
               "entropy": quant.CalibrationMethod.Entropy}
    cache = Path(opts.calibration_cache) if opts.calibration_cache else None
    own_cache: Optional[Path] = None
    quiet = _QuietPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        if method != "minmax":
            # The ranges go through ORT's cache file: the caller's (shared by later variants), else a temporary one.
            if cache is None:
                cache = own_cache = tmp.with_name(f".{tmp.name}.ranges.json")
            if not cache.is_file():
                _histogram_ranges_to_cache(fp32_path, images, input_name, method, cal, batch,
                                           activation_mb_per_image(proto), cache, progress)
        quant.quantize_static(
            str(fp32_path), str(tmp), _calibration_reader(images, input_name, progress, batch),
            quant_format=quant.QuantFormat.QDQ, per_channel=True,
            activation_type=quant.QuantType.QUInt8 if opts.flavour == "uint8" else quant.QuantType.QInt8,
            weight_type=quant.QuantType.QInt8,
            reduce_range=opts.weight_range == "7bit",  # weights only: activations keep their 8 bits
            calibrate_method=methods[method], nodes_to_exclude=list(opts.exclude_nodes),
            nodes_to_quantize=list(opts.quantize_nodes), extra_options=_quantizer_extra_options(proto, opts.flavour),
            calibration_cache_path=str(cache) if cache else None,
        )
    except (ValueError, RuntimeError) as exc:
        raise InternalError(f"ONNX Runtime quantization failed on '{fp32_path}': {exc}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
        if own_cache is not None:
            own_cache.unlink(missing_ok=True)


def _settings_record(opts: QuantizeOptions, images: np.ndarray, batch: int, corrected: Any, placement: Any) -> Dict[str, Any]:
    """The Q/DQ artifact's settings in the manifest: what was quantized, how, and what was done to it after."""
    cal = calibration_settings(opts.calibration)
    method = cal["method"]
    settings: Dict[str, Any] = {
        "activations": opts.flavour,
        "weights": "int8 symmetric per-channel" + (", 7-bit range [-64, 64]" if opts.weight_range == "7bit" else ""),
        "weight_range": opts.weight_range,
        "calibration_method": method,
        "calibration_images": int(len(images)),
        "calibration_batch": batch,
        "excluded_nodes": list(opts.exclude_nodes),
    }
    if corrected is not None:
        settings["bias_correction"] = corrected
    if placement is not None:
        settings["qdq_placement"] = placement
    if opts.quantize_nodes:
        settings["quantized_nodes_only"] = list(opts.quantize_nodes)
    if method == "percentile":
        settings["percentile"] = cal["percentile"]
    if method != "minmax":
        settings["histogram_bins"] = HISTOGRAM_BINS
    if method == "entropy":
        settings["quantized_bins"] = ENTROPY_QUANTIZED_BINS
    return settings


def qdq_from_onnx(
    fp32_path: Union[str, Path],
    out_path: Union[str, Path],
    images: np.ndarray,
    options: Union[QuantizeOptions, str] = "uint8",
    root: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    **changes: Any,
) -> Artifact:
    """Quantize ``fp32_path`` with ORT's static QDQ quantizer, calibrated on ``images`` (NCHW float32).

    ``options`` (QuantizeOptions; a flavour name stands for its defaults), with ``changes`` to its fields
    applied (e.g. ``exclude_nodes=[...]``). Writes ``out_path`` atomically; returns its artifact (relative to ``root``).
    """
    onnx = require("onnx", "quantize to INT8")
    opts = options if isinstance(options, QuantizeOptions) else QuantizeOptions(flavour=options)
    opts = replace(opts, **changes).checked()
    calibration_settings(opts.calibration)  # a bad section is refused before the work
    if len(images) == 0:
        raise BadInputError("No calibration images: give a folder with readable images.")
    proto = onnx.load(str(fp32_path))
    batch = calibration_batch(proto)
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        _quantize_static(Path(fp32_path), Path(tmp), images, proto, opts, batch, progress)
        corrected = correct_biases(fp32_path, tmp, images, batch) if opts.bias_correction else None
        # a backend's own Q/DQ placement (TensorRT's, on its int8 flavour), asked through the backend interface,
        # after the bias correction so that it places Q/DQ on the corrected model
        placement = backends.place_qdq(Path(tmp), opts.flavour)
    return Artifact.from_files(
        f"onnx-int8-{opts.flavour}", [out_path], root, kind="onnx-qdq", backend="onnx", precision="int8",
        parent=opts.parent, stage="quantize", settings=_settings_record(opts, images, batch, corrected, placement),
    )
