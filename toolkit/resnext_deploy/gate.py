"""Gates: the recipe's thresholds applied to the evaluation, as a pass/fail with every check listed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List


@dataclass
class Check:
    artifact: str
    metric: str
    value: float
    threshold: float
    op: str  # "<=" or ">="
    passed: bool


@dataclass
class GateResult:
    passed: bool
    checks: List[Check] = field(default_factory=list)

    def failures(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> Dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GateResult":
        return cls(bool(d["passed"]), [Check(**c) for c in d.get("checks", [])])

    def summary(self) -> str:
        if self.passed:
            return f"gate PASSED ({len(self.checks)} checks)"
        parts = [f"{c.artifact}: {c.metric} = {c.value:.4g} (needs {c.op} {c.threshold:g})" for c in self.failures()]
        return "gate FAILED: " + "; ".join(parts)


def apply_gates(results: List[Dict[str, Any]], reference: str, gates: Dict[str, Any]) -> GateResult:
    """Check every non-reference artifact against the float reference's top-1.

    top-1 drop is in percentage points; agreement is the share of images with the same top-1 class.
    """
    by_name = {r["artifact"]: r for r in results}
    ref = by_name[reference]
    checks: List[Check] = []
    for r in results:
        if r["artifact"] == reference or r.get("pending"):
            continue
        drop = (ref["top1"] - r["top1"]) * 100.0
        checks.append(Check(r["artifact"], "top1_drop_pct", drop, float(gates["max_top1_drop"]), "<=", drop <= gates["max_top1_drop"] + 1e-9))
        checks.append(Check(r["artifact"], "agreement", r["agreement"], float(gates["min_agreement"]), ">=", r["agreement"] >= gates["min_agreement"] - 1e-9))
        budget = float(gates.get("max_latency_ms") or 0)
        if budget > 0 and r.get("latency_ms"):
            p50 = r["latency_ms"]["p50"]
            checks.append(Check(r["artifact"], "latency_p50_ms", p50, budget, "<=", p50 <= budget))
    return GateResult(all(c.passed for c in checks), checks)
