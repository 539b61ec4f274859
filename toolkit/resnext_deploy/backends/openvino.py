"""OpenVINO backend: IR (.xml/.bin) converted from ONNX; INT8 comes from the Q/DQ model's FakeQuantize."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..artifacts import Artifact
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


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, settings: Dict[str, Any]) -> None:
        super().__init__()
        ov = require("openvino", "run OpenVINO models")
        core = ov.Core()
        config = compile_config(settings)
        self._compiled = core.compile_model(str(path), settings.get("device", "CPU"), config)
        self._local = threading.local()  # an InferRequest is not thread-safe: one per thread
        self.details = {"config": {k: str(v) for k, v in config.items()}, "execution": execution_precisions(self._compiled)}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        result = req.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(next(iter(result.values())), copy=True)

    def close(self) -> None:
        self._compiled = None


def execution_precisions(compiled: Any) -> Dict[str, Any]:
    """What the CPU plugin actually runs: runtime precision of each convolution, counted."""
    try:
        graph = compiled.get_runtime_model()
        convs: Counter = Counter()
        for op in graph.get_ordered_ops():
            info = op.get_rt_info()
            if "Convolution" in info["layerType"].astype(str):
                convs[info["runtimePrecision"].astype(str)] += 1
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return {"convolutions_by_precision": dict(convs), "inference_precision": getattr(hint, "get_type_name", lambda: str(hint))()}
    except Exception as exc:  # introspection only; never fail a run over it
        log.debug("could not read OpenVINO runtime model: %s", exc)
        return {}


class OpenVinoBackend(Backend):
    name = "openvino"
    module = "openvino"
    kind = "openvino-ir"

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
            model = ov.convert_model(str(source.abspath(root)))
            # Keep FP32 weights: compress_to_fp16 would change the FP32 artifact's numbers.
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            tmp_bin.replace(binf)
            tmp_xml.replace(xml)
        finally:
            for t in (tmp_xml, tmp_bin):
                if t.exists():
                    t.unlink()
        recorded = {
            "inference_precision": settings.get("inference_precision", "f32"),
            "performance_hint": settings.get("performance_hint", "LATENCY"),
            "threads": settings.get("threads", 0),
            "streams": settings.get("streams", 1),
            "openvino_version": ov.__version__ if hasattr(ov, "__version__") else ov.get_version(),
        }
        return Artifact.from_files(
            f"openvino-{precision}", [xml, binf], root, kind=self.kind, backend=self.name, precision=precision,
            parent=source.name, stage="compile", settings=recorded,
        )

    def load(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> Runner:
        return OpenVinoRunner(Path(path), settings or {})
