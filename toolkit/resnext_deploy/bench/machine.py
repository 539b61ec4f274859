"""What the benchmark ran on: CPU model, ISA flags, clock, cores, load (facts from host/), library versions; and the model's
multiply-accumulates, for the fraction of the machine's INT8 (and FP32) peak a run reaches."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..host.cpu import host_cpu
from ..host.load import cores, load_average

log = logging.getLogger(__name__)

#: ISA features that decide INT8/BF16 speed on x86 (as /proc/cpuinfo names them)
FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16",
)
#: int8 multiply-accumulates per cycle per core: two 512-bit VPDPBUSD per cycle (64 MACs each)
INT8_MACS_PER_CYCLE_AVX512_VNNI = 128
#: fp32 multiply-accumulates per cycle per core: two 512-bit FMA per cycle (16 lanes each)
FP32_MACS_PER_CYCLE_AVX512 = 32

#: int8 multiply-accumulates per cycle per core with AMX: TDPBSSD multiplies a 16x64 int8 tile by a 64x16 one
#: (16 x 16 x 64 = 16,384 MACs) and the tile unit issues one every 16 cycles
INT8_MACS_PER_CYCLE_AMX = 1024
#: bf16 multiply-accumulates per cycle per core with AMX: TDPBF16PS, a 16x32 by 32x16 bf16 tile product
#: (8,192 MACs) every 16 cycles
BF16_MACS_PER_CYCLE_AMX = 512

#: Peak rules, first match wins: (flags needed, MACs per cycle per core, how it follows from instruction
#: throughput). u8s8 without VNNI takes VPMADDUBSW (pairs of u8 x s8 into int16) + VPMADDWD (int16 pairs into
#: int32) + VPADDD (accumulate) where VNNI's VPDPBUSD is one instruction. Upper bounds: a core with one 512-bit
#: FMA unit, or Zen 4's double-pumped 512-bit datapath, reaches half the AVX-512 figures. AMX rules count the
#: tile unit only (the vector units beside it are not added: oneDNN runs a convolution on one or the other).
PEAK_RULES = {
    "int8": (
        (("amx_int8",), INT8_MACS_PER_CYCLE_AMX, "AMX TDPBSSD: a 16x64 x 64x16 int8 tile product (16,384 MACs) per 16 cycles"),
        (("avx512_vnni",), INT8_MACS_PER_CYCLE_AVX512_VNNI, "2 x 512-bit VPDPBUSD per cycle, 64 u8s8 MACs each"),
        (("avx_vnni",), 64, "2 x 256-bit VPDPBUSD (AVX-VNNI) per cycle, 32 u8s8 MACs each"),
        (("avx512bw",), 128 / 3, "VPMADDUBSW + VPMADDWD + VPADDD per 64 MACs: 3 uops on the two 512-bit ports, 1.5 cycles"),
        (("avx2",), 32, "VPMADDUBSW + VPMADDWD per 32 MACs on the two 256-bit vector multiply ports (VPADDD on a third): 1 cycle"),
    ),
    "bf16": (
        (("amx_bf16",), BF16_MACS_PER_CYCLE_AMX, "AMX TDPBF16PS: a 16x32 x 32x16 bf16 tile product (8,192 MACs) per 16 cycles"),
        (("avx512_bf16",), 64, "2 x 512-bit VDPBF16PS per cycle, 32 bf16 pairs (MACs) each"),
    ),
    "fp32": (
        (("avx512f",), FP32_MACS_PER_CYCLE_AVX512, "2 x 512-bit FMA per cycle, 16 lanes each"),
        (("avx2", "fma"), 16, "2 x 256-bit FMA per cycle, 8 lanes each"),
    ),
}

#: Latency in cycles of a 64-bit register-register IMUL: 3 on every x86-64 core the bench meets (Zen 1-5,
#: Skylake, Ice Lake, Golden Cove / Sapphire Rapids, Gracemont), per Agner Fog's tables and uops.info.
IMUL_LATENCY_CYCLES = 3
#: dependent IMULs per loop iteration
_CLOCK_CHAIN = 8

# A dependent chain of IMULs: each waits for the previous one's result, so one iteration takes
# 8 x 3 cycles whatever the core's boost clock is at the moment (a virtual machine's /proc/cpuinfo shows the
# nominal clock only). The loop counter runs beside the chain on other ports. Not ADD: Golden Cove-class cores
# execute chains of dependent immediate adds faster than one per cycle (they fold them at rename), which once
# "measured" 11,650 MHz on a 2.1 GHz Xeon; no core folds or eliminates a multiply. Timed in the thread's own
# CPU time, so other processes sharing the core do not lower the estimate (a hypervisor's steal still can).
_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  struct timespec a, b; unsigned long x = 3, n = 20000000UL;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
  for (unsigned long i = 0; i < n; i++) {
    __asm__ volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t"
                     "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0" : "+r"(x));
  }
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
  double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
  printf("%.1f\n", CHAIN * LATENCY * (double)n / s / 1e6);
  return 0;  /* asm volatile: the chain is never removed as dead code */
}
"""


def measure_clock_mhz(repeats: int = 7) -> Optional[float]:
    """The core clock under load, in MHz, from a timed chain of dependent IMULs (cycles = chain length x IMUL
    latency; needs a C compiler and x86-64; None otherwise). The best of ``repeats`` runs: another process can
    only slow it down."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory(prefix="resnext-clock-") as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([cc, "-O1", f"-DCHAIN={_CLOCK_CHAIN}", f"-DLATENCY={IMUL_LATENCY_CYCLES}", str(src), "-o", str(exe)], check=True, capture_output=True, timeout=60)
            runs = [float(subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=60).stdout)
                    for _ in range(repeats)]
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.info("could not measure the clock: %s", exc)
            return None
    return max(runs)


def machine_info(measure_clock: bool = True) -> Dict[str, Any]:
    """CPU model, flags of interest, cores, nominal and measured clock, load average, memory."""
    host = host_cpu()
    info, flags = host.fields, host.flags
    nominal = float(info["cpu MHz"]) if info.get("cpu MHz") else None
    measured = measure_clock_mhz() if measure_clock else None
    out: Dict[str, Any] = {
        "cpu": host.model,
        "cpu_family": info.get("cpu family"),
        "cpu_model": info.get("model"),
        "vendor": info.get("vendor_id"),
        "flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
        "cores": cores(),
        "clock_mhz_nominal": nominal,
        "clock_mhz_measured": measured,
        "hypervisor": "hypervisor" in flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    load = load_average()
    if load is not None:
        out["load_average"] = load
    try:
        out["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return out


def peak_gmacs(machine: Dict[str, Any], precision: str = "int8") -> Optional[Dict[str, Any]]:
    """The machine's peak in GMAC/s: cores x MAC/cycle x clock (measured, else nominal), MAC/cycle from the
    first of PEAK_RULES the CPU's flags meet. None for other CPUs (no rule we would stand by)."""
    mhz = machine.get("clock_mhz_measured") or machine.get("clock_mhz_nominal")
    flags = set(machine.get("flags", []))
    rule = next((r for r in PEAK_RULES[precision] if set(r[0]) <= flags), None)
    if rule is None or not mhz:
        return None
    return {
        "gmacs": machine["cores"] * rule[1] * mhz / 1e3,
        "cores": machine["cores"],
        "macs_per_cycle_per_core": round(rule[1], 2),
        "rule": f"{'+'.join(rule[0])}: {rule[2]}",
        "clock_mhz": mhz,
        "clock_source": "measured" if machine.get("clock_mhz_measured") else "/proc/cpuinfo (nominal)",
    }


def library_versions() -> Dict[str, str]:
    """Versions of the packages a benchmark compares (imports them: the benchmark needs them anyway)."""
    import importlib

    out = {}
    for mod in ("numpy", "torch", "onnx", "onnxruntime", "openvino", "nncf", "onnxslim"):
        try:
            m = importlib.import_module(mod)
            out[mod] = str(getattr(m, "__version__", "unknown"))
        except Exception:  # absent or broken: the configurations that need it are skipped
            out[mod] = "absent"
    from .. import __version__

    out["resnext_deploy"] = __version__
    return out


def count_macs(onnx_path: Union[str, Path]) -> Dict[str, Any]:
    """Multiply-accumulates of one image through an ONNX model's Conv and Gemm/MatMul nodes (batch 1)."""
    from ..optional import require

    onnx = require("onnx", "count the model's multiply-accumulates")
    proto = onnx.load(str(onnx_path))
    inp = proto.graph.input[0]
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        if i == 0 or not d.HasField("dim_value"):
            d.ClearField("dim_param")
            d.dim_value = 1
    proto = onnx.shape_inference.infer_shapes(proto)
    shapes: Dict[str, List[int]] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    by_op: Dict[str, int] = {}
    for node in proto.graph.node:
        macs = 0
        kind = node.op_type
        if node.op_type == "Conv" and node.input[1] in inits and node.output[0] in shapes:
            w = inits[node.input[1]]  # (out, in/groups, kh, kw)
            out = shapes[node.output[0]]
            macs = int(_prod(out) * _prod(w[1:]))
            kind = "Conv (grouped)" if _attr(node, "group") > 1 else "Conv"
        elif node.op_type in ("Gemm", "MatMul") and node.output[0] in shapes:
            w = inits.get(node.input[1]) or shapes.get(node.input[1])
            if w:
                k = w[1] if node.op_type == "Gemm" and _attr(node, "transB") else w[0]
                macs = int(_prod(shapes[node.output[0]]) * k)
        if macs:
            by_op[kind] = by_op.get(kind, 0) + macs
    total = sum(by_op.values())
    return {"gmacs": total / 1e9, "by_op_gmacs": {k: v / 1e9 for k, v in by_op.items()}}


def _prod(xs: List[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _attr(node: Any, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return 0
