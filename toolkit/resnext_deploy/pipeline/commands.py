"""Each stage run on its own, on artifacts passed by path (what `resnext-deploy check|export|...` call).

A stage run alone writes a sidecar ``<artifact>.json`` beside its output holding the artifact record,
the preprocessing and the labels, so the next stage run alone knows how the model sees images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import backends
from ..artifacts import Artifact, atomic_file
from ..errors import BadInputError
from ..evaluate import TimingConfig, evaluate_runner
from ..gate import GateResult, apply_gates
from ..preprocess import Preprocessing
from ..progress import Progress, step_progress
from ..recipes import Recipe, load_recipe
from ..report import make_report, read_report, write_report
from .datasets import load_calibration, load_labeled, skipped_records
from .source import ModelSource, preprocessing_for, resolve_model
from .steps import REFERENCE

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
EVALUATION_SCHEMA = "resnext-deploy/evaluation"


def sidecar_path(path: PathLike) -> Path:
    return Path(str(path) + ".json")


def write_sidecar(path: PathLike, artifact: Artifact, preprocessing: Preprocessing, labels: Optional[List[str]], **extra: Any) -> Path:
    meta = {"artifact": artifact.to_dict(), "preprocessing": preprocessing.to_dict(), "labels": labels}
    meta.update(extra)
    with atomic_file(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return sidecar_path(path)


def read_sidecar(path: PathLike) -> Dict[str, Any]:
    """The sidecar of an artifact, or {} if it has none (an ONNX from elsewhere)."""
    p = sidecar_path(path)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"The sidecar '{p}' is not valid JSON ({exc}); delete it or re-run the stage that wrote it.") from exc


def preprocessing_of(path: PathLike, input_size: Optional[int], recipe: Recipe) -> Tuple[Preprocessing, Optional[List[str]]]:
    """The preprocessing and labels of a model file: its sidecar's, else the default for ``input_size``, recipe overrides on top."""
    meta = read_sidecar(path)
    if meta.get("preprocessing"):
        spec = Preprocessing.from_dict({**meta["preprocessing"], **recipe.section("preprocess")})
        return spec, meta.get("labels")

    return preprocessing_for(None, input_size, recipe.section("preprocess")), None


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"The {what} '{p}' does not exist.")
    return p


def check_file(model: Optional[PathLike], arch: Optional[str] = None, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Architecture check of a PyTorch model file (or the demo); ONNX files get onnx.checker and, when they hold
    Q/DQ nodes, TensorRT's Q/DQ rules (qdq_rules.py: every violation with its node name)."""
    if model is not None and str(model).lower().endswith(".onnx"):
        return _check_onnx(Path(model))
    src = resolve_model(model, arch, num_classes)
    if src.module is None:
        from ..optional import require

        onnx = require("onnx", "check ONNX models")
        try:
            onnx.checker.check_model(str(src.path), full_check=True)
        except Exception as exc:  # onnx raises several types
            raise BadInputError(f"The ONNX model '{src.path}' fails onnx.checker: {exc}") from exc
        return {"model": str(src.path), "passed": True, "checks": ["onnx.checker (full)"]}
    from .check import check_or_raise

    report = check_or_raise(src.module, (1,) + src.preprocessing.input_shape)
    return {"model": str(src.path), "passed": True, "summary": report.summary(), **report.to_dict()}


def _check_onnx(path: Path) -> Dict[str, Any]:
    """onnx.checker, then TensorRT's Q/DQ rules; a violation is a ModelCheckError listing them all."""
    from ..errors import ModelCheckError
    from ..optional import require
    from ..tensorrt.qdq_rules import check_qdq_model

    path = _require_file(path, "ONNX model")
    onnx = require("onnx", "check ONNX models")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises several types
        raise BadInputError(f"The ONNX model '{path}' fails onnx.checker: {exc}") from exc
    qdq = check_qdq_model(path)
    if not qdq.passed:
        raise ModelCheckError(qdq.summary() + "\nTo make a TensorRT-ready model from the float ONNX: "
                              "resnext-deploy quantize --onnx <fp32.onnx> --activations int8 --out <qdq.onnx>.")
    checks = ["onnx.checker (full)"] + (["TensorRT Q/DQ rules"] if qdq.has_qdq else [])
    return {"model": str(path), "passed": True, "checks": checks, "qdq": qdq.to_dict(),
            "summary": f"{path}: passed onnx.checker (full)\n{qdq.summary()}"}


def export_file(
    model: Optional[PathLike], out: PathLike, arch: Optional[str] = None, num_classes: Optional[int] = None,
    calib: Optional[PathLike] = None, recipe: Optional[Recipe] = None,
) -> Artifact:
    """Check and export a PyTorch model to ONNX, compared with PyTorch on a few real calibration images."""
    from .check import check_or_raise
    from .export import onnx_from_torch

    recipe = recipe or load_recipe(target="x86-cpu")
    src = resolve_model(model, arch, num_classes, recipe.section("preprocess"))
    if src.module is None:
        raise BadInputError(f"'{src.path}' is already ONNX: export takes a PyTorch model.")
    calib_dir = _calib_dir(src, calib)
    check_or_raise(src.module, (1,) + src.preprocessing.input_shape)
    sample = load_calibration(calib_dir, src.preprocessing, 8, 0).data
    exp = recipe.section("export")
    res = onnx_from_torch(src.module, out, sample, exp["opset"], exp["tolerance"], exp["simplify"])
    write_sidecar(out, res.artifact, src.preprocessing, src.labels, model=src.describe(), export=res.to_dict())
    return res.artifact


def _calib_dir(src: ModelSource, calib: Optional[PathLike]) -> Path:
    if calib:
        return Path(calib)
    if src.kind == "demo":
        from ..demo import DEMO_CALIB

        return DEMO_CALIB
    raise BadInputError("Give --calib: a folder of real images (the export check and calibration need them).")


def quantize_file(
    onnx_path: PathLike, out: PathLike, calib: Optional[PathLike], recipe: Recipe, activations: str = "uint8",
    input_size: Optional[int] = None, progress: Progress = None,
) -> Artifact:
    """Calibrate and quantize an FP32 ONNX to an INT8 Q/DQ ONNX (method, count, seed from the recipe)."""
    from .quantize import qdq_from_onnx

    onnx_path = _require_file(onnx_path, "ONNX model")
    spec, labels = preprocessing_of(onnx_path, input_size, recipe)
    cal_cfg = recipe.section("calibration")
    folder = calib or cal_cfg["folder"]
    if not folder:
        from ..demo import DEMO_CALIB

        folder = DEMO_CALIB
    cal = load_calibration(folder, spec, cal_cfg["count"], cal_cfg["seed"], step_progress(progress, "load calibration images"))
    art = qdq_from_onnx(onnx_path, out, cal.data, activations, cal_cfg,
                        parent=str(onnx_path), progress=step_progress(progress, "calibrate"))
    write_sidecar(out, art, spec, labels, calibration={"folder": str(folder), "images": len(cal.paths), "skipped": len(cal.skipped),
                                                    "skipped_files": skipped_records(cal.skipped)})
    return art


def compile_file(onnx_path: PathLike, backend: str, precision: str, out_dir: PathLike, recipe: Recipe) -> Artifact:
    """Compile an ONNX (FP32, or a Q/DQ model for int8) for one backend."""
    onnx_path = _require_file(onnx_path, "ONNX model")
    meta = read_sidecar(onnx_path)
    src = Artifact.from_dict(meta["artifact"]) if meta.get("artifact") else Artifact.from_files(
        onnx_path.stem, [onnx_path], None, kind="onnx", backend="onnx", precision=precision)
    src.path = str(onnx_path)
    be = backends.get(backend)
    art = be.compile(src, Path(out_dir), precision, recipe.backend(backend))
    if meta.get("preprocessing"):
        write_sidecar(art.path, art, Preprocessing.from_dict(meta["preprocessing"]), meta.get("labels"))
    return art


def backend_of(path: Path) -> str:
    """Which backend runs an artifact file, from its suffix (each backend declares its own)."""
    return backends.for_file(path)


def evaluate_files(
    reference: PathLike, artifacts: Sequence[PathLike], val: Optional[PathLike], recipe: Recipe,
    input_size: Optional[int] = None, out: Optional[PathLike] = None, progress: Progress = None,
) -> Dict[str, Any]:
    """Evaluate artifacts (by path) against an FP32 ONNX reference on labeled images; optionally write JSON."""
    reference = _require_file(reference, "reference ONNX model")
    spec, labels = preprocessing_of(reference, input_size, recipe)
    folder = val or recipe.section("evaluation")["folder"]
    if not folder:
        from ..demo import DEMO_VAL

        folder = DEMO_VAL
    valset = load_labeled(folder, spec, recipe.section("evaluation")["limit"] or None, step_progress(progress, "load validation images"))
    cfg = TimingConfig.from_recipe(recipe.section("evaluation"))
    results = []
    with backends.get("onnxruntime").load(reference, recipe.backend("onnxruntime")) as runner:
        m, ref_logits = evaluate_runner(REFERENCE, runner, valset.data, valset.labels, None, cfg, "fp32",
                                        reference.stat().st_size, step_progress(progress, f"evaluate {REFERENCE}"))
        results.append(m.to_dict())
    for path in map(Path, artifacts):
        _require_file(path, "artifact")
        name = backend_of(path)
        meta = read_sidecar(path).get("artifact", {})
        precision = meta.get("precision") or ("int8" if "int8" in path.name else "fp32")
        size = sum(f.stat().st_size for f in [path, path.with_suffix(".bin")] if f.is_file())
        with backends.get(name).load(path, recipe.backend(name)) as runner:
            m, _ = evaluate_runner(meta.get("name") or path.name, runner, valset.data, valset.labels, ref_logits, cfg,
                                   precision, size, step_progress(progress, f"evaluate {path.name}"))
            results.append(m.to_dict())
    evaluation = {
        "schema": EVALUATION_SCHEMA,
        "reference": REFERENCE,
        "model": {"name": reference.stem, "source": str(reference)},
        "dataset": {"validation": str(folder), "validation_images": len(valset.paths),
                    "validation_skipped": len(valset.skipped), "validation_skipped_files": skipped_records(valset.skipped),
                    "throughput_batch": cfg.batch_size},
        "results": results,
    }
    if out:
        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(evaluation, indent=2))
    return evaluation


def report_from(source: PathLike, recipe: Recipe, out_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """Gate an evaluation JSON (from `evaluate`) or re-gate a build's report; write report.json/.md to out_dir.

    An evaluation JSON's report goes beside it by default; a build's report is only written with out_dir.
    """
    source = Path(source)
    if source.is_dir() or (source.is_file() and _schema(source) != EVALUATION_SCHEMA):
        # Re-gating a build: its own report stays as the manifest hashed it unless --out says where to write.
        data = read_report(source)
    else:
        _require_file(source, "evaluation JSON")
        data = json.loads(source.read_text())
        out_dir = out_dir or source.parent
    gate: GateResult = apply_gates(data["results"], data["reference"], recipe.section("gates"))
    report = make_report(
        model=data["model"], target=recipe.target, reference=data["reference"], results=data["results"], gate=gate,
        dataset=data["dataset"], stages=data.get("stages"), notes=data.get("notes"),
        # keep what the build added (check, export, fallback, sensitivity, tensorrt ...): only the gate is redone
        extra={k: v for k, v in data.items() if k not in _REPORT_CORE},
    )
    if out_dir:
        from ..accuracy.fallback import markdown_sections

        write_report(report, out_dir, markdown_sections(report))
    return report


_REPORT_CORE = {"schema", "schema_version", "model", "target", "reference", "dataset", "results", "gate", "stages", "notes"}


def _schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("schema")
    except (OSError, ValueError) as exc:
        raise BadInputError(f"'{path}' is not a JSON file ({exc}). Pass an evaluation JSON or a build directory.") from exc
