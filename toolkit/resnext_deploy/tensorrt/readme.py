"""The TensorRT bundle's README.md, from the bundle manifest alone, through a Jinja2 template (templates/).

The template holds the words; this module turns the manifest into the values it shows (engine rows, trtexec lines,
the per-module plans of a `--target jetson` bundle). The README opens with the device steps (handoff.py's commands
around the template's install block: `sha256sum -c SHA256SUMS`, the wheel's dependencies, the wheel pinned by its
sha256, all from the manifest's ``bundle.install``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..optional import require
from .bundle import CALIB_CACHE, FP16_ONNX, FP32_ONNX, QDQ_FP16_ONNX, QDQ_ONNX, WHEELS_DIR
from .device_plan import bundle_specs, table_plans
from .engine_plan import EngineSpec, trtexec_command
from .handoff import BEGIN, END, DeviceSteps
from .platforms import GENERIC_JETSON

TEMPLATE = "bundle_readme.md.j2"
TIMING_CACHE = "engines/timing.cache"


def _trtexec(specs: List[EngineSpec], chw: List[int], shipped: bool) -> Dict[str, Any]:
    """The trtexec lines: weakly typed (8.5 .. 10.x), implicit INT8 from the cache, strongly typed (11.x), latency."""
    def line(s: EngineSpec, onnx: str, strong: bool = False) -> str:
        return trtexec_command(s, onnx, "input", chw, f"engines/{s.name}.engine", CALIB_CACHE, TIMING_CACHE,
                               strongly_typed=strong)

    weak = [line(s, QDQ_ONNX if s.source == "qdq" else FP32_ONNX) for s in specs if shipped or not s.calibration_cache]
    gpu_int8 = next((s for s in specs if s.precision == "int8" and s.dla_core < 0), None)
    implicit = None
    if gpu_int8 is not None and shipped:
        spec = EngineSpec(gpu_int8.name + "-calib", "int8", "fp32", -1, False, True, gpu_int8.min_batch,
                          gpu_int8.opt_batch, gpu_int8.max_batch, gpu_int8.workspace_mb)
        implicit = line(spec, FP32_ONNX)
    strong = [line(s, QDQ_FP16_ONNX if s.precision == "int8" else FP16_ONNX, True) for s in specs]
    latency = f"trtexec --loadEngine=engines/{specs[0].name}.engine --shapes=input:1x{'x'.join(map(str, chw))}"
    return {"weak": weak, "implicit": implicit, "strong": strong, "latency": latency}


def readme_context(manifest: Dict[str, Any], steps: Optional[DeviceSteps] = None) -> Dict[str, Any]:
    """The template's values, from the bundle manifest (and the device steps, which handoff.py writes from it)."""
    b, recipe = manifest["bundle"], manifest["recipe"]
    cfg = recipe["backends"]["tensorrt"]
    specs = bundle_specs(b["engines"])
    chw = b["input"]["shape_chw"]
    cache = dict(b["calibration_cache"], shipped=b["calibration_cache"].get("shipped", True))
    generic = manifest["target"] == GENERIC_JETSON
    engines = [dict(s.to_dict(), weak_source=QDQ_ONNX if s.source == "qdq" else FP32_ONNX,
                    strong_source=QDQ_FP16_ONNX if s.precision == "int8" else FP16_ONNX) for s in specs]
    plans = [{"module": p.module.name, "row": p.row.describe().split(", CUDA")[0],
              "engines": [s.name for s in p.engines] or ["none"]} for p in table_plans(specs)] if generic else []
    jp = f"JetPack {cfg['jetpack']}, " if cfg["jetpack"] else ""
    return {
        "model": manifest["model"]["name"], "target": manifest["target"], "created": manifest["created"],
        "description": recipe.get("description") or manifest["target"],
        "steps": steps, "steps_begin": BEGIN, "steps_end": END, "install": b.get("install"),
        "files": {"fp32": FP32_ONNX, "qdq": QDQ_ONNX, "fp16": FP16_ONNX, "qdq_fp16": QDQ_FP16_ONNX,
                  "cache": CALIB_CACHE, "wheels": WHEELS_DIR},
        "opset": recipe["export"]["opset"], "chw": chw, "qdq_check": b["qdq_check"],
        "typed": b["strongly_typed_models"], "cache": cache, "golden_images": b["golden_images"],
        "pre": manifest["preprocessing"], "workstation": b["workstation_results"],
        "validation_images": b["workstation_results"][0]["images"],
        "expected": ("any Jetson of the table below: the device picks its engines" if generic
                     else f"{jp}TensorRT {cfg['tensorrt_version']} expected"),
        "engines": engines, "module_plans": plans, "platforms": b.get("platforms") or [],
        "tol": cfg, "trtexec": _trtexec(specs, chw, cache["shipped"]), "tensorrt_version": cfg["tensorrt_version"],
    }


def render_readme(manifest: Dict[str, Any], steps: Optional[DeviceSteps] = None) -> str:
    """The bundle's README: what is inside, how to build and check on the device, the trtexec equivalents."""
    jinja2 = require("jinja2", "write the TensorRT bundle's README")
    env = jinja2.Environment(loader=jinja2.PackageLoader("resnext_deploy.tensorrt", "templates"),
                             autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    return env.get_template(TEMPLATE).render(**readme_context(manifest, steps))
