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
from ..buildfolder.artifacts import Artifact
from ..errors import InternalError
from ..evaluation.evaluate import TimingConfig, evaluate_runner
from ..evaluation.gate import apply_gates
from ..data.datasets import LoadedImages
from ..backends.base import BuildAddition
from ..pipeline.context import BuildContext
from ..pipeline.steps import REFERENCE, evaluate_artifact
from ..progress import Progress, step_progress
from ..data.sampling import evenly_spaced
from .bundle import (
    CALIB_CACHE,
    FP16_ONNX,
    FP32_ONNX,
    QDQ_FP16_ONNX,
    QDQ_ONNX,
    Golden,
    bundle_artifact,
    install_facts,
    tar_bundle,
    write_bundle,
)
from .distribution import wheel_for_device
from .bundle import WHEELS_DIR
from .calib_cache import cache_from_qdq
from .handoff import device_steps, readme_steps
from .readme import render_readme
from .engine_plan import EngineSpec, plan_engines
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
    manifest["bundle"]["golden_images"] = int(len(golden.inputs))
    wheel = wheel_for_device(stage_dir / "wheel-for-bundle")
    manifest["bundle"]["install"] = install_facts(wheel)  # the README's install block and the pinned wheel from it
    readme = render_readme(manifest, device_steps(bundle_name, f"{bundle_name}.tar.gz"))
    write_bundle(root, fp32_onnx=fp32.abspath(stage_dir), qdq_onnx=qdq.abspath(stage_dir),
                 calibration_cache=cache.to_bytes() if ship_cache else None,
                 # a recipe that extends another is not whole by itself: then recipe.toml points at manifest.json
                 recipe_file=Path(recipe.source) if len(recipe.layers) <= 1 else None,
                 golden=golden, manifest=manifest, readme=readme,
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
                           "device_steps": readme_steps(readme)}
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
    from ..evaluation.evaluate import compare_logits

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
    from ..buildfolder.manifest import make_manifest

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


