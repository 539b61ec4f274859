"""Where the time goes inside a runtime: per-layer counters, summed by kind of layer.

OpenVINO: a copy compiled with PERF_COUNT, ``request.get_profiling_info()`` after each run (executed nodes
only), summed by node type and kernel (e.g. Convolution / brgconv_avx512_1x1_I8). ONNX Runtime: a session
with profiling on, its JSON trace summed by operator, grouped convolutions apart (ORT's CPU kernels have no
fast INT8 path for them). Times are per inference, in milliseconds. A profiler is made once and run several
times (the benchmark interleaves the runs and keeps each configuration's least disturbed one).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set

import numpy as np

from ..optional import require

Profiler = Callable[[int], Dict[str, Any]]


def _summary(tool: str, batch: int, agg: Dict[str, float], top: int = 12) -> Dict[str, Any]:
    rows = sorted(agg.items(), key=lambda kv: -kv[1])[:top]
    return {"tool": tool, "batch": batch, "total_ms": float(sum(agg.values())), "by_kind_ms": {k: round(v, 4) for k, v in rows}}


def openvino_profiler(path: str, settings: Dict[str, Any], sample: np.ndarray) -> Profiler:
    """Per-kind time of the executed nodes, the model compiled as the runner compiles it for this batch."""
    ov = require("openvino", "profile OpenVINO models")
    from ..backends.openvino import compile_config, static_batches

    core = ov.Core()
    model = core.read_model(path)
    if len(sample) in static_batches(settings):
        shape = list(model.input(0).get_partial_shape())
        model.reshape([len(sample)] + shape[1:])
    compiled = core.compile_model(model, settings.get("device", "CPU"), {**compile_config(settings), "PERF_COUNT": True})
    req = compiled.create_infer_request()
    x = np.ascontiguousarray(sample, dtype=np.float32)
    for _ in range(5):
        req.infer({0: x})

    def run(runs: int) -> Dict[str, Any]:
        agg: Dict[str, float] = defaultdict(float)
        for _ in range(runs):
            req.infer({0: x})
            for p in req.get_profiling_info():
                if p.status == p.Status.EXECUTED:
                    agg[f"{p.node_type} / {p.exec_type}"] += p.real_time.total_seconds() * 1e3 / runs
        return _summary("OpenVINO PERF_COUNT (executed nodes)", len(x), agg)

    return run


def _grouped_convs(path: str) -> Set[str]:
    try:
        onnx = require("onnx", "profile ONNX Runtime models")
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # the names only label the rows; a profile without them is still a profile
        return set()
    return {n.name for n in proto.graph.node if n.op_type.endswith("Conv")
            and any(a.name == "group" and a.i > 1 for a in n.attribute)}


def onnxruntime_profiler(path: str, settings: Dict[str, Any], sample: np.ndarray) -> Profiler:
    """Per-operator time from ONNX Runtime's own profiler, with the session options the runner uses."""
    ort = require("onnxruntime", "profile ONNX Runtime models")
    from ..backends.onnxruntime import session_options

    grouped = _grouped_convs(path)
    x = np.ascontiguousarray(sample, dtype=np.float32)

    def run(runs: int) -> Dict[str, Any]:
        # ORT writes one trace per session, at the end: a fresh session per run of the profiler.
        tmp = tempfile.mkdtemp(prefix="ort-profile-")
        try:
            opts = session_options(ort, settings, settings.get("runtime_optimization", "all"))
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "p")
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(5):
                sess.run(None, feed)
            for _ in range(runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        agg: Dict[str, float] = defaultdict(float)
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            node = re.sub(r"_token_\d+$", "", e["name"][: -len("_kernel_time")])  # the trace suffixes node names
            op = e.get("args", {}).get("op_name", "?")
            if node in grouped or node.rsplit("_", 1)[0] in grouped:  # a fused node keeps its Conv's name + suffix
                op += " (grouped)"
            agg[op] += e["dur"] / 1e3 / (runs + 5)
        return _summary("ONNX Runtime profiler", len(x), agg)

    return run


#: each runtime's own per-layer profiler, by the configuration's kind (PyTorch eager has none)
PROFILERS = {"openvino": openvino_profiler, "onnxruntime": onnxruntime_profiler}


def make_profiler(kind: str, path: str, settings: Dict[str, Any], sample: np.ndarray) -> Optional[Profiler]:
    """A profiler for a configuration's runtime, or None."""
    make = PROFILERS.get(kind)
    return make(path, settings, sample) if make else None
