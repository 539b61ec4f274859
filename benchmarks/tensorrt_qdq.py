"""Q/DQ placement and FP16 models for TensorRT, measured in ONNX Runtime (CPU) on the workstation.

    python benchmarks/tensorrt_qdq.py                          # the demo
    python benchmarks/tensorrt_qdq.py --arch resnext50_32x4d   # seeded ResNeXt-50, natural images (bench inputs)
    python benchmarks/tensorrt_qdq.py --model calibration/standin/resnext50_standin.pt \
        --calib-dir calibration/standin/calib --val-dir calibration/standin/val   # the trained ResNeXt-50 stand-in

For the TensorRT (int8) flavour it compares ONNX Runtime's own Q/DQ placement with ours (tensorrt/qdq_placement.py):
Q/DQ node counts, placements that block Conv+Add fusion, and accuracy against the FP32 model; then the FP16 ONNX
and the FP16-region Q/DQ ONNX that strongly typed TensorRT (11.x) builds from. Writes JSON with --out.

    --modelopt /work/venvs/modelopt/bin/python   # also NVIDIA ModelOpt's ONNX PTQ, side by side

ModelOpt (``pip install 'nvidia-modelopt[onnx]'``, ~6.6 GB: torch with CUDA, onnxruntime-gpu, a pinned onnx) runs in its
own interpreter, in a child process, on the same FP32 ONNX and the same calibration images (saved as .npy), on the
CPU (``--calibration_eps cpu``), with FP32 float regions (``--high_precision_dtype fp32``) so that ONNX Runtime's CPU
runs it like ours; calibration ``max`` (= our minmax) and its default ``entropy``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_flags() -> list:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|avx512f|avx2|amx_int8)\b", text)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default=None)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint instead (e.g. calibration/standin/resnext50_standin.pt)")
    ap.add_argument("--calib-dir", type=Path, default=None, help="with --model: calibration images")
    ap.add_argument("--val-dir", type=Path, default=None, help="with --model: labeled validation images")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--val", type=int, default=0, help="validation images (0: all)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--modelopt", type=Path, default=None, help="a Python with nvidia-modelopt[onnx] installed")
    ap.add_argument("--modelopt-methods", default="max,entropy", help="ModelOpt calibration methods to run")
    args = ap.parse_args()

    from resnext_deploy import backends
    from resnext_deploy.evaluation.evaluate import compare_logits, predict_all, topk_accuracy
    from resnext_deploy.pipeline import quantize
    from resnext_deploy.data.datasets import load_calibration, load_labeled
    from resnext_deploy.pipeline.export import onnx_from_torch
    from resnext_deploy.pipeline.source import data_folders, resolve_model
    from resnext_deploy.recipes import load_recipe
    from resnext_deploy.tensorrt import qdq_placement
    from resnext_deploy.tensorrt.float16 import fp16_from_onnx, fp16_qdq_from_qdq
    from resnext_deploy.tensorrt.qdq_rules import check_qdq_model

    recipe = load_recipe(target="jetson-orin-nano")
    if args.arch:
        from resnext_deploy.bench.arch import arch_inputs

        inputs = arch_inputs(args.arch, calib_count=300, val_count=500)
        src = resolve_model(inputs.checkpoint, args.arch, None, {})
        calib_dir, val_dir = inputs.calibration, inputs.validation
    elif args.model:
        src = resolve_model(args.model)
        calib_dir, val_dir = args.calib_dir, args.val_dir
        if calib_dir is None or val_dir is None:
            raise SystemExit("--model needs --calib-dir and --val-dir")
    else:
        src = resolve_model(None)
        calib_dir, val_dir = data_folders(src, recipe, None, None)
    cal = load_calibration(calib_dir, src.preprocessing, args.calib, 0)
    val = load_labeled(val_dir, src.preprocessing, args.val or None)
    work = Path(tempfile.mkdtemp(prefix="trt-qdq-"))
    fp32 = work / "model-fp32.onnx"
    onnx_from_torch(src.module.eval(), fp32, cal.data[:2])
    cache = work / "ranges.json"

    t = time.perf_counter()
    real_place = qdq_placement.place_file
    qdq_placement.place_file = lambda path: qdq_placement.Placement()  # ORT's own placement, untouched
    try:
        quantize.qdq_from_onnx(fp32, work / "ort.onnx", cal.data, "int8", calibration_cache=cache)
    finally:
        qdq_placement.place_file = real_place
    art = quantize.qdq_from_onnx(fp32, work / "ours.onnx", cal.data, "int8", calibration_cache=cache)
    quant_s = time.perf_counter() - t
    fp16_from_onnx(fp32, work / "fp16.onnx")
    fp16_qdq_from_qdq(work / "ours.onnx", work / "ours-fp16.onnx")

    extra_models = []
    if args.modelopt:
        import subprocess

        np.save(work / "calib.npy", cal.data)
        for method in args.modelopt_methods.split(","):
            out = work / f"modelopt-{method}.onnx"
            cmd = [str(args.modelopt), "-m", "modelopt.onnx.quantization", "--onnx_path", str(fp32),
                   "--quantize_mode", "int8", "--calibration_data_path", str(work / "calib.npy"),
                   "--calibration_method", method, "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
                   "--output_path", str(out)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"ModelOpt failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
            extra_models.append((f"int8 ModelOpt ({method})", out, round(time.perf_counter() - t0, 1)))

    ort = backends.get("onnxruntime")
    cfg = recipe.backend("onnxruntime")

    def run(path: Path) -> np.ndarray:
        with ort.load(path, cfg) as r:
            return predict_all(r, val.data, 8)

    ref = run(fp32)
    rows = {}
    models = [("fp32", fp32), ("int8 ORT placement", work / "ort.onnx"), ("int8 ours", work / "ours.onnx"),
              ("fp16", work / "fp16.onnx"), ("int8 ours, FP16 regions", work / "ours-fp16.onnx")]
    for name, path in models + [(n, p) for n, p, _ in extra_models]:
        logits = run(path)
        row = dict(compare_logits(logits, ref), top1=topk_accuracy(logits, val.labels, 1))
        if name.startswith("int8"):
            rep = check_qdq_model(path) if "FP16" not in name else None
            if rep is not None:
                row.update(quantize_nodes=rep.quantize_nodes, dequantize_nodes=rep.dequantize_nodes,
                           fusion_warnings=len(rep.warnings), violations=len(rep.violations))
        if name.startswith("int8 ModelOpt"):
            row["seconds"] = next(t for n, _, t in extra_models if n == name)
        rows[name] = row
    result = {"model": src.name, "arch": args.arch or "demo", "calibration_images": len(cal.data),
              "validation_images": len(val.data), "cpu_flags": cpu_flags(), "machine": platform.machine(),
              "placement": art.settings["qdq_placement"], "quantize_seconds": round(quant_s, 1), "results": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
