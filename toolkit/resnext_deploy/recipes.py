"""Recipes: one TOML file per target saying what to build, how to calibrate, and the gates.

Defaults live here, in DEFAULTS, and nowhere else; a recipe file overrides them key by key. Unknown
sections or keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .cpu import TARGET_CLASSES as ISA_TARGETS
from .errors import BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack's Python 3.8 / 3.10
    import tomli as tomllib

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
PRECISIONS = ("fp32", "fp16", "int8")

DEFAULTS: Dict[str, Any] = {
    "target": "",
    "description": "",
    "device": "cpu",  # cpu | gpu | jetson
    # [backends.<name>]: each backend's own defaults (backends/, Backend.defaults) plus "precisions": [] (not built)
    "backends": {},
    "export": {"opset": 17, "tolerance": 1e-3, "simplify": True},
    "calibration": {
        "method": "minmax",
        "count": 256,
        "seed": 0,
        "percentile": 99.999,
        "folder": "",  # empty: the demo's calibration images
    },
    "quantize": {  # INT8 weights safe on the CPUs the artifacts are for (cpu.py, quantize.weight_range_for)
        "isa_class": "x86-64",  # x86-64 = any x86-64 CPU | vnni = AVX-512 VNNI, AVX-VNNI or AMX only | none = no CPU kernel (GPU)
        "weight_range": "auto",  # auto (x86-64: 7bit, else full) | 7bit | full
    },
    "evaluation": {
        "folder": "",  # empty: the demo's validation images
        "limit": 0,  # 0 = every image
        "batch_size": 8,  # throughput batch
        "warmup": 5,
        "iterations": 50,  # timed batch-1 runs
    },
    "preprocess": {},  # overrides of the model's preprocessing (resize, crop, mean, std, interpolation)
    "gates": {
        "max_top1_drop": 1.0,  # percentage points, INT8 vs the float model
        "min_agreement": 0.98,  # top-1 agreement with the float model
        "max_latency_ms": 0.0,  # p50 at batch 1; 0 = no latency gate
    },
    "fallback": {  # accuracy-driven quantization (fallback.py, sensitivity.py)
        "enabled": True,  # when an INT8 artifact fails an accuracy gate, keep the most sensitive layers in float
        "max_excluded_layers": 5,  # cap on layers left in float; reached without passing = the gate fails
        "subset": 200,  # validation images the per-layer sensitivity is measured on
        "measure": "quantize-one",  # quantize-one | float-one | both (see sensitivity.py)
        "sensitivity": False,  # analyse and report the layers even when the gate passes
    },
}


def defaults() -> Dict[str, Any]:
    """DEFAULTS with every registered backend's section filled in from the backend itself."""
    from . import backends

    out = copy.deepcopy(DEFAULTS)
    out["backends"] = {n: dict({"precisions": []}, **copy.deepcopy(backends.get(n).defaults)) for n in backends.names()}
    return out


@dataclass
class Recipe:
    """A validated recipe: ``data`` has every key of DEFAULTS."""

    data: Dict[str, Any]
    source: str

    @property
    def target(self) -> str:
        return self.data["target"]

    def section(self, name: str) -> Dict[str, Any]:
        return self.data[name]

    def backend(self, name: str) -> Dict[str, Any]:
        return self.data["backends"][name]

    def enabled_backends(self) -> List[str]:
        return [b for b, cfg in self.data["backends"].items() if cfg["precisions"]]

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self.data)


def _merge(base: Dict[str, Any], override: Dict[str, Any], where: str, source: str) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            raise BadInputError(
                f"Unknown recipe key '{path}' in {source}. Known keys here: {', '.join(sorted(base)) or '(none)'}."
            )
        default = base[key]
        if isinstance(default, dict) and default and not isinstance(value, dict):
            raise BadInputError(f"Recipe key '{path}' in {source} must be a table, got {value!r}.")
        if isinstance(default, dict) and default:
            out[key] = _merge(default, value, path, source)
        elif isinstance(default, dict):  # free-form table (preprocess)
            out[key] = dict(value)
        else:
            if isinstance(default, bool) != isinstance(value, bool) or (
                not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int))
            ):
                raise BadInputError(
                    f"Recipe key '{path}' in {source} must be {type(default).__name__}, got {value!r}."
                )
            out[key] = value
    return out


def calibration_settings(section: Optional[Dict[str, Any]] = None, source: str = "the calibration settings") -> Dict[str, Any]:
    """A ``[calibration]`` section with the defaults filled in, checked (the one place calibration keys are checked)."""
    cal = _merge(DEFAULTS["calibration"], section or {}, "calibration", source)
    if cal["method"] not in CALIBRATION_METHODS:
        raise BadInputError(
            f"calibration.method = '{cal['method']}' in {source} is not one of {', '.join(CALIBRATION_METHODS)}."
        )
    if cal["count"] <= 0:
        raise BadInputError(f"calibration.count must be positive in {source}, got {cal['count']}.")
    return cal


def _validate(data: Dict[str, Any], source: str) -> None:
    calibration_settings(data["calibration"], source)
    from . import backends

    for name, cfg in data["backends"].items():
        backends.get(name).validate(cfg, source)
    q = data["quantize"]
    if q["isa_class"] not in ISA_TARGETS or q["weight_range"] not in ("auto", "7bit", "full"):
        raise BadInputError(
            f"[quantize] in {source} needs isa_class in {' | '.join(ISA_TARGETS)} and weight_range in auto | 7bit | full, "
            f"got '{q['isa_class']}', '{q['weight_range']}'."
        )
    fb = data["fallback"]
    if fb["measure"] not in ("quantize-one", "float-one", "both") or fb["max_excluded_layers"] < 0 or fb["subset"] <= 0:
        raise BadInputError(
            f"[fallback] in {source} needs measure in quantize-one | float-one | both, max_excluded_layers >= 0 and "
            f"subset > 0, got '{fb['measure']}', {fb['max_excluded_layers']}, {fb['subset']}."
        )
    if not any(cfg["precisions"] for cfg in data["backends"].values()):
        raise BadInputError(f"The recipe {source} enables no backend: give some backends.<name>.precisions.")


def recipes_dir() -> Path:
    """Where the shipped recipes are (the repo's recipes/, installed as resnext_deploy.recipes)."""
    from .resources import shipped_dir

    return shipped_dir("resnext_deploy.recipe_files", "recipes")


def list_targets() -> Dict[str, Path]:
    """Shipped targets -> recipe file."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.toml"))}


def load_recipe(path: Union[str, Path, None] = None, target: Optional[str] = None) -> Recipe:
    """Load a recipe file, or the shipped recipe of ``target``."""
    if path is None:
        targets = list_targets()
        if target not in targets:
            raise BadInputError(
                f"Unknown target '{target}'. Known targets: {', '.join(targets) or '(none found)'}. "
                "Run `resnext-deploy targets` to list them, or pass your own --recipe FILE."
            )
        path = targets[target]
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"Recipe file '{path}' does not exist. Copy one from recipes/ and edit it.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"Recipe file '{path}' is not valid TOML: {exc}.") from exc
    data = _merge(defaults(), raw, "", str(path))
    if not data["target"]:
        data["target"] = target or path.stem
    _validate(data, str(path))
    return Recipe(data, str(path))
