"""The one TensorRT engine builder: ONNX -> serialized engine + build record, for every TensorRT the targets meet.

Which API to use is decided by feature detection on the ``tensorrt`` module, never by its version string:

- weakly typed (TensorRT 8.5 to 10.x, ``BuilderFlag.FP16`` exists): precision from builder flags (FP16, INT8 +
  FP16 for a Q/DQ model); an INT8 engine from the FP32 model takes its scales from our calibration cache through
  a calibrator (implicit quantization, the DLA path of JetPack 5/6); the network is created explicit-batch where
  the builder still has an implicit-batch mode (8.x: ``Builder.max_batch_size``).
- strongly typed (TensorRT 11.x: no precision flags): the ONNX's tensor types are the precision, so FP16 comes
  from the FP16 ONNX and INT8 from the Q/DQ ONNX whose float regions are FP16 (float16.py). No precision flag,
  no calibrator, no calibration profile, no ``EXPLICIT_BATCH``; DLA keeps ``default_device_type``,
  ``DLA_core`` and ``GPU_FALLBACK`` (TensorRT 11.4.1+ on AGX Orin).

The 10.x -> 11.x migration guide lists what 11.x removed (REMOVED_IN_11); tests check the strongly typed
branch reaches none of it. Needs numpy and TensorRT only; runs on JetPack's Python 3.8.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from ..buildfolder.artifacts import atomic_file, sha256_file
from ..errors import BadInputError, InternalError

if TYPE_CHECKING:  # the published tensorrt-stubs (10.x) check the calls below; nothing is imported at run time
    import tensorrt as trt_t

log = logging.getLogger(__name__)

RECORD_SCHEMA = "resnext-deploy/tensorrt-engine"

#: Python API names TensorRT 11.x removed (its 10.x -> 11.x Python migration reference) that this module could
#: reach on the weakly typed path. The strongly typed path touches none of them.
REMOVED_IN_11 = (
    "BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.FP8", "BuilderFlag.INT4",
    "BuilderFlag.FP4", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "BuilderFlag.DIRECT_IO", "IBuilderConfig.int8_calibrator", "IBuilderConfig.set_calibration_profile",
    "IBuilderConfig.set_quantization_flag", "Builder.platform_has_fast_fp16", "Builder.platform_has_fast_int8",
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
)


@dataclass(frozen=True)
class Features:
    """What the TensorRT on this machine offers, found by looking (hasattr), not from its version string."""

    version: str
    weakly_typed: bool  # precision builder flags exist (8.5 .. 10.x)
    implicit_batch: bool  # the builder still has an implicit-batch mode: ask for explicit batch (8.x)
    calibrator: bool  # INT8 calibrators exist: implicit quantization from a calibration cache (8.5 .. 10.x)
    tensor_api: bool  # name-based I/O tensors (8.5+)

    @property
    def typing(self) -> str:
        return "weak" if self.weakly_typed else "strong"

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), typing=self.typing)


def features(trt: Any) -> Features:
    return Features(
        version=str(getattr(trt, "__version__", "?")),
        weakly_typed=hasattr(trt.BuilderFlag, "FP16"),
        implicit_batch=hasattr(trt.Builder, "max_batch_size"),
        calibrator=hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.IBuilderConfig, "int8_calibrator"),
        tensor_api=hasattr(trt.ICudaEngine, "num_io_tensors"),
    )


def record_path(engine: Path) -> Path:
    return Path(str(engine) + ".json")


def logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors (for our messages) and forwards everything to logging."""

    class _Log(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Log()


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An INT8 calibrator that only hands TensorRT our calibration cache (implicit quantization, weakly typed)."""

    class _FromCache(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> Any:
            return None  # no images here: TensorRT must take every scale from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            pass

    return _FromCache()


def dla_cores(trt: Any) -> int:
    """How many DLA cores this TensorRT can build for (0 on a GPU box, Orin Nano, Thor, JetPack 7 with 10.x)."""
    return int(getattr(trt.Builder(logger(trt)), "num_DLA_cores", 0) or 0)


def _weak_precision(trt: Any, config: "trt_t.IBuilderConfig", precision: str, calibration_cache: Optional[bytes],
                    profile: "trt_t.IOptimizationProfile") -> List[str]:
    """Builder flags for 8.5 .. 10.x: FP16, and INT8 + FP16 (+ the cache's calibrator for implicit INT8)."""
    used = ["FP16"]
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        used.insert(0, "INT8")
        if calibration_cache is not None:
            config.int8_calibrator = _cache_calibrator(trt, calibration_cache)
            if hasattr(config, "set_calibration_profile"):
                config.set_calibration_profile(profile)
    return used


def _network(trt: Any, builder: "trt_t.Builder", feats: Features) -> "trt_t.INetworkDefinition":
    if feats.implicit_batch:  # 8.x: ONNX needs an explicit-batch network
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    return builder.create_network(0)  # 10.x: always explicit batch; 11.x: always strongly typed as well


def _configure(trt: Any, builder: "trt_t.Builder", inp: Any, chw: Tuple[int, ...], precision: str,
               settings: Dict[str, Any], dla_core: int, calibration_cache: Optional[bytes],
               timing_cache: Optional[Path], batch: Tuple[int, int, int], feats: Features) -> Tuple[Any, List[str]]:
    """The builder config: workspace, the batch profile, precision (weakly typed), DLA, timing cache; and the flags."""
    lo, opt, hi = batch
    config: "trt_t.IBuilderConfig" = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_mb"]) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo,) + chw, (opt,) + chw, (hi,) + chw)  # type: ignore[arg-type]  # tuple -> Dims (pybind11)
    config.add_optimization_profile(profile)
    used = _weak_precision(trt, config, precision, calibration_cache, profile) if feats.weakly_typed else []
    if dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        if settings.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            used.append("GPU_FALLBACK")
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):  # a cache from another GPU/TensorRT: start afresh
            log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), False)
    return config, used


def _quantization(precision: str, calibration_cache: Optional[bytes]) -> str:
    if precision != "int8":
        return "none"
    return "implicit (calibration cache)" if calibration_cache is not None else "explicit (Q/DQ)"


def engine_from_onnx(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    settings: Dict[str, Any],
    dla_core: int = -1,
    calibration_cache: Optional[bytes] = None,
    timing_cache: Optional[Path] = None,
    batch: Optional[Tuple[int, int, int]] = None,
    trt: Any = None,
) -> Dict[str, Any]:
    """Build one engine from ONNX; write it and its build record atomically; return the record.

    ``precision`` (fp16 | int8) is a builder flag on weakly typed TensorRT and a promise about ``onnx_path`` on
    strongly typed TensorRT (the FP16 ONNX, or the Q/DQ ONNX with FP16 float regions). ``calibration_cache``
    asks for implicit INT8 from a float model (weakly typed only). ``batch`` is (min, opt, max).
    """
    from .machine import machine_record, tensorrt_module

    if precision not in ("fp16", "int8"):
        raise BadInputError(f"TensorRT engines are fp16 or int8 here, not '{precision}'.")
    trt = trt or tensorrt_module()
    feats = features(trt)
    if calibration_cache is not None and not feats.calibrator:
        raise InternalError(f"TensorRT {feats.version} has no INT8 calibrator (strongly typed): an INT8 engine must "
                            "come from the Q/DQ ONNX, not from a calibration cache. The engine plan asked otherwise.")
    t0 = time.perf_counter()
    lg = logger(trt)
    builder: "trt_t.Builder" = trt.Builder(lg)
    network = _network(trt, builder, feats)
    parser: "trt_t.OnnxParser" = trt.OnnxParser(network, lg)
    if not parser.parse(Path(onnx_path).read_bytes(), str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InternalError(f"TensorRT's ONNX parser rejected '{onnx_path}': {'; '.join(errs) or lg.errors}")
    inp = network.get_input(0)
    shape = inp.shape
    chw = tuple(int(shape[i]) for i in range(1, len(shape)))
    lo, opt, hi = batch or (int(settings["min_batch"]), int(settings["opt_batch"]), int(settings["max_batch"]))
    config, used = _configure(trt, builder, inp, chw, precision, settings, dla_core, calibration_cache, timing_cache,
                              (lo, opt, hi), feats)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InternalError(f"TensorRT could not build the {precision} engine from '{onnx_path}': "
                            f"{'; '.join(lg.errors[-3:]) or 'see the log (--verbose)'}")
    with atomic_file(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_file(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = {
        "machine": machine_record(trt), "precision": precision, "typing": feats.typing, "flags": used,
        "dla_core": int(dla_core),
        "profile": {"input": inp.name, "min": [lo] + list(chw), "opt": [opt] + list(chw), "max": [hi] + list(chw)},
        "workspace_mb": int(settings["workspace_mb"]),
        "source": {"onnx": Path(onnx_path).name, "sha256": sha256_file(onnx_path)},
        "quantization": _quantization(precision, calibration_cache),
        "timing_cache": timing_cache.name if timing_cache is not None else None,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_file(record_path(engine_path)) as tmp:
        tmp.write_text(json.dumps({"schema": RECORD_SCHEMA, "engine": record}, indent=2))
    log.info("built %s (%s, %s typed, %s) in %.1f s", engine_path, precision, feats.typing, "+".join(used) or "no flags",
             record["build_seconds"])
    return record


@dataclass
class Built:
    """One planned engine after the build loop: its record, or why it was refused on this machine."""

    spec: Any  # engine_plan.EngineSpec
    engine: Path
    onnx: Optional[Path]
    record: Optional[Dict[str, Any]] = None
    refused: Optional[str] = None


def build_engines(
    specs: List[Any], models: Dict[str, Path], out_dir: Path, settings: Dict[str, Any],
    calibration_cache: Optional[bytes] = None, timing_cache: Optional[Path] = None,
    progress: Optional[Callable[[str, int, int], None]] = None, trt: Any = None,
) -> List[Built]:
    """The build loop every caller shares: each planned engine built into ``out_dir``, or refused with a reason.

    ``models`` maps "fp32" | "qdq" | "fp16" | "qdq-fp16" to the ONNX files at hand. An engine is refused (not
    built) when it needs a DLA this TensorRT does not have, a model the bundle lacks, or a calibration cache where
    none was shipped; the caller reports it and fails the gate.
    """
    from .device_plan import source_for
    from .machine import tensorrt_module

    trt = trt or tensorrt_module()
    feats = features(trt)
    cores = dla_cores(trt) if any(s.dla_core >= 0 for s in specs) else 0
    out: List[Built] = []
    for i, spec in enumerate(specs):
        if progress:
            progress("build engines", i, len(specs))
        engine = out_dir / f"{spec.name}.engine"
        key, use_cache = source_for(spec, feats.weakly_typed)
        onnx = models.get(key)
        built = Built(spec, engine, onnx)
        if spec.dla_core >= 0 and spec.dla_core >= cores:
            built.refused = (f"needs DLA core {spec.dla_core}, but TensorRT {feats.version} here builds for "
                             f"{cores} DLA core(s) (no DLA on Orin Nano and Thor, nor in the TensorRT 10.x of JetPack 7; "
                             "TensorRT 11.4.1+ on JetPack 7.2.2+ has it on AGX Orin)")
        elif onnx is None or not Path(onnx).is_file():
            built.refused = (f"needs the {key} ONNX for {feats.typing}ly typed TensorRT {feats.version}, and it is "
                             "not here (a bundle from an older resnext-deploy: rebuild the bundle)")
        elif use_cache and calibration_cache is None:
            built.refused = "needs the calibration cache (implicit INT8), which this bundle does not ship"
        else:
            built.record = engine_from_onnx(onnx, engine, spec.precision, settings, spec.dla_core,
                                            calibration_cache if use_cache else None, timing_cache,
                                            (spec.min_batch, spec.opt_batch, spec.max_batch), trt)
        if built.refused:
            log.warning("%s refused: %s", spec.name, built.refused)
        out.append(built)
    if progress:
        progress("build engines", len(specs), len(specs))
    return out
