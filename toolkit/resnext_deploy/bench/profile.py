"""Where the time goes inside a runtime: per-layer counters, summed by kind of layer.

OpenVINO: a copy compiled with PERF_COUNT, ``request.get_profiling_info()`` after each run (executed nodes
only), summed by node type and kernel (e.g. Convolution / brgconv_avx512_1x1_I8). ONNX Runtime: a session
with profiling on, its JSON trace summed by operator, grouped convolutions apart (ORT's CPU kernels have no
fast INT8 path for them). Times are per inference, in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Set

import numpy as np

from ..optional import require


def _top(agg: Dict[str, float], n: int) -> Dict[str, Any]:
    total = sum(agg.values())
    rows = sorted(agg.items(), key=lambda kv: -kv[1])[:n]
    return {"total_ms": total, "by_kind_ms": {k: round(v, 4) for k, v in rows}}


def openvino_profile(path: str, settings: Dict[str, Any], sample: np.ndarray, runs: int = 30, top: int = 12) -> Dict[str, Any]:
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
    agg: Dict[str, float] = defaultdict(float)
    for _ in range(runs):
        req.infer({0: x})
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                agg[f"{p.node_type} / {p.exec_type}"] += p.real_time.total_seconds() * 1e3 / runs
    return {"tool": "OpenVINO PERF_COUNT (executed nodes)", "batch": int(len(sample)), **_top(agg, top)}


def _grouped_convs(path: str) -> Set[str]:
    try:
        onnx = require("onnx", "profile ONNX Runtime models")
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # the names only label the rows; a profile without them is still a profile
        return set()
    return {n.name for n in proto.graph.node if n.op_type.endswith("Conv")
            and any(a.name == "group" and a.i > 1 for a in n.attribute)}


def onnxruntime_profile(path: str, settings: Dict[str, Any], sample: np.ndarray, runs: int = 30, top: int = 12) -> Dict[str, Any]:
    """Per-operator time from ONNX Runtime's own profiler, with the session options the runner uses."""
    ort = require("onnxruntime", "profile ONNX Runtime models")
    from ..backends.onnxruntime import _session_options

    grouped = _grouped_convs(path)
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        opts = _session_options(ort, settings, settings.get("runtime_optimization", "all"))
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(sample, dtype=np.float32)}
        for _ in range(5):
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        os.remove(trace)
    agg: Dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = re.sub(r"_token_\d+$", "", e["name"][: -len("_kernel_time")])  # the trace suffixes node names
        op = e.get("args", {}).get("op_name", "?")
        if node in grouped or node.rsplit("_", 1)[0] in grouped:  # a fused node keeps its Conv's name + suffix
            op += " (grouped)"
        agg[op] += e["dur"] / 1e3
    n = runs + 5
    return {"tool": "ONNX Runtime profiler", "batch": int(len(sample)), **_top({k: v / n for k, v in agg.items()}, top)}


def profile(kind: str, path: str, settings: Dict[str, Any], sample: np.ndarray, runs: int = 30) -> Dict[str, Any]:
    if kind == "openvino":
        return openvino_profile(path, settings, sample, runs)
    if kind == "onnxruntime":
        return onnxruntime_profile(path, settings, sample, runs)
    return {}
