"""Accuracy-driven quantization: when INT8 fails the gate, leave the most sensitive layers in float.

``build()`` calls :func:`accuracy_fallback` after gating the plain INT8 build. When an INT8 artifact
fails an accuracy check (top-1 drop or agreement; latency is not something floating layers can fix),
the layers are ranked by :mod:`sensitivity` on a subset of the validation images and excluded from
quantization greedily, in rank order: the k most sensitive, k = 1, 2, ... up to the recipe's
``fallback.max_excluded_layers``. Each candidate is first checked quickly (its Q/DQ models, quantized
from the shared calibration, run in ONNX Runtime on every validation image against the gate's accuracy
thresholds); one that passes is built for real with the same exclusion list (``run_stages`` hands it to
``qdq_from_onnx`` for every flavour, so ONNX Runtime, OpenVINO and TensorRT all get the same layers
in float, with no Q/DQ on them), evaluated and gated like the plain build. The first candidate whose
real gate passes replaces the plain artifacts. When none does within the cap, the plain artifacts stay,
the gate fails (exit code 3) and the report lists every candidate tried.

The search is a function of the numbers: same model, images and recipe, same list.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..buildfolder.artifacts import Artifact
from ..evaluation.evaluate import compare_logits, topk_accuracy
from ..evaluation.gate import ACCURACY_METRICS, GateResult, accuracy_checks, apply_gates
from ..data.sampling import evenly_spaced
from .context import BuildContext
from .quantize import weight_range_for
from .steps import REFERENCE, evaluate_build, quantized_flavours, run_stages
from .sensitivity import (
    EVAL_BATCH,
    VariantQuantizer,
    analyze_sensitivity,
    attach_plot,
    run_onnx_model,
)

log = logging.getLogger(__name__)




def search_exclusions(ranking: Sequence[str], cap: int, attempt: Callable[[List[str]], Dict[str, Any]]) -> Dict[str, Any]:
    """Greedy search: try the k most sensitive layers in float, k = 1..cap, until ``attempt`` passes.

    ``attempt(excluded)`` returns a record with a boolean ``passed``. Returns ``{"passed", "excluded",
    "attempts"}``; ``excluded`` is empty when no candidate passed.
    """
    attempts: List[Dict[str, Any]] = []
    for k in range(1, min(cap, len(ranking)) + 1):
        record = attempt(list(ranking[:k]))
        attempts.append(record)
        if record["passed"]:
            return {"passed": True, "excluded": list(ranking[:k]), "attempts": attempts}
    return {"passed": False, "excluded": [], "attempts": attempts}


def quick_check(
    quantizer: VariantQuantizer, flavours: Sequence[str], excluded: Sequence[str], images: np.ndarray,
    labels: Optional[np.ndarray], reference: np.ndarray, gates: Dict[str, Any], ort_settings: Optional[Dict[str, Any]] = None,
    inference: Any = None,
) -> Dict[str, Any]:
    """The gate's accuracy checks on the Q/DQ model of each flavour with ``excluded`` in float, run in ONNX Runtime
    (in this process, or sharded by image over a distributed ``inference``'s workers)."""
    per_flavour: Dict[str, Dict[str, Any]] = {}
    ref_top1 = topk_accuracy(reference, labels, 1) if labels is not None else 1.0
    for fl in flavours:
        path = quantizer.quantize(fl, exclude=excluded)
        if inference is not None and getattr(inference, "distributed", False):
            from ..scale import ModelFiles

            logits = inference.logits(ModelFiles.of(f"candidate {fl} ({len(excluded)} layers in float)", "onnxruntime", path,
                                                    ort_settings), images, EVAL_BATCH)
        else:
            logits = run_onnx_model(path, images, ort_settings)
        cmp = compare_logits(logits, reference)
        top1 = topk_accuracy(logits, labels, 1) if labels is not None else cmp["agreement"]
        row = {"top1": top1, "top1_drop_pct": (ref_top1 - top1) * 100.0, "agreement": cmp["agreement"],
               "agreement_confident": cmp["agreement_confident"], "min_cosine": cmp["min_cosine"]}
        row["passed"] = all(c.passed for c in accuracy_checks(fl, row, ref_top1, gates))
        per_flavour[fl] = row
    return {"excluded": list(excluded), "quick": per_flavour, "quick_passed": all(v["passed"] for v in per_flavour.values())}


def _int8_accuracy_failures(gate: GateResult, results: List[Dict[str, Any]]) -> List[str]:
    int8 = {r["artifact"] for r in results if r.get("precision") == "int8"}
    return sorted({c.artifact for c in gate.failures() if c.metric in ACCURACY_METRICS and c.artifact in int8})


def _summary(results: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """What the report compares between the plain and the fallback build, per INT8 artifact."""
    out = {}
    for r in results:
        if r.get("precision") != "int8" or r.get("pending"):
            continue
        out[r["artifact"]] = {
            "top1": r["top1"], "agreement": r["agreement"], "max_abs_logit_diff": r["max_abs_logit_diff"],
            "latency_p50_ms": r["latency_ms"]["p50"], "throughput_ips": r["throughput_ips"], "size_bytes": r["size_bytes"],
        }
    return out


def _adopt(attempt_dir: Path, stage_dir: Path) -> None:
    """Move a fallback build's files over the plain build's (same layout, so artifact paths stay valid)."""
    for entry in sorted(attempt_dir.iterdir()):
        dst = stage_dir / entry.name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        os.replace(entry, dst)


def accuracy_fallback(
    ctx: BuildContext, artifacts: List[Artifact], results: List[Dict[str, Any]], gate: GateResult,
    analyze: Optional[bool] = None,
) -> Tuple[List[Artifact], List[Dict[str, Any]], GateResult]:
    """The build's fallback step (see the module doc). Returns the artifacts, results and gate to keep.

    ``analyze`` (the CLI's --sensitivity; None = the recipe's ``fallback.sensitivity``) runs and reports
    the sensitivity analysis even when the gate passed. Adds ``sensitivity`` and ``fallback`` to the
    context's report sections and writes the plot into its staging directory.
    """
    recipe, cal, valset, stage_dir = ctx.recipe, ctx.calibration, ctx.validation, ctx.staging
    stages, report_extra, notes, progress = ctx.timings, ctx.extra, ctx.notes, ctx.progress
    cfg = recipe.section("fallback")
    analyze = cfg["sensitivity"] if analyze is None else analyze
    failing = _int8_accuracy_failures(gate, results)
    flavours = sorted(set(quantized_flavours(recipe).values()))
    # Floating layers repairs INT8 accuracy only: a failing latency or FP32 check would fail every candidate.
    other = sorted({f"{c.artifact} {c.metric}" for c in gate.failures() if c.artifact not in failing or c.metric not in ACCURACY_METRICS})
    need = bool(failing) and not other and cfg["enabled"] and cfg["max_excluded_layers"] > 0
    if failing and not need:
        why = (f"the gate also fails on {', '.join(other)}, which leaving layers in float cannot fix" if other else
               f"the fallback is off (fallback.enabled = {cfg['enabled']}, max_excluded_layers = {cfg['max_excluded_layers']})")
        notes.append(f"INT8 failed the accuracy gate ({', '.join(failing)}); no fallback: {why}.")
    if not flavours or not (need or analyze):
        return artifacts, results, gate

    t_start = time.perf_counter()
    cal_cfg, gates = recipe.section("calibration"), recipe.section("gates")
    ort_settings = recipe.backend("onnxruntime")
    fp32 = next(a for a in artifacts if a.name == REFERENCE).abspath(stage_dir)
    quantizer = VariantQuantizer(fp32, cal.data, cal_cfg, weight_range=weight_range_for(recipe.section("quantize")))
    try:
        reference = ctx.reference_logits  # computed once, by the build's evaluation
        subset = evenly_spaced(len(valset.data), cfg["subset"])
        sens = analyze_sensitivity(
            fp32, cal.data, valset.data[subset], flavours, cal_cfg, cfg["measure"],
            ort_settings, quantizer=quantizer, reference=reference[subset], progress=progress, inference=ctx.inference,
        )
        report_extra["sensitivity"] = attach_plot(sens.to_dict(), stage_dir)
        stages["sensitivity"] = sens.seconds["total"]
        if not need:
            return artifacts, results, gate

        kept: Dict[str, Any] = {}

        def attempt(excluded: List[str]) -> Dict[str, Any]:
            record = quick_check(quantizer, flavours, excluded, valset.data, valset.labels, reference, gates, ort_settings,
                                 inference=ctx.inference)
            record.update(built=False, passed=False)
            if progress:
                progress("fallback: layers in float", len(excluded), cfg["max_excluded_layers"])
            if not record["quick_passed"]:
                log.info("fallback: %d layers in float: fails the quick check", len(excluded))
                return record
            attempt_dir = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.fallback-", dir=stage_dir.parent))
            try:
                trial = ctx.attempt(attempt_dir)
                arts = run_stages(trial, exclude_nodes=excluded)
                res = evaluate_build(trial, arts)
                new_gate = apply_gates(res, REFERENCE, gates)
                extra, more_notes = trial.extra, trial.notes
                record.update(built=True, passed=new_gate.passed, gate=new_gate.to_dict(), stages=trial.timings)
                log.info("fallback: %d layers in float: %s", len(excluded), new_gate.summary())
                if new_gate.passed:
                    _adopt(attempt_dir, stage_dir)
                    kept.update(artifacts=arts, results=res, gate=new_gate, extra=extra, notes=more_notes)
            finally:
                shutil.rmtree(attempt_dir, ignore_errors=True)
            return record

        search = search_exclusions(sens.ranking(), cfg["max_excluded_layers"], attempt)
    finally:
        quantizer.close()

    plain = _summary(results)
    fallback: Dict[str, Any] = {
        "triggered_by": failing,
        "max_excluded_layers": cfg["max_excluded_layers"],
        "flavours": flavours,
        "passed": search["passed"],
        "excluded": search["excluded"],
        "attempts": search["attempts"],
        "plain": {"gate": gate.to_dict(), "int8": plain},
        "seconds": time.perf_counter() - t_start,
    }
    stages["fallback"] = fallback["seconds"]
    if search["passed"]:
        final = _summary(kept["results"])
        fallback["final"] = {"gate": kept["gate"].to_dict(), "int8": final}
        fallback["recovered"] = {
            name: {
                "top1_plain": plain[name]["top1"], "top1_final": final[name]["top1"],
                "agreement_plain": plain[name]["agreement"], "agreement_final": final[name]["agreement"],
                "p50_ms_plain": plain[name]["latency_p50_ms"], "p50_ms_final": final[name]["latency_p50_ms"],
                "latency_cost_pct": (final[name]["latency_p50_ms"] / plain[name]["latency_p50_ms"] - 1.0) * 100.0,
            }
            for name in final if name in plain
        }
        report_extra.update(kept["extra"])
        attach_plot(report_extra["sensitivity"], stage_dir, highlight=search["excluded"])
        notes.extend(n for n in kept["notes"] if n not in notes)
        notes.append(f"Plain INT8 failed the gate; {len(search['excluded'])} layers left in float "
                     f"({', '.join(search['excluded'])}) made it pass. Every INT8 artifact uses that list.")
        report_extra["fallback"] = fallback
        return kept["artifacts"], kept["results"], kept["gate"]
    notes.append(f"Plain INT8 failed the gate and the fallback tried up to {len(search['attempts'])} layers in float "
                 f"(cap fallback.max_excluded_layers = {cfg['max_excluded_layers']}) without passing; the artifacts are the plain INT8 ones.")
    report_extra["fallback"] = fallback
    return artifacts, results, gate


# ------------------------------------------------------------------------------------------ rendering


def markdown_section(fb: Dict[str, Any]) -> List[str]:
    """'## Accuracy fallback': what failed, what was tried, what it recovered and what it cost."""
    lines = ["## Accuracy fallback", ""]
    trig = ", ".join(f"`{a}`" for a in fb["triggered_by"])
    if fb["passed"]:
        lines.append(f"Plain INT8 failed the accuracy gate ({trig}). Leaving **{len(fb['excluded'])} layers** in float "
                     "(no Q/DQ on them, in every INT8 artifact) made the gate pass:")
        lines += [""] + [f"{i}. `{n}`" for i, n in enumerate(fb["excluded"], 1)]
    else:
        lines.append(f"Plain INT8 failed the accuracy gate ({trig}); no candidate up to the cap of "
                     f"{fb['max_excluded_layers']} layers in float passed, so the gate **fails** and the artifacts are the plain INT8 ones.")
    lines += ["", "Candidates tried (most sensitive layers first; the quick check runs the Q/DQ models in ONNX Runtime "
              "on every validation image, a candidate that passes it is built and gated for real):", "",
              "| layers in float | " + " | ".join(f"quick top-1 drop / agree ({fl})" for fl in fb["flavours"]) + " | quick | built | gate |",
              "|---|" + "---|" * len(fb["flavours"]) + "---|---|---|"]
    for a in fb["attempts"]:
        cells = [f"{a['quick'][fl]['top1_drop_pct']:.2f} pp / {a['quick'][fl]['agreement'] * 100:.1f}%" for fl in fb["flavours"]]
        gate = ("pass" if a["passed"] else "FAIL") if a.get("built") else ""
        lines.append(f"| {len(a['excluded'])} (+`{a['excluded'][-1]}`) | " + " | ".join(cells)
                     + f" | {'pass' if a['quick_passed'] else 'fail'} | {'yes' if a.get('built') else 'no'} | {gate} |")
    if fb.get("recovered"):
        lines += ["", "What the fallback recovered and what it cost (plain INT8 -> with the layers in float):", "",
                  "| artifact | top-1 | agreement | p50 ms | latency cost |", "|---|---|---|---|---|"]
        for name, r in fb["recovered"].items():
            lines.append(f"| {name} | {r['top1_plain'] * 100:.2f} -> {r['top1_final'] * 100:.2f} | "
                         f"{r['agreement_plain'] * 100:.2f} -> {r['agreement_final'] * 100:.2f} | "
                         f"{r['p50_ms_plain']:.2f} -> {r['p50_ms_final']:.2f} | {r['latency_cost_pct']:+.1f}% |")
    lines += ["", f"The fallback took {fb['seconds']:.1f} s.", ""]
    return lines


def markdown_sections(report: Dict[str, Any]) -> List[str]:
    """The report.md sections of accuracy-driven quantization (fallback, then sensitivity)."""
    from .sensitivity import markdown_section as sensitivity_section

    lines: List[str] = []
    if report.get("fallback"):
        lines += markdown_section(report["fallback"])
    if report.get("sensitivity"):
        lines += sensitivity_section(report["sensitivity"])
    return lines
