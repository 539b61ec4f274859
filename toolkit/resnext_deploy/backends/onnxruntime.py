"""ONNX Runtime backend: an offline-optimized model (.ort.onnx) run by the CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..buildfolder.artifacts import Artifact, atomic_file
from ..errors import BadInputError
from ..optional import require
from .base import Backend, Runner

log = logging.getLogger(__name__)

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL", "none": "ORT_DISABLE_ALL"}


def session_options(ort: Any, settings: Dict[str, Any], level: str) -> Any:
    """ONNX Runtime SessionOptions from recipe settings (threads, graph optimization level)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    threads = int(settings.get("threads", 0) or 0)
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if x64quantprecision(settings):
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


def x64quantprecision(settings: Dict[str, Any]) -> bool:
    """Whether a session gets ORT's ``session.x64quantprecision`` (setting ``x64quantprecision``: auto | on | off).

    With it ORT rewrites int8 weights outside [-64, 64] to uint8 so that U8U8 kernels, which cannot saturate,
    run them: exact (on a VNNI CPU the logits stay bit-identical) and slower (full-range demo ~1.5x). 7-bit
    weights are left alone, so they keep the fast kernels. "auto" = on where the CPU has no VNNI (host/cpu.py).
    """
    mode = settings.get("x64quantprecision", "auto")
    if mode == "auto":
        from ..host.cpu import host_cpu

        return host_cpu().exact_u8s8 is False
    return mode in ("on", True)


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, settings: Dict[str, Any]) -> None:
        super().__init__()
        ort = require("onnxruntime", "run ONNX Runtime models")
        # The artifact is already optimized offline; the layout-level ("all") passes run here, at load.
        opts = session_options(ort, settings, settings.get("runtime_optimization", "all"))
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.details = {"providers": self._session.get_providers(), "threads": opts.intra_op_num_threads,
                        "x64quantprecision": x64quantprecision(settings)}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe.
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    module = "onnxruntime"
    kind = "ort-optimized"
    suffixes = (".onnx",)
    preference = 30
    defaults = {
        "activations": "uint8",  # QDQ activation type: ORT's CPU kernels are fast with uint8
        "graph_optimization": "extended",
        "threads": 0,  # 0 = ONNX Runtime's default (all cores)
        "x64quantprecision": "auto",  # auto | on | off: exact U8U8 kernels for full-range int8 weights without VNNI
    }
    cpu_u8s8 = True
    saturation_guard_name = "session.x64quantprecision: exact U8U8 kernels"

    def saturation_guard(self, settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return dict(settings, x64quantprecision="on")

    def validate(self, settings: Dict[str, Any], source: str) -> None:
        super().validate(settings, source)
        if settings.get("x64quantprecision", "auto") not in ("auto", "on", "off"):
            raise BadInputError(
                f"backends.onnxruntime.x64quantprecision in {source} must be auto, on or off, got '{settings['x64quantprecision']}'."
            )

    def compile(
        self, source: Artifact, out_dir: Path, precision: str, settings: Dict[str, Any], root: Optional[Path] = None
    ) -> Artifact:
        ort = require("onnxruntime", "compile for ONNX Runtime")
        level = settings.get("graph_optimization", "extended")
        out = Path(out_dir) / f"model-{precision}.ort.onnx"
        with atomic_file(out) as tmp:
            # Never bake the saturation guard's uint8 weights into the artifact: it is applied at load, where the CPU is known.
            opts = session_options(ort, dict(settings, x64quantprecision="off"), level)
            opts.optimized_model_filepath = str(tmp)
            ort.InferenceSession(str(source.abspath(root)), opts, providers=["CPUExecutionProvider"])
        recorded = {k: settings[k] for k in ("graph_optimization", "threads", "activations") if k in settings}
        recorded["onnxruntime_version"] = ort.__version__
        return Artifact.from_files(
            f"onnxruntime-{precision}", [out], root, kind=self.kind, backend=self.name, precision=precision,
            parent=source.name, stage="compile", settings=recorded,
        )

    def load(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> Runner:
        return OrtRunner(Path(path), settings or {})
