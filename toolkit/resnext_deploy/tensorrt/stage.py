"""The TensorRT part of `build`: check the Q/DQ model, write the calibration cache, and either build the
engines here (TensorRT and a GPU present, and the target is this machine) or pack the bundle that builds
them on the device.

Either way the Q/DQ model TensorRT's INT8 engine comes from is also run in ONNX Runtime, so the report
always has a real accuracy for the INT8 model; engine latency that can only be measured on the device is
reported as pending, never guessed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .. import backends
from ..artifacts import Artifact
from ..errors import InternalError
from ..evaluate import TimingConfig, evaluate_runner
from ..gate import apply_gates
from ..pipeline.datasets import LoadedImages
from ..backends.base import BuildAddition
from ..pipeline.context import BuildContext
from ..pipeline.steps import REFERENCE, evaluate_artifact
from ..progress import Progress, step_progress
from ..sampling import evenly_spaced
from .bundle import (
    CALIB_CACHE,
    FP16_ONNX,
    FP32_ONNX,
    QDQ_FP16_ONNX,
    QDQ_ONNX,
    Golden,
    bundle_artifact,
    tar_bundle,
    write_bundle,
)
from ..distribution import wheel_for_device
from .bundle import WHEELS_DIR
from .calib_cache import cache_from_qdq
from .handoff import DeviceSteps, device_steps, readme_block, steps_lines
from .engine_plan import EngineSpec, plan_engines, trtexec_command
from .platforms import ships_calibration_cache, target_summary

log = logging.getLogger(__name__)

QDQ_ARTIFACT = "onnx-int8-int8"  # the int8-flavour Q/DQ model (quantize.py)


#: what the TensorRT stage adds to a build
TensorRtOutcome = BuildAddition


def engines_here(recipe: Any) -> Optional[str]:
    """None when this machine can build the recipe's engines, else why not (TensorRT, GPU, or not the device)."""
    from .machine import is_jetson

    if not backends.get("tensorrt").available():
        return "TensorRT or an NVIDIA GPU is not available on this machine"
    if recipe.data["device"] == "jetson" and not is_jetson():
        return f"engines for {recipe.target} must be built on the Jetson itself (no x86 -> Jetson cross-build)"
    return None




def tensorrt_stage(ctx: BuildContext, artifacts: List[Artifact], results: List[Dict[str, Any]]) -> TensorRtOutcome:
    """Run after evaluation (and any accuracy fallback): Q/DQ check, calibration cache, then engines or the bundle."""
    from .qdq_rules import check_qdq_model

    src, recipe, valset, stage_dir, progress = ctx.source, ctx.recipe, ctx.validation, ctx.staging, ctx.progress

    cfg = recipe.backend("tensorrt")
    out = TensorRtOutcome()
    by_name = {a.name: a for a in artifacts}
    fp32, qdq = by_name[REFERENCE], by_name.get(QDQ_ARTIFACT)
    if qdq is None:
        raise InternalError("The TensorRT stage needs the int8-flavour Q/DQ model; quantized_flavours() did not make it.")
    check = check_qdq_model(qdq.abspath(stage_dir), require_qdq=True)
    out.extra["qdq_check"] = check.to_dict()
    if not check.passed:
        raise InternalError("The TensorRT-flavour Q/DQ model breaks TensorRT's rules (a bug in resnext-deploy's "
                            "quantization):\n" + check.summary())
    cache = cache_from_qdq(qdq.abspath(stage_dir), cfg["tensorrt_version"])
    out.extra["calibration_cache"] = {"tensors": len(cache.scales), "header": cache.header,
                                      "method": recipe.section("calibration")["method"]}

    timing = TimingConfig.from_recipe(recipe.section("evaluation"))
    specs = plan_engines(cfg)
    typed_dir = stage_dir / "tensorrt-typed"
    typed = _strongly_typed_models(fp32.abspath(stage_dir), qdq.abspath(stage_dir), typed_dir)
    models = {"fp32": fp32.abspath(stage_dir), "qdq": qdq.abspath(stage_dir), **typed}
    why_not = engines_here(recipe)
    if why_not is None:
        reference = ctx.reference_logits
        if reference is None:
            raise InternalError("The TensorRT stage runs after evaluation, which sets the reference logits; it did not.")
        out.artifacts, rows = _build_engines_here(specs, models, fp32, qdq, cache, cfg, valset, reference, timing,
                                                  stage_dir, progress)
        out.results += rows
        return out
    for spec in specs:
        out.results.append({"artifact": spec.name, "backend": "tensorrt", "precision": spec.precision, "pending": True,
                            "reason": f"{why_not}: built and measured on the device by `resnext-deploy compile --bundle`",
                            "details": {"engine": spec.to_dict()}})
    ship_cache = ships_calibration_cache(recipe.target, int(cfg["dla_core"]))
    bundle_name = f"{src.name}-{recipe.target}-bundle"
    root = stage_dir / bundle_name
    golden = _golden(src, recipe, fp32, qdq, valset, stage_dir, cfg["golden_images"])
    out.extra["strongly_typed_models"] = _typed_closeness(typed, golden, recipe)
    out.extra["calibration_cache"]["shipped"] = ship_cache
    manifest = _bundle_manifest(src, recipe, fp32, qdq, specs, out, results, valset, stage_dir)
    wheel = wheel_for_device(stage_dir / "wheel-for-bundle")
    steps = device_steps(bundle_name, f"{bundle_name}.tar.gz", wheel.name)
    write_bundle(root, fp32_onnx=fp32.abspath(stage_dir), qdq_onnx=qdq.abspath(stage_dir),
                 calibration_cache=cache.to_bytes() if ship_cache else None,
                 # a recipe that extends another is not whole by itself: then recipe.toml points at manifest.json
                 recipe_file=Path(recipe.source) if len(recipe.layers) <= 1 else None,
                 golden=golden, manifest=manifest, readme=render_readme(src, recipe, specs, manifest, golden, steps),
                 typed_models=typed, wheel=wheel, signing_key=ctx.signing_key)
    shutil.rmtree(typed_dir)
    shutil.rmtree(wheel.parent)
    tar = tar_bundle(root, stage_dir / f"{bundle_name}.tar.gz")
    out.artifacts.append(bundle_artifact(root, stage_dir, tar, parent=qdq.name))
    out.extra["bundle"] = {"directory": bundle_name, "archive": tar.name, "engines": [s.name for s in specs],
                           "golden_images": int(len(golden.inputs)), "wheel": f"{WHEELS_DIR}/{wheel.name}",
                           "wheel_bytes": (root / WHEELS_DIR / wheel.name).stat().st_size,
                           # compare on the device (`sha256sum <archive>`) before unpacking it
                           "archive_sha256": out.artifacts[-1].sha256,
                           "manifest_signed_by": ctx.signing_key.public.key_id if ctx.signing_key else None,
                           "device_steps": steps_lines(steps)}
    out.notes.append(
        f"TensorRT engines ({', '.join(s.name for s in specs)}) are pending: {why_not}. The bundle {bundle_name}/ "
        f"(and {tar.name}) builds and checks them on the device: `resnext-deploy compile --bundle {bundle_name}`."
    )
    log.info("TensorRT bundle written: %s", root)
    return out


def _strongly_typed_models(fp32: Path, qdq: Path, out_dir: Path) -> Dict[str, Path]:
    """The FP16 ONNX and the FP16-region Q/DQ ONNX strongly typed TensorRT (11.x) builds from (float16.py)."""
    from .float16 import fp16_from_onnx, fp16_qdq_from_qdq

    out_dir.mkdir(exist_ok=True)
    return {"fp16": fp16_from_onnx(fp32, out_dir / FP16_ONNX),
            "qdq-fp16": fp16_qdq_from_qdq(qdq, out_dir / QDQ_FP16_ONNX)}


def _typed_closeness(typed: Dict[str, Path], golden: Golden, recipe: Any) -> Dict[str, Any]:
    """How close the FP16 models stay to their FP32 counterparts on the golden images (ONNX Runtime, CPU)."""
    from ..evaluate import compare_logits

    ort = backends.get("onnxruntime")
    out = {}
    for key, ref in (("fp16", golden.reference_fp32), ("qdq-fp16", golden.reference_qdq)):
        if ref is None:
            continue
        with ort.load(typed[key], recipe.backend("onnxruntime")) as r:
            logits = r.infer(golden.inputs)
        cmp = compare_logits(logits, ref)
        out[key] = {"file": FP16_ONNX if key == "fp16" else QDQ_FP16_ONNX,
                    "against": "model-fp32.onnx" if key == "fp16" else "model-int8-qdq.onnx",
                    "images": int(len(logits)), **{k: float(v) for k, v in cmp.items()}}
    return out


def evaluate_qdq(ctx: BuildContext, artifacts: List[Artifact]) -> Dict[str, Any]:
    """The int8-flavour Q/DQ model (what TensorRT's INT8 engine is built from) measured in ONNX Runtime.

    Part of every TensorRT build's evaluation, so the gate (and the accuracy fallback) judge the INT8 model
    TensorRT will run even when the engines themselves can only be built on the device.
    """
    qdq = next(a for a in artifacts if a.name == QDQ_ARTIFACT)
    return evaluate_artifact(ctx, qdq, runner_backend="onnxruntime",
                             role="the Q/DQ model TensorRT builds its INT8 engine from, run by ONNX Runtime's CPU kernels")


def _labels(valset: LoadedImages) -> np.ndarray:
    if valset.labels is None:
        raise InternalError("The TensorRT stage needs labeled validation images (ImageFolder layout).")
    return valset.labels


def _golden(src: Any, recipe: Any, fp32: Artifact, qdq: Artifact, valset: LoadedImages, stage_dir: Path, k: int) -> Golden:
    idx = evenly_spaced(len(valset.data), k)
    inputs = np.ascontiguousarray(valset.data[idx], dtype=np.float32)
    ort = backends.get("onnxruntime")
    with ort.load(fp32.abspath(stage_dir), recipe.backend("onnxruntime")) as r:
        ref = r.infer(inputs)
    with ort.load(qdq.abspath(stage_dir), recipe.backend("onnxruntime")) as r:
        ref_q = r.infer(inputs)
    files = [f"{valset.paths[i].parent.name}/{valset.paths[i].name}" for i in idx]  # <class>/<image>
    labels = None if valset.labels is None else valset.labels[idx]
    return Golden(inputs, ref, ref_q, labels, files)


def _bundle_manifest(src: Any, recipe: Any, fp32: Artifact, qdq: Artifact, specs: List[EngineSpec],
                     out: TensorRtOutcome, results: List[Dict[str, Any]], valset: LoadedImages, stage_dir: Path) -> Dict[str, Any]:
    from ..manifest import make_manifest

    def moved(a: Artifact, rel: str) -> Artifact:
        return Artifact(a.name, rel, a.kind, a.backend, a.precision, a.parent, a.stage, {rel: a.sha256}, dict(a.settings))

    measured = [r for r in results if r["artifact"] in (REFERENCE, QDQ_ARTIFACT)]
    model = src.describe()
    return make_manifest(
        model=model, target=recipe.target, recipe=recipe.to_dict(), recipe_source=recipe.source,
        preprocessing=src.preprocessing.to_dict(),
        inputs={"model": {"path": str(src.path), "sha256": model["source_sha256"]},
                "validation": {"folder": str(valset.paths[0].parents[1]) if valset.paths else "", "files": len(valset.paths)}},
        artifacts=[moved(fp32, FP32_ONNX), moved(qdq, QDQ_ONNX)], reports={},
        gate=apply_gates(measured, REFERENCE, recipe.section("gates")).to_dict(),  # the workstation's, on what ships
        extra={
            "labels": src.labels, "reference": REFERENCE,
            "bundle": {
                "name": f"{src.name}-{recipe.target}-bundle",
                "engines": [s.to_dict() for s in specs],
                "input": {"name": "input", "shape_chw": list(src.preprocessing.input_shape)},
                "calibration_cache": dict(out.extra["calibration_cache"], file=CALIB_CACHE, for_model=FP32_ONNX),
                "qdq_check": out.extra["qdq_check"],
                "strongly_typed_models": out.extra["strongly_typed_models"],
                "platforms": target_summary(recipe.target),
                "workstation_results": [r for r in measured if not r.get("pending")],
            },
        },
    )


def _build_engines_here(specs: List[EngineSpec], models: Dict[str, Path], fp32: Artifact, qdq: Artifact, cache: Any,
                        cfg: Dict[str, Any], valset: LoadedImages, reference: np.ndarray, timing: TimingConfig,
                        stage_dir: Path, progress: Progress) -> "tuple":
    """Build and evaluate every engine on this machine (a GPU box, or the Jetson itself)."""
    from .machine import tensorrt_module
    from .engines import build_engines, record_path

    trt = tensorrt_module()
    cache_bytes = cache.with_version(str(trt.__version__)).to_bytes()
    out_dir = stage_dir / "tensorrt"
    out_dir.mkdir(exist_ok=True)
    timing_cache = out_dir / "timing.cache" if cfg["timing_cache"] else None
    arts, rows = [], []
    for b in build_engines(specs, models, out_dir, cfg, cache_bytes, timing_cache, progress, trt):
        spec = b.spec
        if b.record is None:
            rows.append({"artifact": spec.name, "backend": "tensorrt", "precision": spec.precision, "pending": True,
                         "reason": f"refused on this machine: {b.refused}", "details": {"engine": spec.to_dict()}})
            continue
        parent = qdq.name if spec.precision == "int8" and not spec.calibration_cache else fp32.name
        art = Artifact.from_files(spec.name, [b.engine, record_path(b.engine)], stage_dir, kind="tensorrt-engine",
                                  backend="tensorrt", precision=spec.precision, parent=parent, stage="compile",
                                  settings=b.record)
        arts.append(art)
        with backends.get("tensorrt").load(b.engine, cfg) as runner:
            m, _ = evaluate_runner(spec.name, runner, valset.data, _labels(valset), reference, timing, spec.precision,
                                   art.size_bytes(stage_dir), step_progress(progress, f"evaluate {spec.name}"))
            rows.append(m.to_dict())
    return arts, rows


def render_readme(src: Any, recipe: Any, specs: List[EngineSpec], manifest: Dict[str, Any], golden: Golden,
                  steps: Optional[DeviceSteps] = None) -> str:
    """The bundle's README: what is inside, how to build and check on the device, the trtexec equivalents."""
    cfg = recipe.backend("tensorrt")
    b = manifest["bundle"]
    chw = b["input"]["shape_chw"]
    pre = manifest["preprocessing"]
    jp = f"JetPack {cfg['jetpack']}, " if cfg["jetpack"] else ""
    cache_hdr = b["calibration_cache"]["header"]
    shipped = b["calibration_cache"].get("shipped", True)
    typed = b["strongly_typed_models"]
    rows = []
    for r in b["workstation_results"]:
        rows.append(f"| `{r['artifact']}` | {r['precision']} | {r['top1'] * 100:.2f} | {r['top5'] * 100:.2f} | "
                    f"{r['agreement'] * 100:.2f} | {r['max_abs_logit_diff']:.3g} |")
    lines = [
        f"# {src.name} for {recipe.target}: TensorRT bundle",
        "",
        f"Written by resnext-deploy on {manifest['created']} for {recipe.data['description'] or recipe.target}.",
        "TensorRT engines only run with the GPU and TensorRT version that built them, and there is no x86 -> Jetson",
        "cross-build, so this bundle carries what the device needs to build its engines and check them.",
        "",
    ] + ([
        "## Next steps",
        "",
        "resnext-deploy installs from this bundle's own wheel (`wheels/`, pure Python, Python 3.8 to 3.12); numpy "
        "comes from JetPack or the package index, as do Pillow and click. CI runs these very lines on Python 3.8, 3.10 "
        "and 3.12 (the copies as `cp`).",
        "",
    ] + readme_block(steps) + [""] if steps is not None else []) + [
        "## Contents",
        "",
        "| file | what |",
        "|---|---|",
        f"| `{FP32_ONNX}` | the float model (ONNX opset {recipe.section('export')['opset']}, dynamic batch): input `input` "
        f"(N x {' x '.join(map(str, chw))}, float32, preprocessed as below), output `logits` |",
        f"| `{QDQ_ONNX}` | the TensorRT-ready INT8 model: Q/DQ with int8 symmetric activations (zero-point 0), per-channel "
        f"int8 weights, float biases, no Q/DQ on the output; {b['qdq_check']['quantize_nodes']} QuantizeLinear, "
        f"{len(b['qdq_check']['violations'])} violations of TensorRT's Q/DQ rules |",
        f"| `{FP16_ONNX}` | the float model in FP16 with FP32 input/output, for strongly typed TensorRT (11.x); on the "
        f"golden images max abs logit diff {typed['fp16']['max_abs_logit_diff']:.3g} vs `{FP32_ONNX}` (ONNX Runtime) |",
        f"| `{QDQ_FP16_ONNX}` | `{QDQ_ONNX}` with its float regions (and scales) in FP16, opset 19, for strongly typed "
        f"TensorRT; max abs logit diff {typed['qdq-fp16']['max_abs_logit_diff']:.3g} vs `{QDQ_ONNX}` |",
    ] + ([
        f"| `{CALIB_CACHE}` | activation scales for `{FP32_ONNX}` ({b['calibration_cache']['tensors']} tensors, "
        f"{b['calibration_cache']['method']} calibration), header `{cache_hdr}`: for implicit INT8 (DLA on TensorRT "
        "8.5 to 10.x, trtexec `--calib`) |",
    ] if shipped else []) + [
        "| `recipe.toml` | the recipe this was built with (every resolved value is in `manifest.json`) |",
    ] + ([f"| `{WHEELS_DIR}/` | resnext-deploy's own wheel (pure Python, 3.8+; no demo data): what the device installs |"]
         if steps is not None else []) + [
        "| `manifest.json` | sha256 of every file, preprocessing, labels, engine plan, what the workstation measured |",
        f"| `golden/` | {len(golden.inputs)} preprocessed validation images (`inputs.npy`), their FP32 reference logits "
        "(`reference-fp32.npy`, ONNX Runtime) and the Q/DQ model's (`reference-int8-qdq.npy`) |",
        "",
        f"Preprocessing (the device must do the same): resize the shorter side to {pre['resize']} ({pre['interpolation']}), "
        f"center-crop {pre['crop']}, RGB, scale to [0, 1], subtract mean {pre['mean']}, divide by std {pre['std']}, NCHW float32.",
        "",
        "## Accuracy measured on the workstation (ONNX Runtime, "
        f"{b['workstation_results'][0]['images']} validation images)",
        "",
        "| model | precision | top-1 % | top-5 % | agreement with FP32 % | max abs logit diff |",
        "|---|---|---|---|---|---|",
    ] + rows + [
        "",
        "Engine accuracy and latency are measured on the device.",
        "",
        f"## On the device ({jp}TensorRT {cfg['tensorrt_version']} expected)",
        "",
        "Install resnext-deploy from the bundle's wheel (see Next steps; building engines needs only numpy and "
        "TensorRT, which JetPack provides, plus Pillow and click), then:",
        "",
        "```bash",
        "resnext-deploy compile --bundle .",
        "# or without the command line: python3 -c \"from resnext_deploy.tensorrt.ondevice import compile_bundle; compile_bundle('.')\"",
        "```",
        "",
        "It verifies every file against `manifest.json`, builds the engines below into `engines/` (with the timing cache "
        "`engines/timing.cache`, reused by later builds), runs the golden inputs through each engine and compares the "
        "logits with the FP32 references under the recipe's tolerances, measures batch-1 latency percentiles, and writes "
        "`report.json` / `report.md`. Without TensorRT (or without the GPU) it still verifies the bundle and runs the "
        "golden inputs through the FP32, FP16 and Q/DQ models with ONNX Runtime against the same tolerances, and the "
        "report says that the engines were not built and why. Exit codes: 0 every check passed, 3 a tolerance or "
        "latency check failed, 7 no TensorRT here and every other check passed (engines pending), 2 the bundle is "
        "incomplete or altered, 5 neither TensorRT nor onnxruntime is installed.",
        "",
        "| engine | precision | from | quantization | device | batch min/opt/max |",
        "|---|---|---|---|---|---|",
    ]
    for s in specs:
        lines.append(f"| `{s.name}` | {s.precision} | `{QDQ_ONNX if s.source == 'qdq' else FP32_ONNX}` (strongly typed: "
                     f"`{QDQ_FP16_ONNX if s.precision == 'int8' else FP16_ONNX}`) | {s.quantization} | "
                     f"{s.device} | {s.min_batch}/{s.opt_batch}/{s.max_batch} |")
    rows_here = b.get("platforms") or []
    if rows_here:
        lines += ["", "Made for: " + "; ".join(rows_here) + ". `compile --bundle` says which it found, builds weakly "
                  "typed (builder flags) or strongly typed (TensorRT 11: the FP16 models) by what the TensorRT there "
                  "offers, refuses what it cannot build (e.g. a DLA engine where TensorRT has no DLA) and picks the "
                  "faster engine that passes the golden checks."]
    tol = (f"Tolerances on the golden images: top-1 agreement with FP32 >= {cfg['golden_min_agreement']}; FP16 engines "
           f"max |diff| <= {cfg['fp16_max_abs_diff']} and cosine >= {cfg['fp16_min_cosine']}; INT8 engines max |diff| <= "
           f"{cfg['int8_max_abs_diff']} and cosine >= {cfg['int8_min_cosine']}.")
    lines += ["", tol, "", "## Without resnext-deploy: trtexec", "",
              "The same engines with TensorRT's `trtexec` (on a Jetson: `/usr/src/tensorrt/bin/trtexec`), TensorRT 8.5 "
              "to 10.x:", "", "```bash", "mkdir -p engines"]
    for s in specs:
        if s.calibration_cache and not shipped:
            continue
        onnx_file = QDQ_ONNX if s.source == "qdq" else FP32_ONNX
        lines.append(trtexec_command(s, onnx_file, "input", chw, f"engines/{s.name}.engine", CALIB_CACHE, "engines/timing.cache"))
    gpu_int8 = next((s for s in specs if s.precision == "int8" and s.dla_core < 0), None)
    if gpu_int8 is not None and shipped:
        implicit = EngineSpec(gpu_int8.name + "-calib", "int8", "fp32", -1, False, True, gpu_int8.min_batch,
                              gpu_int8.opt_batch, gpu_int8.max_batch, gpu_int8.workspace_mb)
        lines += ["# or INT8 from the float model and the calibration cache (implicit quantization, older TensorRT):",
                  trtexec_command(implicit, FP32_ONNX, "input", chw, f"engines/{implicit.name}.engine", CALIB_CACHE,
                                  "engines/timing.cache")]
    lines += ["# TensorRT 11 (strongly typed: no --fp16/--int8/--calib; the types in the ONNX are the precision):"]
    for s in specs:
        onnx_file = QDQ_FP16_ONNX if s.precision == "int8" else FP16_ONNX
        lines.append(trtexec_command(s, onnx_file, "input", chw, f"engines/{s.name}.engine", CALIB_CACHE,
                                     "engines/timing.cache", strongly_typed=True))
    lines += [
        "# latency of an engine (add --useDLACore=N for a DLA engine):",
        f"trtexec --loadEngine=engines/{specs[0].name}.engine --shapes=input:1x{'x'.join(map(str, chw))}",
        "```",
        "",
    ]
    if shipped:
        lines += [
            f"TensorRT only reads a calibration cache whose header names its own version (`{cache_hdr}` is TensorRT "
            f"{cfg['tensorrt_version']}). With another TensorRT, relabel the first line: TRT-<major*1000+minor*100+patch>"
            "-EntropyCalibration2 for TensorRT 8.x (8.6.2 -> 8602), TRT-<major*10000+minor*100+patch>-EntropyCalibration2 "
            "for 10.x (10.3.0 -> 100300); `resnext-deploy compile --bundle` does this itself. The scales come from "
            "resnext-deploy's calibration, not from TensorRT's calibrator, so relabelling does not change them.",
            "",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------ the backend's build hooks (Backend.build_hooks)


def workstation_results(ctx: BuildContext, artifacts: List[Artifact]) -> List[Dict[str, Any]]:
    """The Q/DQ model TensorRT's INT8 engine comes from, run in ONNX Runtime: a real accuracy even without a GPU."""
    return [evaluate_qdq(ctx, artifacts)]


def finish_build(ctx: BuildContext, artifacts: List[Artifact], results: List[Dict[str, Any]]) -> TensorRtOutcome:
    """Engines here when TensorRT and the GPU are this machine's, else the bundle that builds them on the device."""
    return tensorrt_stage(ctx, artifacts, results)
