"""Accuracy-driven quantization: when INT8 fails the gate, leave the most sensitive layers in float.

``build()`` calls :func:`accuracy_fallback` after gating the plain INT8 build. When an INT8 artifact
fails an accuracy check (top-1 drop or agreement; latency is not something floating layers can fix),
the layers are ranked by :mod:`sensitivity` on a subset of the validation images and proposed in that
order, most harmful first by the gated metric (the agreement lost with only that layer quantized, then
the logit noise). The search is greedy and monotonic on the gated metric measured on the gated images:

* each candidate adds one layer to the list kept so far; its Q/DQ models (one per activation flavour, from
  the shared calibration, with the recipe's bias correction) are compiled by every gated INT8 backend that
  runs here (ONNX Runtime, OpenVINO; a backend that builds on the device is stood in for by ONNX Runtime on
  its flavour) and measured on every validation image against the gate's accuracy thresholds;
* the layer is kept only if no gated backend gets worse (lower top-1 or lower agreement than the list kept
  so far, plain INT8 at the start); otherwise it is proposed again together with the next one (two layers
  around one tensor only help together: ONNX Runtime keeps the tensor's Q/DQ pair while either is
  quantized), the oldest such layer dropped when the cap is reached. So the kept attempts never get worse
  as layers are added, and each records what its layers bought per backend;
* a kept candidate that passes this quick check is built for real with the same list (``run_stages``
  hands it to ``qdq_from_onnx`` for every flavour), evaluated and gated like the plain build. The first
  whose real gate passes replaces the plain artifacts.

At most ``fallback.max_excluded_layers`` layers are kept and twice as many candidates measured. When none
passes, the plain artifacts stay, the gate fails (exit code 3) and the report lists every candidate tried.
The search is a function of the numbers: same model, images and recipe, same list.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact
from ..evaluation.evaluate import compare_logits, predict_all, topk_accuracy
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
    candidate_order,
)

log = logging.getLogger(__name__)

#: candidates measured per layer the search may keep (a dropped candidate costs one quick check)
CANDIDATES_PER_LAYER = 2


class Target(NamedTuple):
    """One gated INT8 artifact as the quick check measures it: the backend that runs it and its Q/DQ flavour."""

    backend: str
    flavour: str
    settings: Dict[str, Any]


def gated_targets(recipe: Any) -> Dict[str, Target]:
    """``{"<backend>-int8": Target}`` for every INT8 artifact the recipe builds. A backend that builds on the
    device only (or is not installed here) is measured by ONNX Runtime on its flavour, as the build's own stand-in."""
    out: Dict[str, Target] = {}
    for name, flavour in sorted(quantized_flavours(recipe).items()):
        be = backends.get(name)
        runs_here = not be.builds_on_device and be.available()
        out[f"{name}-int8"] = Target(name if runs_here else "onnxruntime", flavour,
                                     recipe.backend(name if runs_here else "onnxruntime"))
    return out


def _target_logits(target: Target, path: Path, images: np.ndarray, label: str, inference: Any, work: Path) -> np.ndarray:
    """Logits of the Q/DQ model at ``path`` compiled by ``target``'s backend, as the build would compile it."""
    be = backends.get(target.backend)
    src = Artifact.from_files("candidate", [path], None, kind="onnx-qdq", backend="onnx", precision="int8")
    art = be.compile(src, work / target.backend, "int8", target.settings, root=work)
    if inference is not None and getattr(inference, "distributed", False):
        from ..scale import ModelFiles

        model = ModelFiles.of(label, target.backend, art.abspath(work), target.settings)
        return inference.logits(model, images, EVAL_BATCH)
    with be.load(art.abspath(work), target.settings) as runner:
        return predict_all(runner, images, EVAL_BATCH)


def quick_check(
    quantizer: VariantQuantizer, targets: Any, excluded: Sequence[str], images: np.ndarray,
    labels: Optional[np.ndarray], reference: np.ndarray, gates: Dict[str, Any], ort_settings: Optional[Dict[str, Any]] = None,
    inference: Any = None, bias_correction: bool = False,
) -> Dict[str, Any]:
    """The gate's accuracy checks on each target with ``excluded`` in float, on every image in ``images``.

    ``targets``: ``{label: Target}`` (gated_targets), or a list of flavours, each run in ONNX Runtime with
    ``ort_settings`` under its own name. Returns ``{"excluded", "quick": {label: row}, "quick_passed"}``.
    """
    if not isinstance(targets, dict):
        targets = {fl: Target("onnxruntime", fl, dict(ort_settings or {})) for fl in targets}
    per_target: Dict[str, Dict[str, Any]] = {}
    ref_top1 = topk_accuracy(reference, labels, 1) if labels is not None else 1.0
    paths = {fl: quantizer.quantize(fl, exclude=excluded, bias_correction=bias_correction)
             for fl in sorted({t.flavour for t in targets.values()})}
    for label, target in targets.items():
        with tempfile.TemporaryDirectory(prefix="resnext-deploy-candidate-") as work:
            logits = _target_logits(target, paths[target.flavour], images,
                                    f"candidate {label} ({len(excluded)} layers in float)", inference, Path(work))
        cmp = compare_logits(logits, reference)
        top1 = topk_accuracy(logits, labels, 1) if labels is not None else cmp["agreement"]
        row = {"backend": target.backend, "flavour": target.flavour, "top1": top1, "top1_drop_pct": (ref_top1 - top1) * 100.0,
               "agreement": cmp["agreement"], "agreement_confident": cmp["agreement_confident"], "min_cosine": cmp["min_cosine"]}
        row["passed"] = all(c.passed for c in accuracy_checks(label, row, ref_top1, gates))
        per_target[label] = row
    return {"excluded": list(excluded), "quick": per_target, "quick_passed": all(v["passed"] for v in per_target.values())}


def bought(record: Dict[str, Any], before: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """What ``record``'s last layer changed against ``before``, per target: top-1 and agreement in points."""
    return {k: {"top1_pp": (r["top1"] - before["quick"][k]["top1"]) * 100.0,
                "agreement_pp": (r["agreement"] - before["quick"][k]["agreement"]) * 100.0}
            for k, r in record["quick"].items()}


def search_exclusions(
    ranking: Sequence[str], cap: int, measure: Callable[[List[str]], Dict[str, Any]], baseline: Dict[str, Any],
    confirm: Optional[Callable[[List[str], Dict[str, Any]], bool]] = None,
) -> Dict[str, Any]:
    """Greedy, monotonic search (see the module doc) from ``baseline``, the plain INT8's quick check.

    ``measure(excluded)`` returns a quick-check record (quick_check). A layer is kept only when no target's
    top-1 or agreement falls below the last kept record's; a kept record that passes the quick check is
    ``passed`` when ``confirm(excluded, record)`` says so (the real build; None = the quick check decides).
    The layers of a candidate not kept are proposed again with the next one (oldest dropped first when the cap
    is reached): two layers around one tensor only help together (ONNX Runtime keeps the tensor's Q/DQ pair
    while either is quantized), and neither does one repaired block while another still breaks the model.
    Returns ``{"passed", "excluded", "attempts"}``; each attempt names the layer it ``added``, whether it was
    ``kept`` and what it ``bought``; ``excluded`` is empty when no candidate passed.
    """
    attempts: List[Dict[str, Any]] = []
    kept: List[str] = []
    pending: List[str] = []  # layers of candidates not kept: proposed again with the next one, oldest dropped first
    current = baseline
    for layer in list(ranking)[: cap * CANDIDATES_PER_LAYER]:
        if len(kept) >= cap:
            break
        pending = (pending + [layer])[-(cap - len(kept)):]
        record = measure(kept + pending)
        record.update(added=layer, bought=bought(record, current), built=False, passed=False)
        record["kept"] = all(b["top1_pp"] >= 0 and b["agreement_pp"] >= 0 for b in record["bought"].values())
        attempts.append(record)
        if not record["kept"]:
            log.info("fallback: %s not kept: a gated backend got worse with it in float", " + ".join(pending))
            continue
        kept, pending, current = kept + pending, [], record
        if record["quick_passed"]:
            record["passed"] = confirm(list(kept), record) if confirm else True
            if record["passed"]:
                return {"passed": True, "excluded": list(kept), "attempts": attempts}
    return {"passed": False, "excluded": [], "attempts": attempts}


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


def _needed(ctx: BuildContext, results: List[Dict[str, Any]], gate: GateResult) -> Tuple[List[str], bool]:
    """The INT8 artifacts failing on accuracy, and whether the fallback runs (notes why not when it cannot)."""
    cfg = ctx.recipe.section("fallback")
    failing = _int8_accuracy_failures(gate, results)
    # Floating layers repairs INT8 accuracy only: a failing latency or FP32 check would fail every candidate.
    other = sorted({f"{c.artifact} {c.metric}" for c in gate.failures() if c.artifact not in failing or c.metric not in ACCURACY_METRICS})
    need = bool(failing) and not other and cfg["enabled"] and cfg["max_excluded_layers"] > 0
    if failing and not need:
        why = (f"the gate also fails on {', '.join(other)}, which leaving layers in float cannot fix" if other else
               f"the fallback is off (fallback.enabled = {cfg['enabled']}, max_excluded_layers = {cfg['max_excluded_layers']})")
        ctx.notes.append(f"INT8 failed the accuracy gate ({', '.join(failing)}); no fallback: {why}.")
    return failing, need


def _build_attempt(ctx: BuildContext, excluded: List[str], record: Dict[str, Any], kept: Dict[str, Any]) -> None:
    """Build, evaluate and gate ``excluded`` for real; on a pass adopt its files and fill ``kept``."""
    attempt_dir = Path(tempfile.mkdtemp(prefix=f".{ctx.staging.name}.fallback-", dir=ctx.staging.parent))
    try:
        trial = ctx.attempt(attempt_dir)
        arts = run_stages(trial, exclude_nodes=excluded)
        res = evaluate_build(trial, arts)
        new_gate = apply_gates(res, REFERENCE, ctx.recipe.section("gates"))
        record.update(built=True, passed=new_gate.passed, gate=new_gate.to_dict(), stages=trial.timings)
        log.info("fallback: %d layers in float: %s", len(excluded), new_gate.summary())
        if new_gate.passed:
            _adopt(attempt_dir, ctx.staging)
            kept.update(artifacts=arts, results=res, gate=new_gate, extra=trial.extra, notes=trial.notes)
    finally:
        shutil.rmtree(attempt_dir, ignore_errors=True)


def _search(ctx: BuildContext, quantizer: VariantQuantizer, sens: Any, kept: Dict[str, Any]) -> Dict[str, Any]:
    """The build's monotonic search: quick checks on every gated backend, real builds of the kept passes."""
    cfg, val = ctx.recipe.section("fallback"), ctx.validation
    targets, gates = gated_targets(ctx.recipe), ctx.recipe.section("gates")
    bias = bool(ctx.recipe.section("quantize")["bias_correction"])

    def measure(excluded: List[str]) -> Dict[str, Any]:
        if ctx.progress:
            ctx.progress("fallback: layers in float", len(excluded), cfg["max_excluded_layers"])
        return quick_check(quantizer, targets, excluded, val.data, val.labels, ctx.reference_logits, gates,
                           inference=ctx.inference, bias_correction=bias)

    def confirm(excluded: List[str], record: Dict[str, Any]) -> bool:
        _build_attempt(ctx, excluded, record, kept)
        return bool(record["passed"])

    plain = measure([])  # plain INT8, measured like every candidate
    found = search_exclusions(candidate_order(sens.to_dict()), cfg["max_excluded_layers"], measure, plain, confirm)
    found["plain_quick"] = plain["quick"]
    return found


def _recovered(plain: Dict[str, Any], final: Dict[str, Any]) -> Dict[str, Any]:
    return {
        name: {
            "top1_plain": plain[name]["top1"], "top1_final": final[name]["top1"],
            "agreement_plain": plain[name]["agreement"], "agreement_final": final[name]["agreement"],
            "p50_ms_plain": plain[name]["latency_p50_ms"], "p50_ms_final": final[name]["latency_p50_ms"],
            "latency_cost_pct": (final[name]["latency_p50_ms"] / plain[name]["latency_p50_ms"] - 1.0) * 100.0,
        }
        for name in final if name in plain
    }


def accuracy_fallback(
    ctx: BuildContext, artifacts: List[Artifact], results: List[Dict[str, Any]], gate: GateResult,
    analyze: Optional[bool] = None,
) -> Tuple[List[Artifact], List[Dict[str, Any]], GateResult]:
    """The build's fallback step (see the module doc). Returns the artifacts, results and gate to keep.

    ``analyze`` (the CLI's --sensitivity; None = the recipe's ``fallback.sensitivity``) runs and reports
    the sensitivity analysis even when the gate passed. Adds ``sensitivity`` and ``fallback`` to the
    context's report sections and writes the plot into its staging directory.
    """
    recipe, stage_dir = ctx.recipe, ctx.staging
    cfg = recipe.section("fallback")
    analyze = cfg["sensitivity"] if analyze is None else analyze
    failing, need = _needed(ctx, results, gate)
    flavours = sorted(set(quantized_flavours(recipe).values()))
    if not flavours or not (need or analyze):
        return artifacts, results, gate
    t_start = time.perf_counter()
    cal_cfg = recipe.section("calibration")
    fp32 = next(a for a in artifacts if a.name == REFERENCE).abspath(stage_dir)
    quantizer = VariantQuantizer(fp32, ctx.calibration.data, cal_cfg, weight_range=weight_range_for(recipe.section("quantize")))
    kept: Dict[str, Any] = {}
    try:
        subset = evenly_spaced(len(ctx.validation.data), cfg["subset"])
        sens = analyze_sensitivity(
            fp32, ctx.calibration.data, ctx.validation.data[subset], flavours, cal_cfg, cfg["measure"], recipe.backend("onnxruntime"),
            quantizer=quantizer, reference=ctx.reference_logits[subset], progress=ctx.progress, inference=ctx.inference,
        )
        ctx.extra["sensitivity"] = attach_plot(sens.to_dict(), stage_dir)
        ctx.timings["sensitivity"] = sens.seconds["total"]
        if not need:
            return artifacts, results, gate
        search = _search(ctx, quantizer, sens, kept)
    finally:
        quantizer.close()
    plain = _summary(results)
    fallback: Dict[str, Any] = {
        "triggered_by": failing, "max_excluded_layers": cfg["max_excluded_layers"], "flavours": flavours,
        "targets": sorted(search["plain_quick"]), "plain_quick": search["plain_quick"],
        "passed": search["passed"], "excluded": search["excluded"], "attempts": search["attempts"],
        "plain": {"gate": gate.to_dict(), "int8": plain}, "seconds": time.perf_counter() - t_start,
    }
    ctx.timings["fallback"] = fallback["seconds"]
    ctx.extra["fallback"] = fallback
    if not search["passed"]:
        ctx.notes.append(f"Plain INT8 failed the gate and the fallback tried {len(search['attempts'])} candidates "
                         f"(cap fallback.max_excluded_layers = {cfg['max_excluded_layers']}) without passing; the artifacts are the plain INT8 ones.")
        return artifacts, results, gate
    fallback["final"] = {"gate": kept["gate"].to_dict(), "int8": _summary(kept["results"])}
    fallback["recovered"] = _recovered(plain, fallback["final"]["int8"])
    ctx.extra.update({k: v for k, v in kept["extra"].items() if k not in ("sensitivity", "fallback")})
    attach_plot(ctx.extra["sensitivity"], stage_dir, highlight=search["excluded"])
    ctx.notes.extend(n for n in kept["notes"] if n not in ctx.notes)
    ctx.notes.append(f"Plain INT8 failed the gate; {len(search['excluded'])} layers left in float "
                     f"({', '.join(search['excluded'])}) made it pass. Every INT8 artifact uses that list.")
    return kept["artifacts"], kept["results"], kept["gate"]


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
    lines += ["", "Candidates tried, most harmful first. Each adds one layer to the list kept so far (with the layers of "
              "the last candidate not kept, which only help together with it); its Q/DQ models are compiled by every gated "
              "backend and measured on every validation image. A candidate is kept only if no backend gets worse; in brackets "
              "what it bought against the last kept list (top-1 / agreement, in points). A kept candidate that passes this "
              "quick check is built and gated for real.", ""]
    lines += attempts_table(fb)
    if fb.get("recovered"):
        lines += ["", "What the fallback recovered and what it cost (plain INT8 -> with the layers in float):", "",
                  "| artifact | top-1 | agreement | p50 ms | latency cost |", "|---|---|---|---|---|"]
        for name, r in fb["recovered"].items():
            lines.append(f"| {name} | {r['top1_plain'] * 100:.2f} -> {r['top1_final'] * 100:.2f} | "
                         f"{r['agreement_plain'] * 100:.2f} -> {r['agreement_final'] * 100:.2f} | "
                         f"{r['p50_ms_plain']:.2f} -> {r['p50_ms_final']:.2f} | {r['latency_cost_pct']:+.1f}% |")
    lines += ["", f"The fallback took {fb['seconds']:.1f} s.", ""]
    return lines


def _cell(row: Dict[str, Any], gain: Optional[Dict[str, float]]) -> str:
    text = f"{row['top1_drop_pct']:.2f} pp / {row['agreement'] * 100:.1f}%"
    return text + (f" ({gain['top1_pp']:+.1f} / {gain['agreement_pp']:+.1f})" if gain else "")


def attempts_table(fb: Dict[str, Any]) -> List[str]:
    """One row per candidate: the layer added, the layers in float, the gated metric per backend and what the
    layer bought (top-1 and agreement, in points, against the last kept list), kept or dropped, built, gate."""
    targets = fb.get("targets") or (sorted(fb["attempts"][0]["quick"]) if fb["attempts"] else [])
    lines = ["| # | layer added | layers in float | " + " | ".join(f"{t}: top-1 drop / agree (bought)" for t in targets)
             + " | kept | built | gate |", "|---|---|---|" + "---|" * len(targets) + "---|---|---|"]
    if fb.get("plain_quick"):
        lines.append("| 0 | (plain INT8) | 0 | " + " | ".join(_cell(fb["plain_quick"][t], None) for t in targets) + " | | | |")
    for i, a in enumerate(fb["attempts"], 1):
        cells = [_cell(a["quick"][t], a.get("bought", {}).get(t)) for t in targets]
        gate = ("pass" if a["passed"] else "FAIL") if a.get("built") else ""
        lines.append(f"| {i} | `{a.get('added', a['excluded'][-1])}` | {len(a['excluded'])} | " + " | ".join(cells)
                     + f" | {'yes' if a.get('kept', True) else 'no (worse)'} | {'yes' if a.get('built') else 'no'} | {gate} |")
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
