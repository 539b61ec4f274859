"""The whole pipeline: check -> export -> calibrate -> quantize -> compile -> evaluate -> report -> gate.

``build()`` is what `resnext-deploy build` runs. It writes into a staging directory and swaps it in at
the end, so a failed build never leaves a half-written directory and a re-run replaces a build whole.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import backends
from .artifacts import Artifact, atomic_dir, ensure_writable_dir, sha256_file
from .datasets import LoadedImages, load_calibration, load_labeled
from .errors import BadInputError
from .evaluate import Metrics, TimingConfig, evaluate_runner
from .gate import GateResult, apply_gates
from .manifest import folder_digest, make_manifest, write_manifest
from .preprocess import Preprocessing
from .recipes import Recipe, load_recipe
from .report import make_report, write_report

log = logging.getLogger(__name__)

#: progress(stage, done, total): the CLI draws it; library code only calls it
Progress = Optional[Callable[[str, int, int], None]]

REFERENCE = "onnx-fp32"


@dataclass
class ModelSource:
    """What the user brought, resolved: a torch module or an ONNX file, with its metadata."""

    name: str
    path: Path
    kind: str  # "demo" | "torch" | "onnx"
    arch: Optional[str]
    num_classes: Optional[int]
    labels: Optional[List[str]]
    preprocessing: Preprocessing
    module: Any = None  # torch.nn.Module when kind != "onnx"
    source_kind: str = ""

    def describe(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.path),
            "source_sha256": sha256_file(self.path),
            "kind": self.kind,
            "loaded_as": self.source_kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": self.labels,
        }


@dataclass
class BuildResult:
    out_dir: Path
    report: Dict[str, Any]
    manifest: Dict[str, Any]
    gate: GateResult
    artifacts: List[Artifact] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.gate.passed


def _preprocessing(base: Optional[Dict[str, Any]], input_size: Optional[int], overrides: Dict[str, Any]) -> Preprocessing:
    d: Dict[str, Any] = dict(base or {})
    if not base and input_size and input_size != 224:
        d.update(resize=int(round(input_size * 256 / 224)), crop=input_size)
    d.update(overrides)
    return Preprocessing.from_dict(d)


def resolve_model(
    model: Union[str, Path, None],
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    preprocess_overrides: Optional[Dict[str, Any]] = None,
) -> ModelSource:
    """Turn --model/--arch/--num-classes into a ModelSource (None = the shipped demo)."""
    overrides = preprocess_overrides or {}
    if model is None:
        from .demo import DEMO_CHECKPOINT, demo_model_info

        info = demo_model_info()
        src = resolve_model(DEMO_CHECKPOINT, info["arch"], info["num_classes"], overrides)
        src.kind, src.name = "demo", info["arch"]
        src.labels = src.labels or list(info["labels"])
        if not src.preprocessing or src.preprocessing == Preprocessing():
            src.preprocessing = _preprocessing(info["preprocessing"], None, overrides)
        return src
    path = Path(model)
    if not path.exists():
        raise BadInputError(f"The model file '{path}' does not exist. Pass a checkpoint, a TorchScript file or an ONNX file.")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
    if path.suffix.lower() == ".onnx":
        from .export import onnx_input_info

        info = onnx_input_info(path)
        shape = info["shape"]
        size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else 224
        if len(shape) != 4 or shape[1] != 3:
            raise BadInputError(f"The ONNX model '{path}' takes input of shape {shape}; expected (batch, 3, H, W) images.")
        classes = info["output_shape"][-1] if isinstance(info["output_shape"][-1], int) else num_classes
        return ModelSource(name, path, "onnx", arch, classes, None, _preprocessing(None, size, overrides), None, "onnx")
    from .models.loading import load_torch_model
    from .models.resnext import ARCHS

    loaded = load_torch_model(path, arch, num_classes)
    size = ARCHS[loaded.arch].input_size if loaded.arch in ARCHS else 224
    return ModelSource(
        name, path, "torch", loaded.arch, loaded.num_classes, loaded.labels,
        _preprocessing(loaded.preprocessing, size, overrides), loaded.module, loaded.source,
    )


def _data_folders(src: ModelSource, recipe: Recipe, calib: Optional[Path], val: Optional[Path]) -> Tuple[Path, Path]:
    calib = calib or (Path(recipe.section("calibration")["folder"]) if recipe.section("calibration")["folder"] else None)
    val = val or (Path(recipe.section("evaluation")["folder"]) if recipe.section("evaluation")["folder"] else None)
    if calib is None or val is None:
        if src.kind != "demo":
            missing = " and ".join(n for n, v in (("--calib", calib), ("--val", val)) if v is None)
            raise BadInputError(
                f"Building your own model needs {missing}: a folder of calibration images and an ImageFolder "
                "folder of labeled validation images (see calibration/README.md), or set calibration.folder "
                "and evaluation.folder in the recipe."
            )
        from .demo import DEMO_CALIB, DEMO_VAL

        calib, val = calib or DEMO_CALIB, val or DEMO_VAL
    return Path(calib), Path(val)


def quantized_flavours(recipe: Recipe) -> Dict[str, str]:
    """backend -> activation flavour of the Q/DQ model it compiles its INT8 artifact from."""
    out = {}
    for name in recipe.enabled_backends():
        cfg = recipe.backend(name)
        if name == "tensorrt":  # always: the TensorRT bundle ships the Q/DQ model and its calibration cache
            out[name] = "int8"
        elif "int8" in cfg["precisions"]:
            out[name] = cfg["activations"]
    return out


def build(
    model: Union[str, Path, None] = None,
    target: Optional[str] = "x86-cpu",
    recipe_path: Union[str, Path, None] = None,
    out: Union[str, Path, None] = None,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    calib: Union[str, Path, None] = None,
    val: Union[str, Path, None] = None,
    progress: Progress = None,
    sensitivity: Optional[bool] = None,
) -> BuildResult:
    """Run the whole pipeline for one model and one target; returns the result (the gate is not raised).

    ``sensitivity`` analyses and reports the layers' INT8 sensitivity even when the gate passes (None:
    the recipe's fallback.sensitivity); a failed accuracy gate triggers the fallback (fallback.py).
    """
    t_start = time.perf_counter()
    recipe = load_recipe(recipe_path, None if recipe_path else target)
    src = resolve_model(model, arch, num_classes, recipe.section("preprocess"))
    out_dir = Path(out) if out else Path("build") / src.name / recipe.target
    ensure_writable_dir(out_dir.parent)
    calib_dir, val_dir = _data_folders(src, recipe, Path(calib) if calib else None, Path(val) if val else None)
    for name in recipe.enabled_backends():
        # Without TensorRT (or a GPU) a TensorRT target ends in a bundle that builds on the device.
        if name in backends.names() and name != "tensorrt" and not backends.get(name).available():
            from .optional import require

            require(backends.get(name).module, f"build the {name} artifacts of target {recipe.target}")

    cal_cfg, spec = recipe.section("calibration"), src.preprocessing
    stages: Dict[str, float] = {}
    t = time.perf_counter()
    cal = load_calibration(calib_dir, spec, cal_cfg["count"], cal_cfg["seed"], _stage(progress, "load calibration images"))
    vlimit = recipe.section("evaluation")["limit"] or None
    valset = load_labeled(val_dir, spec, vlimit, _stage(progress, "load validation images"))
    stages["load_images"] = time.perf_counter() - t
    if src.num_classes and valset.labels is not None and valset.labels.max() >= src.num_classes:
        raise BadInputError(
            f"The validation folder '{val_dir}' has {int(valset.labels.max()) + 1} classes but the model has "
            f"{src.num_classes} outputs. Use validation data with the model's classes."
        )

    with atomic_dir(out_dir) as stage_dir:
        artifacts, report_extra, notes = run_stages(src, recipe, cal, stage_dir, stages, progress)
        ref_art = next(a for a in artifacts if a.name == REFERENCE)
        results, evaluated = evaluate_build(src, recipe, artifacts, valset, stage_dir, progress)
        stages["evaluate"] = evaluated
        gate = apply_gates(results, REFERENCE, recipe.section("gates"))
        from .fallback import accuracy_fallback

        artifacts, results, gate = accuracy_fallback(
            src, recipe, cal, valset, stage_dir, artifacts, results, gate, stages, report_extra, notes, progress, sensitivity
        )
        if "tensorrt" in recipe.enabled_backends():  # after any fallback: the bundle ships the final Q/DQ model
            from .tensorrt_stage import tensorrt_stage

            t = time.perf_counter()
            trt = tensorrt_stage(src, recipe, artifacts, valset, stage_dir, results, progress)
            artifacts += trt.artifacts
            results += trt.results
            notes += trt.notes
            report_extra.update(trt.extra)
            stages["tensorrt"] = time.perf_counter() - t
            gate = apply_gates(results, REFERENCE, recipe.section("gates"))  # engines built here are gated too
        stages["total"] = time.perf_counter() - t_start
        dataset = {
            "validation": str(val_dir),
            "validation_images": len(valset.paths),
            "validation_skipped": len(valset.skipped),
            "calibration": str(calib_dir),
            "calibration_images": len(cal.paths),
            "calibration_skipped": len(cal.skipped),
            "calibration_method": cal_cfg["method"],
            "calibration_seed": cal_cfg["seed"],
            "throughput_batch": recipe.section("evaluation")["batch_size"],
        }
        model_info = src.describe()
        report = make_report(
            model=model_info, target=recipe.target, reference=REFERENCE, results=results, gate=gate,
            dataset=dataset, stages=stages, notes=notes, extra=report_extra,
        )
        report_paths = write_report(report, stage_dir)
        manifest = make_manifest(
            model=model_info,
            target=recipe.target,
            recipe=recipe.to_dict(),
            recipe_source=recipe.source,
            preprocessing=spec.to_dict(),
            inputs={
                "model": {"path": str(src.path), "sha256": model_info["source_sha256"]},
                "calibration": {"folder": str(calib_dir), "files": len(cal.paths), "sha256": folder_digest(cal.paths)},
                "validation": {"folder": str(val_dir), "files": len(valset.paths), "sha256": folder_digest(valset.paths)},
            },
            artifacts=artifacts,
            reports={p.name: sha256_file(p) for p in report_paths},
            gate=gate.to_dict(),
            extra={"labels": src.labels, "reference": ref_art.name},
        )
        write_manifest(manifest, stage_dir)
    log.info("build written to %s (%s)", out_dir, gate.summary())
    return BuildResult(out_dir, report, manifest, gate, artifacts)


def _stage(progress: Progress, name: str) -> Optional[Callable[[int, int], None]]:
    return (lambda done, total: progress(name, done, total)) if progress else None


def run_stages(
    src: ModelSource, recipe: Recipe, cal: LoadedImages, stage_dir: Path, stages: Dict[str, float], progress: Progress,
    exclude_nodes: Sequence[str] = (),
) -> Tuple[List[Artifact], Dict[str, Any], List[str]]:
    """check, export, quantize, compile into ``stage_dir``; returns the artifacts, report extras and notes.

    ``exclude_nodes`` stay in float in every Q/DQ model (the accuracy fallback's list, see fallback.py).
    """
    from .quantize import qdq_from_onnx

    artifacts: List[Artifact] = []
    extra: Dict[str, Any] = {}
    notes: List[str] = []
    onnx_dir = stage_dir / "onnx"
    onnx_dir.mkdir()
    fp32_path = onnx_dir / "model-fp32.onnx"
    t = time.perf_counter()
    if src.module is not None:
        from .check import check_or_raise

        report = check_or_raise(src.module, (1,) + src.preprocessing.input_shape)
        stages["check"] = time.perf_counter() - t
        extra["check"] = report.to_dict() if hasattr(report, "to_dict") else {"passed": True}
        from .export import onnx_from_torch

        t = time.perf_counter()
        exp = recipe.section("export")
        res = onnx_from_torch(src.module, fp32_path, cal.data[:8], exp["opset"], exp["tolerance"], exp["simplify"], root=stage_dir)
        extra["export"] = res.to_dict()
        artifacts.append(res.artifact)
    else:
        shutil.copyfile(src.path, fp32_path)
        artifacts.append(Artifact.from_files(REFERENCE, [fp32_path], stage_dir, kind="onnx", backend="onnx", precision="fp32", stage="export", settings={"copied_from": str(src.path)}))
        notes.append("The model was given as ONNX: the architecture check and the PyTorch comparison were skipped.")
    stages["export"] = time.perf_counter() - t

    t = time.perf_counter()
    cal_cfg = recipe.section("calibration")
    qdq: Dict[str, Artifact] = {}
    for flavour in sorted(set(quantized_flavours(recipe).values())):
        qdq[flavour] = qdq_from_onnx(
            fp32_path, onnx_dir / f"model-int8-{flavour}.onnx", cal.data, flavour, cal_cfg["method"],
            cal_cfg["percentile"], root=stage_dir, progress=_stage(progress, f"calibrate ({flavour} activations)"),
            exclude_nodes=exclude_nodes,
        )
        artifacts.append(qdq[flavour])
    stages["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    flavours = quantized_flavours(recipe)
    for name in recipe.enabled_backends():
        if name not in backends.names() or name == "tensorrt":  # TensorRT: tensorrt_stage, after evaluation
            continue
        be, cfg = backends.get(name), recipe.backend(name)
        for precision in cfg["precisions"]:
            source = qdq[flavours[name]] if precision == "int8" else artifacts[0]
            artifacts.append(be.compile(source, stage_dir / name, precision, cfg, root=stage_dir))
    stages["compile"] = time.perf_counter() - t
    return artifacts, extra, notes


def evaluate_build(
    src: ModelSource, recipe: Recipe, artifacts: List[Artifact], valset: LoadedImages, root: Path, progress: Progress
) -> Tuple[List[Dict[str, Any]], float]:
    """Evaluate the reference (FP32 ONNX in ONNX Runtime), PyTorch eager when we have it, and every compiled artifact."""
    t = time.perf_counter()
    cfg = TimingConfig.from_recipe(recipe.section("evaluation"))
    ort_backend = backends.get("onnxruntime")
    ref_art = next(a for a in artifacts if a.name == REFERENCE)
    results: List[Dict[str, Any]] = []
    labels = valset.labels
    with ort_backend.load(ref_art.abspath(root), recipe.backend("onnxruntime")) as runner:
        metrics, reference = evaluate_runner(
            REFERENCE, runner, valset.data, labels, None, cfg, "fp32", ref_art.size_bytes(root), _stage(progress, f"evaluate {REFERENCE}")
        )
        results.append(metrics.to_dict())
    if src.module is not None:
        from .models.runner import TorchRunner

        with TorchRunner(src.module, threads=recipe.backend("onnxruntime")["threads"]) as runner:
            metrics, _ = evaluate_runner("pytorch-fp32", runner, valset.data, labels, reference, cfg, "fp32", src.path.stat().st_size, _stage(progress, "evaluate pytorch-fp32"))
            results.append(metrics.to_dict())
    for art in artifacts:
        if art.backend not in backends.names():
            continue
        with backends.get(art.backend).load(art.abspath(root), recipe.backend(art.backend)) as runner:
            metrics, _ = evaluate_runner(art.name, runner, valset.data, labels, reference, cfg, art.precision, art.size_bytes(root), _stage(progress, f"evaluate {art.name}"))
            results.append(metrics.to_dict())
    if "tensorrt" in recipe.enabled_backends():
        from .tensorrt_stage import evaluate_qdq

        results.append(evaluate_qdq(artifacts, recipe, valset, reference, cfg, root, progress))
    return results, time.perf_counter() - t
