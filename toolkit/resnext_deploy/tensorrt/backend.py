"""TensorRT backend: engines built from ONNX with TensorRT's builder and ONNX parser, run with the tensor API.

Written against TensorRT's Python API from 8.5 (JetPack 5) to 11.x (strongly typed; engines.py builds for
each by feature detection), running with the name-based tensor API and the older binding API as a fallback. Engines are tied to the GPU and the TensorRT version that built them, so
every engine gets a build record beside it (``<engine>.json``: TensorRT version, GPU name, compute
capability, L4T release on a Jetson, flags, profile) and loading refuses an engine recorded for another
machine. Needs numpy, TensorRT and the CUDA libraries only (device memory through ctypes); the module
imports TensorRT lazily, so listing backends or reading records works anywhere.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..buildfolder.artifacts import Artifact
from . import cuda_runtime as cuda
from .engines import engine_from_onnx, features, logger, record_path
from .machine import is_jetson, l4t_release, machine_record, tensorrt_module  # noqa: F401 (re-exported)
from ..backends.base import Backend, BuildAddition, OnnxRules, Runner
from ..errors import BadInputError, InternalError

log = logging.getLogger(__name__)

def incompatibility(recorded: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """Why an engine built on ``recorded`` cannot run on ``current`` (None when it can)."""
    reasons = []
    for key, what in (("tensorrt_version", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        if recorded.get(key) != current.get(key):
            reasons.append(f"{what} {recorded.get(key)!s} when built, {current.get(key)!s} here")
    return "; ".join(reasons) or None


def read_record(engine: Path) -> Dict[str, Any]:
    path = record_path(engine)
    if not path.is_file():
        raise BadInputError(
            f"The engine '{engine}' has no build record ('{path.name}') beside it, so resnext-deploy cannot tell "
            "which TensorRT and GPU it is for. TensorRT engines only run where they were built: rebuild it on this "
            "machine with `resnext-deploy compile --bundle <bundle directory>`."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"The build record '{path}' is not valid JSON ({exc}); rebuild the engine.") from exc
    return data.get("engine", data)


def check_engine_matches(engine: Path, record: Dict[str, Any], current: Dict[str, Any]) -> None:
    """Refuse an engine recorded for another TensorRT or GPU, saying how to rebuild it."""
    why = incompatibility(record.get("machine", {}), current)
    if why:
        raise BadInputError(
            f"The engine '{engine}' was built for another machine ({why}). TensorRT engines only run with the "
            "TensorRT version and GPU that built them: rebuild it here with `resnext-deploy compile --bundle "
            "<bundle directory>` (the bundle the build wrote, e.g. build/<model>/<target>/<model>-<target>-bundle)."
        )


class TensorRtRunner(Runner):
    """A deserialized engine with one execution context; ``infer`` splits/pads batches to the profile."""

    backend = "tensorrt"

    def __init__(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        trt = tensorrt_module("run TensorRT engines")
        path = Path(path)
        record = read_record(path)
        check_engine_matches(path, record, machine_record(trt))
        self._trt = trt
        self._logger = logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise InternalError(f"TensorRT could not load '{path}': {'; '.join(self._logger.errors) or 'unknown error'}")
        self._context = self._engine.create_execution_context()
        self._lock = threading.Lock()
        self._v3 = hasattr(self._context, "execute_async_v3")
        self._in, self._out = self._io_names()
        self._min, self._max = int(record["profile"]["min"][0]), int(record["profile"]["max"][0])
        chw = tuple(record["profile"]["max"][1:])
        self._stream = cuda.stream_create()
        self._d_in = cuda.malloc(self._max * int(np.prod(chw)) * 4)
        self._d_out = 0
        self._out_cap = 0
        self.details = {"tensorrt_version": str(trt.__version__), "flags": record.get("flags"),
                        "dla_core": record.get("dla_core"), "quantization": record.get("quantization"),
                        "gpu": record["machine"].get("gpu"), "api": "tensor (v3)" if self._v3 else "bindings (v2)"}

    def _io_names(self) -> tuple:
        e = self._engine
        if hasattr(e, "num_io_tensors"):
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            ins = [n for n in names if e.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT]
            outs = [n for n in names if n not in ins]
        else:  # TensorRT < 8.5: bindings
            names = [e.get_binding_name(i) for i in range(e.num_bindings)]
            ins = [n for i, n in enumerate(names) if e.binding_is_input(i)]
            outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise InternalError(f"Expected a classifier engine with one input and one output, got {ins} -> {outs}.")
        return ins[0], outs[0]

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        ctx = self._context
        if self._v3:
            ctx.set_input_shape(self._in, tuple(chunk.shape))
            out_shape = tuple(ctx.get_tensor_shape(self._out))
        else:
            e = self._engine
            ctx.set_binding_shape(e.get_binding_index(self._in), tuple(chunk.shape))
            out_shape = tuple(ctx.get_binding_shape(e.get_binding_index(self._out)))
        out = np.empty(out_shape, dtype=np.float32)
        if out.nbytes > self._out_cap:
            cuda.free(self._d_out)
            self._d_out, self._out_cap = cuda.malloc(out.nbytes), out.nbytes
        cuda.copy_to_device(self._d_in, chunk.ctypes.data, chunk.nbytes, self._stream)
        if self._v3:
            ctx.set_tensor_address(self._in, self._d_in)
            ctx.set_tensor_address(self._out, self._d_out)
            ok = ctx.execute_async_v3(self._stream)
        else:
            e = self._engine
            bindings = [0] * e.num_bindings
            bindings[e.get_binding_index(self._in)] = self._d_in
            bindings[e.get_binding_index(self._out)] = self._d_out
            ok = ctx.execute_async_v2(bindings, self._stream)
        if not ok:
            raise InternalError(f"TensorRT failed to run a batch of {len(chunk)}: {'; '.join(self._logger.errors[-3:])}")
        cuda.copy_to_host(out.ctypes.data, self._d_out, out.nbytes, self._stream)
        cuda.stream_synchronize(self._stream)
        return out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        with self._lock:  # one execution context: one batch at a time
            for i in range(0, len(batch), self._max):
                chunk = batch[i : i + self._max]
                n = len(chunk)
                if n < self._min:  # a static (DLA) profile: pad, then drop the padding
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self._min - n, axis=0)])
                outs.append(self._run(chunk)[:n])
        return np.concatenate(outs)

    def close(self) -> None:
        cuda.free(getattr(self, "_d_in", 0))
        cuda.free(getattr(self, "_d_out", 0))
        cuda.stream_destroy(getattr(self, "_stream", 0))
        self._d_in = self._d_out = self._stream = 0
        self._context = self._engine = self._runtime = None


class TensorRtBackend(Backend):
    name = "tensorrt"
    module = "tensorrt"
    kind = "tensorrt-engine"
    precisions = ("fp16", "int8")
    suffixes = (".engine", ".plan")
    preference = 10
    # Engines only run with the GPU and TensorRT that built them, and nothing cross-builds x86 -> Jetson.
    builds_on_device = True
    defaults = {
        "workspace_mb": 1024,
        "min_batch": 1,
        "opt_batch": 1,
        "max_batch": 8,
        "dla_core": -1,  # -1 = no DLA; >= 0 also builds DLA engines on that core (static batch = opt_batch)
        "gpu_fallback": True,  # layers DLA cannot run go to the GPU instead of failing the build
        "timing_cache": True,  # save the builder's timing cache beside the engines and reuse it
        "tensorrt_version": "10.3.0",  # the device's TensorRT (JetPack 6.1/6.2): labels the calibration cache
        "jetpack": "",  # the JetPack release the recipe is for (shown in the bundle README)
        "golden_images": 16,  # preprocessed validation images shipped with FP32 reference outputs
        "golden_min_agreement": 1.0,  # share of golden images whose top-1 must match the FP32 reference
        "fp16_max_abs_diff": 0.1,  # largest |engine - FP32 reference| logit allowed on golden images
        "fp16_min_cosine": 0.9995,  # smallest cosine of engine vs FP32 reference logits
        "int8_max_abs_diff": 1.0,
        "int8_min_cosine": 0.99,
    }

    def int8_flavour(self, settings: Dict[str, Any]) -> Optional[str]:
        """Always the int8 (symmetric, zero-point 0) flavour, Q/DQ placed for Conv+Add fusion: the bundle ships that model."""
        return "int8" if settings["precisions"] else None

    #: the golden tolerances' allowed ranges (the workstation's recipe and, on the device, the bundle's manifest)
    TOLERANCES = {"golden_min_agreement": (0.0, 1.0), "fp16_min_cosine": (-1.0, 1.0), "int8_min_cosine": (-1.0, 1.0),
                  "fp16_max_abs_diff": (0.0, 1000.0), "int8_max_abs_diff": (0.0, 1000.0)}

    def place_qdq(self, path: Path, flavour: str) -> Optional[Dict[str, Any]]:
        """Q/DQ moved to where TensorRT fuses Conv+Add (qdq_placement.py), on the int8 flavour it compiles."""
        from .qdq_placement import place_file

        return place_file(path).to_dict() if flavour == "int8" else None

    def check_onnx(self, path: Path) -> Optional[OnnxRules]:
        """TensorRT's rules for explicit quantization (qdq_rules.py), every violation with its node name."""
        from .qdq_rules import check_qdq_model

        qdq = check_qdq_model(path)
        return OnnxRules("TensorRT Q/DQ rules", "qdq", qdq.passed, qdq.has_qdq, qdq.to_dict(), qdq.summary(),
                         "To make a TensorRT-ready model from the float ONNX: resnext-deploy quantize --onnx "
                         "<fp32.onnx> --activations int8 --out <qdq.onnx>.")

    # The build hooks (imported when a build runs: stage.py is the workstation half, beside the pipeline).
    def workstation_results(self, ctx: Any, artifacts: List[Artifact]) -> List[Dict[str, Any]]:
        """The Q/DQ model TensorRT's INT8 engine comes from, run in ONNX Runtime: a real accuracy even without a GPU."""
        from .stage import evaluate_qdq

        return [evaluate_qdq(ctx, artifacts)]

    def finish_build(self, ctx: Any, artifacts: List[Artifact], results: List[Dict[str, Any]]) -> Optional[BuildAddition]:
        """Engines here when TensorRT and the GPU are this machine's, else the bundle that builds them on the device."""
        from .stage import tensorrt_stage

        return tensorrt_stage(ctx, artifacts, results)

    def validate(self, settings: Dict[str, Any], source: str) -> None:
        bad = [f"backends.tensorrt.{k} = {settings[k]!r} (allowed {lo:g} to {hi:g})" for k, (lo, hi) in self.TOLERANCES.items()
               if not (isinstance(settings[k], (int, float)) and lo <= settings[k] <= hi)]
        if bad:
            raise BadInputError(f"Golden tolerance{'s' if len(bad) > 1 else ''} out of range in {source}: {'; '.join(bad)}. "
                                "A max |diff| above 1000 logits or a negative one checks nothing.")
        if "fp32" in settings["precisions"]:
            raise BadInputError(f"backends.tensorrt.precisions in {source} has 'fp32'; TensorRT engines are 'fp16' or 'int8'.")
        super().validate(settings, source)
        if not settings["precisions"]:
            return
        if not 1 <= settings["min_batch"] <= settings["opt_batch"] <= settings["max_batch"]:
            raise BadInputError(
                f"backends.tensorrt batch profile in {source} must satisfy 1 <= min_batch <= opt_batch <= max_batch, "
                f"got {settings['min_batch']}/{settings['opt_batch']}/{settings['max_batch']}."
            )
        if settings["dla_core"] < -1 or settings["golden_images"] < 1 or settings["workspace_mb"] <= 0:
            raise BadInputError(
                f"backends.tensorrt in {source} needs dla_core >= -1, golden_images >= 1 and workspace_mb > 0, got "
                f"{settings['dla_core']}, {settings['golden_images']}, {settings['workspace_mb']}."
            )

    def available(self) -> bool:
        """TensorRT imports and a CUDA GPU answers: engines can be built and run here."""
        from ..optional import available

        return available(self.module) and cuda.gpu_info() is not None

    def compile(
        self, source: Artifact, out_dir: Path, precision: str, settings: Dict[str, Any], root: Optional[Path] = None
    ) -> Artifact:
        """A GPU engine from ``source`` (FP32 ONNX for fp16, the Q/DQ ONNX for int8), timing cache in out_dir.

        On strongly typed TensorRT (11.x) the ONNX's types are the precision: ``source`` is first converted to
        FP16 (float16.py, beside the engine), the FP16 ONNX or the Q/DQ ONNX with FP16 float regions.
        """
        out_dir = Path(out_dir)
        engine = out_dir / f"model-{precision}.engine"
        cache = out_dir / "timing.cache" if settings.get("timing_cache", True) else None
        onnx = source.abspath(root)
        if not features(tensorrt_module()).weakly_typed:
            from .float16 import fp16_from_onnx, fp16_qdq_from_qdq

            typed = out_dir / f"model-{precision}-typed.onnx"
            onnx = (fp16_qdq_from_qdq if precision == "int8" else fp16_from_onnx)(onnx, typed)
        record = engine_from_onnx(onnx, engine, precision, settings, timing_cache=cache)
        return Artifact.from_files(
            f"tensorrt-{precision}", [engine, record_path(engine)], root, kind=self.kind, backend=self.name,
            precision=precision, parent=source.name, stage="compile", settings=record,
        )

    def load(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> Runner:
        return TensorRtRunner(Path(path), settings or {})

    def version(self) -> str:
        return str(tensorrt_module().__version__)
