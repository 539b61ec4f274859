"""Each stage run on its own, on artifacts passed by path (what `resnext-deploy check|export|...` call).

A stage run alone writes a sidecar ``<artifact>.json`` beside its output holding the artifact record,
the preprocessing and the labels, so the next stage run alone knows how the model sees images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact, atomic_file
from ..buildfolder.sidecar import read_sidecar, sidecar_path, write_sidecar
from ..errors import BadInputError
from ..evaluation.evaluate import TimingConfig, evaluate_runner
from ..evaluation.gate import GateResult
from ..models.onnx_inputs import scan_onnx
from ..preprocess import Preprocessing, preprocessing_option, sized_preprocessing
from ..progress import Progress, step_progress
from ..recipes import Recipe, load_recipe
from ..report import make_report, read_report, write_report
from ..data.datasets import load_calibration, load_labeled, skipped_records
from .labels import require_above_chance, validation_labels
from .source import data_folders, preprocessing_for, resolve_model
from ..scale import ModelFiles, ScaleOptions, open_inference
from .steps import REFERENCE

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
EVALUATION_SCHEMA = "resnext-deploy/evaluation"


@dataclass
class ModelMeta:
    """What a stage run by path knows about a model file: how it sees images, its labels, where it came from.

    From the file's sidecar, else from the manifest.json of the build directory it sits in (as a sidecar would
    give them), else from what the user passed (--preprocessing, the recipe's [preprocess], --input-size) with the
    input size from the ONNX's own static input shape. Never from a guess.
    """

    path: Path
    preprocessing: Optional[Preprocessing]
    labels: Optional[List[str]] = None
    origin: str = ""  # where the preprocessing came from, for messages and sidecars
    record: Dict[str, Any] = field(default_factory=dict)  # the artifact record (name, precision, backend, parent)
    model: Dict[str, Any] = field(default_factory=dict)  # the model description (ModelSource.describe)
    folders: Dict[str, str] = field(default_factory=dict)  # data folders the build recorded ("calib", "val")
    build_dir: Optional[Path] = None
    labels_from: str = ""  # where ``labels`` were read ("sidecar <path>", "build manifest <path>")

    @property
    def is_demo(self) -> bool:
        return bool(self.model.get("demo"))

    def sidecar_extra(self) -> Dict[str, Any]:
        """What a stage's output sidecar carries on from this model (so the next stage knows it too)."""
        extra: Dict[str, Any] = {"preprocessing_from": self.origin}
        if self.model:
            extra["model"] = self.model
        if self.folders:
            extra["folders"] = self.folders
        if self.build_dir is not None:
            extra["build"] = {"dir": str(self.build_dir), "artifact": self.record.get("name")}
        return extra


def _from_build(path: Path) -> Optional[Tuple[Path, Dict[str, Any], Dict[str, Any]]]:
    """(build dir, manifest, artifact record) when ``path`` is an artifact listed in a build's manifest.json."""
    from ..buildfolder.manifest import read_manifest

    resolved = path.resolve()
    for d in list(resolved.parents)[:3]:
        if not (d / "manifest.json").is_file():
            continue
        try:
            manifest = read_manifest(d)
        except BadInputError as exc:  # another schema (a TensorRT bundle) or version: not ours to read
            log.info("not using %s for '%s': %s", d / "manifest.json", path, exc)
            return None
        rel = resolved.relative_to(d).as_posix()
        for art in manifest.get("artifacts", []):
            if art.get("path") == rel or rel in art.get("files", {}):
                return d, manifest, art
        log.info("'%s' sits in the build %s but its manifest does not list it", path, d)
        return None
    return None


def recorded_labels(path: PathLike) -> Optional[Tuple[List[str], str]]:
    """(labels, where) that a model file's sidecar or the manifest of the build it sits in records, or None."""
    path = Path(path)
    side = read_sidecar(path)
    if side:
        return (list(map(str, side["labels"])), f"sidecar {sidecar_path(path)}") if side.get("labels") else None
    found = _from_build(path)
    labels = ((found[1].get("model") or {}).get("labels") or found[1].get("labels")) if found else None
    return (list(map(str, labels)), f"build manifest {found[0] / 'manifest.json'}") if found and labels else None


def _static_size(path: Path) -> Tuple[Optional[int], str]:
    """The square input size an ONNX's static input shape gives (None if dynamic), and that shape as text."""
    if path.suffix.lower() != ".onnx":
        return None, "unknown"
    from ..models.export.torch_onnx import onnx_input_info

    shape = onnx_input_info(path)["shape"]
    text = "(" + ", ".join(str(d) if isinstance(d, int) and d > 0 else ("batch" if i == 0 else "?")
                           for i, d in enumerate(shape)) + ")"
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]) and shape[2] == shape[3]:
        return int(shape[2]), text
    return None, text


def model_meta(
    path: PathLike, recipe: Recipe, input_size: Optional[int] = None, preprocessing: Optional[str] = None,
    required: bool = True,
) -> ModelMeta:
    """The :class:`ModelMeta` of a model file; raises BadInputError naming what is missing and the options that
    supply it when the preprocessing is unknown (``required=False``: preprocessing None instead)."""
    path = Path(path)
    overrides = recipe.section("preprocess")
    side = read_sidecar(path)
    found = _from_build(path) if not side else None
    meta = ModelMeta(path, None)
    if side:
        meta.record, meta.labels = side.get("artifact") or {}, side.get("labels")
        meta.model, meta.folders = side.get("model") or {}, side.get("folders") or {}
        meta.labels_from = f"sidecar {sidecar_path(path)}"
        if side.get("build"):
            meta.build_dir = Path(side["build"]["dir"])
    elif found:
        build_dir, manifest, record = found
        inputs = manifest.get("inputs", {})
        meta.record, meta.model, meta.build_dir = record, manifest.get("model") or {}, build_dir
        meta.labels = meta.model.get("labels")
        meta.labels_from = f"build manifest {build_dir / 'manifest.json'}"
        meta.folders = {k: inputs[name]["folder"] for k, name in (("calib", "calibration"), ("val", "validation"))
                        if inputs.get(name, {}).get("folder")}
    if preprocessing is not None:
        base = preprocessing_option(preprocessing)
        origin = f"--preprocessing {preprocessing}"
    elif side.get("preprocessing"):
        base, origin = side["preprocessing"], f"sidecar {sidecar_path(path)}"
    elif found and found[1].get("preprocessing"):
        base, origin = found[1]["preprocessing"], f"build manifest {found[0] / 'manifest.json'}"
    elif {"mean", "std"} <= set(overrides):
        base, origin = None, "the recipe's [preprocess]"
    else:
        return _unknown(meta, input_size, required)
    if base is not None and "crop" not in base:  # a preset: sized from the input shape or --input-size below
        overrides = {**base, **overrides}
        base = None
    if base is not None:
        meta.preprocessing = Preprocessing.from_dict({**sized_preprocessing(base, base["crop"]).to_dict(), **overrides})
        meta.origin = origin
        if input_size and preprocessing is None and input_size != meta.preprocessing.crop:
            log.warning("--input-size %d ignored: the %s gives crop %d", input_size, origin, meta.preprocessing.crop)
        return meta
    size, shape = _static_size(path)
    if input_size and size and input_size != size:
        raise BadInputError(f"--input-size {input_size} disagrees with the input shape {shape} of '{path}'. Drop --input-size.")
    size = size or input_size
    if not size:
        raise BadInputError(
            f"The input size of '{path}' is unknown: its input shape {shape} is dynamic and {origin} gives no crop. "
            "Pass --input-size N (the crop size it was trained with)."
        )
    meta.preprocessing = preprocessing_for(None, size, overrides)
    meta.origin = f"{origin}, crop {size} from " + ("the input shape" if _static_size(path)[0] else "--input-size")
    return meta


def _unknown(meta: ModelMeta, input_size: Optional[int], required: bool) -> ModelMeta:
    if not required:
        return meta
    path = meta.path
    size, shape = _static_size(path)
    if size:
        known = f"Its input shape {shape} gives the crop size {size}, but not the resize, mean and std it was trained with"
    else:
        known = f"Its input shape {shape} does not give even the input size (pass --input-size N too)" if not input_size \
            else f"--input-size {input_size} gives the crop, but not the resize, mean and std it was trained with"
    raise BadInputError(
        f"The preprocessing of '{path}' is unknown: it has no sidecar ({sidecar_path(path).name}) and no build's "
        f"manifest.json lists it. {known}; guessing them would give wrong accuracy without an error. Supply them "
        "with --preprocessing FILE.json (a build's manifest.json, a sidecar, or {\"resize\": .., \"crop\": .., "
        "\"mean\": [..], \"std\": [..]}), --preprocessing imagenet (ImageNet's mean/std, resize 256/224 of the "
        "crop), or resize/crop/mean/std in the [preprocess] table of a --recipe."
    )


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"The {what} '{p}' does not exist.")
    return p


def check_file(model: Optional[PathLike], arch: Optional[str] = None, num_classes: Optional[int] = None,
               allow_pickle: bool = False) -> Dict[str, Any]:
    """Architecture check of a model file (or the demo) by its format plug-in; a file its format checks as it is
    (an ONNX: onnx.checker and each backend's rules, TensorRT's Q/DQ rules with every violation's node name) is not
    loaded first."""
    from ..models import formats

    if model is not None and Path(model).is_file():
        checked_as_is = formats.detect(model).check_file(Path(model))
        if checked_as_is is not None:
            return checked_as_is
    src = resolve_model(model, arch, num_classes, allow_pickle=allow_pickle, need_preprocessing=False)
    checked = src.format.check(src)
    if not checked.complete:
        from ..errors import CheckIncompleteError

        report = checked.report
        raise CheckIncompleteError(
            f"The architecture check of '{src.path}' did not cover the whole model, so it cannot say the model is "
            f"sound. Not checked: {'; '.join(checked.uncovered)}. Nothing wrong was found in what it did check "
            f"({report.residual_adds} residual adds, {report.convs_checked} convs)."
        )
    return {"model": str(src.path), "passed": True, "summary": checked.summary, **checked.record}


def export_file(
    model: Optional[PathLike], out: PathLike, arch: Optional[str] = None, num_classes: Optional[int] = None,
    calib: Optional[PathLike] = None, recipe: Optional[Recipe] = None, preprocessing: Optional[str] = None,
    allow_pickle: bool = False,
) -> Artifact:
    """Check and export a model (any format with a framework model) to ONNX, compared with it on a few real
    calibration images."""
    from ..models.formats import ExportSettings

    recipe = recipe or load_recipe(target="x86-cpu")
    src = resolve_model(model, arch, num_classes, recipe.section("preprocess"), preprocessing, allow_pickle)
    if src.module is None:
        raise BadInputError(f"'{src.path}' is already ONNX: export takes a PyTorch or Keras model.")
    calib_dir, _ = data_folders(src, recipe, Path(calib) if calib else None, need=("calib",),
                                purpose="Exporting your own model (the comparison with it runs on real images)")
    sample = np.asarray(load_calibration(calib_dir, src.preprocessing, 8, 0).data)
    src.format.check(src)
    settings = ExportSettings.from_recipe(recipe.section("export"), log_path=Path(str(out) + ".export.log"))
    exported = src.format.export(src, Path(out), sample, settings)
    write_sidecar(out, exported.artifact, src.preprocessing, src.labels, model=src.describe(), export=exported.record,
                  preprocessing_from=f"the model ({src.source_kind})", folders={"calib": str(calib_dir)})
    return exported.artifact


def quantize_file(
    onnx_path: PathLike, out: PathLike, calib: Optional[PathLike], recipe: Recipe, activations: str = "uint8",
    input_size: Optional[int] = None, progress: Progress = None, preprocessing: Optional[str] = None,
) -> Artifact:
    """Calibrate and quantize an FP32 ONNX to an INT8 Q/DQ ONNX (method, count, seed from the recipe).

    The preprocessing, labels and default calibration folder come from the ONNX's sidecar or its build's
    manifest (see :func:`model_meta`)."""
    from .quantize import QuantizeOptions, qdq_from_onnx

    onnx_path = _require_file(onnx_path, "ONNX model")
    meta = model_meta(onnx_path, recipe, input_size, preprocessing)
    folder, _ = data_folders(meta.is_demo, recipe, Path(calib) if calib else None, need=("calib",),
                             recorded=meta.folders, purpose=f"Quantizing '{onnx_path.name}'")
    cal_cfg = recipe.section("calibration")
    cal = load_calibration(folder, meta.preprocessing, cal_cfg["count"], cal_cfg["seed"], step_progress(progress, "load calibration images"))
    art = qdq_from_onnx(onnx_path, out, cal.data, QuantizeOptions.from_recipe(recipe, activations, parent=str(onnx_path)),
                        progress=step_progress(progress, "calibrate"))
    write_sidecar(out, art, meta.preprocessing, meta.labels, **meta.sidecar_extra(),
                  calibration={"folder": str(folder), "images": len(cal.paths), "skipped": len(cal.skipped),
                               "skipped_files": skipped_records(cal.skipped)})
    return art


def compile_file(onnx_path: PathLike, backend: str, precision: str, out_dir: PathLike, recipe: Recipe) -> Artifact:
    """Compile an ONNX (FP32, or a Q/DQ model for int8) for one backend."""
    onnx_path = _require_file(onnx_path, "ONNX model")
    scan_onnx(onnx_path)
    meta = model_meta(onnx_path, recipe, required=False)
    src = Artifact.from_dict(meta.record) if meta.record else Artifact.from_files(
        onnx_path.stem, [onnx_path], None, kind="onnx", backend="onnx", precision=precision)
    src.path = str(onnx_path)
    be = backends.get(backend)
    art = be.compile(src, Path(out_dir), precision, recipe.backend(backend))
    if meta.preprocessing is not None:
        write_sidecar(art.path, art, meta.preprocessing, meta.labels, **meta.sidecar_extra())
    return art


def backend_of(path: Path) -> str:
    """Which backend runs an artifact file, from its suffix (each backend declares its own)."""
    return backends.for_file(path)


def evaluate_files(
    reference: PathLike, artifacts: Sequence[PathLike], val: Optional[PathLike], recipe: Recipe,
    input_size: Optional[int] = None, out: Optional[PathLike] = None, progress: Progress = None,
    preprocessing: Optional[str] = None, scale: Optional[ScaleOptions] = None,
) -> Dict[str, Any]:
    """Evaluate artifacts (by path) against an FP32 ONNX reference on labeled images; optionally write JSON.

    Preprocessing, names, precisions and the default validation folder come from each file's sidecar or its
    build's manifest (:func:`model_meta`), so a build's artifacts evaluated by path give the build's numbers.
    The images stream from the folder a batch at a time; ``scale`` shards the logits over Ray workers and/or
    keeps each shard in a resume directory (latency is measured here either way)."""
    reference = _require_file(reference, "reference ONNX model")
    scan_onnx(reference)
    ref = model_meta(reference, recipe, input_size, preprocessing)
    spec = ref.preprocessing
    _, folder = data_folders(ref.is_demo, recipe, None, Path(val) if val else None, need=("val",),
                             recorded=ref.folders, purpose=f"Evaluating against '{reference.name}'")
    named = validation_labels(folder, ref.labels, ref.labels_from)
    valset = load_labeled(folder, spec, recipe.section("evaluation")["limit"] or None, step_progress(progress, "load validation images"),
                          named.labels, named.origin)
    cfg = TimingConfig.from_recipe(recipe.section("evaluation"))
    with open_inference(scale) as inference:
        results = _evaluate_all(reference, ref, artifacts, recipe, valset, cfg, inference, progress, named.origin)
        scale_record = {"accuracy": inference.describe(), "resumed_shards": inference.resumed_shards,
                        "latency": "measured in the driver process (each result's details.measured)"}
    evaluation = {
        "schema": EVALUATION_SCHEMA,
        "reference": REFERENCE,
        "model": {"name": ref.model.get("name") or reference.stem, "source": str(reference), "labels": named.labels,
                  "labels_from": named.origin},
        "preprocessing": spec.to_dict(),
        "preprocessing_from": ref.origin,
        "dataset": {"validation": str(folder), "validation_images": len(valset.paths),
                    "validation_skipped": len(valset.skipped), "validation_skipped_files": skipped_records(valset.skipped),
                    "validation_classes": valset.classes, "labels_from": named.origin, "throughput_batch": cfg.batch_size},
        "results": results,
        "measured": scale_record,
    }
    if out:
        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(evaluation, indent=2))
    return evaluation


def _evaluate_all(reference: Path, ref: ModelMeta, artifacts: Sequence[PathLike], recipe: Recipe, valset: Any,
                  cfg: TimingConfig, inference: Any, progress: Progress, labels_from: str) -> List[Dict[str, Any]]:
    """The reference, then every artifact against its logits; logits from ``inference``, timings from a local runner."""
    spec = ref.preprocessing
    results = []
    ort = recipe.backend("onnxruntime")
    with backends.get("onnxruntime").load(reference, ort) as runner:
        ref_logits = inference.logits(ModelFiles.of(REFERENCE, "onnxruntime", reference, ort), valset.data, cfg.batch_size,
                                      step_progress(progress, f"evaluate {REFERENCE}"), runner=runner)
        m, _ = evaluate_runner(REFERENCE, runner, valset.data, valset.labels, None, cfg, "fp32", reference.stat().st_size,
                               logits=ref_logits, provenance=inference.provenance(runner))
        require_above_chance(m.top1, valset.labels, ref_logits.shape[1], valset.folder, labels_from)
        results.append(m.to_dict())
    for path in map(Path, artifacts):
        _require_file(path, "artifact")
        meta = model_meta(path, recipe, required=False)
        if meta.preprocessing is not None and meta.preprocessing != spec:
            raise BadInputError(
                f"'{path}' sees images differently from the reference '{reference}' ({meta.origin}: "
                f"{meta.preprocessing.to_dict()}; reference, from {ref.origin}: {spec.to_dict()}). Evaluate artifacts "
                "of one model against that model's FP32 ONNX."
            )
        record = meta.record
        name = record.get("backend") if record.get("backend") in backends.names() else backend_of(path)
        precision = record.get("precision") or ("int8" if "int8" in path.name else "fp32")
        size = sum(f.stat().st_size for f in [path, path.with_suffix(".bin")] if f.is_file())
        name_ = record.get("name") or path.name
        with backends.get(name).load(path, recipe.backend(name)) as runner:
            logits = inference.logits(ModelFiles.of(name_, name, path, recipe.backend(name)), valset.data, cfg.batch_size,
                                      step_progress(progress, f"evaluate {path.name}"), runner=runner)
            m, _ = evaluate_runner(name_, runner, valset.data, valset.labels, ref_logits, cfg, precision, size,
                                   logits=logits, provenance=inference.provenance(runner))
            results.append(m.to_dict())
    return results


def report_from(source: PathLike, recipe: Recipe, out_dir: Optional[PathLike] = None,
                baseline: Optional[PathLike] = None) -> Dict[str, Any]:
    """Gate an evaluation JSON (from `evaluate`) or re-gate a build's report; write report.json/.md to out_dir.

    An evaluation JSON's report goes beside it by default; a build's report is only written with out_dir.
    ``baseline`` (a previous build, verified by its manifest) adds the "vs baseline" section and its checks
    under the recipe's ``[gates.baseline]`` (ci/baseline.py).
    """
    from ..ci.baseline import compare_with_baseline, load_baseline, manifest_beside, markdown_section
    from ..ci.device import regate

    base = load_baseline(baseline) if baseline is not None else None  # refused before any work if untrustworthy
    source = Path(source)
    if source.is_dir() or (source.is_file() and _schema(source) != EVALUATION_SCHEMA):
        # Re-gating a build: its own report stays as the manifest hashed it unless --out says where to write.
        data = read_report(source)
    else:
        _require_file(source, "evaluation JSON")
        data = json.loads(source.read_text())
        out_dir = out_dir or source.parent
    _reference_above_chance(data)
    # a build with a merged device report: device rows keep the device's checks (ci/device.py)
    gate: GateResult = regate(data["results"], data["reference"], recipe.section("gates"), data.get("device"))
    report = make_report(
        model=data["model"], target=recipe.target, reference=data["reference"], results=data["results"], gate=gate,
        dataset=data["dataset"], stages=data.get("stages"), notes=data.get("notes"),
        # keep what the build added (check, export, fallback, sensitivity, tensorrt ...): only the gate is redone
        extra={k: v for k, v in data.items() if k not in _REPORT_CORE},
    )
    if base is not None:
        new_manifest = manifest_beside(source) if source.is_dir() or _schema(source) != EVALUATION_SCHEMA else None
        report["baseline"] = compare_with_baseline(report, base, recipe.section("gates")["baseline"], new_manifest)
    if out_dir:
        from .fallback import markdown_sections
        from ..scale.render import markdown_section as measured_section

        extra = markdown_sections(report) + measured_section(report)
        write_report(report, out_dir, extra + (markdown_section(report["baseline"]) if base is not None else []))
    return report


def _reference_above_chance(data: Dict[str, Any]) -> None:
    """The chance check of evaluate/build, again on a report or evaluation JSON that records its classes."""
    classes = (data.get("dataset") or {}).get("validation_classes")
    ref = next((r for r in data.get("results", []) if r.get("artifact") == data.get("reference")), None)
    if not classes or ref is None or ref.get("top1") is None:
        return  # written before the classes were recorded: the gate's own checks say what they can
    outputs = int((data.get("model") or {}).get("num_classes") or len((data.get("model") or {}).get("labels") or []) or 1)
    require_above_chance(float(ref["top1"]), np.arange(len(classes)), outputs, data["dataset"].get("validation"),
                         data["dataset"].get("labels_from") or "the model")


# "baseline" too: a re-gated report gets its comparison anew (or none), never a stale one
_REPORT_CORE = {"schema", "schema_version", "model", "target", "reference", "dataset", "results", "gate", "stages", "notes",
                "baseline"}


def _schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("schema")
    except (OSError, ValueError) as exc:
        raise BadInputError(f"'{path}' is not a JSON file ({exc}). Pass an evaluation JSON or a build directory.") from exc
