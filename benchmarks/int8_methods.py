"""INT8 calibration methods and algorithms on one trained model, in ONNX Runtime and OpenVINO, beside NNCF.

    python benchmarks/int8_methods.py --model calibration/standin/resnext50_standin.pt --out benchmarks/results/int8_methods/standin
    python benchmarks/int8_methods.py --out benchmarks/results/int8_methods/demo            # the digits demo

One FP32 export; then, for each variant, our Q/DQ model (ORT's quantizer: qdq_from_onnx with the recipe's
weights rule) compiled and measured by both backends exactly as a build does, and the peers: NNCF's
``nncf.quantize`` with its defaults (OpenVINO model, and ONNX model -> Q/DQ ONNX, with fast bias correction or
full bias correction), and NNCF's ``quantize_with_accuracy_control`` at the gate's max drop. Each row: top-1,
agreement on all images and on confident ones (evaluate.CONFIDENT_MARGIN), cosine, batch-1 p50, and the seconds
from the FP32 ONNX to the compiled artifact. Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

#: our variants: (name, calibration section, activation flavour, weight range or None = the recipe's)
OURS = [
    ("ours: minmax", {"method": "minmax"}, "uint8", None),
    ("ours: percentile 99.999", {"method": "percentile", "percentile": 99.999}, "uint8", None),
    ("ours: percentile 99.99", {"method": "percentile", "percentile": 99.99}, "uint8", None),
    ("ours: percentile 99.9", {"method": "percentile", "percentile": 99.9}, "uint8", None),
    ("ours: entropy (2048/128 bins)", {"method": "entropy"}, "uint8", None),
    ("ours: minmax, 64 images", {"method": "minmax", "count": 64}, "uint8", None),
    ("ours: percentile 99.99, 64 images", {"method": "percentile", "percentile": 99.99, "count": 64}, "uint8", None),
    ("ours: minmax, symmetric int8 activations", {"method": "minmax"}, "int8", None),
    ("ours: percentile 99.99, symmetric int8 activations", {"method": "percentile", "percentile": 99.99}, "int8", None),
    ("ours: minmax, full-range weights", {"method": "minmax"}, "uint8", "full"),
    ("ours: percentile 99.99, full-range weights", {"method": "percentile", "percentile": 99.99}, "uint8", "full"),
]
#: the fidelity study (--fidelity): the build's own quantization (the recipe's method), both weight ranges, bias
#: correction off and on, beside NNCF's defaults with the same weight range (OverflowFix ENABLE halves every layer's
#: weights as our 7-bit range does; DISABLE keeps the full range)
FIDELITY = [
    ("ours: 7-bit weights", {}, "uint8", "7bit", False),
    ("ours: 7-bit weights, bias correction", {}, "uint8", "7bit", True),
    ("ours: full-range weights", {}, "uint8", "full", False),
    ("ours: full-range weights, bias correction", {}, "uint8", "full", True),
]
NNCF_FIDELITY = [("nncf: quantize (defaults), 7-bit weights (OverflowFix ENABLE)", "enable"),
                 ("nncf: quantize (defaults), full-range weights (OverflowFix DISABLE)", "disable")]


def cpu_flags() -> List[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|avx512f|avx2|amx_int8)\b", text)))


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    m = re.search(r"model name\s*:\s*(.+)", text)
    return m.group(1).strip() if m else platform.processor()


def avx2_child(xml: str, data: str, out: str) -> None:
    """Run an OpenVINO IR on the .npy images (this process has ONEDNN_MAX_CPU_ISA=AVX2) and save the logits."""
    import openvino as ov

    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.load(data)
    np.save(out, np.concatenate([compiled(x[i : i + 1])[compiled.outputs[0]] for i in range(len(x))]))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--avx2-child":
        avx2_child(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the demo)")
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--calib", type=Path, default=None)
    ap.add_argument("--val", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the variants whose name has one")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--fidelity", action="store_true",
                    help="only the fidelity study: both weight ranges, bias correction off and on, beside NNCF's defaults")
    args = ap.parse_args()

    from resnext_deploy import backends
    from resnext_deploy.accuracy.peers import nncf_accuracy_control, nncf_advanced_parameters, overflow_fix_for
    from resnext_deploy.buildfolder.artifacts import Artifact
    from resnext_deploy.bench.peers import nncf_default_int8
    from resnext_deploy.evaluation.evaluate import CONFIDENT_MARGIN, TimingConfig, compare_logits, evaluate_runner, topk_accuracy
    from resnext_deploy.evaluation.gate import accuracy_checks
    from resnext_deploy.data.datasets import load_calibration, load_labeled
    from resnext_deploy.models.export.torch_onnx import onnx_from_torch
    from resnext_deploy.pipeline.quantize import qdq_from_onnx, weight_range_for
    from resnext_deploy.pipeline.source import data_folders, resolve_model
    from resnext_deploy.recipes import load_recipe
    from resnext_deploy.models.demo.standin import STANDIN_CALIB, STANDIN_CHECKPOINT, STANDIN_VAL

    recipe = load_recipe(target=args.target)
    src = resolve_model(args.model)
    if args.model is not None and Path(args.model).resolve() == STANDIN_CHECKPOINT.resolve():
        args.calib, args.val = args.calib or STANDIN_CALIB, args.val or STANDIN_VAL
    calib_dir, val_dir = data_folders(src, recipe, args.calib, args.val)
    cal = load_calibration(calib_dir, src.preprocessing, recipe.section("calibration")["count"], 0)
    val = load_labeled(val_dir, src.preprocessing)
    timing = TimingConfig.from_recipe(recipe.section("evaluation"))
    gates = recipe.section("gates")
    wr_default = weight_range_for(recipe.section("quantize"))
    ort_cfg, ov_cfg = recipe.backend("onnxruntime"), recipe.backend("openvino")
    ort_be, ov_be = backends.get("onnxruntime"), backends.get("openvino")

    work = Path(tempfile.mkdtemp(prefix="int8-methods-"))
    fp32 = work / "model-fp32.onnx"
    t = time.perf_counter()
    exp = onnx_from_torch(src.module.eval(), fp32, cal.data[:8], root=work)
    export_s = time.perf_counter() - t
    fp32_art = exp.artifact

    rows: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []  # peers that could not quantize this model, with their error

    def measure(name: str, backend: str, path: Path, precision: str, seconds: float, **extra: Any) -> Dict[str, Any]:
        be, cfg = (ort_be, ort_cfg) if backend == "onnxruntime" else (ov_be, ov_cfg)
        with be.load(path, cfg) as runner:
            m, logits = evaluate_runner(name, runner, val.data, val.labels, reference, timing, precision)
        row = {"name": name, "backend": backend, "seconds": round(seconds, 2), **extra, "metrics": m.to_dict()}
        rows.append(row)
        print(f"{name:55s} {backend:12s} top1 {m.top1 * 100:6.2f} agree {m.agreement * 100:6.2f} "
              f"conf {m.agreement_confident * 100:6.2f} cos {m.mean_cosine:.4f} p50 {m.latency_ms['p50']:.2f} ms "
              f"{seconds:.1f} s", flush=True)
        return row

    def compiled(be: Any, source: Artifact, sub: str, precision: str, cfg: Dict[str, Any]) -> "tuple[Path, float]":
        t0 = time.perf_counter()
        art = be.compile(source, work / sub, precision, cfg, root=work)
        return Path(art.abspath(work)), time.perf_counter() - t0

    # The reference: FP32 ONNX in ONNX Runtime (what every build compares with), then each backend's FP32 artifact.
    reference = None
    with ort_be.load(fp32, ort_cfg) as runner:
        _, reference = evaluate_runner("onnx-fp32", runner, val.data, val.labels, None, timing, "fp32")
    for be, cfg, backend in ((ort_be, ort_cfg, "onnxruntime"), (ov_be, ov_cfg, "openvino")):
        path, s = compiled(be, fp32_art, f"{backend}-fp32", "fp32", cfg)
        measure("fp32", backend, path, "fp32", export_s + s)

    wanted = [w for w in args.only.split(",") if w]
    variants = FIDELITY if args.fidelity else [v + (False,) for v in OURS]
    for name, cal_cfg, flavour, wr, bias in variants:
        if wanted and not any(w in name for w in wanted):
            continue
        count = int(cal_cfg.get("count", len(cal.data)))
        section = dict(recipe.section("calibration"), **{k: v for k, v in cal_cfg.items() if k != "count"})
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        t0 = time.perf_counter()
        qdq = qdq_from_onnx(fp32, work / f"{slug}.onnx", cal.data[:count], flavour, calibration=section, root=work,
                            weight_range=wr or wr_default, bias_correction=bias)
        q_s = time.perf_counter() - t0
        settings = {"calibration": section, "calibration_images": count, "activations": flavour,
                    "weight_range": wr or wr_default, "bias_correction": bias}
        for be, cfg, backend in ((ort_be, ort_cfg, "onnxruntime"), (ov_be, ov_cfg, "openvino")):
            path, s = compiled(be, qdq, f"{slug}-{backend}", "int8", cfg)
            measure(name, backend, path, "int8", q_s + s, settings=settings)

    # Broken INT8 that the gate must fail: calibration collapsed to one constant image, and full-range weights run by
    # OpenVINO with oneDNN capped at AVX2 (u8s8 pairs saturate in int16; a no-op cap on an AVX2-only CPU).
    if args.fidelity and not args.no_peers:
        for label, fix in NNCF_FIDELITY:
            t0 = time.perf_counter()
            xml = work / f"nncf-ov-{fix}" / "model-int8.xml"
            nncf_default_int8(fp32, xml, cal.data, overflow_fix=fix)
            measure(label, "openvino", xml, "int8", time.perf_counter() - t0, settings={"overflow_fix": fix})
    if not args.fidelity and (not wanted or any(w in "broken" for w in wanted)):
        black = np.broadcast_to(np.asarray([(0.0 - m) / sd for m, sd in zip(src.preprocessing.mean, src.preprocessing.std)],
                                           dtype=np.float32)[None, :, None, None], (1,) + cal.data.shape[1:]).copy()
        t0 = time.perf_counter()
        qdq = qdq_from_onnx(fp32, work / "collapsed.onnx", black, "uint8", calibration=recipe.section("calibration"), root=work,
                            weight_range=wr_default)
        q_s = time.perf_counter() - t0
        for be, cfg, backend in ((ort_be, ort_cfg, "onnxruntime"), (ov_be, ov_cfg, "openvino")):
            path, s = compiled(be, qdq, f"collapsed-{backend}", "int8", cfg)
            measure("broken: calibrated on one black image", backend, path, "int8", q_s + s)
        t0 = time.perf_counter()
        qdq = qdq_from_onnx(fp32, work / "full.onnx", cal.data, "uint8", calibration=recipe.section("calibration"), root=work,
                            weight_range="full")
        path, s = compiled(ov_be, qdq, "full-openvino", "int8", ov_cfg)
        np.save(work / "val.npy", val.data)
        import os
        import subprocess

        subprocess.run([sys.executable, __file__, "--avx2-child", str(path), str(work / "val.npy"), str(work / "avx2.npy")],
                       check=True, env=dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2"), timeout=1200)
        logits = np.load(work / "avx2.npy")
        cmp = compare_logits(logits, reference)
        m = {"top1": topk_accuracy(logits, val.labels, 1), "images": len(logits), **cmp, "latency_ms": {"p50": float("nan")}}
        rows.append({"name": "broken: full-range weights, OpenVINO with AVX2 kernels", "backend": "openvino",
                     "seconds": round(time.perf_counter() - t0, 2), "metrics": m})
        print(f"saturated: top1 {m['top1'] * 100:.2f} agree {cmp['agreement'] * 100:.2f} conf {cmp['agreement_confident'] * 100:.2f}")

    if not args.no_peers and not args.fidelity:
        nncf = __import__("nncf")
        onnx = __import__("onnx")
        fix = overflow_fix_for()
        # NNCF's default on the OpenVINO model (bench/peers.py), run by OpenVINO.
        t0 = time.perf_counter()
        xml = work / "nncf-ov" / "model-int8.xml"
        nncf_default_int8(fp32, xml, cal.data)
        measure("nncf: quantize (defaults), OpenVINO model", "openvino", xml, "int8", time.perf_counter() - t0,
                settings={"overflow_fix": fix})
        # NNCF on the ONNX model: Q/DQ ONNX, run by both backends as ours.
        input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
        ds = nncf.Dataset([np.ascontiguousarray(cal.data[i : i + 1]) for i in range(len(cal.data))],
                          lambda x: {input_name: x})  # NNCF's ONNX backend feeds ORT a dict
        for label, kwargs in (("nncf: quantize (defaults: fast bias correction), ONNX model", {}),
                              ("nncf: quantize, full bias correction, ONNX model", {"fast_bias_correction": False})):
            if wanted and not any(w in label for w in wanted):
                continue
            t0 = time.perf_counter()
            try:
                q = nncf.quantize(onnx.load(str(fp32)), ds, advanced_parameters=nncf_advanced_parameters(fix), **kwargs)
                path = work / (re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".onnx")
                onnx.save(q, str(path))
                q_s = time.perf_counter() - t0
                art = Artifact.from_files(path.stem, [path], work, kind="onnx-qdq", backend="onnx", precision="int8")
                for be, cfg, backend in ((ort_be, ort_cfg, "onnxruntime"), (ov_be, ov_cfg, "openvino")):
                    cpath, s = compiled(be, art, f"{path.stem}-{backend}", "int8", cfg)
                    measure(label, backend, cpath, "int8", q_s + s, settings={"overflow_fix": fix, **kwargs})
            except Exception as e:  # a peer's own failure is a result too (NNCF's full bias correction on ONNX)
                failed.append({"name": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                print(f"{label}: FAILED {failed[-1]['error']}", flush=True)
        if not wanted or any(w in "nncf: accuracy control" for w in wanted):
            ac = nncf_accuracy_control(fp32, cal.data, val.data, val.labels, gates["max_top1_drop"], work / "nncf-ac",
                                       ov_cfg, timing, reference)
            m = ac.pop("metrics")
            rows.append({"name": "nncf: quantize_with_accuracy_control (max drop = the gate's)", "backend": "openvino",
                         "seconds": round(ac["seconds"], 2), "settings": {k: ac[k] for k in ("overflow_fix", "float_layers", "max_drop")},
                         "metrics": m})
            print(f"NNCF AC: top1 {m['top1'] * 100:.2f} agree {m['agreement'] * 100:.2f} float layers {ac['float_layers']}")

    ref_top1 = next(r["metrics"]["top1"] for r in rows if r["name"] == "fp32")
    for r in rows:
        r["top1_drop_pct"] = (ref_top1 - r["metrics"]["top1"]) * 100.0
        r["gate_passed"] = all(c.passed for c in accuracy_checks(r["name"], r["metrics"], ref_top1, gates))
    ov_fp32 = next(r for r in rows if r["name"] == "fp32" and r["backend"] == "openvino")["metrics"]["latency_ms"]["p50"]
    result = {
        "model": src.name, "arch": src.arch, "target": args.target, "calibration": str(calib_dir),
        "calibration_images": len(cal.data), "validation": str(val_dir), "validation_images": len(val.data),
        "confident_margin": CONFIDENT_MARGIN, "confident_images": int(rows[0]["metrics"]["confident_images"]),
        "gates": gates, "cpu": cpu_model(), "cpu_flags": cpu_flags(), "weight_range_default": wr_default,
        "overflow_fix_here": overflow_fix_for(), "rows": rows, "failed": failed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# INT8 methods on `{src.name}` ({src.arch}), target {args.target}", "",
        f"- CPU: {result['cpu']}, flags {' '.join(result['cpu_flags'])}; machine shared (timings noisy)",
        f"- calibration: {len(cal.data)} images from `{calib_dir}`; validation: {len(val.data)} labeled images from `{val_dir}`",
        f"- confident images (reference softmax margin >= {CONFIDENT_MARGIN}): {result['confident_images']} of {len(val.data)}",
        f"- our weights: {wr_default} unless the row says otherwise; NNCF's OverflowFix here: {result['overflow_fix_here']}",
        f"- seconds: FP32 ONNX -> compiled artifact (calibration, quantization, compile); fp32 rows: export + compile",
        f"- gate (the recipe's): top-1 drop <= {gates['max_top1_drop']:g} pp, top-1 ratio >= {gates.get('min_top1_ratio', 0):g}, "
        f"agreement >= {gates['min_agreement']:g}, confident agreement >= {gates.get('min_agreement_confident', 0):g}", "",
        "| variant | backend | top-1 % | drop pp | agreement % | agreement, confident % | mean cos | min cos | p50 ms | x OV FP32 | build s | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        p50 = m["latency_ms"]["p50"]
        timed = p50 == p50  # NaN: the AVX2-kernel row is run once in a child process, not timed
        lines.append(
            f"| {r['name']} | {r['backend']} | {m['top1'] * 100:.2f} | {r['top1_drop_pct']:.2f} | {m['agreement'] * 100:.2f} | "
            f"{m['agreement_confident'] * 100:.2f} | {m['mean_cosine']:.4f} | {m['min_cosine']:.4f} | {f'{p50:.2f}' if timed else '-'} | "
            f"{f'{p50 / ov_fp32:.2f}' if timed else '-'} | {r['seconds']:.1f} | {'pass' if r['gate_passed'] else 'FAIL'} |")
    lines += [f"| {f['name']} | - | failed: {f['error']} | | | | | | | | | |" for f in failed]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
