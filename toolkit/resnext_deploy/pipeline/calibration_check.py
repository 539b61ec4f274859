"""Calibration you can check: held-out clip rates, convergence of the scales, calibration/validation overlap, coverage.

Computed after quantization from what it made, with two passes of the float model through ONNX Runtime:
- the calibrated range of every quantized activation is read from the Q/DQ model's own QuantizeLinear (scale and
  zero point), so it is exactly what the artifact clips to, whatever the calibration method;
- pass 1 runs the calibration images through the float model with each image's min and max of those tensors, in
  three slices (N/4, N/2, N), and keeps at each the mean of the images' own ranges (what the warning follows: it
  settles as the set grows) and the running min-max range (which keeps growing with rarer images): how much the
  scales still move;
- pass 2 runs CLIP_IMAGES validation images (evenly spread) through the float model with, per tensor, a count of
  the values outside its calibrated range (Less, Greater, Or, ReduceSum in the graph: nothing big leaves ONNX
  Runtime): the clip rate;
- both passes fingerprint what the model sees (its grey level shrunk to 16 x 16), so calibration and validation
  images that are the same picture are found without decoding anything twice; files with the same bytes count
  as identical.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..data.sampling import evenly_spaced
from ..optional import require

log = logging.getLogger(__name__)

THUMB = 16  # fingerprint side (pixels)
NEAR_COSINE = 0.998  # fingerprints at least this close are the same picture (resized, recompressed, ...)
WORST = 10  # tensors named in the report's tables and warnings
SHOWN_PAIRS = 20  # shared calibration/validation pairs listed in report.json
CLIP_IMAGES = 128  # validation images the clip rates are counted on (evenly spread; see clip_pass)
# images per batch of the two passes, within the calibration's memory bound: on the demo batch 64 took 0.75x the time of 16
CHECK_BATCH = 64


@dataclass
class CheckSettings:
    """The recipe's ``[calibration]`` keys this module reads."""

    threshold: float = 0.05  # relative change of a typical range between N/2 and N images above which it is "still moving"
    leakage: str = "warn"  # warn | refuse (the gate fails when calibration and validation share images)

    @classmethod
    def from_recipe(cls, cal: Dict[str, Any]) -> "CheckSettings":
        return cls(float(cal.get("convergence_threshold", cls.threshold)), str(cal.get("leakage", cls.leakage)))


# ---------------------------------------------------------------------------------------------------- ranges


def activation_ranges(qdq_proto: Any) -> Dict[str, Tuple[float, float]]:
    """tensor -> (low, high) every activation QuantizeLinear of a Q/DQ model maps onto its integer range."""
    from onnx import numpy_helper

    inits = {t.name: t for t in qdq_proto.graph.initializer}
    out: Dict[str, Tuple[float, float]] = {}
    for node in qdq_proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 2 or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else np.uint8(0)
        if scale.size != 1:
            continue  # per-channel activations: not what our quantizer makes
        info = np.iinfo(zp.dtype)
        z = float(np.asarray(zp).reshape(-1)[0])
        s = float(scale.reshape(-1)[0])
        # ORT renames a graph output it quantizes: "<name>_QuantizeLinear_Input" is the float model's "<name>"
        out[node.input[0].replace("_QuantizeLinear_Input", "")] = ((info.min - z) * s, (info.max - z) * s)
    return out


def _augmented(fp32_proto: Any, tensors: Sequence[str], bounds: Optional[Sequence[Tuple[float, float]]] = None) -> bytes:
    """The float model whose outputs are, per tensor, each image's min and max (``bounds`` None) or, per (tensor,
    bounds) pair, the count of its values outside the bounds and its size."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32_proto)
    g = model.graph
    del g.output[:]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if bounds is None and opset >= 18:  # from opset 18 the reduce ops take their axes as an input
        g.initializer.append(helper.make_tensor("_cc_axis1", TensorProto.INT64, [1], [1]))
    for i, t in enumerate(tensors):
        if bounds is None:  # per image: (B,) minima and maxima of the flattened tensor
            g.node.append(helper.make_node("Flatten", [t], [f"_cc{i}_flat"], axis=1))
            for op in ("ReduceMin", "ReduceMax"):
                g.node.append(helper.make_node(op, [f"_cc{i}_flat", "_cc_axis1"], [f"_cc{i}_{op}"], keepdims=0) if opset >= 18
                              else helper.make_node(op, [f"_cc{i}_flat"], [f"_cc{i}_{op}"], axes=[1], keepdims=0))
                g.output.append(helper.make_tensor_value_info(f"_cc{i}_{op}", TensorProto.FLOAT, ["batch"]))
            continue
        lo, hi = bounds[i]
        g.initializer.extend([helper.make_tensor(f"_cc{i}_lo", TensorProto.FLOAT, [], [lo]),
                              helper.make_tensor(f"_cc{i}_hi", TensorProto.FLOAT, [], [hi])])
        g.node.extend([
            helper.make_node("Less", [t, f"_cc{i}_lo"], [f"_cc{i}_below"]),
            helper.make_node("Greater", [t, f"_cc{i}_hi"], [f"_cc{i}_above"]),
            helper.make_node("Or", [f"_cc{i}_below", f"_cc{i}_above"], [f"_cc{i}_out"]),
            helper.make_node("Cast", [f"_cc{i}_out"], [f"_cc{i}_outf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", [f"_cc{i}_outf"], [f"_cc{i}_clipped"], keepdims=0),
            helper.make_node("Size", [t], [f"_cc{i}_size"]),
        ])
        g.output.extend([helper.make_tensor_value_info(f"_cc{i}_clipped", TensorProto.FLOAT, []),
                         helper.make_tensor_value_info(f"_cc{i}_size", TensorProto.INT64, [])])
    return model.SerializeToString()


def _session(model: bytes) -> Any:
    ort = require("onnxruntime", "check the calibration")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------------- fingerprints


def fingerprints(batch: np.ndarray) -> np.ndarray:
    """(B, 256) float32: each preprocessed image's grey level (what the model sees) shrunk to 16 x 16, mean removed,
    unit length. Two images are the same picture when their fingerprints' cosine is at least NEAR_COSINE.

    Measured on the demo's 32 px digits: the same validation image resized and saved as JPEG (quality 75) kept a
    cosine >= 0.9999 with itself; the closest distinct calibration image reached 0.991. A 64- or 256-bit
    difference hash could not tell those apart (distinct digits came within 1 bit of 256)."""
    from PIL import Image

    grey = np.asarray(batch, np.float32).mean(axis=1)
    out = np.stack([np.asarray(Image.fromarray(g, mode="F").resize((THUMB, THUMB), Image.BILINEAR)).reshape(-1)
                    for g in grey]) if len(grey) else np.zeros((0, THUMB * THUMB), np.float32)
    out = out - out.mean(axis=1, keepdims=True)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def nearest(cal: np.ndarray, val: np.ndarray, chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """For every validation fingerprint, the largest cosine with a calibration fingerprint and that image's index."""
    best = np.empty(len(val), np.float32)
    which = np.empty(len(val), np.int64)
    for s in range(0, len(val), chunk):
        sim = val[s:s + chunk] @ cal.T
        which[s:s + chunk] = sim.argmax(axis=1)
        best[s:s + chunk] = sim.max(axis=1)
    return best, which


def _file_digests(paths: Sequence[Path]) -> List[str]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return out


def leakage(cal_paths: Sequence[Path], val_paths: Sequence[Path], cal_prints: np.ndarray, val_prints: np.ndarray) -> Dict[str, Any]:
    """Validation images that are calibration images: same bytes (identical) or same picture (near-identical)."""
    cal_digest = {d: i for i, d in enumerate(_file_digests(cal_paths))}
    val_digest = _file_digests(val_paths)
    cos, which = nearest(cal_prints, val_prints)
    pairs = []
    identical = near = 0
    for v, d in enumerate(val_digest):
        if d in cal_digest:
            identical += 1
            pairs.append({"validation": str(val_paths[v]), "calibration": str(cal_paths[cal_digest[d]]), "cosine": 1.0, "kind": "identical"})
        elif cos[v] >= NEAR_COSINE:
            near += 1
            pairs.append({"validation": str(val_paths[v]), "calibration": str(cal_paths[which[v]]),
                          "cosine": round(float(cos[v]), 5), "kind": "near-identical"})
    apart = cos[cos < NEAR_COSINE]
    return {"shared": identical + near, "identical": identical, "near_identical": near, "near_cosine": NEAR_COSINE,
            "closest_distinct_cosine": round(float(apart.max()), 5) if apart.size else None, "pairs": pairs[:SHOWN_PAIRS]}


# ---------------------------------------------------------------------------------------------------- coverage


def coverage(folder: Optional[Path], paths: Sequence[Path], classes: Sequence[str]) -> Dict[str, Any]:
    """Images per class of a labelled calibration folder (root/<class>/...); the validation classes it lacks."""
    if folder is None:
        return {"labelled": False}
    folder = Path(folder)
    subfolders = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []
    if not subfolders:
        return {"labelled": False}
    counts = {c: 0 for c in sorted(set(subfolders) | set(classes))}
    loose = 0
    for p in paths:
        try:
            rel = Path(p).relative_to(folder).parts
        except ValueError:
            rel = ()
        if len(rel) > 1:
            counts[rel[0]] = counts.get(rel[0], 0) + 1
        else:
            loose += 1
    return {"labelled": True, "per_class": counts, "empty": [c for c, n in counts.items() if n == 0], "unlabelled_images": loose}


# ---------------------------------------------------------------------------------------------------- passes


def _slices(n: int) -> List[Tuple[int, int]]:
    """The calibration images in three slices ending at N/4, N/2 and N (fewer when N < 4)."""
    ends = sorted({max(1, n // 4), max(1, n // 2), n})
    return list(zip([0] + ends[:-1], ends))


def _batches(data: Any, start: int, stop: int, batch: int, order: Optional[np.ndarray] = None) -> Iterable[np.ndarray]:
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        yield np.asarray(data[s:e] if order is None else data[order[s:e]], np.float32)


def spread_order(n: int) -> np.ndarray:
    """The images in an order whose first N/4 and N/2 are every 4th and every 2nd image: a calibration sample is
    sorted by path, so by class in a labelled folder, and a plain prefix would hold the first classes only."""
    i = np.arange(n)
    return i[np.lexsort((i, np.where(i % 4 == 0, 0, np.where(i % 2 == 0, 1, 2))))]


def scales_pass(fp32_proto: Any, tensors: Sequence[str], data: Any, batch: int) -> Tuple[List[int], np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 (in spread_order): the images at which the ranges were taken; there, per tensor (points x tensors), the
    min-max range's width and the mean of the images' own range widths; and the fingerprints of every image."""
    sess = _session(_augmented(fp32_proto, tensors, None))
    name = sess.get_inputs()[0].name
    lo = np.full(len(tensors), np.inf)
    hi = np.full(len(tensors), -np.inf)
    total = np.zeros(len(tensors))
    points, minmax, typical, hashes = [], [], [], []
    order = spread_order(len(data))
    for start, stop in _slices(len(data)):
        for x in _batches(data, start, stop, batch, order):
            outs = sess.run(None, {name: x})
            mins, maxs = np.asarray(outs[0::2], np.float64), np.asarray(outs[1::2], np.float64)  # tensors x images
            lo, hi = np.minimum(lo, mins.min(axis=1)), np.maximum(hi, maxs.max(axis=1))
            total += (np.maximum(maxs, 0.0) - np.minimum(mins, 0.0)).sum(axis=1)
            hashes.append(fingerprints(x))
        points.append(stop)
        minmax.append(np.maximum(hi, 0.0) - np.minimum(lo, 0.0))  # the quantizer always includes 0 in a range
        typical.append(total / stop)
    prints = np.empty_like(np.concatenate(hashes))
    prints[order] = np.concatenate(hashes)  # back in the images' own order
    return points, np.asarray(minmax), np.asarray(typical), prints


def clip_pass(fp32_proto: Any, ranges: Dict[str, Dict[str, Tuple[float, float]]], data: Any,
              batch: int, sample: int = CLIP_IMAGES) -> Tuple[Dict[str, Dict[str, float]], np.ndarray, int]:
    """Pass 2: per Q/DQ flavour, tensor -> share of its values outside that flavour's calibrated range (all flavours
    in one pass) on ``sample`` validation images evenly spread over the set (0: all); the fingerprints of every
    validation image; the number of images the rates were counted on.

    Counting the values outside a range costs ONNX Runtime about three times the float model itself (five
    elementwise ops and a sum over every quantized tensor), so the rates come from a sample: on the demo, 125
    images gave the same worst tensors as 500 with rates within 10 % of theirs."""
    keys = [(f, t) for f in sorted(ranges) for t in sorted(ranges[f])]
    sess = _session(_augmented(fp32_proto, [t for _, t in keys], [ranges[f][t] for f, t in keys]))
    name = sess.get_inputs()[0].name
    clipped = np.zeros(len(keys))
    total = np.zeros(len(keys))
    chosen = np.zeros(len(data), bool)
    chosen[evenly_spaced(len(data), sample)] = True
    hashes, pending = [], []

    def count(x: np.ndarray) -> None:
        nonlocal clipped, total
        outs = sess.run(None, {name: x})
        clipped += np.asarray(outs[0::2], np.float64)
        total += np.asarray(outs[1::2], np.float64)

    for start in range(0, len(data), batch):
        x = np.asarray(data[start:start + batch], np.float32)
        hashes.append(fingerprints(x))
        pending += list(x[chosen[start:start + len(x)]])
        while len(pending) >= batch:
            count(np.stack(pending[:batch]))
            pending = pending[batch:]
    if pending:
        count(np.stack(pending))
    rates: Dict[str, Dict[str, float]] = {f: {} for f in ranges}
    for (f, t), c, n in zip(keys, clipped, total):
        rates[f][t] = float(c / n) if n else 0.0
    return rates, np.concatenate(hashes), int(chosen.sum())


# ---------------------------------------------------------------------------------------------------- verdicts


def _last_change(widths: np.ndarray) -> np.ndarray:
    """Per tensor, the relative change of a width between the last two points."""
    if len(widths) < 2:
        return np.zeros(widths.shape[1] if widths.ndim == 2 else 0)
    return np.abs(widths[-1] - widths[-2]) / np.where(widths[-1] > 0, widths[-1], 1.0)


def convergence(tensors: Sequence[str], points: Sequence[int], minmax: np.ndarray, typical: np.ndarray,
                threshold: float) -> Dict[str, Any]:
    """Per tensor, its typical range width (the mean of the images' own ranges) at each point and its relative change
    between the last two, with the min-max range's for comparison; the tensors still moving more than ``threshold``,
    and about how many images to add.

    The warning follows the typical range: a mean, it settles like one (its change halves when the images are
    quadrupled), so it tells a set too small to describe the activations from one that is big enough. A min-max
    range is the single most extreme value seen: it grows with every rarer image and moved by more than 10 % between
    128 and 256 images on the demo, so a warning on it fires on every build. The clip rate on the validation images
    is the check of the ranges themselves, whatever the method.
    """
    change, mm_change = _last_change(typical), _last_change(minmax)
    rows = sorted(({"tensor": t, "widths": [float(w) for w in typical[:, i]], "change": float(change[i]),
                    "minmax_widths": [float(w) for w in minmax[:, i]], "minmax_change": float(mm_change[i])}
                   for i, t in enumerate(tensors)), key=lambda r: -r["change"])
    moving = [r for r in rows if r["change"] > threshold]
    # images to add: a mean's change between N/2 and N falls like 1/sqrt(N), so (change / threshold)^2 times the images
    worst = rows[0]["change"] if rows else 0.0
    add = int(math.ceil(points[-1] * ((worst / threshold) ** 2 - 1))) if moving else 0
    return {"method": "typical (mean per-image)", "points": list(points), "threshold": threshold, "max_change": worst,
            "minmax_max_change": float(mm_change.max()) if len(rows) else 0.0,
            "moving": [r["tensor"] for r in moving], "add_images": add, "tensors": rows}


def _names(names: Sequence[str], values: Optional[Sequence[float]] = None) -> str:
    shown = [f"'{n}'" + (f" {values[i] * 100:.0f} %" if values is not None else "") for i, n in enumerate(names[:WORST])]
    return ", ".join(shown) + (f" and {len(names) - WORST} more" if len(names) > WORST else "")


def warnings_for(check: Dict[str, Any]) -> List[str]:
    """What the build warns about: shared images, scales still moving, classes without calibration images."""
    out = []
    leak, conv, cov = check["leakage"], check["convergence"], check["coverage"]
    if leak["shared"]:
        out.append(f"Calibration and validation share {leak['shared']} images ({leak['identical']} identical files, "
                   f"{leak['near_identical']} near-identical pictures): the validation numbers are measured partly on "
                   "images the ranges were fitted to. Use separate folders (--calib and --val).")
    if conv["moving"]:
        moving = [r for r in conv["tensors"] if r["change"] > conv["threshold"]]
        out.append(f"The calibration scales of {len(moving)} tensors still move more than {conv['threshold'] * 100:g} % "
                   f"between {conv['points'][-2]} and {conv['points'][-1]} images: "
                   f"{_names([r['tensor'] for r in moving], [r['change'] for r in moving])}. Add about "
                   f"{conv['add_images']} calibration images (calibration.count and the --calib folder).")
    if cov.get("empty"):
        out.append(f"The calibration folder has no images of {len(cov['empty'])} classes: {_names(cov['empty'])}.")
    return out


def clip_summary(rates: Dict[str, float]) -> Dict[str, Any]:
    """One flavour's clip rates: the worst tensors first, the largest and the mean."""
    rows = sorted(({"tensor": t, "rate": r} for t, r in rates.items()), key=lambda r: -r["rate"])
    return {"max": rows[0]["rate"] if rows else 0.0, "mean": float(np.mean(list(rates.values()))) if rates else 0.0,
            "tensors": rows}


def summary_line(check: Optional[Dict[str, Any]]) -> str:
    """The console's line: worst clip rate, largest scale change, shared images, empty classes."""
    if not check:
        return ""
    parts = []
    for flavour, c in check["clip"].items():
        worst = c["tensors"][0]["tensor"] if c["tensors"] else "-"
        parts.append(f"clip rate ({flavour}) max {c['max'] * 100:.3g} % ('{worst}'), mean {c['mean'] * 100:.2g} %")
    conv = check["convergence"]
    parts.append(f"scales moved <= {conv['max_change'] * 100:.2g} % from {conv['points'][-2] if len(conv['points']) > 1 else 0} "
                 f"to {conv['points'][-1]} images ({len(conv['moving'])} over {conv['threshold'] * 100:g} %)")
    parts.append(f"{check['leakage']['shared']} images shared with validation")
    if check["coverage"].get("empty"):
        parts.append(f"{len(check['coverage']['empty'])} classes without calibration images")
    return "calibration: " + "; ".join(parts)


def check_calibration(fp32_path: Path, qdq_paths: Dict[str, Path], calibration: Any, validation: Any,
                      settings: CheckSettings, batch: int = 16) -> Dict[str, Any]:
    """The report's ``calibration_check`` section for the Q/DQ models ``qdq_paths`` (flavour -> path) quantized from
    ``fp32_path`` with ``calibration`` (datasets.LoadedImages), measured on ``validation``."""
    onnx = require("onnx", "check the calibration")
    fp32 = onnx.load(str(fp32_path))
    known = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    ranges = {f: {t: r for t, r in activation_ranges(onnx.load(str(p), load_external_data=False)).items() if t in known}
              for f, p in sorted(qdq_paths.items())}
    tensors = sorted(set().union(*[set(r) for r in ranges.values()])) if ranges else []
    points, minmax, typical, cal_prints = scales_pass(fp32, tensors, calibration.data, batch)
    rates, val_prints, counted = clip_pass(fp32, ranges, validation.data, batch)
    check = {
        "images": {"calibration": len(calibration.paths), "validation": len(validation.paths), "clip_rate_sample": counted},
        "clip": {f: clip_summary(r) for f, r in rates.items()},
        "convergence": convergence(tensors, points, minmax, typical, settings.threshold),
        "leakage": leakage(calibration.paths, validation.paths, cal_prints, val_prints),
        "coverage": coverage(calibration.folder, calibration.paths, validation.classes),
        "leakage_policy": settings.leakage,
    }
    check["warnings"] = warnings_for(check)
    for w in check["warnings"]:
        log.warning("%s", w)
    return check


def check_build(ctx: Any, artifacts: Sequence[Any]) -> Optional[Dict[str, Any]]:
    """The build's step: the diagnostics of its Q/DQ models (``ctx.extra["calibration_check"]``, its time in
    ``ctx.timings``, its warnings in ``ctx.notes``); None when the recipe turns them off or nothing is quantized."""
    import time

    cal_cfg = ctx.recipe.section("calibration")
    qdq = {a.settings["activations"]: a.abspath(ctx.staging) for a in artifacts if a.kind == "onnx-qdq"}
    fp32 = next((a.abspath(ctx.staging) for a in artifacts if a.kind == "onnx" and a.precision == "fp32"), None)
    if not cal_cfg["diagnostics"] or not qdq or fp32 is None:
        return None
    from .quantize import calibration_batch

    onnx = require("onnx", "check the calibration")
    t = time.perf_counter()
    check = check_calibration(fp32, qdq, ctx.calibration, ctx.validation, CheckSettings.from_recipe(cal_cfg),
                              calibration_batch(onnx.load(str(fp32), load_external_data=False), cap=CHECK_BATCH))
    check["seconds"] = ctx.timings["calibration_check"] = time.perf_counter() - t
    ctx.extra["calibration_check"] = check
    ctx.notes.extend(check["warnings"])
    return check


def leakage_gate(gate: Any, check: Optional[Dict[str, Any]]) -> Any:
    """The gate with the overlap check added when the recipe says ``calibration.leakage = "refuse"``."""
    if not check or check.get("leakage_policy") != "refuse":
        return gate
    from ..evaluation.gate import Check, GateResult

    shared = check["leakage"]["shared"]
    c = Check("calibration", "images_shared_with_validation", float(shared), 0.0, "<=", shared == 0)
    return GateResult(gate.passed and c.passed, list(gate.checks) + [c])
