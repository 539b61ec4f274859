"""The gate's accuracy checks: top-1 drop, MLPerf's ratio, agreement on all and on confident images."""

from __future__ import annotations

import numpy as np
import pytest

from resnext_deploy.evaluation.evaluate import CONFIDENT_MARGIN, compare_logits, softmax_margin
from resnext_deploy.evaluation.gate import accuracy_checks, apply_gates, gate_description
from resnext_deploy.recipes import DEFAULTS

GATES = DEFAULTS["gates"]


def _row(name, top1, agreement, confident=None, **extra):
    r = {"artifact": name, "top1": top1, "agreement": agreement}
    if confident is not None:
        r["agreement_confident"] = confident
    r.update(extra)
    return r


def _failed(checks):
    return sorted(c.metric for c in checks if not c.passed)


def test_softmax_margin_and_confident_agreement():
    ref = np.array([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 4.0], [2.0, 2.0, 0.0]], dtype=np.float32)
    m = softmax_margin(ref)
    assert m[0] > 0.9 and m[1] < 0.1 and m[3] == pytest.approx(0.0)
    flip_low = ref.copy()
    flip_low[1] = [0.9, 1.0, 0.0]  # the coin-flip image changes its mind
    cmp = compare_logits(flip_low, ref)
    assert cmp["agreement"] == pytest.approx(0.75)
    assert cmp["confident_images"] == int(np.sum(m >= CONFIDENT_MARGIN)) == 2
    assert cmp["agreement_confident"] == 1.0
    flip_high = ref.copy()
    flip_high[0] = [0.0, 5.0, 0.0]
    assert compare_logits(flip_high, ref)["agreement_confident"] == 0.5


def test_defaults_follow_mlperf_and_nncf():
    """MLPerf: INT8 >= 99 % of FP32 top-1; NNCF's accuracy control: an absolute max drop (ours: 1 pp)."""
    assert GATES["max_top1_drop"] == 1.0 and GATES["min_top1_ratio"] == 0.99
    assert GATES["min_agreement_confident"] > GATES["min_agreement"]
    assert "99% of float" in gate_description(GATES) and "confident" in gate_description(GATES)


def test_each_check_fails_on_its_own():
    ref = 0.80
    ok = _row("a", 0.795, 0.97, 0.995)
    assert _failed(accuracy_checks("a", ok, ref, GATES)) == []
    assert "top1_drop_pct" in _failed(accuracy_checks("a", _row("a", 0.785, 0.99, 1.0), ref, GATES))
    # 1 pp at 80 % is 98.75 % of float: the ratio check fails too
    assert _failed(accuracy_checks("a", _row("a", 0.788, 0.99, 1.0), ref, GATES)) == ["top1_drop_pct", "top1_ratio"]
    assert _failed(accuracy_checks("a", _row("a", 0.80, GATES["min_agreement"] - 0.01, 1.0), ref, GATES)) == ["agreement"]
    assert _failed(accuracy_checks("a", _row("a", 0.80, 0.99, GATES["min_agreement_confident"] - 0.005), ref, GATES)) == ["agreement_confident"]


def test_ratio_is_stricter_than_the_drop_at_low_accuracy_and_looser_at_high():
    at_50 = accuracy_checks("a", _row("a", 0.492, 1.0, 1.0), 0.50, GATES)  # 0.8 pp but 98.4 % of float
    assert _failed(at_50) == ["top1_ratio"]
    at_998 = accuracy_checks("a", _row("a", 0.984, 1.0, 1.0), 0.998, GATES)  # 1.4 pp, 98.6 %: the drop catches it
    assert _failed(at_998) == ["top1_drop_pct", "top1_ratio"]


def test_zero_turns_the_new_checks_off_and_old_rows_are_skipped_with_the_reason_not_failed_or_dropped():
    lenient = dict(GATES, min_top1_ratio=0.0, min_agreement_confident=0.0, min_cosine=0.0)
    assert [c.metric for c in accuracy_checks("a", _row("a", 0.5, 0.99, 0.5), 0.5, lenient)] == ["top1_drop_pct", "agreement"]
    old = _row("a", 0.80, 0.99)  # a report written before agreement_confident and min_cosine existed
    checks = accuracy_checks("a", old, 0.80, GATES)
    assert [c.metric for c in checks] == ["top1_drop_pct", "top1_ratio", "agreement", "agreement_confident", "min_cosine"]
    skipped = [c for c in checks if c.skipped]
    assert [c.metric for c in skipped] == ["agreement_confident", "min_cosine"] and all(c.passed for c in skipped)
    assert "the result has no min_cosine" in skipped[1].skipped and "skipped" in skipped[1].line()


def test_a_ratio_to_a_zero_reference_is_a_failed_check_with_its_reason_not_a_dropped_one():
    """The finding: float top-1 0 % (labels mapped wrongly) dropped top1_ratio and the gate passed."""
    rows = [_row("onnx-fp32", 0.0, 1.0, 1.0, min_cosine=1.0), _row("x-int8", 0.0, 1.0, 1.0, min_cosine=0.999)]
    gate = apply_gates(rows, "onnx-fp32", GATES)
    assert not gate.passed
    [bad] = gate.failures()
    assert bad.metric == "top1_ratio" and bad.value is None and not bad.skipped
    assert "float reference's top-1 is 0" in bad.reason and "validation labels" in bad.reason
    assert bad.value_text() == "n/a" and bad.result_text().startswith("**FAIL**: the float reference")
    assert "x-int8: top1_ratio could not be computed: the float reference" in gate.summary()
    # the same row against a float top-1 above 0 is computed and passes
    assert apply_gates([dict(rows[0], top1=0.5), dict(rows[1], top1=0.5)], "onnx-fp32", GATES).passed


def test_a_latency_budget_on_a_row_without_latency_is_skipped_with_the_reason():
    rows = [_row("onnx-fp32", 0.8, 1.0, 1.0, min_cosine=1.0), _row("x-int8", 0.8, 1.0, 1.0, min_cosine=0.999)]
    gate = apply_gates(rows, "onnx-fp32", dict(GATES, max_latency_ms=5.0))
    [lat] = [c for c in gate.checks if c.metric == "latency_p50_ms"]
    assert gate.passed and lat.skipped == "no batch-1 latency was measured for it"
    rows[1]["latency_ms"] = {"p50": 7.5}
    [lat] = [c for c in apply_gates(rows, "onnx-fp32", dict(GATES, max_latency_ms=5.0)).failures()]
    assert lat.metric == "latency_p50_ms" and lat.value == 7.5


def test_apply_gates_uses_the_same_checks():
    rows = [_row("onnx-fp32", 0.80, 1.0, 1.0), _row("x-int8", 0.80, 0.99, 0.97), _row("pending", 0, 0, pending=True)]
    gate = apply_gates(rows, "onnx-fp32", GATES)
    assert not gate.passed and [c.metric for c in gate.failures()] == ["agreement_confident"]
    assert "agreement_confident = 0.97" in gate.summary()
