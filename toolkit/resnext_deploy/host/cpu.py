"""The host CPU's ISA class: which 8-bit kernels ONNX Runtime (MLAS) and OpenVINO (oneDNN) run here.

Why it matters for INT8: without VNNI (AVX2-only, or AVX-512 without VNNI) both multiply uint8 activations
by int8 weights with VPMADDUBSW, which adds each pair of products into int16 and saturates; full-range int8
weights (|w| up to 127) then overflow on large activations (255 * 127 * 2 > 32767). With 7-bit weights
(|w| <= 64) the pair sum stays under 32767 on any x86-64 CPU. VNNI (VPDPBUSD, AVX-512 VNNI or AVX-VNNI)
and AMX accumulate in int32 and never saturate.

Stdlib only (on-device, Python 3.8). Flags come from /proc/cpuinfo, read once here for the whole toolkit (the
bench's machine record too); elsewhere the ISA is "unknown". :func:`host_cpu` and :func:`bf16_missing` are the
one place the CPU facts come from, so :func:`pretend` (the tests' ISA fixture) can replace them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, Iterator, Optional

#: ISA classes, weakest first; "x86-64" = an x86 CPU older than AVX2 (SSE4.1 kernels saturate too)
ISA_CLASSES = ("x86-64", "avx2", "avx512", "vnni", "amx")
#: classes whose u8s8 kernels accumulate in int32 (no int16 saturation)
EXACT_U8S8 = frozenset({"vnni", "amx"})
#: the CPU classes a recipe's INT8 may target: "x86-64" = any x86-64 CPU, "vnni" = VNNI or AMX only,
#: "none" = no x86 CPU kernel runs the INT8 model (TensorRT on a GPU or a Jetson)
TARGET_CLASSES = ("x86-64", "vnni", "none")
#: the instruction flags that decide the class (as /proc/cpuinfo spells them)
KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
SAFE_TARGET = "x86-cpu"  # the shipped target whose INT8 is safe on every x86-64 CPU


def isa_class(flags: Iterable[str], machine: str = "x86_64") -> str:
    """The ISA class of a CPU with these /proc/cpuinfo flags: amx | vnni | avx512 | avx2 | x86-64 | unknown."""
    f = set(flags)
    if machine.lower() not in ("x86_64", "amd64", "i686", "i386", "x86"):
        return "unknown"
    if "amx_int8" in f:
        return "amx"
    if "avx512_vnni" in f or "avx_vnni" in f:
        return "vnni"
    if "avx512f" in f and "avx512bw" in f:
        return "avx512"
    if "avx2" in f:
        return "avx2"
    return "x86-64" if f else "unknown"


def exact_u8s8(isa: str) -> Optional[bool]:
    """True where uint8 x int8 kernels cannot saturate, False where they can, None when unknown (not x86)."""
    if isa == "unknown":
        return None
    return isa in EXACT_U8S8


def safe_on(weight_range: str, isa: str) -> bool:
    """Whether INT8 with ``weight_range`` ("7bit" | "full") weights computes exactly on a CPU of class ``isa``."""
    return weight_range == "7bit" or exact_u8s8(isa) is not False


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU as INT8 sees it."""

    model: str
    machine: str
    flags: FrozenSet[str] = field(default_factory=frozenset)
    #: the rest of the first processor's /proc/cpuinfo fields (vendor_id, cpu family, model, cpu MHz, ...)
    fields: Dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def isa(self) -> str:
        return isa_class(self.flags, self.machine)

    @property
    def exact_u8s8(self) -> Optional[bool]:
        return exact_u8s8(self.isa)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "model": self.model,
            "machine": self.machine,
            "isa": self.isa,
            "flags": sorted(f for f in KEY_FLAGS if f in self.flags),
        }
        # oneDNN (OpenVINO's CPU plugin) honours this cap; ONNX Runtime's MLAS does not.
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        if cap:
            out["onednn_max_cpu_isa"] = cap
        return out


def cpuinfo_fields(text: str) -> Dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo text (later processors repeat them)."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def parse_cpuinfo(text: str, machine: str = "x86_64") -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (the first processor's model name and flags)."""
    f = cpuinfo_fields(text)
    return CpuInfo(f.get("model name") or platform.processor() or machine, machine, frozenset(f.get("flags", "").split()), f)


#: facts that replace the machine's (tests: every ISA class on any machine); see :func:`pretend`
_PRETEND: Dict[str, Any] = {}


@functools.lru_cache(maxsize=1)
def _read_host_cpu() -> CpuInfo:
    machine = platform.machine() or "unknown"
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"), machine)
    except OSError:
        return CpuInfo(platform.processor() or machine, machine)


def host_cpu() -> CpuInfo:
    """This machine's CPU (Linux: /proc/cpuinfo, read once; elsewhere only the name, ISA "unknown")."""
    return _PRETEND.get("cpu") or _read_host_cpu()


def bf16_missing() -> Optional[str]:
    """None when OpenVINO's CPU plugin runs bf16 natively on this CPU (its OPTIMIZATION_CAPABILITIES list BF16),
    else why not. OpenVINO is asked, not the flags: it is the one that decides what the bf16 hint runs."""
    if "bf16" in _PRETEND:
        caps = ["FP32", "INT8"] + (["BF16"] if _PRETEND["bf16"] else [])
    else:
        from ..optional import require

        try:
            ov = require("openvino", "ask OpenVINO for the CPU's capabilities")
            caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception as exc:  # no plugin, no CPU device
            return f"OpenVINO's CPU plugin cannot say whether this CPU has BF16 ({type(exc).__name__}: {exc})"
    if "BF16" in caps:
        return None
    host = host_cpu()
    return (f"this CPU ({host.model}, ISA {host.isa}) has no BF16 arithmetic (no AMX-BF16 or AVX512-BF16; OpenVINO's "
            f"CPU capabilities are {', '.join(caps)}): OpenVINO would run the bf16 rung in f32, so it would measure nothing")


@contextlib.contextmanager
def pretend(cpu: CpuInfo, bf16: bool) -> Iterator[CpuInfo]:
    """Within the block, :func:`host_cpu` is ``cpu`` and OpenVINO's BF16 answer is ``bf16`` (the ISA-dependent
    logic then runs as that CPU class; kernels still run on the real CPU)."""
    saved = dict(_PRETEND)
    _PRETEND.update(cpu=cpu, bf16=bf16)
    try:
        yield cpu
    finally:
        _PRETEND.clear()
        _PRETEND.update(saved)


def onednn_isa(host: Optional[CpuInfo] = None) -> str:
    """The ISA class oneDNN (OpenVINO's CPU plugin) runs: the host's, capped by ONEDNN_MAX_CPU_ISA when set
    (e.g. AVX2: the AVX2 kernels, saturation included, on a newer CPU; ONNX Runtime has no such cap)."""
    isa = (host or host_cpu()).isa
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if not cap or cap == "ALL" or isa == "unknown":
        return isa
    if "AMX" in cap:
        capped = "amx"
    elif any(k in cap for k in ("VNNI", "BF16", "FP16", "AVX10")):
        capped = "vnni"
    elif cap.startswith("AVX512"):
        capped = "avx512"
    elif cap.startswith("AVX2"):
        capped = "avx2"
    else:
        capped = "x86-64"
    return min(isa, capped, key=ISA_CLASSES.index)


def kernels_differ(build_isa: str, target_class: str) -> bool:
    """Whether the build machine's u8s8 kernels behave unlike the weakest CPU of ``target_class``: then the
    report's INT8 accuracy was measured with kernels the device may not have."""
    if target_class == "none" or exact_u8s8(build_isa) is None:
        return False
    weakest_exact = target_class == "vnni"
    return bool(exact_u8s8(build_isa)) != weakest_exact
