"""Stage `sensitivity` on files: rank a model's layers, find the fallback list, and set NNCF beside it.

What `resnext-deploy sensitivity --onnx m.onnx --out dir [--compare-nncf]` runs. On an FP32 ONNX and
the recipe's calibration, gates and ``[fallback]`` settings it

1. ranks the layers (:func:`sensitivity.analyze_sensitivity`, on ``fallback.subset`` validation images);
2. checks plain INT8 against the gate's accuracy thresholds and, if it fails, searches the exclusion
   list the build would use (:func:`fallback.search_exclusions`: monotonic, quick checks in ONNX Runtime);
3. with ``compare_nncf``, compiles our plain and fallback Q/DQ models for OpenVINO, runs NNCF's
   ``quantize_with_accuracy_control`` on the same model, images and top-1 budget, and measures all of
   them (and OpenVINO FP32) with the same runner on every validation image.

It writes ``sensitivity.json`` (schema ``resnext-deploy/sensitivity`` v1), ``sensitivity.md`` and
``sensitivity.png`` (plus the compared models) into one directory, swapped in whole at the end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact, atomic_dir, atomic_file, check_replaceable
from ..errors import BadInputError
from ..evaluation.evaluate import TimingConfig, evaluate_runner
from ..evaluation.gate import accuracy_checks, gate_description
from ..data.datasets import load_calibration, load_labeled
from ..pipeline.labels import require_above_chance, validation_labels
from ..pipeline.quantize import weight_range_for
from ..data.sampling import evenly_spaced
from ..progress import Progress
from ..recipes import Recipe
from ..pipeline.fallback import attempts_table, quick_check, search_exclusions
from ..pipeline.sensitivity import (
    MEASURES,
    SensitivityResult,
    VariantQuantizer,
    candidate_order,
    analyze_sensitivity,
    attach_plot,
    markdown_section,
    run_onnx_model,
)

log = logging.getLogger(__name__)

SCHEMA = "resnext-deploy/sensitivity"
SCHEMA_VERSION = 1
FLAVOURS = ("uint8", "int8")


@dataclass(frozen=True)
class StudyOptions:
    """What `resnext-deploy sensitivity` asks of :func:`study_file` (the CLI makes one).

    ``out`` may be missing, empty or an output of this toolkit; anything else is refused unless ``force``.
    ``None``/empty fields take the recipe's values: flavours of its INT8 backends, ``fallback.measure``,
    ``fallback.subset``, ``fallback.max_excluded_layers``. ``scale`` (scale.ScaleOptions) puts the layers and
    the candidate checks on Ray workers.
    """

    onnx_path: Path
    out: Path
    recipe: Recipe
    calib: Optional[Path] = None
    val: Optional[Path] = None
    input_size: Optional[int] = None
    flavours: Sequence[str] = ()
    measure: Optional[str] = None
    subset: Optional[int] = None
    max_excluded: Optional[int] = None
    search: bool = True
    compare_nncf: bool = False
    preprocessing: Optional[str] = None
    scale: Any = None
    force: bool = False

    def resolved(self) -> "StudyOptions":
        """These options with the recipe's values filled in and checked (a BadInputError names a bad one)."""
        from ..pipeline.steps import quantized_flavours

        if not Path(self.onnx_path).is_file():
            raise BadInputError(f"The ONNX model '{self.onnx_path}' does not exist. Export one first: resnext-deploy export --model M --out m.onnx.")
        fb = self.recipe.section("fallback")
        measure = self.measure or fb["measure"]
        if measure not in MEASURES:
            raise BadInputError(f"Unknown sensitivity measure '{measure}'; use one of {', '.join(MEASURES)}.")
        flavours = sorted(set(self.flavours or quantized_flavours(self.recipe).values() or ["int8"]))
        bad = [f for f in flavours if f not in FLAVOURS]
        if bad:
            raise BadInputError(f"Unknown activation flavour(s) {bad}; use uint8 and/or int8.")
        subset = fb["subset"] if self.subset is None else self.subset
        cap = fb["max_excluded_layers"] if self.max_excluded is None else self.max_excluded
        if subset <= 0 or cap < 0:
            raise BadInputError(f"--subset must be positive and --max-excluded at least 0, got {subset} and {cap}.")
        return replace(self, onnx_path=Path(self.onnx_path), out=Path(self.out), measure=measure, flavours=flavours,
                       subset=subset, max_excluded=cap)


@dataclass
class StudyResult:
    """What the study found (``document`` is sensitivity.json, as written into ``out``)."""

    out: Path
    sensitivity: SensitivityResult
    search: Optional[Dict[str, Any]]
    comparison: Optional[Dict[str, Any]]
    seconds: float
    document: Dict[str, Any]


def _study_data(o: StudyOptions) -> Tuple[Any, Any, Dict[str, Any], Tuple[Path, str]]:
    """The calibration and labelled validation images, the study document's dataset and gate entries, and the
    validation folder with where its labels come from."""
    from ..pipeline.commands import model_meta
    from ..pipeline.source import data_folders

    meta = model_meta(o.onnx_path, o.recipe, o.input_size, o.preprocessing)
    calib_dir, val_dir = data_folders(meta.is_demo, o.recipe, o.calib, o.val, recorded=meta.folders,
                                      purpose=f"The sensitivity study of '{o.onnx_path.name}'")
    cal_cfg, gates = o.recipe.section("calibration"), o.recipe.section("gates")
    cal = load_calibration(calib_dir, meta.preprocessing, cal_cfg["count"], cal_cfg["seed"])
    named = validation_labels(val_dir, meta.labels, meta.labels_from)
    valset = load_labeled(val_dir, meta.preprocessing, o.recipe.section("evaluation")["limit"] or None, None, named.labels, named.origin)
    doc: Dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": str(o.onnx_path),
        "dataset": {"calibration": str(calib_dir), "calibration_images": len(cal.paths), "validation": str(val_dir),
                    "validation_images": len(valset.paths)},
        "gates": {k: gates[k] for k in ("max_top1_drop", "min_top1_ratio", "min_agreement", "min_agreement_confident", "min_cosine")},
        "max_excluded_layers": o.max_excluded,
    }
    return cal, valset, doc, (val_dir, named.origin)


def _study_search(o: StudyOptions, quantizer: VariantQuantizer, sens: SensitivityResult, valset: Any, reference: np.ndarray,
                  inference: Any) -> Dict[str, Any]:
    """Plain INT8's quick check and, when it fails, the fallback's monotonic search (as the build runs it)."""
    t = time.perf_counter()
    gates, bias = o.recipe.section("gates"), bool(o.recipe.section("quantize")["bias_correction"])

    def quick(excluded: List[str]) -> Dict[str, Any]:
        return quick_check(quantizer, o.flavours, excluded, valset.data, valset.labels, reference, gates,
                           o.recipe.backend("onnxruntime"), inference=inference, bias_correction=bias)

    plain = quick([])
    plain["passed"] = plain["quick_passed"]
    found = ({"passed": True, "excluded": [], "attempts": []} if plain["passed"]
             else search_exclusions(candidate_order(sens.to_dict()), o.max_excluded, quick, plain))
    found.update(plain=plain, plain_quick=plain["quick"], targets=list(o.flavours), seconds=time.perf_counter() - t)
    return found


def study_file(options: StudyOptions, progress: Progress = None) -> StudyResult:
    """Run the study (see the module doc) and write it into ``options.out``."""
    from ..scale import open_inference

    o = options.resolved()
    check_replaceable(o.out, o.force)  # before the work: atomic_dir checks again at the swap
    cal, valset, doc, (val_dir, label_origin) = _study_data(o)
    cal_cfg, ort = o.recipe.section("calibration"), o.recipe.backend("onnxruntime")
    t_start = time.perf_counter()
    with open_inference(o.scale) as inference, atomic_dir(o.out, o.force) as d:
        quantizer = VariantQuantizer(o.onnx_path, cal.data, cal_cfg, weight_range=weight_range_for(o.recipe.section("quantize")))
        try:
            reference = run_onnx_model(o.onnx_path, valset.data, ort)
            require_above_chance(float(np.mean(np.argmax(reference, 1) == valset.labels)), valset.labels,
                                 reference.shape[1], val_dir, label_origin)
            idx = evenly_spaced(len(valset.data), o.subset)
            sens = analyze_sensitivity(o.onnx_path, cal.data, valset.data[idx], o.flavours, cal_cfg, o.measure, ort,
                                       quantizer=quantizer, reference=reference[idx], progress=progress, inference=inference)
            doc["measured"] = {"accuracy": inference.describe()}
            doc["sensitivity"] = sens.to_dict()
            if o.search:
                doc["search"] = _study_search(o, quantizer, sens, valset, reference, inference)
            attach_plot(doc["sensitivity"], d, highlight=doc.get("search", {}).get("excluded", []))
            if o.compare_nncf:
                doc["comparison"] = _compare(o.onnx_path, d, o.recipe, cal.data, valset, reference, quantizer, doc, o.max_excluded)
        finally:
            quantizer.close()
        doc["seconds"] = time.perf_counter() - t_start
        for name, text in (("sensitivity.json", json.dumps(doc, indent=2)), ("sensitivity.md", render_markdown(doc))):
            with atomic_file(d / name) as tmp:
                tmp.write_text(text, encoding="utf-8")
    return StudyResult(o.out, sens, doc.get("search"), doc.get("comparison"), doc["seconds"], doc)


def _compare(
    onnx_path: Path, d: Path, recipe: Recipe, calibration: np.ndarray, valset: Any, reference: np.ndarray,
    quantizer: VariantQuantizer, doc: Dict[str, Any], cap: int,
) -> Dict[str, Any]:
    """OpenVINO FP32, our plain and fallback INT8, and NNCF's accuracy control, measured alike."""
    from .peers import nncf_accuracy_control

    ov = backends.get("openvino")
    ov_cfg = recipe.backend("openvino")
    flavour = ov_cfg["activations"]
    timing = TimingConfig.from_recipe(recipe.section("evaluation"))
    rows: List[Dict[str, Any]] = []

    def measure(name: str, source: Artifact, precision: str, folder: str, float_layers: List[str], seconds: Optional[float]) -> None:
        art = ov.compile(source, d / folder, precision, ov_cfg, root=d)
        with ov.load(art.abspath(d), ov_cfg) as runner:
            m, _ = evaluate_runner(name, runner, valset.data, valset.labels, reference, timing, precision, art.size_bytes(d))
        rows.append({"name": name, "float_layers": float_layers, "seconds": seconds, "path": art.path, "metrics": m.to_dict()})

    fp32 = Artifact.from_files("onnx-fp32", [onnx_path], None, kind="onnx", backend="onnx", precision="fp32")
    measure("openvino-fp32", fp32, "fp32", "openvino-fp32", [], None)
    search = doc.get("search", {})
    # The list that passed, or the longest one tried when none did (its cost is worth seeing beside NNCF's).
    kept = [a for a in search.get("attempts", []) if a.get("kept", True)]
    tried = search.get("excluded") or (kept[-1]["excluded"] if kept else [])
    for name, excluded, seconds in (
        ("ours: plain INT8", [], None),
        ("ours: fallback", tried or None, doc["sensitivity"]["seconds"]["total"] + search.get("seconds", 0.0)),
    ):
        if excluded is None:  # no search, or plain INT8 passed: nothing beyond the plain model to show
            continue
        folder = "ours-plain" if not excluded else "ours-fallback"
        path = quantizer.quantize(flavour, exclude=excluded, out=d / folder / f"model-int8-{flavour}.onnx")
        src = Artifact.from_files(f"onnx-int8-{flavour}", [path], d, kind="onnx-qdq", backend="onnx", precision="int8")
        measure(name, src, "int8", folder, list(excluded), seconds)
    peer = nncf_accuracy_control(onnx_path, calibration, valset.data, valset.labels, recipe.section("gates")["max_top1_drop"],
                                 d / "nncf", ov_cfg, timing, reference, max_layers=cap or None)
    metrics = peer.pop("metrics")
    peer["model"] = str(Path(peer["model"]).relative_to(d))
    rows.append({"name": "nncf: accuracy control", "float_layers": peer["float_layers"], "seconds": peer["seconds"],
                 "path": peer["model"], "metrics": metrics})
    gates = recipe.section("gates")
    ref_top1 = rows[0]["metrics"]["top1"]
    for r in rows:
        m = r["metrics"]
        r["top1_drop_pct"] = (ref_top1 - m["top1"]) * 100.0
        r["gate_passed"] = all(c.passed for c in accuracy_checks(r["name"], m, ref_top1, gates))
    return {"backend": "openvino", "activations": flavour, "rows": rows, "nncf": peer}


# ------------------------------------------------------------------------------------------ rendering


def comparison_rows(doc: Dict[str, Any]) -> List[List[str]]:
    """Header + one row per compared model (strings), for Markdown and the console."""
    head = ["model", "top-1", "top-1 drop pp", "agree", "min cos", "layers in float", "p50 ms", "img/s", "search s", "gate"]
    out = [head]
    for r in doc["comparison"]["rows"]:
        m = r["metrics"]
        out.append([
            r["name"], f"{m['top1'] * 100:.2f}", f"{r['top1_drop_pct']:.2f}", f"{m['agreement'] * 100:.2f}", f"{m['min_cosine']:.4f}",
            str(len(r["float_layers"])) if r["name"] != "openvino-fp32" else "all",
            f"{m['latency_ms']['p50']:.2f}", f"{m['throughput_ips']:.0f}",
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "",
            "pass" if r["gate_passed"] else "FAIL",
        ])
    return out


def render_markdown(doc: Dict[str, Any]) -> str:
    ds = doc["dataset"]
    lines = [
        f"# Layer sensitivity of `{doc['model']}`", "",
        f"- calibration: {ds['calibration_images']} images from `{ds['calibration']}`",
        f"- validation: {ds['validation_images']} images from `{ds['validation']}`",
        f"- gate: {gate_description(doc['gates'])}; "
        f"at most {doc['max_excluded_layers']} layers in float",
        f"- took {doc['seconds']:.1f} s", "",
    ]
    lines += markdown_section(doc["sensitivity"], top=max(10, min(30, len(doc["sensitivity"]["layers"]))))
    if "search" in doc:
        s = doc["search"]
        lines += ["## Fallback search", ""]
        if s["passed"] and not s["excluded"]:
            lines.append("Plain INT8 passes the gate's accuracy checks: nothing to leave in float.")
        elif s["passed"]:
            lines.append(f"{len(s['excluded'])} layers in float pass the gate's accuracy checks (quick check, ONNX Runtime, every validation image):")
            lines += [""] + [f"{i}. `{n}`" for i, n in enumerate(s["excluded"], 1)]
        else:
            lines.append(f"No list of up to {doc['max_excluded_layers']} layers passed.")
        lines += ["", "Each candidate adds one layer to the list kept so far (ONNX Runtime, every validation image); a layer is "
                  "kept only if no flavour gets worse.", ""] + attempts_table(s)
        lines.append("")
    if "comparison" in doc:
        c = doc["comparison"]
        rows = comparison_rows(doc)
        lines += ["## Beside NNCF's accuracy control", "",
                  f"OpenVINO on this CPU, every validation image, batch-1 latency; our INT8 models are the {c['activations']}-activation "
                  f"Q/DQ models the build compiles for OpenVINO. NNCF: `{c['nncf']['tool']}` {c['nncf']['nncf_version']}, metric top-1, "
                  f"max_drop {c['nncf']['max_drop']:g} absolute, at most {c['nncf']['max_num_iterations']} iterations, "
                  f"OverflowFix {c['nncf'].get('overflow_fix', 'first_layer_only')} (the one for this CPU); its own "
                  f"quantization before accuracy control scored {c['nncf']['quantized_metric']} against {c['nncf']['initial_metric']} in float.", "",
                  "| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        lines += ["", "Layers in float:", ""]
        for r in c["rows"][1:]:
            lines.append(f"- {r['name']}: " + (", ".join(f"`{n}`" for n in r["float_layers"]) or "none"))
        lines += ["", "NNCF's log:", ""] + [f"    {line}".replace("\n", "\n    ") for line in c["nncf"]["log"]] + [""]
    return "\n".join(lines) + "\n"
