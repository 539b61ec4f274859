"""cpu.py: the ISA class from /proc/cpuinfo flags, and what it means for INT8 weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnext_deploy.host.cpu import host_cpu, isa_class, kernels_differ, onednn_isa, parse_cpuinfo, safe_on

# Trimmed flag lines of real CPUs (the flags that decide the class, with neighbours).
ZEN3 = "fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq"
SKYLAKE_X = "sse4_2 avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
ICE_LAKE = "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_vbmi2"
ALDER_LAKE = "avx2 fma avx_vnni sha_ni"
SAPPHIRE_RAPIDS = "avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"


@pytest.mark.parametrize("flags, isa", [
    (ZEN3, "avx2"), (SKYLAKE_X, "avx512"), (ICE_LAKE, "vnni"), (ALDER_LAKE, "vnni"), (SAPPHIRE_RAPIDS, "amx"),
    ("sse4_1 sse4_2", "x86-64"), ("", "unknown"),
])
def test_isa_class_from_flags(flags, isa):
    assert isa_class(flags.split()) == isa


def test_not_x86_is_unknown_and_never_called_unsafe():
    assert isa_class(["asimd", "fp"], machine="aarch64") == "unknown"
    assert safe_on("full", "unknown") and not kernels_differ("unknown", "x86-64")


def test_full_range_is_safe_only_with_vnni_and_7bit_everywhere():
    assert [safe_on("full", i) for i in ("x86-64", "avx2", "avx512", "vnni", "amx")] == [False, False, False, True, True]
    assert all(safe_on("7bit", i) for i in ("x86-64", "avx2", "avx512", "vnni", "amx"))


def test_kernels_differ_between_build_machine_and_target_class():
    assert kernels_differ("vnni", "x86-64") and kernels_differ("avx2", "vnni")
    assert not kernels_differ("avx2", "x86-64") and not kernels_differ("amx", "vnni") and not kernels_differ("avx2", "none")


def test_parse_cpuinfo_reads_the_first_processor():
    text = f"processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: {ZEN3}\n\nprocessor\t: 1\nflags\t: {ICE_LAKE}\n"
    info = parse_cpuinfo(text)
    assert info.model == "AMD EPYC 7763 64-Core Processor" and info.isa == "avx2" and info.exact_u8s8 is False
    assert info.to_dict()["flags"] == ["avx2", "fma"]


def test_host_cpu_matches_proc_cpuinfo():
    info = host_cpu()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this OS: the ISA is 'unknown' by design")
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    assert info.isa == isa_class(flags, info.machine)
    assert info.exact_u8s8 == (("avx512_vnni" in flags) or ("avx_vnni" in flags) or ("amx_int8" in flags))


@pytest.mark.parametrize("cap, isa", [("", "amx"), ("ALL", "amx"), ("AVX2", "avx2"), ("AVX2_VNNI", "vnni"),
                                      ("AVX512_CORE", "avx512"), ("AVX512_CORE_VNNI", "vnni"), ("SSE41", "x86-64")])
def test_onednn_cap_lowers_the_class_openvino_runs(monkeypatch, cap, isa):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert onednn_isa(parse_cpuinfo(f"flags\t: {SAPPHIRE_RAPIDS}\n")) == isa
    # a cap never raises the class
    assert onednn_isa(parse_cpuinfo(f"flags\t: {ZEN3}\n")) == ("x86-64" if isa == "x86-64" else "avx2")
