"""The pipeline's steps, shared by the build and the accuracy fallback: export/quantize/compile, then evaluate."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact
from ..evaluation.evaluate import TimingConfig, evaluate_runner
from ..recipes import Recipe
from ..report.gallery import compare_images
from ..scale import LocalInference, ModelFiles
from .context import BuildContext
from .labels import require_above_chance

log = logging.getLogger(__name__)

#: the float reference every artifact is compared with: the exported model in ONNX Runtime
REFERENCE = "onnx-fp32"


def quantized_flavours(recipe: Recipe) -> Dict[str, str]:
    """backend -> activation flavour of the Q/DQ model it compiles its INT8 artifact from (each backend declares it)."""
    out = {}
    for name in recipe.enabled_backends():
        flavour = backends.get(name).int8_flavour(recipe.backend(name))
        if flavour:
            out[name] = flavour
    return out


def run_stages(ctx: BuildContext, exclude_nodes: Sequence[str] = ()) -> List[Artifact]:
    """check, export, quantize, compile into ``ctx.staging``; returns the artifacts (timings, notes, sections on ``ctx``).

    ``exclude_nodes`` stay in float in every Q/DQ model (the accuracy fallback's list, see pipeline/fallback.py).
    """
    from .quantize import QuantizeOptions, isa_record, qdq_from_onnx, weight_range_for

    recipe, stage_dir, stages = ctx.recipe, ctx.staging, ctx.timings
    artifacts: List[Artifact] = []
    onnx_dir = stage_dir / "onnx"
    onnx_dir.mkdir()
    fp32_path = onnx_dir / "model-fp32.onnx"
    export_model(ctx, fp32_path, artifacts)

    t = time.perf_counter()
    flavours = quantized_flavours(recipe)
    weight_range = weight_range_for(recipe.section("quantize"))
    qdq: Dict[str, Artifact] = {}
    for flavour in sorted(set(flavours.values())):
        qdq[flavour] = qdq_from_onnx(
            fp32_path, onnx_dir / f"model-int8-{flavour}.onnx", ctx.calibration.data,
            QuantizeOptions.from_recipe(recipe, flavour, exclude_nodes=tuple(exclude_nodes)),
            root=stage_dir, progress=ctx.step(f"calibrate ({flavour} activations)"),
        )
        artifacts.append(qdq[flavour])
    stages["quantize"] = time.perf_counter() - t
    if qdq:
        ctx.extra["isa"], isa_notes = isa_record(recipe.section("quantize"), weight_range)
        ctx.notes.extend(isa_notes)

    t = time.perf_counter()
    for name in recipe.enabled_backends():
        be, cfg = backends.get(name), recipe.backend(name)
        if be.builds_on_device:  # its artifacts come from its finish_build hook, after evaluation
            continue
        for precision in cfg["precisions"]:
            reason = be.cannot_build(precision)
            if reason:  # e.g. bf16 on a CPU without BF16: said in the report, not built, not gated
                ctx.extra.setdefault("skipped_rungs", []).append({"artifact": f"{name}-{precision}", "reason": reason})
                ctx.notes.append(f"{name}-{precision} was not built: {reason}.")
                log.warning("%s-%s skipped: %s", name, precision, reason)
                continue
            source = qdq[flavours[name]] if precision == "int8" else artifacts[0]
            art = be.compile(source, stage_dir / name, precision, cfg, root=stage_dir)
            if precision == "int8":  # each INT8 artifact names its weight range (runtime.load checks it)
                art.settings["weight_range"] = source.settings["weight_range"]
            artifacts.append(art)
    stages["compile"] = time.perf_counter() - t
    return artifacts


def export_model(ctx: BuildContext, fp32_path: Path, artifacts: List[Artifact]) -> None:
    """check + export through the model's format plug-in (models/formats/): its architecture check, then the FP32
    ONNX compared with the model; the timings and report sections on ``ctx``."""
    from ..models.formats import ExportSettings

    fmt, t = ctx.source.format, time.perf_counter()
    checked = fmt.check(ctx.source)
    ctx.timings["check"] = time.perf_counter() - t
    ctx.extra["check"] = checked.record
    t = time.perf_counter()
    settings = ExportSettings.from_recipe(ctx.recipe.section("export"), root=ctx.staging)
    exported = fmt.export(ctx.source, fp32_path, np.asarray(ctx.calibration.data[:8]), settings)
    ctx.timings["export"] = time.perf_counter() - t
    ctx.extra["export"] = exported.record
    if exported.note:
        ctx.notes.append(exported.note)
    artifacts.append(exported.artifact)


def _sharded_logits(ctx: BuildContext, name: str, backend: str, path: Any, runner: Any, batch_size: int) -> Dict[str, Any]:
    """Logits (and their provenance) of one model on the validation images, from ``ctx.inference`` (this process by default)."""
    inference = ctx.inference or LocalInference()
    model = ModelFiles.of(name, backend, path, ctx.recipe.backend(backend))
    logits = inference.logits(model, ctx.validation.data, batch_size, ctx.step(f"evaluate {name}"), runner=runner)
    return {"logits": logits, "provenance": inference.provenance(runner)}


def evaluate_reference(ctx: BuildContext, artifacts: List[Artifact]) -> Dict[str, Any]:
    """The float reference (FP32 ONNX in ONNX Runtime) on the validation images; keeps its logits on ``ctx``."""
    cfg = TimingConfig.from_recipe(ctx.recipe.section("evaluation"))
    ref_art = next(a for a in artifacts if a.name == REFERENCE)
    with backends.get("onnxruntime").load(ref_art.abspath(ctx.staging), ctx.recipe.backend("onnxruntime")) as runner:
        metrics, ctx.reference_logits = evaluate_runner(
            REFERENCE, runner, ctx.validation.data, ctx.validation.labels, None, cfg, "fp32",
            ref_art.size_bytes(ctx.staging),
            **_sharded_logits(ctx, REFERENCE, "onnxruntime", ref_art.abspath(ctx.staging), runner, cfg.batch_size),
        )
    # a float model at or below chance means the folders do not hold the model's classes: no gate on that
    require_above_chance(metrics.top1, ctx.validation.labels, ctx.reference_logits.shape[1], ctx.validation.folder,
                         ctx.source.labels_from)
    return metrics.to_dict()


def evaluate_artifact(ctx: BuildContext, art: Artifact, runner_backend: Optional[str] = None, role: str = "") -> Dict[str, Any]:
    """One artifact against the reference logits, run by its own backend (or ``runner_backend``, e.g. a Q/DQ ONNX in ORT)."""
    assert ctx.reference_logits is not None, "evaluate the reference first"
    cfg = TimingConfig.from_recipe(ctx.recipe.section("evaluation"))
    name = runner_backend or art.backend
    with backends.get(name).load(art.abspath(ctx.staging), ctx.recipe.backend(name)) as runner:
        metrics, logits = evaluate_runner(art.name, runner, ctx.validation.data, ctx.validation.labels, ctx.reference_logits,
                                          cfg, art.precision, art.size_bytes(ctx.staging),
                                          **_sharded_logits(ctx, art.name, name, art.abspath(ctx.staging), runner, cfg.batch_size))
    row = metrics.to_dict()
    if art.precision != "fp32":  # the report's gallery of the images it gets wrong, and its per-class top-1
        row.update(compare_images(ctx.reference_logits, logits, ctx.validation.labels, ctx.recipe.section("evaluation")["gallery"]))
    if role:
        row["details"]["role"] = role
    return row


def evaluate_build(ctx: BuildContext, artifacts: List[Artifact]) -> List[Dict[str, Any]]:
    """The reference, the model itself where its format runs it, every compiled artifact, and what backends add."""
    t = time.perf_counter()
    results = [evaluate_reference(ctx, artifacts)]
    reference = evaluate_model_itself(ctx)
    if reference is not None:
        results.append(reference)
    results += [evaluate_artifact(ctx, art) for art in artifacts if art.backend in backends.names()]
    for name in ctx.recipe.enabled_backends():
        results += backends.get(name).workstation_results(ctx, artifacts)
    ctx.timings["evaluate"] = time.perf_counter() - t
    return results


def add_end_to_end(ctx: BuildContext, artifacts: List[Artifact], results: List[Dict[str, Any]]) -> None:
    """Each artifact's ``end_to_end`` row entry: validation files to labels through the runtime's own path
    (runtime/endtoend.py), beside the model-only latency and throughput the row already has."""
    from ..runtime.endtoend import DEFAULT_FILES, measure_end_to_end

    t = time.perf_counter()
    by_name = {a.name: a for a in artifacts}
    files = list(ctx.validation.paths[:DEFAULT_FILES])
    batch = int(ctx.recipe.section("evaluation")["batch_size"])
    for row in results:
        art = by_name.get(row["artifact"])
        name = "onnxruntime" if row["artifact"] == REFERENCE else (art.backend if art else "")
        if art is None or name not in backends.names() or backends.get(name).builds_on_device:
            continue
        with backends.get(name).load(art.abspath(ctx.staging), ctx.recipe.backend(name)) as runner:
            row["end_to_end"] = measure_end_to_end(runner, files, ctx.source.preprocessing, batch)
    ctx.timings["end_to_end"] = time.perf_counter() - t


def evaluate_model_itself(ctx: BuildContext) -> Optional[Dict[str, Any]]:
    """The model the user brought, run by its own framework beside the artifacts (PyTorch eager, Keras), when its
    format has a runner."""
    src = ctx.source
    runner = src.format.runner(src, threads=ctx.recipe.backend("onnxruntime")["threads"])
    if runner is None:
        return None
    cfg = TimingConfig.from_recipe(ctx.recipe.section("evaluation"))
    row = src.format.runner_row
    with runner:
        metrics, _ = evaluate_runner(row, runner, ctx.validation.data, ctx.validation.labels, ctx.reference_logits,
                                     cfg, "fp32", src.size_bytes, ctx.step(f"evaluate {row}"))
    return metrics.to_dict()
