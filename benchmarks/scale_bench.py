"""Speed-up of sharding on Ray: 2 workers x 1 thread against 1 process x 2 threads, on this machine.

    python benchmarks/scale_bench.py --work /tmp/scale-bench --out benchmarks/results/scale

ResNeXt-50 32x4d with seeded weights (BatchNorm re-estimated on natural-image crops: bench/weights.py) at a
64x64 input (stated in the results; 224 would take ~12x longer per image, the ratios are what matter),
built by `build` (ONNX Runtime FP32 and INT8, OpenVINO INT8). Then, in interleaved rounds:

* the logits of 1,000 validation images per artifact: ``LocalInference`` with the backend at 2 threads
  against ``RayInference`` on a local Ray cluster of 2 one-CPU workers at 1 thread each (the cluster is
  started once, outside the timing; each run includes placing the actors and loading their sessions, and
  the driver decoding the images and handing them over by object ref);
* the per-layer sensitivity ranking on 100 images (54 layers, uint8 activations, one calibration),
  in this process at 2 threads against the layers shared out to the 2 workers.

Writes scale.json and scale.md. Wall times only; the machine is shared, so the load average before and
after each measurement is recorded with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

ARCH = "resnext50_32x4d"
SIZE = 64
RECIPE = """
target = "x86-cpu"
[preprocess]
resize = {resize}
crop = {crop}
[backends.onnxruntime]
precisions = ["fp32", "int8"]
[backends.openvino]
precisions = ["int8"]
[calibration]
count = 64
[evaluation]
limit = 50
warmup = 1
iterations = 5
[fallback]
enabled = false
"""


def prepare(work: Path, images: int) -> Dict[str, Any]:
    """Checkpoint, calibration and validation folders, and the build (cached in ``work``)."""
    from resnext_deploy.buildfolder.artifacts import atomic_file
    from resnext_deploy.bench.arch import label_by_model
    from resnext_deploy.bench.images import write_natural_images
    from resnext_deploy.bench.weights import seeded_model
    from resnext_deploy.optional import require
    from resnext_deploy.pipeline.build import build
    from resnext_deploy.pipeline.source import preprocessing_for
    from resnext_deploy.preprocess import preprocess_paths

    torch = require("torch")
    resize = int(round(SIZE * 256 / 224))
    spec = preprocessing_for(None, SIZE, {"resize": resize, "crop": SIZE})
    calib = work / "calib"
    if not calib.is_dir():
        write_natural_images(calib, 128, seed=0, size=resize)
    flat = work / f"flat-{images}"
    if not flat.is_dir():
        write_natural_images(flat, images, seed=1, size=resize)
    ckpt = work / f"{ARCH}.pth"
    if not ckpt.is_file():
        module = seeded_model(ARCH, preprocess_paths(sorted(calib.glob("*.jpg")), spec), 0)
        with atomic_file(ckpt) as tmp:
            torch.save({"state_dict": module.state_dict(), "arch": ARCH, "num_classes": 1000}, str(tmp))
    val = work / f"val-{images}"
    if not val.is_dir():
        from resnext_deploy.models.loading import load_torch_model

        label_by_model(load_torch_model(ckpt, ARCH).module.eval(), flat, val, spec, 1000)
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE.format(resize=resize, crop=SIZE))
    out = work / "build"
    if not (out / "manifest.json").is_file():
        build(model=ckpt, arch=ARCH, recipe_path=recipe, out=out, calib=calib, val=val)
    return {"build": out, "calib": calib, "val": val, "spec": spec}


def load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Any) -> Dict[str, Any]:
    before = load()
    t = time.perf_counter()
    value = fn()
    return {"seconds": time.perf_counter() - t, "load_before": before, "load_after": load(), "value": value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/resnext-deploy-scale-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--sensitivity-images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-sensitivity", action="store_true")
    ap.add_argument("--prepare-only", action="store_true", help="Build and cache the inputs, measure nothing.")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import ray

    from resnext_deploy.pipeline.sensitivity import VariantQuantizer, analyze_sensitivity, run_onnx_model
    from resnext_deploy.host.cpu import host_cpu
    from resnext_deploy.data.datasets import load_calibration, load_labeled
    from resnext_deploy.scale import LocalInference, ModelFiles, ScaleOptions, open_inference

    p = prepare(args.work, args.images)
    if args.prepare_only:
        return
    d = p["build"]
    manifest = json.loads((d / "manifest.json").read_text())
    arts = {a["name"]: a for a in manifest["artifacts"]}
    chosen = [("onnxruntime-int8", "onnxruntime"), ("openvino-int8", "openvino"), ("onnxruntime-fp32", "onnxruntime")]
    val = load_labeled(p["val"], p["spec"])
    assert len(val.data) == args.images, len(val.data)
    batch = 8
    doc: Dict[str, Any] = {
        "machine": {"cpu": host_cpu().model, "isa": host_cpu().isa, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "shared": "2 cores shared with other sessions' builds and test suites"},
        "model": f"{ARCH}, seeded weights, {SIZE}x{SIZE} input, 1000 classes",
        "images": args.images, "batch": batch, "rounds": args.rounds,
        "configs": {"one process": "1 process, backend at 2 threads", "ray": "local Ray cluster, 2 workers x 1 CPU, 1 thread each"},
        "evaluation": {}, "sensitivity": None,
    }
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        for name, backend in chosen:
            path = d / arts[name]["path"]
            rows = []
            for r in range(args.rounds):
                m2 = ModelFiles.of(name, backend, path, {"threads": 2})
                local = timed(lambda: LocalInference().logits(m2, val.data, batch))
                with open_inference(ScaleOptions(workers=2)) as inference:
                    sharded = timed(lambda: inference.logits(m2, val.data, batch))
                a, b = local.pop("value"), sharded.pop("value")
                rows.append({"round": r, "one_process": local, "ray": sharded, "speedup": local["seconds"] / sharded["seconds"],
                             "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))), "max_abs_diff": float(np.abs(a - b).max())})
                print(name, r, f"{local['seconds']:.1f}s vs {sharded['seconds']:.1f}s", flush=True)
            speed = sorted(x["speedup"] for x in rows)
            doc["evaluation"][name] = {
                "rounds": rows, "speedup_median": speed[len(speed) // 2],
                "one_process_s_per_1k": float(np.median([x["one_process"]["seconds"] for x in rows])) * 1000 / args.images,
                "ray_s_per_1k": float(np.median([x["ray"]["seconds"] for x in rows])) * 1000 / args.images,
            }
            e = doc["evaluation"][name]
            e["one_process_core_s_per_1k"] = e["one_process_s_per_1k"] * 2
            e["ray_core_s_per_1k"] = e["ray_s_per_1k"] * 2
        if not args.skip_sensitivity:
            fp32 = d / arts["onnx-fp32"]["path"]
            cal = np.asarray(load_calibration(p["calib"], p["spec"], 64, 0).data)
            images = np.asarray(val.data[: args.sensitivity_images])
            ref = run_onnx_model(fp32, images, {"threads": 2})
            cal_cfg = manifest["recipe"]["calibration"]

            def rank(inference: Any) -> Any:
                q = VariantQuantizer(fp32, cal, cal_cfg)
                try:
                    return analyze_sensitivity(fp32, cal, images, ["uint8"], cal_cfg, "quantize-one", {"threads": 2},
                                               quantizer=q, reference=ref, inference=inference)
                finally:
                    q.close()

            local = timed(lambda: rank(None))
            with open_inference(ScaleOptions(workers=2)) as inference:
                sharded = timed(lambda: rank(inference))
            a, b = local.pop("value"), sharded.pop("value")
            doc["sensitivity"] = {"layers": len(a.layers), "images": len(images), "one_process": local, "ray": sharded,
                                  "speedup": local["seconds"] / sharded["seconds"],
                                  "same_ranking": a.ranking() == b.ranking(),
                                  "same_top10": a.ranking()[:10] == b.ranking()[:10]}
            print("sensitivity", f"{local['seconds']:.1f}s vs {sharded['seconds']:.1f}s", flush=True)
    finally:
        ray.shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(doc, indent=2))
    (args.out / "scale.md").write_text(render(doc))
    print(render(doc))


def render(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"# Ray sharding: {doc['configs']['ray']} vs {doc['configs']['one process']}", "",
             f"Machine: {m['cpu']} ({m['isa']}), {m['cpus']} cores, {m['shared']}; Python {m['python']}, Ray {m['ray']}.",
             f"Model: {doc['model']}. {doc['images']} images, batch {doc['batch']}, {doc['rounds']} interleaved rounds (median).", "",
             "| artifact | one process s / 1k img | Ray s / 1k img | speed-up | core-s / 1k (one process) | core-s / 1k (Ray) |",
             "|---|---|---|---|---|---|"]
    for name, e in doc["evaluation"].items():
        lines.append(f"| {name} | {e['one_process_s_per_1k']:.1f} | {e['ray_s_per_1k']:.1f} | {e['speedup_median']:.2f}x | "
                     f"{e['one_process_core_s_per_1k']:.1f} | {e['ray_core_s_per_1k']:.1f} |")
    s = doc.get("sensitivity")
    if s:
        lines += ["", f"Sensitivity ranking, {s['layers']} layers on {s['images']} images: one process {s['one_process']['seconds']:.0f} s, "
                  f"Ray {s['ray']['seconds']:.0f} s, speed-up {s['speedup']:.2f}x; same ranking: {s['same_ranking']}."]
    lines += ["", "Load average (1, 5, 15 min) before/after each measurement is in scale.json."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
