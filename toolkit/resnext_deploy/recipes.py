"""Recipes: one TOML file per target saying what to build, how to calibrate, and the gates.

Defaults live here, in DEFAULTS, and nowhere else; a recipe file overrides them key by key. Unknown
sections or keys are errors (a typo must not silently fall back to a default).

Recipes layer: defaults < a base recipe < the user's. A recipe names its base with ``extends = "x86-cpu"``
(a target) or ``extends = "base.toml"`` (a path, relative to the recipe), and holds only what differs; a base
may extend another. ``Recipe.provenance`` says, for every resolved value, which layer set it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .host.cpu import TARGET_CLASSES as ISA_TARGETS
from .errors import BadInputError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # the union of what the backends build (each declares its own)

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
        "diagnostics": True,  # clip rates, convergence, overlap with validation, coverage (pipeline/calibration_check.py)
        # a typical range moving more than this (relative) between N/2 and N images is warned about (calibration_check.py):
        # on the demo 8 images moved 7.5 %, 32 images 3.3 %, the default 256 images 1.5 %
        "convergence_threshold": 0.05,
        "leakage": "warn",  # warn | refuse: calibration images also in the validation set warn, or fail the gate
    },
    "quantize": {  # INT8 weights safe on the CPUs the artifacts are for (host/cpu.py, quantize.weight_range_for)
        "isa_class": "x86-64",  # x86-64 = any x86-64 CPU | vnni = AVX-512 VNNI, AVX-VNNI or AMX only | none = no CPU kernel (GPU)
        "weight_range": "auto",  # auto (x86-64: 7bit, else full) | 7bit | full
        "bias_correction": False,  # fold each conv's mean output shift under quantization into its bias (bias_correction.py);
        # off: on the stand-in it raised agreement in 3 of 4 artifacts but cost top-1 in 3 of 4 (up to 0.6 pt), on the
        # demo the cosines moved both ways (benchmarks/results/fidelity/README.md)
    },
    "evaluation": {
        "folder": "",  # empty: the demo's validation images
        "limit": 0,  # 0 = every image
        "batch_size": 8,  # throughput batch
        "warmup": 5,
        "iterations": 50,  # timed batch-1 runs
        "gallery": 24,  # per INT8 artifact, the images whose top-1 differs from float shown in the report; 0 = none
    },
    "preprocess": {},  # overrides of the model's preprocessing (resize, crop, mean, std, interpolation)
    "gates": {
        # README "Default gates": what they are and the measurements behind them
        "max_top1_drop": 1.0,  # percentage points, INT8 vs the float model (NNCF accuracy control's absolute max drop)
        "min_top1_ratio": 0.99,  # INT8 top-1 / float top-1 (MLPerf's rule); 0 = no check
        "min_agreement": 0.95,  # top-1 agreement with the float model on all images
        "min_agreement_confident": 0.99,  # the same on the images the float model is confident about; 0 = no check
        "min_cosine": 0.97,  # lowest per-image logit cosine vs the float model (catches saturating kernels); 0 = no check
        "max_latency_ms": 0.0,  # p50 at batch 1; 0 = no latency gate
        "baseline": {  # `report NEW --baseline OLD` (ci/baseline.py): artifact by artifact against a previous build
            "max_top1_drop_vs_baseline": 1.0,  # percentage points of top-1 lost vs the baseline's same artifact
            # batch-1 p50, compared only when the manifests name the same CPU and versions; 0 = not checked. Off by
            # default: on shared runners the noise exceeds any useful bound (two identical demo builds here: +700%)
            "max_latency_increase_pct": 0.0,
            "max_size_increase_pct": 10.0,  # bytes on disk; 0 = not checked
        },
    },
    "signing": {  # buildfolder/signing.py: who may sign what comes back from the device
        # the device's Ed25519 public key (base64 of 32 bytes, as `resnext-deploy device-key` prints it), or a file
        # holding it: `report BUILD --device` accepts only reports this key signed ("" = give --device-key)
        "device_key": "",
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
    #: the files it was resolved from, base first: {"kind": "target" | "user", "name", "path", "sha256"}
    layers: List[Dict[str, str]] = field(default_factory=list)
    #: dotted key -> the layer that set it: "default", "target:<name>" or "user:<path>"
    provenance: Dict[str, str] = field(default_factory=dict)

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


def _layer(
    data: Dict[str, Any], schema: Dict[str, Any], override: Dict[str, Any], where: str, source: str,
    label: Optional[str] = None, provenance: Optional[Dict[str, str]] = None,
) -> None:
    """Lay ``override`` over ``data`` in place, checking keys and types against ``schema`` (the defaults)."""
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key not in schema:
            raise BadInputError(
                f"Unknown recipe key '{path}' in {source}. Known keys here: {', '.join(sorted(schema)) or '(none)'}."
            )
        default = schema[key]
        if isinstance(default, dict) and not isinstance(value, dict):
            raise BadInputError(f"Recipe key '{path}' in {source} must be a table, got {value!r}.")
        if isinstance(default, dict) and default:
            _layer(data[key], default, value, path, source, label, provenance)
        elif isinstance(default, dict):  # free-form table (preprocess): key by key over the layer below
            data[key].update(value)
            if provenance is not None and label:
                provenance.update({f"{path}.{k}": label for k in value})
        else:
            if isinstance(default, bool) != isinstance(value, bool) or (
                not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int))
            ):
                raise BadInputError(
                    f"Recipe key '{path}' in {source} must be {type(default).__name__}, got {value!r}."
                )
            data[key] = value
            if provenance is not None and label:
                provenance[path] = label


def _merge(base: Dict[str, Any], override: Dict[str, Any], where: str, source: str) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    _layer(out, base, override, where, source)
    return out


def _leaves(data: Dict[str, Any], where: str = "") -> List[str]:
    out: List[str] = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        out += _leaves(value, path) if isinstance(value, dict) and value else [path]
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
    if cal["leakage"] not in ("warn", "refuse") or not isinstance(cal["diagnostics"], bool):
        raise BadInputError(f"calibration.leakage must be 'warn' or 'refuse' and calibration.diagnostics true or false in "
                            f"{source}, got {cal['leakage']!r} and {cal['diagnostics']!r}.")
    return cal


#: dotted key -> (low, high, what it is): every number a recipe holds, with its allowed closed range (None = open).
#: Checked before anything is built, so `min_agreement = 5` fails in a second rather than at the gate.
RANGES: Dict[str, Any] = {
    # Caps (README "Recipes"): past them a value only costs memory or hours. opset: 13 is the first with per-channel
    # QuantizeLinear (the INT8 stages write it); above 21 the exporters and backends here are not tested.
    "export.opset": (13, 21, "the ONNX opset the model is exported with"),
    "export.tolerance": (0.0, None, "the largest |logit| difference allowed between ONNX and PyTorch"),
    # 4096 images are 2.4 GB of float32 at 224 px; min/max and histogram ranges settle within a few hundred
    "calibration.count": (1, 4096, "calibration images"),
    "calibration.percentile": (0.0, 100.0, "a percentile of |activation|, as ONNX Runtime's calibrator takes it"),
    "calibration.convergence_threshold": (0.0, 10.0, "a relative change of a scale, e.g. 0.1 = 10 %"),
    "evaluation.limit": (0, None, "images; 0 = every image"),
    # 256 images are 154 MB of input at 224 px and some GB of ResNeXt-50 activations; CPU throughput is flat by 64
    "evaluation.batch_size": (1, 256, "images per throughput batch"),
    "evaluation.warmup": (0, 1000, "untimed runs"),
    # 10,000 batch-1 runs of ResNeXt-50 take minutes on a laptop CPU; p99 needs no more
    "evaluation.iterations": (1, 10000, "timed runs"),
    "evaluation.gallery": (0, 1000, "images per INT8 artifact in the report's gallery; 0 = none"),
    "gates.max_top1_drop": (0.0, 100.0, "percentage points of top-1"),
    "gates.min_top1_ratio": (0.0, 1.0, "INT8 top-1 / float top-1, e.g. 0.99; 0 = no check"),
    "gates.min_agreement": (0.0, 1.0, "a share of the images, e.g. 0.95 = 95 %"),
    "gates.min_agreement_confident": (0.0, 1.0, "a share of the confident images; 0 = no check"),
    "gates.min_cosine": (-1.0, 1.0, "a cosine; 0 = no check"),
    "gates.max_latency_ms": (0.0, None, "milliseconds; 0 = no latency gate"),
    "gates.baseline.max_top1_drop_vs_baseline": (0.0, 100.0, "percentage points of top-1"),
    "gates.baseline.max_latency_increase_pct": (0.0, None, "percent; 0 = not checked"),
    "gates.baseline.max_size_increase_pct": (0.0, None, "percent; 0 = not checked"),
    "fallback.max_excluded_layers": (0, None, "layers"),
    "fallback.subset": (1, 100000, "images"),
}


def _range_text(key: str, low: Any, high: Any) -> str:
    name = key.rsplit(".", 1)[-1]
    if high is None:
        return f"{name} >= {low:g}"
    return f"{low:g} <= {name} <= {high:g}"


def _range_errors(data: Dict[str, Any], where: Any) -> List[str]:
    """Every value of RANGES outside its range (or NaN/inf): 'gates.min_agreement = 5 in FILE: allowed 0 <= ... (...)'."""
    errors = []
    for key, (low, high, what) in RANGES.items():
        value: Any = data
        for part in key.split("."):
            value = value[part]
        bad = not math.isfinite(value) or value < low or (high is not None and value > high)
        if bad:
            errors.append(f"{key} = {value!r} in {where(key)}: allowed {_range_text(key, low, high)} ({what})")
    return errors


def _validate(data: Dict[str, Any], source: str, where: Any = None) -> None:
    """Check the values a recipe resolved to; ``where(key)`` names the file that set a key (default: ``source``)."""
    where = where or (lambda key: source)
    errors = _range_errors(data, where)
    if errors:
        raise BadInputError(
            f"Recipe value{'s' if len(errors) > 1 else ''} out of range: " + "; ".join(errors)
            + ". Fix the recipe; nothing was built."
        )
    calibration_settings(data["calibration"], source)
    from . import backends

    for name, cfg in data["backends"].items():
        backends.get(name).validate(cfg, source)
    q = data["quantize"]
    if not isinstance(q["bias_correction"], bool):
        raise BadInputError(f"quantize.bias_correction = {q['bias_correction']!r} in {source}: give true or false.")
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
    if data["evaluation"]["gallery"] < 0:
        raise BadInputError(f"evaluation.gallery = {data['evaluation']['gallery']} in {source}: give a number >= 0 "
                            "(images per INT8 artifact in the report's gallery; 0 = none).")
    if not any(cfg["precisions"] for cfg in data["backends"].values()):
        raise BadInputError(
            f"The recipe {source} enables no backend: give some backends.<name>.precisions, or build on a target's "
            f"recipe and keep only what differs: extends = \"x86-cpu\" (see `resnext-deploy targets`)."
        )


def check_values(data: Dict[str, Any], source: str) -> None:
    """Range- and type-check resolved recipe values that did not come from a TOML file (a bundle's manifest).

    The same checks as a recipe file gets on the workstation; a value out of range is a BadInputError naming it."""
    try:
        _layer(defaults(), defaults(), data, "", source)
        _validate(data, source)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadInputError(f"The recipe in {source} is incomplete or malformed ({exc!r}): rebuild it on the "
                            "workstation.") from exc


def recipes_dir() -> Path:
    """Where the shipped recipes are (the repo's recipes/, installed as resnext_deploy.recipes)."""
    from .data.resources import shipped_dir

    return shipped_dir("resnext_deploy.recipe_files", "recipes")


def list_targets() -> Dict[str, Path]:
    """Shipped targets -> recipe file."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.toml"), key=lambda p: p.stem)}  # "jetson" before "jetson-*"


def _read_toml(path: Path) -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib  # novermin (3.11+ only, guarded)
    else:  # JetPack's Python 3.8 / 3.10 (imported here: a bundle's recipe is checked on the device without reading TOML)
        import tomli as tomllib

    if not path.is_file():
        raise BadInputError(f"Recipe file '{path}' does not exist. Copy one from recipes/ and edit it.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"Recipe file '{path}' is not valid TOML: {exc}.") from exc


def _target_path(target: str, needed_by: str) -> Path:
    targets = list_targets()
    if target not in targets:
        raise BadInputError(
            f"Unknown target '{target}'{needed_by}. Known targets: {', '.join(targets) or '(none found)'}. "
            "Run `resnext-deploy targets` to list them, or pass your own --recipe FILE."
        )
    return targets[target]


def _chain(path: Path, kind: str, name: str, seen: List[Path]) -> List[Dict[str, Any]]:
    """The layers of one recipe file, base first: each {"kind", "name", "path", "sha256", "raw"}."""
    real = path.resolve()
    if real in seen:
        loop = " -> ".join(str(p) for p in seen + [real])
        raise BadInputError(f"Recipe '{path}' extends itself through {loop}. Remove one of the `extends` keys.")
    raw = _read_toml(path)
    layer = {"kind": kind, "name": name, "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "raw": raw}
    base = raw.pop("extends", None)
    if base is None:
        return [layer]
    if not isinstance(base, str) or not base:
        raise BadInputError(f"extends = {base!r} in {path}: name a target (e.g. \"x86-cpu\") or a recipe file.")
    if base.endswith(".toml") or "/" in base or "\\" in base:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        return _chain(base_path, "user", str(base_path), seen + [real]) + [layer]
    target_path = _target_path(base, f" (extends in {path})")
    return _chain(target_path, "target", base, seen + [real]) + [layer]


def load_recipe(path: Union[str, Path, None] = None, target: Optional[str] = None) -> Recipe:
    """Load a recipe file, the shipped recipe of ``target``, or (both given) the file layered over ``target``'s.

    A file with ``extends`` is layered over its base; giving ``target`` too is allowed when it names that base.
    """
    if path is None:
        layers = _chain(_target_path(str(target), ""), "target", str(target), [])
    else:
        path = Path(path)
        layers = _chain(path, "user", str(path), [])
        if target is not None:
            if layers[0]["kind"] == "target" and layers[0]["name"] != target:
                raise BadInputError(
                    f"--target {target} and the recipe {path}, which extends '{layers[0]['name']}': give one of them, "
                    "or make the recipe's `extends` name the target."
                )
            if len(layers) == 1:  # a recipe without a base, given with a target: it goes over the target's
                layers = _chain(_target_path(target, ""), "target", target, []) + layers
    data = defaults()
    provenance = {key: "default" for key in _leaves(data)}
    for layer in layers:
        label = f"{layer['kind']}:{layer['name']}"
        _layer(data, defaults(), layer.pop("raw"), "", layer["path"], label, provenance)
    source = layers[-1]["path"]
    if not data["target"]:
        data["target"] = target or Path(source).stem
    paths = {f"{layer['kind']}:{layer['name']}": layer["path"] for layer in layers}
    _validate(data, source, lambda key: paths.get(provenance.get(key, ""), "the defaults"))
    return Recipe(data, source, layers, provenance)
