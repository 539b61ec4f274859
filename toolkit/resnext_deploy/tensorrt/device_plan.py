"""The engine plan of one Jetson: which of the bundle's engines this module, L4T release and TensorRT can build.

``build --target jetson`` ships one bundle for every Jetson of DESIGN.md's table (platforms.py): GPU and DLA
engines, FP32/FP16 ONNX, the Q/DQ models and the DLA calibration cache. On the device, ``compile --bundle`` reads
the device's facts (device_facts.py), finds its module and its row of the table, and keeps the engines that device
supports:

- GPU FP16 and INT8 everywhere; weakly typed TensorRT (8.5 .. 10.x) builds FP16 from the FP32 ONNX with the FP16
  flag, INT8 from the Q/DQ ONNX; strongly typed TensorRT (11.x) FP16 from the FP16 ONNX, INT8 from the
  FP16-region Q/DQ ONNX, with no calibrator and no cache;
- DLA engines only where the table gives that module a DLA on that row (Xavier and Orin NX/AGX on JetPack 5/6, AGX
  Orin on TensorRT 11.4.1+) and the device has the core; weakly typed DLA INT8 takes its scales from the
  calibration cache (implicit quantization), strongly typed DLA INT8 from the FP16-region Q/DQ ONNX.

A device or TensorRT outside the table is refused (BadInputError, exit 2) naming what was found and the rows.
Standard library only; runs on JetPack 5's Python 3.8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BadInputError
from .bundle import CALIB_CACHE, MODEL_FILES
from .device_facts import DeviceFacts
from .engine_plan import EngineSpec
from .platforms import PLATFORMS, Platform


@dataclass(frozen=True)
class Module:
    key: str
    name: str
    match: Tuple[str, ...]  # lower-case pieces of the device tree model string that name this module
    target: str  # the specific target (recipes/<target>.toml) for this module
    dla_cores: int  # the DLA cores of the module (Orin NX: 1 on the 8 GB module, 2 on the 16 GB: 1 is assumed)
    rows: Tuple[str, ...]  # the table's rows (platforms.PLATFORMS) this module runs


#: The Jetsons of DESIGN.md's table, most specific match first (NVIDIA's module data sheets and JetPack notes).
MODULES: Tuple[Module, ...] = (
    Module("xavier-nx", "Jetson Xavier NX", ("xavier nx",), "jetson-xavier-nx", 2, ("jetpack-5.1",)),
    Module("agx-xavier", "Jetson AGX Xavier", ("agx xavier", "jetson-agx"), "jetson-agx-xavier", 2, ("jetpack-5.1",)),
    Module("orin-nano", "Jetson Orin Nano", ("orin nano",), "jetson-orin-nano", 0,
           ("jetpack-5.1", "jetpack-6.2", "jetpack-7.2")),
    Module("orin-nx", "Jetson Orin NX", ("orin nx",), "jetson-orin-nx", 1, ("jetpack-5.1", "jetpack-6.2", "jetpack-7.2")),
    Module("agx-orin", "Jetson AGX Orin", ("agx orin",), "jetson-agx-orin", 2,
           ("jetpack-5.1", "jetpack-6.2", "jetpack-7.2", "jetpack-7.2.2-trt11")),
    Module("agx-thor", "Jetson AGX Thor", ("thor",), "jetson-agx-thor", 0,
           ("jetpack-7.0", "jetpack-7.2", "jetpack-7.2.2-trt11")),
)

#: row -> the L4T release it starts at (JetPack 5.1 is L4T 35.2, JetPack 6.1 36.4, JetPack 7.0 38.2). JetPack 7.2 is
#: told from 7.0/7.1 by its TensorRT (10.16 / 11.4.1+), not by the release number.
L4T_FROM: Dict[str, Tuple[int, int]] = {
    "jetpack-5.1": (35, 2), "jetpack-6.2": (36, 4), "jetpack-7.0": (38, 2), "jetpack-7.2": (38, 2),
    "jetpack-7.2.2-trt11": (38, 2),
}


@dataclass
class DevicePlan:
    """The engines one device builds, the ones it does not (and why), and what the plan was made from."""

    module: Module
    row: Platform
    facts: DeviceFacts
    dla_cores: int
    assumed_row: bool  # TensorRT was not found: the row is the first the L4T release allows
    engines: List[EngineSpec] = field(default_factory=list)
    dropped: List[Dict[str, str]] = field(default_factory=list)

    @property
    def strongly_typed(self) -> bool:
        return self.row.strongly_typed

    def source(self, spec: EngineSpec) -> str:
        """The bundle file ``spec`` is built from on this row (and the cache, for implicit INT8)."""
        key, cache = source_for(spec, not self.strongly_typed)
        return MODEL_FILES[key] + (f" + {CALIB_CACHE}" if cache else "")

    def lines(self) -> List[str]:
        """The plan in words: one line for the device, one per engine (built or not)."""
        f = self.facts
        trt = f"TensorRT {f.tensorrt_version} ({f.tensorrt_from})" if f.tensorrt_version else "no TensorRT found"
        head = (f"{self.module.name} ('{f.model}'), L4T {f.l4t or '?'}, {trt}, {self.dla_cores} DLA core(s): row "
                f"'{self.row.describe()}'" + (" (assumed: the first row this L4T release allows)" if self.assumed_row
                                               else "") + (", strongly typed" if self.strongly_typed else ""))
        built = [f"  build {s.name}: {s.precision} on {s.device}, from {self.source(s)}" for s in self.engines]
        return [head] + built + [f"  skip {d['engine']}: {d['why']}" for d in self.dropped]

    def to_dict(self) -> Dict[str, Any]:
        return {"module": self.module.key, "module_name": self.module.name, "row": self.row.key,
                "row_described": self.row.describe(), "assumed_row": self.assumed_row, "dla_cores": self.dla_cores,
                "typing": "strong" if self.strongly_typed else "weak", "facts": self.facts.to_dict(),
                "engines": [dict(name=s.name, precision=s.precision, device=s.device, source=self.source(s))
                            for s in self.engines],
                "dropped": list(self.dropped), "lines": self.lines()}


def source_for(spec: Any, weakly_typed: bool) -> Tuple[str, bool]:
    """(which model of the bundle, use the calibration cache) for ``spec`` on a weakly or strongly typed TensorRT.

    Weakly typed: the FP32 ONNX for FP16, the Q/DQ ONNX for INT8, the FP32 ONNX + cache for implicit INT8.
    Strongly typed: the FP16 ONNX for FP16, the FP16-region Q/DQ ONNX for INT8 (DLA INT8 too: no calibrator).
    """
    if weakly_typed:
        return spec.source, bool(spec.calibration_cache)
    return ("qdq-fp16" if spec.precision == "int8" else "fp16"), False


def table_rows() -> List[str]:
    """The table as the refusal names it: one line per module with its rows."""
    return [f"{m.name}: " + "; ".join(PLATFORMS[k].describe() for k in m.rows) for m in MODULES]


def find_module(model: Optional[str]) -> Optional[Module]:
    low = (model or "").lower()
    return next((m for m in MODULES if any(piece in low for piece in m.match)), None)


def _refuse(facts: DeviceFacts, why: str) -> BadInputError:
    found = (f"device tree model '{facts.model}', L4T {facts.l4t or 'unknown'}, TensorRT "
             f"{facts.tensorrt_version or 'not found'}")
    return BadInputError(f"This device ({found}) {why}. The generic Jetson bundle serves these modules and rows: "
                         + " | ".join(table_rows()) + ". Use a device in the table, or build for your own recipe "
                         "(--recipe) and build the engines with trtexec (the bundle README's lines).")


def find_row(module: Module, facts: DeviceFacts) -> Tuple[Platform, bool]:
    """The module's row this device is on, and whether it was assumed (no TensorRT version to tell)."""
    rows = [PLATFORMS[k] for k in module.rows]
    have = facts.l4t_major_minor
    if have is not None:
        rows = [p for p in rows if L4T_FROM[p.key][0] == have[0] and have >= L4T_FROM[p.key]]
        if not rows:
            raise _refuse(facts, f"is a {module.name} on an L4T release ({facts.l4t}) that is not a row of the table "
                                 f"for it")
    if facts.tensorrt_version is None:
        return rows[0], True
    row = next((p for p in rows if p.matches(facts.tensorrt_version)), None)
    if row is None:
        raise _refuse(facts, f"is a {module.name} whose TensorRT {facts.tensorrt_version} is not in the table for "
                             f"this L4T release")
    return row, False


def plan_for_device(specs: Sequence[EngineSpec], facts: DeviceFacts) -> Optional[DevicePlan]:
    """The engines of ``specs`` this device builds; None when it is no Jetson at all (no device tree model, no L4T)."""
    if not facts.jetson:
        return None
    module = find_module(facts.model)
    if module is None:
        raise _refuse(facts, "is not a Jetson module of the table")
    row, assumed = find_row(module, facts)
    cores = module.dla_cores if facts.dla_cores is None else int(facts.dla_cores)
    plan = DevicePlan(module, row, facts, cores, assumed)
    for spec in specs:
        why = None
        if spec.dla_core >= 0 and module.dla_cores == 0:
            why = f"{module.name} has no DLA"
        elif spec.dla_core >= 0 and module.target not in row.dla:
            why = f"the DLA of {module.name} is not usable with TensorRT {row.tensorrt} on JetPack {row.jetpack}"
        elif spec.dla_core >= cores:
            why = f"needs DLA core {spec.dla_core}; this device has {cores}"
        if why:
            plan.dropped.append({"engine": spec.name, "why": why})
        else:
            plan.engines.append(spec)
    return plan


def bundle_specs(engines: Sequence[Dict[str, Any]]) -> List[EngineSpec]:
    """The bundle manifest's engine plan (dicts) as EngineSpecs."""
    names = set(EngineSpec.__dataclass_fields__)
    return [EngineSpec(**{k: v for k, v in d.items() if k in names}) for d in engines]


def plan_for_bundle(bundle: Any, facts: DeviceFacts) -> Optional[DevicePlan]:
    """The device's plan for a `--target jetson` bundle; None for a specific target's bundle (its recipe decided)."""
    from .platforms import GENERIC_JETSON

    if bundle.manifest.get("target") != GENERIC_JETSON:
        return None
    return plan_for_device(bundle_specs(bundle.info["engines"]), facts)


def example_facts(module: Module, row: Platform, root: str = "") -> DeviceFacts:
    """The facts a ``module`` on ``row`` reports (its first L4T release, the row's TensorRT, no TensorRT DLA count)."""
    major, minor = L4T_FROM[row.key]
    return DeviceFacts(root, f"NVIDIA {module.name} Developer Kit", f"{major}.{minor}.0", row.tensorrt.rstrip("+"),
                       "table", None)


def table_plans(specs: Sequence[EngineSpec]) -> List[DevicePlan]:
    """The plan of every module on every row of the table it runs (the README's table, the rehearsal's expectations)."""
    out = []
    for module in MODULES:
        for key in module.rows:
            plan = plan_for_device(specs, example_facts(module, PLATFORMS[key]))
            if plan is not None:
                out.append(plan)
    return out
