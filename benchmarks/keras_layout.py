"""NHWC or NCHW at the entry of a Keras model's ONNX: which do ONNX Runtime and OpenVINO run faster?

The Keras export (torch backend) takes NHWC. Two ways to deploy it:
  nhwc  keep the NHWC input; the runtime would have to feed NHWC (the graph keeps one Transpose at its entry)
  nchw  put a Transpose NCHW -> NHWC at the entry (keras_export.nchw_entry); ONNX Runtime's transpose optimizer
        cancels it against Keras's own, so the graph starts with a Conv (what the toolkit ships)
Both go through the same simplification; the script measures batch-1 latency (median of --runs after a warm-up)
of each with ONNX Runtime (ORT_ENABLE_ALL) and OpenVINO (CPU, latency hint), on the shipped Keras demo (32x32) and
the same architecture at 224x224 (random weights: latency only). Writes JSON to --out.

    python benchmarks/keras_layout.py --out benchmarks/results/keras_layout/results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _interleaved_ms(fns: dict, runs: int, rounds: int = 10) -> dict:
    """Median ms per call of each function, measured in alternating rounds (ABAB...) so that the load of a
    shared machine drifting during the run hits every variant alike."""
    for fn in fns.values():
        for _ in range(max(3, runs // 20)):
            fn()
    times: dict = {k: [] for k in fns}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - t) * 1000)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def measure(model, size: int, runs: int, work: Path) -> dict:
    import onnx
    import onnxruntime as ort
    import openvino as ov

    from resnext_deploy.pipeline.keras_export import keras_onnx_from_raw

    x = np.random.default_rng(0).random((1, size, size, 3)).astype(np.float32)
    model(x)
    raw = work / f"raw{size}.onnx"
    model.export(str(raw), format="onnx", verbose=False,
                 input_signature=[__import__("keras").InputSpec(shape=(None, size, size, 3), dtype="float32")])
    out: dict = {"input": size}
    feeds = {"nhwc": x, "nchw": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    core = ov.Core()
    calls = {}
    for layout in ("nhwc", "nchw"):
        proto = keras_onnx_from_raw(onnx.load(str(raw)), simplify=True, layout=layout.upper())
        path = work / f"{layout}{size}.onnx"
        onnx.save(proto, str(path))
        ops = [n.op_type for n in proto.graph.node]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2})
        req = compiled.create_infer_request()
        feed = feeds[layout]
        out[layout] = {"nodes": len(ops), "transposes": ops.count("Transpose")}
        calls[f"{layout}/onnxruntime"] = (lambda s_, f_: lambda: s_.run(None, {"input": f_}))(sess, feed)
        calls[f"{layout}/openvino"] = (lambda r_, f_: lambda: r_.infer({0: f_}))(req, feed)
    for key, ms in _interleaved_ms(calls, runs).items():
        layout, backend = key.split("/")
        out[layout][f"{backend}_ms"] = ms
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    from resnext_deploy.models.demo.keras import KERAS_DEMO, keras_resnext
    from resnext_deploy.models.keras import load_keras_model
    from resnext_deploy.optional import require_keras

    keras = require_keras("run the benchmark")
    import onnxruntime as ort
    import openvino as ov
    import torch

    results = {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
               "keras": keras.__version__, "torch": torch.__version__, "onnxruntime": ort.__version__,
               "openvino": ov.__version__, "runs": args.runs, "threads": 2, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        results["models"].append({"model": "keras demo (trained)", **measure(load_keras_model(KERAS_DEMO).model, 32, args.runs, Path(tmp))})
        keras.utils.set_random_seed(0)
        results["models"].append({"model": "demo architecture at 224 (random weights)",
                                  **measure(keras_resnext(input_shape=(224, 224, 3)), 224, max(30, args.runs // 10), Path(tmp))})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
