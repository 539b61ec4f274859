"""`compile --bundle` where TensorRT (or the GPU) is missing: every check that does not need TensorRT.

The bundle's hashes are verified (read_bundle), the golden inputs go through the bundle's FP32, FP16, Q/DQ and
Q/DQ-FP16 models with ONNX Runtime (CPU) against the recipe's golden tolerances, and the device report says
plainly that the TensorRT engines were not built and why: their rows are "pending on device", their checks are
skipped with that reason. No engine is made and nothing stands in for TensorRT. All checks passing is exit 7
(errors.EXIT_PENDING_ON_DEVICE), a failed one 3. Needs numpy and onnxruntime; runs on Python 3.8.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from typing import Any, Dict, List, Optional

from .. import backends
from ..errors import MissingDependencyError
from ..evaluation.evaluate import Metrics, TimingConfig, compare_logits, measure_latency, topk_accuracy
from ..evaluation.gate import Check, GateResult, skipped_check
from ..progress import Progress
from .bundle import FP16_ONNX, FP32_ONNX, QDQ_FP16_ONNX, QDQ_ONNX, Bundle

log = logging.getLogger(__name__)

#: bundle model -> (file, tolerances it is held to, precision, gated). The FP32 model has no tolerance of its own in
#: the recipe: it is held to the FP16 one, the tightest there is (ONNX Runtime on the workstation made the
#: references, so it should match to float rounding). The Q/DQ model with FP16 regions (strongly typed TensorRT
#: 11's input) is run and reported but not gated: ONNX Runtime's CPU kernels disagree across versions on FP16 Q/DQ
#: (the demo's golden images vs the FP32 references: onnxruntime 1.19.2 max |diff| 1.75, 1.23.2 1.71, 1.32.0 0.248),
#: so only TensorRT 11 on the device can judge it.
GOLDEN_MODELS = (
    ("fp32", FP32_ONNX, "fp16", "fp32", True),
    ("fp16", FP16_ONNX, "fp16", "fp16", True),
    ("qdq", QDQ_ONNX, "int8", "int8", True),
    ("qdq-fp16", QDQ_FP16_ONNX, "int8", "int8", False),
)
ROW_PREFIX = "bundle-onnxruntime-"


def golden_checks(name: str, precision: str, cmp: Dict[str, float], cfg: Dict[str, Any]) -> List[Check]:
    """The recipe's golden tolerances for one engine's logits compared with the FP32 references."""
    agree, tol_abs, tol_cos = cfg["golden_min_agreement"], cfg[f"{precision}_max_abs_diff"], cfg[f"{precision}_min_cosine"]
    return [
        Check(name, "golden_agreement", cmp["agreement"], float(agree), ">=", cmp["agreement"] >= agree - 1e-9),
        Check(name, "golden_max_abs_logit_diff", cmp["max_abs_logit_diff"], float(tol_abs), "<=",
              cmp["max_abs_logit_diff"] <= tol_abs),
        Check(name, "golden_min_cosine", cmp["min_cosine"], float(tol_cos), ">=", cmp["min_cosine"] >= tol_cos),
    ]


def machine_without_tensorrt(facts: Any) -> Dict[str, Any]:
    """What this machine is, for the device report (no TensorRT to ask): ``facts`` from device_facts.detect."""
    versions: Dict[str, Any] = {"python": platform.python_version()}
    for mod in ("numpy", "onnxruntime"):
        m = sys.modules.get(mod)
        versions[mod] = getattr(m, "__version__", None) if m is not None else None
    return {"tensorrt_version": None, "gpu": None, "jetson": facts.jetson, "l4t": facts.l4t, "device_model": facts.model,
            "machine": platform.machine(), "system": platform.system(), "versions": versions}


def _ungated_note(b: Bundle, key: str, rel: str, name: str, cmp: Dict[str, float], tolerance: str) -> str:
    """Why a model is reported but not gated here (FP16 Q/DQ: ONNX Runtime's CPU kernels are no reference)."""
    cfg = b.tensorrt
    ws = (b.info.get("strongly_typed_models") or {}).get(key) or {}
    return (f"{rel} ({name}) is reported, not gated, without TensorRT: ONNX Runtime's CPU kernels are no reference "
            f"for FP16 Q/DQ. Here max |diff| {cmp['max_abs_logit_diff']:.3g}, min cosine {cmp['min_cosine']:.4f} vs "
            f"the FP32 references (recipe: <= {cfg[f'{tolerance}_max_abs_diff']}, >= {cfg[f'{tolerance}_min_cosine']})"
            + (f"; the workstation's ONNX Runtime measured max |diff| {ws['max_abs_logit_diff']:.3g} vs "
               f"{ws.get('against')}" if ws.get("max_abs_logit_diff") is not None else "")
            + ". Strongly typed TensorRT (11.x) builds and checks it on the device.")


def check_without_tensorrt(b: Bundle, why: str, progress: Progress = None,
                           engines: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Run the golden checks with ONNX Runtime; returns the pieces of the device report (rows, gate, notes, stages).

    ``engines``: the engines this device would build (its engine plan); default every engine of the bundle.
    """
    engines = b.info["engines"] if engines is None else engines
    ort_backend = backends.get("onnxruntime")
    if not ort_backend.available():
        raise MissingDependencyError(
            f"TensorRT is not usable here ({why}), and onnxruntime, which checks the bundle's models without it, is not "
            "installed either: pip3 install onnxruntime (or run this where JetPack's TensorRT is)."
        )
    t0 = time.perf_counter()
    cfg = b.tensorrt
    golden = b.golden
    settings = dict(ort_backend.defaults, **(b.recipe.get("backends", {}).get("onnxruntime") or {}))
    # A short timing: this is ONNX Runtime on the device's CPU (a sanity number), not an engine's latency.
    timing = TimingConfig(warmup=2, iterations=10, batch_size=max(1, min(int(b.recipe["evaluation"]["batch_size"]),
                                                                          len(golden.inputs))))
    rows: List[Dict[str, Any]] = []
    checks: List[Check] = []
    stages: Dict[str, float] = {}
    present = [m for m in GOLDEN_MODELS if b.path(m[1]).is_file()]
    ungated: List[str] = []
    for i, (key, rel, tolerance, precision, gated) in enumerate(present):
        name = ROW_PREFIX + key
        t = time.perf_counter()
        with ort_backend.load(b.path(rel), settings) as runner:
            logits = runner.infer(golden.inputs)
            timed = measure_latency(runner, golden.inputs, timing)
            details = dict(runner.details, file=rel, role="the bundle's model run by ONNX Runtime on this device's CPU "
                           "(its latency is not an engine's)", tolerances=tolerance)
        cmp = compare_logits(logits, golden.reference_fp32)
        if key.startswith("qdq") and golden.reference_qdq is not None:
            details["vs_int8_qdq_reference"] = {k: float(v) for k, v in compare_logits(logits, golden.reference_qdq).items()}
        labels = golden.labels
        m = Metrics(
            artifact=name, backend="onnxruntime", precision=precision, images=int(len(logits)),
            top1=topk_accuracy(logits, labels, 1) if labels is not None else float("nan"),
            top5=topk_accuracy(logits, labels, 5) if labels is not None else float("nan"),
            size_bytes=b.path(rel).stat().st_size, details=details, **cmp, **timed,
        )
        row = m.to_dict()
        row["details"]["gated"] = gated
        rows.append(row)
        if gated:
            checks += golden_checks(name, tolerance, cmp, cfg)
        else:
            ungated.append(_ungated_note(b, key, rel, name, cmp, tolerance))
        stages[f"check {rel}"] = time.perf_counter() - t
        if progress:
            progress("golden checks (ONNX Runtime)", i + 1, len(present))
        log.info("%s: golden max|diff| %.4g, min cos %.6f", rel, cmp["max_abs_logit_diff"], cmp["min_cosine"])
    reason = f"TensorRT engines were not built: {why}"
    metrics = ("golden_agreement", "golden_max_abs_logit_diff", "golden_min_cosine")
    for spec in engines:
        rows.append({"artifact": spec["name"], "backend": "tensorrt", "precision": spec["precision"], "pending": True,
                     "reason": reason, "details": {"engine": spec}})
        tol = "fp16" if spec["precision"] == "fp16" else "int8"
        thresholds = (cfg["golden_min_agreement"], cfg[f"{tol}_max_abs_diff"], cfg[f"{tol}_min_cosine"])
        for metric, thr, op in zip(metrics, thresholds, (">=", "<=", ">=")):
            checks.append(skipped_check(spec["name"], metric, thr, op, reason))
    stages["total"] = time.perf_counter() - t0
    gate = GateResult(all(c.passed for c in checks), checks)
    verdict = "passed" if gate.passed else "FAILED"
    notes = [
        f"The TensorRT engines ({', '.join(s['name'] for s in engines) or 'none'}) were NOT built on this machine: {why}. "
        "Their rows are pending on device and their checks skipped; run `resnext-deploy compile --bundle` where "
        "JetPack's TensorRT and the GPU are to build, check and time them.",
        f"Checked without TensorRT: every file's sha256 against manifest.json, and the golden inputs through "
        f"{', '.join(m[1] for m in present if m[4])} with ONNX Runtime {getattr(sys.modules.get('onnxruntime'), '__version__', '')} "
        f"(CPU) against the recipe's tolerances: {verdict}.",
    ] + ungated
    return {"rows": rows, "gate": gate, "notes": notes, "stages": stages, "reason": reason}
