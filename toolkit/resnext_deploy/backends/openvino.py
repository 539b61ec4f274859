"""OpenVINO backend: IR (.xml/.bin) converted from ONNX; INT8 comes from the Q/DQ model's FakeQuantize.

Precisions: fp32 (f32 arithmetic), int8, and bf16: the FP32 IR with the bf16 inference hint written into the IR
(rt_info ``runtime_options``), so whoever compiles it gets bf16: what OpenVINO does to an FP32 model by default on
CPUs with AMX or AVX512-BF16. The bf16 rung is built only where this CPU can run it (``cannot_build``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..buildfolder.artifacts import Artifact, disk_errors
from ..errors import BadInputError
from ..optional import require
from .base import Backend, Runner

log = logging.getLogger(__name__)


def compile_config(settings: Dict[str, Any]) -> Dict[str, Any]:
    """OpenVINO CPU properties from recipe settings. The precision hint is always explicit."""
    config: Dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": settings.get("inference_precision", "f32"),
        "PERFORMANCE_HINT": settings.get("performance_hint", "LATENCY"),
    }
    threads = int(settings.get("threads", 0) or 0)
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    streams = int(settings.get("streams", 0) or 0)
    if streams > 0:
        config["NUM_STREAMS"] = streams
    return config


#: where an IR carries the inference precision it was built and gated for (OpenVINO's own runtime_options key)
_HINT_PATH = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def ir_precision_hint(model: Any) -> Optional[str]:
    """The inference precision an IR was built for (written by compile), or None."""
    try:
        return str(model.get_rt_info(_HINT_PATH).astype(str)) if model.has_rt_info(_HINT_PATH) else None
    except Exception:  # an IR from elsewhere with its own rt_info layout
        return None


def bf16_support() -> Optional[str]:
    """None when this machine's OpenVINO CPU plugin runs bf16 natively, else why not (host.cpu.bf16_missing)."""
    from ..host.cpu import bf16_missing

    return bf16_missing()


def static_batches(settings: Dict[str, Any]) -> List[int]:
    """Batch sizes that get a static-shape compiled model (recipe ``static_batches``), validated."""
    sizes = settings.get("static_batches", [])
    try:
        out = sorted({int(b) for b in sizes})
    except (TypeError, ValueError):
        out = []
    if any(b < 1 for b in out) or (sizes and not out):
        raise BadInputError(f"backends.openvino.static_batches must be a list of batch sizes >= 1, got {sizes!r}.")
    return out


class OpenVinoRunner(Runner):
    """One compiled model per static batch size (faster: shapes, memory and kernels fixed at compile time),
    and the dynamic-batch model, compiled on first use, for any other batch size."""

    backend = "openvino"

    def __init__(self, path: Path, settings: Dict[str, Any]) -> None:
        super().__init__()
        ov = self._ov = require("openvino", "run OpenVINO models")
        self._core = ov.Core()
        self._path, self._device = Path(path), settings.get("device", "CPU")
        self._config = compile_config(settings)
        hint = ir_precision_hint(self._core.read_model(str(path)))
        if hint is not None:  # the IR was built (and gated) for this precision: bf16, or INT8's float layers
            self._config["INFERENCE_PRECISION_HINT"] = hint
        self._compiled: Dict[Optional[int], Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # an InferRequest is not thread-safe: one per thread and shape
        for batch in static_batches(settings):
            model = self._core.read_model(str(path))
            shape = list(model.input(0).get_partial_shape())
            try:
                model.reshape([batch] + shape[1:])
                self._compiled[batch] = self._core.compile_model(model, self._device, self._config)
            except RuntimeError as exc:  # e.g. a model exported with a fixed batch: it runs as it is
                log.warning("OpenVINO: no static batch-%d model for %s (%s); using its own shape", batch, path, exc)
        if not self._compiled:
            self._dynamic()
        first = next(iter(self._compiled.values()))
        self.details = {
            "config": {k: str(v) for k, v in self._config.items()},
            "static_batches": [b for b in self._compiled if b is not None],
            "threads": _property(first, "INFERENCE_NUM_THREADS"),  # what the plugin chose, not what we asked
            "streams": _property(first, "NUM_STREAMS"),
            "execution": execution_precisions(first),
            "ir_precision_hint": hint,
        }

    def _dynamic(self) -> Any:
        with self._lock:
            if None not in self._compiled:
                self._compiled[None] = self._core.compile_model(str(self._path), self._device, self._config)
        return self._compiled[None]

    def _request(self, batch: int) -> Any:
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        key = batch if batch in self._compiled else None
        if key not in reqs:
            compiled = self._compiled[key] if key is not None else self._dynamic()
            reqs[key] = compiled.create_infer_request()
        return reqs[key]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        req = self._request(len(batch))
        # Bind the array itself as the input (no copy) and read the output tensor directly: no result
        # dictionary per call. The request reuses its output buffer on the next call, hence the copy.
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        if not arr.flags.writeable:  # OpenVINO shares only writeable memory (e.g. not a read-only memmap)
            arr = arr.copy()
        req.set_input_tensor(self._ov.Tensor(arr, shared_memory=True))
        req.infer()
        return req.get_output_tensor(0).data.copy()

    def close(self) -> None:
        self._compiled = {}
        self._local = threading.local()


def _property(compiled: Any, name: str) -> Any:
    try:
        value = compiled.get_property(name)
        return int(value) if str(value).isdigit() else str(value)
    except Exception:  # introspection only
        return None


def execution_precisions(compiled: Any) -> Dict[str, Any]:
    """What the CPU plugin actually runs: runtime precision of each convolution, counted, and the names
    of the convolutions left in floating point when others run in 8 bits."""
    try:
        graph = compiled.get_runtime_model()
        convs: Counter = Counter()
        by_precision: Dict[str, List[str]] = {}
        for op in graph.get_ordered_ops():
            info = op.get_rt_info()
            if "Convolution" in info["layerType"].astype(str):
                precision = info["runtimePrecision"].astype(str)
                convs[precision] += 1
                by_precision.setdefault(precision, []).append(op.get_friendly_name())
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        out: Dict[str, Any] = {
            "convolutions_by_precision": dict(convs),
            "inference_precision": getattr(hint, "get_type_name", lambda: str(hint))(),
        }
        if convs.keys() & {"u8", "i8"}:
            out["float_convolutions"] = sorted(n for p, names in by_precision.items() if p not in ("u8", "i8") for n in names)
        return out
    except Exception as exc:  # introspection only; never fail a run over it
        log.debug("could not read OpenVINO runtime model: %s", exc)
        return {}


class OpenVinoBackend(Backend):
    name = "openvino"
    module = "openvino"
    kind = "openvino-ir"
    suffixes = (".xml",)
    precisions = ("fp32", "int8", "bf16")
    preference = 20
    defaults = {
        "activations": "uint8",  # measured on ResNeXt-50: the int8 (symmetric) flavour ran ~10% slower in OpenVINO
        "inference_precision": "f32",  # the CPU default may be bf16: slower here and less exact
        "performance_hint": "LATENCY",
        "threads": 0,
        "streams": 1,
        "static_batches": [1, 8],  # a static-shape compiled model per batch size (others: the dynamic one)
    }
    cpu_u8s8 = True  # oneDNN's CPU kernels; no runtime switch avoids their saturation (7-bit weights do)

    def cannot_build(self, precision: str) -> Optional[str]:
        return bf16_support() if precision == "bf16" else None

    def float_precision(self, precision: str, settings: Dict[str, Any]) -> str:
        """The precision of an artifact's float arithmetic: bf16 for the bf16 rung; for INT8 (its unquantized and
        fallback layers) the target's float rung: bf16 when the recipe builds one and this CPU runs it, else the
        recipe's inference_precision."""
        if precision == "bf16" or (precision == "int8" and "bf16" in settings.get("precisions", []) and bf16_support() is None):
            return "bf16"
        return str(settings.get("inference_precision", "f32"))

    def compile(
        self, source: Artifact, out_dir: Path, precision: str, settings: Dict[str, Any], root: Optional[Path] = None
    ) -> Artifact:
        ov = require("openvino", "compile for OpenVINO")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml, binf = out_dir / f"model-{precision}.xml", out_dir / f"model-{precision}.bin"
        tmp_xml = out_dir / f".tmp-model-{precision}.xml"
        tmp_bin = tmp_xml.with_suffix(".bin")
        try:
            # disk_errors: OpenVINO's C++ writer on a full disk says only "iostream error"; ask the device before
            # the finally below frees the half-written file
            with disk_errors(tmp_bin):
                model = ov.convert_model(str(source.abspath(root)))
                floats = self.float_precision(precision, settings)
                if floats != str(settings.get("inference_precision", "f32")):
                    model.set_rt_info(floats, _HINT_PATH)  # the runner (and plain OpenVINO) compile it with this hint
                # Keep FP32 weights: compress_to_fp16 would change the FP32 artifact's numbers.
                ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            tmp_bin.replace(binf)
            tmp_xml.replace(xml)
        finally:
            for t in (tmp_xml, tmp_bin):
                if t.exists():
                    t.unlink()
        recorded = {
            "inference_precision": floats,
            "float_layers_precision": floats,  # what the float (and fallback) layers run at on the target
            "performance_hint": settings.get("performance_hint", "LATENCY"),
            "threads": settings.get("threads", 0),
            "streams": settings.get("streams", 1),
            "static_batches": static_batches(settings),
            "compile_config": {k: str(v) for k, v in compile_config({**settings, "inference_precision": floats}).items()},
            "openvino_version": ov.__version__ if hasattr(ov, "__version__") else ov.get_version(),
        }
        return Artifact.from_files(
            f"openvino-{precision}", [xml, binf], root, kind=self.kind, backend=self.name, precision=precision,
            parent=source.name, stage="compile", settings=recorded,
        )

    def load(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> Runner:
        return OpenVinoRunner(Path(path), settings or {})
