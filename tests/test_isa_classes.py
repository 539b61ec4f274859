"""The ISA-dependent logic run as AVX2, VNNI and AMX CPUs on any machine (the ``isa`` fixture replaces the host
facts): recipe safety, weight range, the bench's configurations and targets, peaks, the bf16 rung's skip."""

from __future__ import annotations

import pytest

from resnext_deploy.backends.openvino import OpenVinoBackend, bf16_support
from resnext_deploy.bench.machine import machine_info, peak_gmacs
from resnext_deploy.bench.run import BF16_TARGETS, OV_BF16, TARGETS, check_targets
from resnext_deploy.host.cpu import SAFE_TARGET, exact_u8s8, host_cpu, safe_on
from resnext_deploy.pipeline.quantize import isa_record, weight_range_for
from resnext_deploy.recipes import load_recipe

#: per class: u8s8 exact?, INT8 peak MACs/cycle/core, BF16 peak MACs/cycle/core (None: no BF16 rule), BF16 rung
EXPECTED = {"avx2": (False, 32, None, False), "vnni": (True, 128, None, False), "amx": (True, 1024, 512, True)}


def test_the_host_facts_are_the_injected_class(isa):
    assert host_cpu().isa == isa and exact_u8s8(isa) is EXPECTED[isa][0]
    assert (bf16_support() is None) is EXPECTED[isa][3]


def test_which_x86_target_is_safe_here(isa):
    """x86-cpu (7-bit weights) is safe everywhere; full-range INT8 (x86-cpu-vnni) only where u8s8 cannot saturate."""
    safe_7bit = weight_range_for(load_recipe(target=SAFE_TARGET).section("quantize"))
    full = weight_range_for(load_recipe(target="x86-cpu-vnni").section("quantize"))
    assert (safe_7bit, full) == ("7bit", "full")
    assert safe_on(safe_7bit, host_cpu().isa)
    assert safe_on(full, host_cpu().isa) is EXPECTED[isa][0]


def test_the_report_isa_record_follows_the_build_cpu(isa):
    """A build for any x86-64 CPU notes that its INT8 accuracy was measured with other kernels exactly when the
    build machine's u8s8 kernels are exact (VNNI, AMX) and the weakest target CPU's are not."""
    record, notes = isa_record({"isa_class": "x86-64"}, "7bit")
    assert record["build"]["isa"] == isa and record["weight_range"] == "7bit"
    assert record["kernels_differ"] is EXPECTED[isa][0] and bool(notes) is EXPECTED[isa][0]
    record, _ = isa_record({"isa_class": "vnni"}, "full")
    assert record["kernels_differ"] is (not EXPECTED[isa][0])


def test_peaks_per_class(isa):
    machine = machine_info(measure_clock=False)
    assert machine["cpu"] == host_cpu().model and machine["clock_mhz_nominal"] == 2000.0
    int8 = peak_gmacs(machine, "int8")
    assert int8["macs_per_cycle_per_core"] == pytest.approx(EXPECTED[isa][1], rel=1e-3)
    assert int8["gmacs"] == pytest.approx(machine["cores"] * EXPECTED[isa][1] * 2.0)
    bf16 = peak_gmacs(machine, "bf16")
    assert (bf16 and bf16["macs_per_cycle_per_core"]) == (EXPECTED[isa][2] or None)


def test_the_bf16_rung_is_skipped_with_its_reason_where_openvino_has_no_bf16(isa):
    reason = OpenVinoBackend().cannot_build("bf16")
    if EXPECTED[isa][3]:
        assert reason is None
    else:
        assert "no BF16 arithmetic" in reason and host_cpu().model in reason and f"ISA {isa}" in reason


def test_the_bench_targets_follow_the_configurations_that_ran(isa):
    """BF16 targets only where openvino-bf16 ran (it runs where OpenVINO has BF16); ResNeXt-50 targets only for it."""
    ran = {"latency_ms": {"p50": 1.0}}
    results = {OV_BF16: ran} if bf16_support() is None else {}
    names = {t["name"] for t in check_targets(results, None, arch="resnext50_32x4d")}
    assert ({t["name"] for t in BF16_TARGETS} <= names) is EXPECTED[isa][3]
    assert {t["name"] for t in TARGETS} <= names
    assert not {t["name"] for t in TARGETS} & {t["name"] for t in check_targets(results, None, arch="resnext_demo")}


def test_the_bench_configuration_set_follows_the_cpu(isa, tmp_path, monkeypatch):
    """The configurations bench times, as each CPU class: openvino-bf16 only where OpenVINO has BF16 (AMX here), and
    NNCF's peer with the OverflowFix its documentation calls for (FIRST_LAYER on AVX2, DISABLE with VNNI/AMX)."""
    from resnext_deploy.bench.run import configurations

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    manifest = {"model": {}, "recipe": {"backends": {"openvino": {"performance_hint": "LATENCY"}}}, "artifacts": [
        {"name": "onnxruntime-int8", "backend": "onnxruntime", "precision": "int8", "kind": "onnx",
         "path": "onnxruntime/model-int8.ort.onnx"},
        {"name": "openvino-int8", "backend": "openvino", "precision": "int8", "kind": "openvino-ir",
         "path": "openvino/model-int8.xml"},
    ]}
    configs = {c.name: c for c in configurations(tmp_path, manifest, tmp_path / "peers")}
    bf16 = EXPECTED[isa][3]
    assert set(configs) == {"ort-fp32", "openvino-fp32", "nncf-int8", "ort-int8-default", "ours:onnxruntime-int8",
                            "ours:openvino-int8", "ours:openvino-int8@THROUGHPUT"} | ({OV_BF16} if bf16 else set())
    if bf16:
        assert configs[OV_BF16].settings["inference_precision"] == "bf16"
    fix = "DISABLE" if EXPECTED[isa][0] else "FIRST_LAYER_ONLY"
    assert f"OverflowFix {fix}" in configs["nncf-int8"].description
