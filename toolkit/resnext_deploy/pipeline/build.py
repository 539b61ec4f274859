"""The whole pipeline: check -> export -> calibrate -> quantize -> compile -> evaluate -> report -> gate.

``build()`` is what `resnext-deploy build` runs. It writes into a staging directory and swaps it in at
the end, so a failed build never leaves a half-written directory and a re-run replaces a build whole.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .. import backends
from .fallback import accuracy_fallback, markdown_sections
from ..buildfolder.artifacts import Artifact, atomic_dir, sha256_file
from ..errors import BadInputError
from ..evaluation.gate import GateResult, apply_gates
from ..buildfolder.manifest import folder_digest, make_manifest, write_manifest
from ..buildfolder.signing import load_signing_key
from ..progress import Progress, step_progress
from ..recipes import Recipe, load_recipe
from ..report import make_report, write_report
from ..report.gallery import gallery_section
from ..scale import ScaleOptions, open_inference
from ..scale.render import markdown_section as measured_section
from .calibration_check import check_build, leakage_gate
from .context import BuildContext
from .commands import recorded_labels
from ..data.datasets import load_calibration, load_labeled, skipped_records
from .labels import previous_build_labels, validation_labels
from .preflight import check_output
from .source import ModelSource, data_folders, resolve_model
from .steps import REFERENCE, add_end_to_end, evaluate_build, run_stages

log = logging.getLogger(__name__)


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


@dataclass
class BuildOptions:
    """What `resnext-deploy build` was asked for (the CLI makes one; Python callers may too).

    ``target`` alone picks its shipped recipe (default x86-cpu); with ``recipe_path`` the file is layered over it.
    ``sensitivity`` analyses and reports the layers' INT8 sensitivity even when the gate passes (None: the recipe's
    fallback.sensitivity). ``scale`` puts the accuracy evaluation, the sensitivity ranking and the fallback's
    candidate checks on Ray workers (scale/); latency is measured in this process either way. ``allow_pickle``
    (--trust-pickle) lets a model file that runs code while it loads load (models/trust.py); the workers only ever
    get the ONNX / OpenVINO files. ``preprocessing`` (a preset or JSON file) goes to the model's format. ``out`` may
    be missing, empty or a previous build; anything else is refused unless ``force`` (preflight.check_output, buildfolder.artifacts.atomic_dir).
    """

    model: Union[str, Path, None] = None
    target: Optional[str] = None
    recipe_path: Union[str, Path, None] = None
    out: Union[str, Path, None] = None
    arch: Optional[str] = None
    num_classes: Optional[int] = None
    calib: Union[str, Path, None] = None
    val: Union[str, Path, None] = None
    sensitivity: Optional[bool] = None
    scale: Optional[ScaleOptions] = None
    preprocessing: Optional[str] = None
    allow_pickle: bool = False
    force: bool = False
    #: the workstation's Ed25519 key file (buildfolder/signing.py), read before the work: it signs a TensorRT
    #: bundle's manifest for a device that pins its public key
    sign_key: Union[str, Path, None] = None


def build(options: Optional[BuildOptions] = None, progress: Progress = None, **fields: Any) -> BuildResult:
    """Run the whole pipeline for one model and one target; returns the result (the gate is not raised).

    ``options`` (or the same fields as keywords: ``build(model=..., target=...)``) say what to build; a failed
    accuracy gate triggers the fallback (pipeline/fallback.py).
    """
    opts = options if options is not None else BuildOptions(**fields)
    t_start = time.perf_counter()
    signing_key = load_signing_key(opts.sign_key) if opts.sign_key else None
    recipe = load_recipe(opts.recipe_path, opts.target if opts.recipe_path else (opts.target or "x86-cpu"))
    inputs = (opts.model, opts.calib, opts.val, opts.recipe_path, recipe.section("calibration")["folder"],
              recipe.section("evaluation")["folder"])
    if opts.out is not None:  # before the work (the model's check is one): atomic_dir checks again at the swap
        check_output(opts.out, opts.force, inputs)
    src = resolve_model(opts.model, opts.arch, opts.num_classes, recipe.section("preprocess"), opts.preprocessing,
                        opts.allow_pickle)
    out_dir = Path(opts.out) if opts.out is not None else check_output(Path("build") / src.name / recipe.target,
                                                                       opts.force, inputs)
    folders = data_folders(src, recipe, Path(opts.calib) if opts.calib else None, Path(opts.val) if opts.val else None)
    check_output(out_dir, opts.force, folders)  # the folders the data came from, defaults included
    _require_backends(recipe)
    stages: Dict[str, float] = {}
    data = _load_images(src, recipe, folders, out_dir, progress, stages)
    with open_inference(opts.scale) as inference, atomic_dir(out_dir, opts.force) as stage_dir:
        ctx = BuildContext(src, recipe, data.cal, data.valset, stage_dir, progress, stages, inference=inference,
                           signing_key=signing_key)
        artifacts, results, gate = _run_and_gate(ctx, opts.sensitivity)
        ctx.extra["gallery"] = gallery_section(results, data.valset.data, data.valset.paths, src.preprocessing.mean,
                                               src.preprocessing.std, src.labels)
        ctx.extra["measured"] = {"accuracy": inference.describe(),
                                 "latency": "measured in the driver process (each result's details.measured)"}
        stages["total"] = time.perf_counter() - t_start
        report, manifest = _write_outputs(ctx, data, artifacts, results, gate)
    log.info("build written to %s (%s)", out_dir, gate.summary())
    return BuildResult(out_dir, report, manifest, gate, artifacts)


def _require_backends(recipe: Recipe) -> None:
    """Every backend the recipe enables imports here (a MissingDependencyError before any work otherwise)."""
    for name in recipe.enabled_backends():
        be = backends.get(name)
        # A backend whose artifacts are built on the device (TensorRT) ends in a bundle here: not needed now.
        if not be.builds_on_device and not be.available():
            from ..optional import require

            require(be.module, f"build the {name} artifacts of target {recipe.target}")


@dataclass
class _Images:
    """The calibration and validation images of a build, and where they came from."""

    calib_dir: Path
    val_dir: Path
    cal: Any
    valset: Any
    named: Any  # labels.NamedLabels: the validation labels and their origin


def _load_images(src: ModelSource, recipe: Recipe, folders: Tuple[Optional[Path], Optional[Path]], out_dir: Path,
                 progress: Progress, stages: Dict[str, float]) -> _Images:
    calib_dir, val_dir = folders
    assert calib_dir is not None and val_dir is not None  # data_folders needs both by default
    cal_cfg, spec = recipe.section("calibration"), src.preprocessing
    t = time.perf_counter()
    cal = load_calibration(calib_dir, spec, cal_cfg["count"], cal_cfg["seed"], step_progress(progress, "load calibration images"))
    vlimit = recipe.section("evaluation")["limit"] or None
    # a model without labels: what a build of it recorded (an ONNX's sidecar or build manifest, an earlier build of
    # the same file here), else the sorted folder names
    recorded = None if src.labels else ((recorded_labels(src.path) if src.format.onnx_input else None)
                                        or previous_build_labels(out_dir, src.sha256))
    named = validation_labels(val_dir, src.labels, "the model", recorded)
    src.labels, src.labels_from = named.labels, named.origin  # recorded in the manifest and the report
    valset = load_labeled(val_dir, spec, vlimit, step_progress(progress, "load validation images"), named.labels, named.origin)
    stages["load_images"] = time.perf_counter() - t
    if src.num_classes and valset.labels is not None and valset.labels.max() >= src.num_classes:
        raise BadInputError(
            f"The validation folder '{val_dir}' has {int(valset.labels.max()) + 1} classes but the model has "
            f"{src.num_classes} outputs. Use validation data with the model's classes."
        )
    return _Images(calib_dir, val_dir, cal, valset, named)


def _run_and_gate(ctx: BuildContext, sensitivity: Optional[bool]) -> Tuple[List[Artifact], List[Dict[str, Any]], GateResult]:
    """The stages, the evaluation, the gate, the accuracy fallback, what backends add after it, and end to end."""
    recipe, stages = ctx.recipe, ctx.timings
    artifacts = run_stages(ctx)
    calibration = check_build(ctx, artifacts)  # clip rates, convergence, overlap, coverage
    results = evaluate_build(ctx, artifacts)
    gate = apply_gates(results, REFERENCE, recipe.section("gates"))
    artifacts, results, gate = accuracy_fallback(ctx, artifacts, results, gate, sensitivity)
    for name in recipe.enabled_backends():  # after any fallback: e.g. TensorRT's bundle ships the final Q/DQ model
        t = time.perf_counter()
        added = backends.get(name).finish_build(ctx, artifacts, results)
        if added is None:
            continue
        artifacts += added.artifacts
        results += added.results
        ctx.notes += added.notes
        ctx.extra.update(added.extra)
        stages[name] = time.perf_counter() - t
        gate = apply_gates(results, REFERENCE, recipe.section("gates"))  # what it built here is gated too
    gate = leakage_gate(gate, calibration)  # calibration.leakage = "refuse": shared images fail the gate
    add_end_to_end(ctx, artifacts, results)  # file to label, after any fallback: the artifacts that ship
    return artifacts, results, gate


def _write_outputs(ctx: BuildContext, data: _Images, artifacts: List[Artifact], results: List[Dict[str, Any]],
                   gate: GateResult) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """report.json/.md/.html and manifest.json into the staging folder; returns (report, manifest)."""
    src, recipe, cal, valset, stage_dir = ctx.source, ctx.recipe, data.cal, data.valset, ctx.staging
    spec, cal_cfg = src.preprocessing, recipe.section("calibration")
    dataset = {
        "validation": str(data.val_dir),
        "validation_images": len(valset.paths),
        "validation_skipped": len(valset.skipped),
        "validation_skipped_files": skipped_records(valset.skipped),
        "validation_classes": valset.classes,
        "labels_from": data.named.origin,
        "calibration": str(data.calib_dir),
        "calibration_images": len(cal.paths),
        "calibration_skipped": len(cal.skipped),
        "calibration_skipped_files": skipped_records(cal.skipped),
        "calibration_method": cal_cfg["method"],
        "calibration_seed": cal_cfg["seed"],
        "throughput_batch": recipe.section("evaluation")["batch_size"],
    }
    model_info = src.describe()
    report = make_report(model=model_info, target=recipe.target, reference=REFERENCE, results=results, gate=gate,
                         dataset=dataset, stages=ctx.timings, notes=ctx.notes, extra=ctx.extra)
    report_paths = write_report(report, stage_dir, markdown_sections(report) + measured_section(report))
    manifest = make_manifest(
        model=model_info, target=recipe.target, recipe=recipe.to_dict(), recipe_source=recipe.source,
        preprocessing=spec.to_dict(),
        inputs={
            "model": {"path": str(src.path), "sha256": model_info["source_sha256"]},
            "calibration": {"folder": str(data.calib_dir), "files": len(cal.paths), "sha256": folder_digest(cal.paths)},
            "validation": {"folder": str(data.val_dir), "files": len(valset.paths), "sha256": folder_digest(valset.paths)},
        },
        artifacts=artifacts, reports={p.name: sha256_file(p) for p in report_paths}, gate=gate.to_dict(),
        extra={"labels": src.labels, "reference": REFERENCE,
               "recipe_layers": recipe.layers, "recipe_provenance": recipe.provenance},
    )
    write_manifest(manifest, stage_dir)
    return report, manifest
