"""Gates: the recipe's thresholds applied to the evaluation, as a pass/fail with every check listed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Check:
    artifact: str
    metric: str
    value: Optional[float]  # None when skipped
    threshold: float
    op: str  # "<=" or ">="
    passed: bool
    #: why the check could not run here (e.g. an engine pending on the device); a skipped check has passed=True
    #: (it does not fail the gate) and value None
    skipped: Optional[str] = None
    #: why a check that was due could not be computed (e.g. top1_ratio with a float top-1 of 0): such a check has
    #: value None and passed=False, so it fails the gate instead of vanishing from it
    reason: Optional[str] = None

    def value_text(self) -> str:
        """The value as reports show it: '' when skipped, 'n/a' when it could not be computed."""
        if self.skipped:
            return ""
        return "n/a" if self.value is None else f"{self.value:.4g}"

    def result_text(self) -> str:
        """'pass', '**FAIL**', '**FAIL**: <reason>' or 'skipped: <reason>' (the Markdown tables' last column)."""
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.passed:
            return "pass"
        return f"**FAIL**: {self.reason}" if self.reason else "**FAIL**"

    def line(self) -> str:
        """The check as the console and CI outputs state it, e.g. ``openvino-int8: agreement = 0.9 (needs >= 0.98)``."""
        if self.skipped:
            return f"{self.artifact}: {self.metric} skipped ({self.skipped})"
        if self.value is None:
            return f"{self.artifact}: {self.metric} could not be computed: {self.reason or 'no value'} (needs {self.op} {self.threshold:g})"
        return f"{self.artifact}: {self.metric} = {self.value:.4g} (needs {self.op} {self.threshold:g})"


def skipped_check(artifact: str, metric: str, threshold: float, op: str, why: str) -> Check:
    return Check(artifact, metric, None, float(threshold), op, True, why)


def uncomputable_check(artifact: str, metric: str, threshold: float, op: str, why: str) -> Check:
    """A check that was due but cannot be computed: failed, with ``why`` (never dropped from the gate)."""
    return Check(artifact, metric, None, float(threshold), op, False, None, why)


@dataclass
class GateResult:
    passed: bool
    checks: List[Check] = field(default_factory=list)

    def failures(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    def skipped(self) -> List[Check]:
        return [c for c in self.checks if c.skipped]

    def to_dict(self) -> Dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GateResult":
        return cls(bool(d["passed"]), [Check(**c) for c in d.get("checks", [])])

    def summary(self) -> str:
        if self.passed:
            n_skipped = len(self.skipped())
            return f"gate PASSED ({len(self.checks)} checks" + (f", {n_skipped} skipped)" if n_skipped else ")")
        return "gate FAILED: " + "; ".join(c.line() for c in self.failures())


#: the checks a build's accuracy gate makes (the accuracy fallback repairs these; latency it cannot)
ACCURACY_METRICS = ("top1_drop_pct", "top1_ratio", "agreement", "agreement_confident", "min_cosine")


def accuracy_checks(artifact: str, row: Dict[str, Any], ref_top1: float, gates: Dict[str, Any]) -> List[Check]:
    """The gate's accuracy checks of one result row against the float reference's top-1.

    - top1_drop_pct: top-1 lost in percentage points (NNCF's accuracy control: an absolute max drop);
    - top1_ratio: INT8 top-1 / float top-1 (MLPerf's rule: >= 99 %), when ``min_top1_ratio`` > 0;
    - agreement: share of all images with the float model's top-1;
    - agreement_confident: the same on images the float model is confident about (evaluate.CONFIDENT_MARGIN),
      when ``min_agreement_confident`` > 0 and the row has it;
    - min_cosine: the lowest per-image cosine between the artifact's and the float model's logits, when
      ``min_cosine`` > 0 and the row has it. Saturating INT8 kernels (full-range weights on AVX2) keep top-1 and
      confident agreement but bend a few images' logits: this is the check that sees them.
    Used by the build's gate, the fallback's quick check and the accuracy study, so they agree on "passed".
    """
    checks: List[Check] = []
    drop = (ref_top1 - row["top1"]) * 100.0
    checks.append(Check(artifact, "top1_drop_pct", drop, float(gates["max_top1_drop"]), "<=", drop <= gates["max_top1_drop"] + 1e-9))
    ratio_min = float(gates.get("min_top1_ratio") or 0)
    if ratio_min > 0 and ref_top1 > 0:
        ratio = row["top1"] / ref_top1
        checks.append(Check(artifact, "top1_ratio", ratio, ratio_min, ">=", ratio >= ratio_min - 1e-9))
    elif ratio_min > 0:  # a ratio to nothing: the float model gets no image right, so the labels are suspect
        checks.append(uncomputable_check(
            artifact, "top1_ratio", ratio_min, ">=",
            f"the float reference's top-1 is {ref_top1:.4g}, so the ratio is undefined (do the validation labels match the model?)"))
    checks.append(Check(artifact, "agreement", row["agreement"], float(gates["min_agreement"]), ">=",
                        row["agreement"] >= gates["min_agreement"] - 1e-9))
    for metric, key in (("agreement_confident", "min_agreement_confident"), ("min_cosine", "min_cosine")):
        minimum = float(gates.get(key) or 0)
        if minimum <= 0:  # 0 = the recipe turned this check off
            continue
        if row.get(metric) is None:  # a result written before the metric was measured: said, not dropped
            checks.append(skipped_check(artifact, metric, minimum, ">=", f"the result has no {metric} (measured by newer versions)"))
            continue
        value = float(row[metric])
        checks.append(Check(artifact, metric, value, minimum, ">=", value >= minimum - 1e-9))
    return checks


def gate_description(gates: Dict[str, Any]) -> str:
    """The accuracy gate in words: 'top-1 drop <= 1 pp, top-1 >= 99% of float, agreement >= 95% (>= 99% confident)'."""
    parts = [f"top-1 drop <= {gates['max_top1_drop']:g} pp"]
    if gates.get("min_top1_ratio"):
        parts.append(f"top-1 >= {gates['min_top1_ratio'] * 100:g}% of float")
    agree = f"agreement >= {gates['min_agreement'] * 100:g}%"
    if gates.get("min_agreement_confident"):
        agree += f" (>= {gates['min_agreement_confident'] * 100:g}% on confident images)"
    cos = [f"logit cosine >= {gates['min_cosine']:g} on every image"] if gates.get("min_cosine") else []
    return ", ".join(parts + [agree] + cos)


def apply_gates(results: List[Dict[str, Any]], reference: str, gates: Dict[str, Any]) -> GateResult:
    """Check every non-reference artifact against the float reference (accuracy_checks), and its latency budget."""
    by_name = {r["artifact"]: r for r in results}
    ref = by_name[reference]
    checks: List[Check] = []
    for r in results:
        if r["artifact"] == reference or r.get("pending"):
            continue
        checks += accuracy_checks(r["artifact"], r, ref["top1"], gates)
        budget = float(gates.get("max_latency_ms") or 0)
        p50 = (r.get("latency_ms") or {}).get("p50")
        if budget > 0 and p50 is not None:
            checks.append(Check(r["artifact"], "latency_p50_ms", p50, budget, "<=", p50 <= budget))
        elif budget > 0:
            checks.append(skipped_check(r["artifact"], "latency_p50_ms", budget, "<=", "no batch-1 latency was measured for it"))
    return GateResult(all(c.passed for c in checks), checks + pending_checks(results, reference, checks))


def pending_checks(results: List[Dict[str, Any]], reference: str, checks: List[Check]) -> List[Check]:
    """Skipped checks for the rows measured elsewhere (TensorRT engines pending on the device): the same metrics
    and thresholds the measured artifacts were checked with, so CI lists them as skipped rather than not at all."""
    kinds: Dict[str, Check] = {}
    for c in checks:
        kinds.setdefault(c.metric, c)
    return [skipped_check(r["artifact"], k.metric, k.threshold, k.op, r.get("reason") or "pending")
            for r in results if r.get("pending") and r["artifact"] != reference for k in kinds.values()]
