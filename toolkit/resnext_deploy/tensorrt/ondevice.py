"""`resnext-deploy compile --bundle DIR`: on the device, build the bundle's engines and check them.

Verifies the bundle, builds every planned engine with the local TensorRT (timing cache reused), runs the
golden inputs through each and compares with the FP32 references under the recipe's tolerances, measures
latency percentiles, picks the faster engine that passes the golden checks, and writes report.json /
report.md and the engines into the bundle (its manifest then lists them, so the runtime loads them). Says
which row of the target's table (platforms.py) the device is, and refuses (a failed check, with the reason)
an engine this TensorRT cannot build, e.g. DLA where it has none. Needs numpy and TensorRT only; runs on Python 3.8 (JetPack 5).

Without TensorRT or the GPU it does what needs neither (without_tensorrt.py: the golden checks of the bundle's ONNX
models in ONNX Runtime) and says the engines are pending. Either way report.json is sealed with the bundle's
identity (ci/device.py) so `report BUILD --device` can verify it on the workstation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..buildfolder.artifacts import Artifact, atomic_file
from ..errors import BadInputError, MissingDependencyError
from ..evaluation.evaluate import (
    Metrics,
    TimingConfig,
    compare_logits,
    measure_latency,
    topk_accuracy,
)
from ..evaluation.gate import Check, GateResult
from ..progress import Progress
from ..ci.device import seal
from ..buildfolder.signing import PublicKey, SigningKey, device_key_path, load_or_create_key, pinned_workstation_key
from ..report import make_report, write_report
from .bundle import CALIB_CACHE, ENGINES_DIR, MODEL_FILES, Bundle, read_bundle
from .calib_cache import read_calibration_cache, trt_version_tag
from .without_tensorrt import golden_checks

log = logging.getLogger(__name__)



@dataclass
class DeviceResult:
    bundle: Path
    report: Dict[str, Any]
    gate: GateResult
    engines: List[Path] = field(default_factory=list)
    #: why the engines were not built (no TensorRT or no GPU here); None when they were
    pending: Optional[str] = None
    #: the device key that signed report.json, and whether compile made it just now (buildfolder/signing.py)
    signed_by: Optional[PublicKey] = None
    key_created: bool = False
    #: the pinned workstation key id that signed the bundle's manifest; None when no key is pinned here
    bundle_signed_by: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.gate.passed


def compile_bundle(bundle_dir: Union[str, Path], progress: Progress = None, root: Union[str, Path, None] = None,
                   key_file: Union[str, Path, None] = None, workstation_key: Optional[str] = None) -> DeviceResult:
    """Build, check and time the bundle's engines on this machine; the gate result is returned, not raised.

    ``root``: where the device's facts are read (device_facts.py; "/" on a device, a fake one in tests). The report
    is signed with the device key (``key_file``, else buildfolder.signing.device_key_path(), made on first use);
    ``workstation_key`` (else the pinned workstation-key.pub, if any) must have signed the bundle's manifest.
    """
    from .device_facts import detect
    from .device_plan import bundle_specs, plan_for_bundle
    from .engines import build_engines, dla_cores, features
    from .machine import machine_record, tensorrt_module

    t_start = time.perf_counter()
    key, created = load_or_create_key(device_key_path(key_file))
    b = read_bundle(bundle_dir, pinned_workstation_key(workstation_key))
    identity = bundle_identity(b)
    why = tensorrt_missing()
    if why is not None:
        facts = detect(root)
        return _signed(_without_tensorrt(b, why, identity, progress, facts, plan_for_bundle(b, facts), key), key,
                       created)
    trt = tensorrt_module(f"build the engines of the bundle '{b.root}' on this device")
    facts = detect(root, trt, dla_cores(trt))
    if b.recipe.get("device") == "jetson" and not facts.jetson:
        raise BadInputError(
            f"The bundle '{b.root}' is for {b.manifest['target']} but this machine is not a Jetson (no "
            "/etc/nv_tegra_release). TensorRT engines only run on the GPU that built them: copy the bundle to the "
            "Jetson and run `resnext-deploy compile --bundle` there, or build with --target x86-gpu for this machine."
        )
    plan = plan_for_bundle(b, facts)
    cfg = b.tensorrt
    specs = plan.engines if plan is not None else bundle_specs(b.info["engines"])
    here = dict(machine_record(trt), facts=facts.to_dict())
    feats = features(trt)
    notes, cache_bytes = _tensorrt_notes(b, trt, feats, facts)
    engines_dir = b.path(ENGINES_DIR)
    engines_dir.mkdir(exist_ok=True)
    timing_cache = engines_dir / "timing.cache" if cfg["timing_cache"] else None
    timing = TimingConfig.from_recipe(b.recipe["evaluation"])
    checks: List[Check] = []
    rows: List[Dict[str, Any]] = []
    stages: Dict[str, float] = {}
    arts: List[Artifact] = []
    models = {k: b.path(f) for k, f in MODEL_FILES.items() if b.path(f).is_file()}
    for built in build_engines(specs, models, engines_dir, cfg, cache_bytes, timing_cache, progress, trt):
        if built.record is None:
            spec = built.spec
            rows.append({"artifact": spec.name, "backend": "tensorrt", "precision": spec.precision, "pending": True,
                         "reason": f"refused on this device: {built.refused}", "details": {"engine": spec.to_dict()}})
            checks.append(Check(spec.name, "buildable_here", 0.0, 1.0, ">=", False))
            notes.append(f"{spec.name} was not built: {built.refused}.")
            continue
        stages[f"build {built.spec.name}"] = built.record["build_seconds"]
        art, row, engine_checks = _check_engine(b, built, cfg, timing)
        arts.append(art)
        rows.append(row)
        checks += engine_checks
    gate = GateResult(all(c.passed for c in checks), checks)
    selection = select_engine(rows, checks)
    stages["total"] = time.perf_counter() - t_start
    notes += plan_notes(plan) + _workstation_notes(b) + int8_vs_fp16_notes(rows) + [selection["why"]]
    report = make_report(
        model=b.manifest["model"], target=b.manifest["target"], reference=b.manifest.get("reference", "onnx-fp32"),
        results=rows, gate=gate, stages=stages, notes=notes,
        dataset=_golden_dataset(b, timing.batch_size),
        extra={"device": here, "bundle": b.info.get("name"), "measured_on": "device", "tensorrt": feats.to_dict(),
               "engine_plan": plan.to_dict() if plan is not None else None,
               "selection": selection, "workstation_results": b.info.get("workstation_results", [])},
    )
    _write_sealed(b, report, identity, key)
    _record_engines(b, arts, here, gate, selection)
    return _signed(DeviceResult(b.root, report, gate, [b.path(a.path) for a in arts]), key, created)


def _signed(res: DeviceResult, key: SigningKey, created: bool) -> DeviceResult:
    res.signed_by, res.key_created = key.public, created
    res.bundle_signed_by = res.report.get("device_report", {}).get("bundle_signed_by")
    return res


def _tensorrt_notes(b: Bundle, trt: Any, feats: Any, facts: Any) -> Tuple[List[str], Optional[bytes]]:
    """Which row the device is, the calibration cache relabelled for this TensorRT (when it has a calibrator)."""
    from .platforms import GENERIC_JETSON

    cfg, version = b.tensorrt, str(trt.__version__)
    notes = [platform_note(b.manifest["target"], version, facts.jetson, facts.l4t, feats.typing)]
    cache_bytes = None
    if b.path(CALIB_CACHE).is_file() and feats.calibrator:
        cache = read_calibration_cache(b.path(CALIB_CACHE))
        if cache.version != trt_version_tag(version):
            notes.append(f"The calibration cache is labelled {cache.header}; it was relabelled for TensorRT {version} "
                         "(the scales are resnext-deploy's own and do not depend on the TensorRT version).")
        cache_bytes = cache.with_version(version).to_bytes()
    if (cfg["tensorrt_version"] and b.manifest["target"] != GENERIC_JETSON
            and not version.startswith(cfg["tensorrt_version"])):
        notes.append(f"The recipe expects TensorRT {cfg['tensorrt_version']}; this device has {version}.")
    return notes, cache_bytes


def _check_engine(b: Bundle, built: Any, cfg: Dict[str, Any], timing: TimingConfig) -> Tuple[Artifact, Dict[str, Any], List[Check]]:
    """One built engine: the golden inputs through it against the FP32 references, its latency, its checks."""
    from .backend import TensorRtRunner
    from .engines import record_path

    spec, engine, record, golden = built.spec, built.engine, built.record, b.golden
    art = Artifact.from_files(spec.name, [engine, record_path(engine)], b.root, kind="tensorrt-engine",
                              backend="tensorrt", precision=spec.precision,
                              parent="onnx-int8-int8" if spec.precision == "int8" else "onnx-fp32",
                              stage="compile", settings=record)
    with TensorRtRunner(engine, cfg) as runner:
        logits = runner.infer(golden.inputs)
        cmp = compare_logits(logits, golden.reference_fp32)
        timed = measure_latency(runner, golden.inputs, timing)
        details = dict(runner.details, typing=record.get("typing"), source_onnx=record["source"]["onnx"])
    if golden.reference_qdq is not None and spec.precision == "int8":
        details["vs_int8_qdq_reference"] = compare_logits(logits, golden.reference_qdq)
    labels = golden.labels
    m = Metrics(
        artifact=spec.name, backend="tensorrt", precision=spec.precision, images=int(len(logits)),
        top1=topk_accuracy(logits, labels, 1) if labels is not None else float("nan"),
        top5=topk_accuracy(logits, labels, 5) if labels is not None else float("nan"),
        size_bytes=art.size_bytes(b.root), details=details, **cmp, **timed,
    )
    checks = golden_checks(spec.name, spec.precision, cmp, cfg)
    budget = float(b.recipe["gates"].get("max_latency_ms") or 0)
    if budget > 0:
        p50 = m.latency_ms["p50"]
        checks.append(Check(spec.name, "latency_p50_ms", p50, budget, "<=", p50 <= budget))
    log.info("%s: golden max|diff| %.4g, min cos %.6f, p50 %.3f ms", spec.name, cmp["max_abs_logit_diff"],
             cmp["min_cosine"], m.latency_ms["p50"])
    return art, m.to_dict(), checks


def plan_notes(plan: Any) -> List[str]:
    """The device's engine plan in the report's notes (`--target jetson` bundles: the device picks its engines)."""
    if plan is None:
        return []
    return ["Engine plan for this device: " + " ".join(ln.strip() + ";" for ln in plan.lines()).rstrip(";") + "."]


def tensorrt_missing() -> Optional[str]:
    """None when TensorRT and an NVIDIA GPU are here, else why the engines cannot be built on this machine."""
    from . import cuda_runtime as cuda
    from .machine import tensorrt_module

    try:
        tensorrt_module()
    except MissingDependencyError:
        return ("the TensorRT Python package is not importable on this machine (on a Jetson it comes with JetPack: "
                "python3-libnvinfer; in a venv, make it with --system-site-packages)")
    if cuda.gpu_info() is None:
        return "no NVIDIA GPU answered through the CUDA driver (libcuda)"
    return None


def bundle_identity(b: Bundle) -> Dict[str, str]:
    """{relative path: sha256} of every shipped file read_bundle verified (manifest.json aside: compile rewrites it)."""
    files = dict(b.info.get("files", {}))
    for a in b.manifest.get("artifacts", []):
        if not a.get("path", "").startswith(ENGINES_DIR + "/"):
            files.update(a.get("files", {}))
    return files


def _without_tensorrt(b: Bundle, why: str, identity: Dict[str, str], progress: Progress, facts: Any,
                      plan: Any, key: SigningKey) -> DeviceResult:
    """Every check that does not need TensorRT (without_tensorrt.py); the report says the engines are pending."""
    from .without_tensorrt import check_without_tensorrt, machine_without_tensorrt

    engines = None if plan is None else [s.to_dict() for s in plan.engines]
    done = check_without_tensorrt(b, why, progress, engines)
    report = make_report(
        model=b.manifest["model"], target=b.manifest["target"], reference=b.manifest.get("reference", "onnx-fp32"),
        results=done["rows"], gate=done["gate"], stages=done["stages"],
        notes=done["notes"] + plan_notes(plan) + _workstation_notes(b),
        dataset=_golden_dataset(b, int(b.recipe["evaluation"]["batch_size"])),
        extra={"device": dict(machine_without_tensorrt(facts), facts=facts.to_dict()), "bundle": b.info.get("name"),
               "measured_on": "device", "tensorrt": None,
               "engine_plan": plan.to_dict() if plan is not None else None, "engines_built": False, "engines_pending": done["reason"],
               "workstation_results": b.info.get("workstation_results", [])},
    )
    _write_sealed(b, report, identity, key)
    return DeviceResult(b.root, report, done["gate"], [], pending=why)


def platform_note(target: str, version: str, jetson: bool, l4t: Optional[str], typing: str) -> str:
    """Which row of the target's table this device is (or that it is none of them), for the report."""
    from .platforms import find_row, platforms_for

    row = find_row(target, version, jetson)
    where = f"TensorRT {version}" + (f", L4T {l4t}" if l4t else "") + f", {typing}ly typed"
    if row is not None:
        return f"This device matches the {target} row '{row.describe()}' ({where})."
    known = "; ".join(p.describe() for p in platforms_for(target)) or "no table (a target of your own)"
    return (f"This device ({where}) is not a row {target} was made for ({known}); engines are built by what this "
            "TensorRT offers (feature detection), and anything it cannot build is refused below.")


def select_engine(rows: List[Dict[str, Any]], checks: List[Check]) -> Dict[str, Any]:
    """The faster (batch-1 p50) engine among those that passed their golden checks, both recorded, and why.

    TensorRT's INT8 grouped convolutions can be slower than FP16 (NVIDIA/TensorRT#4529), so INT8 is not assumed.
    """
    failed = {c.artifact for c in checks if not c.passed and c.metric.startswith("golden_")}
    measured = [r for r in rows if not r.get("pending")]
    cands = [{"engine": r["artifact"], "precision": r["precision"], "p50_ms": r["latency_ms"]["p50"],
              "passed_golden": r["artifact"] not in failed} for r in measured]
    ok = sorted((c for c in cands if c["passed_golden"]), key=lambda c: c["p50_ms"])
    if not ok:
        return {"selected": None, "candidates": cands,
                "why": "No engine was selected: none passed the golden checks (see the gate)."}
    best = ok[0]
    others = ", ".join(f"{c['engine']} {c['p50_ms']:.3f} ms" for c in ok[1:])
    failing = ", ".join(c["engine"] for c in cands if not c["passed_golden"])
    why = (f"Selected {best['engine']}: the fastest engine that passed the golden checks (batch-1 p50 "
           f"{best['p50_ms']:.3f} ms" + (f"; also passed: {others}" if others else "") + ")"
           + (f"; failed the golden checks: {failing}" if failing else "") + ".")
    return {"selected": best["engine"], "candidates": cands, "why": why}


def int8_vs_fp16_notes(rows: List[Dict[str, Any]]) -> List[str]:
    """INT8 against FP16 on the same device (GPU, DLA): TensorRT's INT8 grouped convolutions can be the slower."""
    by = {r["artifact"]: r for r in rows}
    out = []
    for name, r in by.items():
        other = by.get(name[: -len("int8")] + "fp16") if name.endswith("int8") else None
        if other:
            ratio = other["latency_ms"]["p50"] / r["latency_ms"]["p50"]
            out.append(f"{name} vs {other['artifact']}: batch-1 p50 {r['latency_ms']['p50']:.3f} ms vs "
                       f"{other['latency_ms']['p50']:.3f} ms, INT8 is {ratio:.2f}x the speed of FP16 "
                       f"({'faster' if ratio > 1 else 'not faster'}; measured in this run).")
    return out


def _workstation_notes(b: Bundle) -> List[str]:
    rows = {r["artifact"]: r for r in b.info.get("workstation_results", [])}
    ref, q = rows.get("onnx-fp32"), rows.get("onnx-int8-int8")
    if not (ref and q):
        return []
    return [f"Accuracy on the full validation set was measured on the workstation (ONNX Runtime, {ref['images']} images): "
            f"FP32 top-1 {ref['top1'] * 100:.2f}%, the INT8 Q/DQ model {q['top1'] * 100:.2f}% "
            f"(agreement {q['agreement'] * 100:.2f}%). Here: golden images only, against the FP32 reference logits."]


def _record_engines(b: Bundle, arts: List[Artifact], machine: Dict[str, Any], gate: GateResult,
                    selection: Dict[str, Any]) -> None:
    """List the engines in the bundle's manifest (the shipped files' hashes stay as they were)."""
    manifest = dict(b.manifest)
    built = {a.name for a in arts}
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["name"] not in built] + [a.to_dict() for a in arts]
    manifest["device"] = {"machine": machine, "engines": sorted(built), "gate": gate.to_dict(),
                          "selected": selection["selected"], "selection": selection,
                          "reports": ["report.json", "report.md"]}
    with atomic_file(b.root / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _golden_dataset(b: Bundle, throughput_batch: int) -> Dict[str, Any]:
    """The report's dataset section of a device run: the bundle's golden images, calibrated on the workstation."""
    return {"validation": "the bundle's golden images", "validation_images": int(len(b.golden.inputs)),
            "reference_outputs": "ONNX Runtime (CPU) on model-fp32.onnx, computed on the workstation",
            "calibration": "on the workstation (calibration.cache and the Q/DQ model's scales)",
            "calibration_images": b.recipe["calibration"]["count"],
            "calibration_method": b.recipe["calibration"]["method"],
            "calibration_seed": b.recipe["calibration"]["seed"],
            "throughput_batch": throughput_batch}


def _write_sealed(b: Bundle, report: Dict[str, Any], identity: Dict[str, str], key: SigningKey) -> None:
    """Seal and sign the device report with the bundle's identity (ci/device.py) and write it into the bundle.

    json + md only: the charts would add their time to a report after its seal; the page is drawn at home
    (`report BUILD --device`), from the merged report."""
    write_report(seal(report, b.info["name"], identity, [e["name"] for e in b.info["engines"]], key, b.signed_by),
                 b.root, html=False)
