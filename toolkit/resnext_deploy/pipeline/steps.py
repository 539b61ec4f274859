"""The pipeline's steps, shared by the build and the accuracy fallback: export/quantize/compile, then evaluate."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .. import backends
from ..artifacts import Artifact
from ..evaluate import TimingConfig, evaluate_runner
from ..progress import Progress, step_progress
from ..recipes import Recipe
from .datasets import LoadedImages
from .source import ModelSource

#: the float reference every artifact is compared with: the exported model in ONNX Runtime
REFERENCE = "onnx-fp32"


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
            cal_cfg["percentile"], root=stage_dir, progress=step_progress(progress, f"calibrate ({flavour} activations)"),
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
            REFERENCE, runner, valset.data, labels, None, cfg, "fp32", ref_art.size_bytes(root), step_progress(progress, f"evaluate {REFERENCE}")
        )
        results.append(metrics.to_dict())
    if src.module is not None:
        from ..models.runner import TorchRunner

        with TorchRunner(src.module, threads=recipe.backend("onnxruntime")["threads"]) as runner:
            metrics, _ = evaluate_runner("pytorch-fp32", runner, valset.data, labels, reference, cfg, "fp32", src.path.stat().st_size, step_progress(progress, "evaluate pytorch-fp32"))
            results.append(metrics.to_dict())
    for art in artifacts:
        if art.backend not in backends.names():
            continue
        with backends.get(art.backend).load(art.abspath(root), recipe.backend(art.backend)) as runner:
            metrics, _ = evaluate_runner(art.name, runner, valset.data, labels, reference, cfg, art.precision, art.size_bytes(root), step_progress(progress, f"evaluate {art.name}"))
            results.append(metrics.to_dict())
    if "tensorrt" in recipe.enabled_backends():
        from ..tensorrt.stage import evaluate_qdq

        results.append(evaluate_qdq(artifacts, recipe, valset, reference, cfg, root, progress))
    return results, time.perf_counter() - t
