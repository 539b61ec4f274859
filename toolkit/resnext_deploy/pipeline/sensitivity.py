"""Per-layer quantization sensitivity: which Conv/Gemm layers carry the INT8 error.

For every layer ONNX Runtime's quantizer would quantize (a Conv, Gemm or MatMul with a weight initializer)
we build Q/DQ variants of the float model and compare their logits with the float model's on a fixed
subset of validation images:

* ``quantize-one``: only this layer quantized (``nodes_to_quantize=[layer]``): the error the layer
  brings on its own, through its weights, its input and its output tensors.
* ``float-one``: every layer but this one quantized (``nodes_to_exclude=[layer]``): how much error goes
  away when the layer alone is left in float.

Layers are ranked by the first when it is measured. Leave-one-out (``float-one``) misses a tensor shared
by two layers: ORT keeps a Q/DQ pair on a tensor as long as any of its producers or consumers is
quantized, so excluding either layer alone leaves the tensor quantized and neither looks sensitive;
quantizing each alone shows both.

It is affordable on ResNeXt-50 because the calibration runs once (ORT's calibration cache: every
variant reads the same activation ranges and is byte-identical to what a fresh ``quantize_static``
with that node list would write), the images are a subset, and the float logits are computed once.
The error measure is the noise-to-signal ratio of the logits, ``sum((q - f)^2) / sum(f^2)``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import backends
from ..buildfolder.artifacts import sha256_file
from ..errors import BadInputError
from ..recipes import calibration_settings
from ..evaluation.evaluate import compare_logits, predict_all
from ..optional import require
from ..progress import Progress

log = logging.getLogger(__name__)

MEASURES = ("quantize-one", "float-one", "both")
#: op types ORT's QDQ quantizer gives weights (what "a layer" is here)
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
EVAL_BATCH = 32
PLOT_NAME = "sensitivity.png"



def quantizable_layers(fp32_path: Union[str, Path]) -> List[Tuple[str, str]]:
    """(node name, op type) of every layer with a weight initializer, in graph order."""
    onnx = require("onnx", "analyse quantization sensitivity")
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in weights:
            if not node.name:
                log.warning("sensitivity: skipping an unnamed %s node (the quantizer cannot address it)", node.op_type)
                continue
            out.append((node.name, node.op_type))
    return out


def logit_error(logits: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Noise-to-signal ratio of the logits, top-1 agreement, cosine and max |diff| against the reference."""
    err = compare_logits(logits, reference)
    num = float(np.sum((logits.astype(np.float64) - reference) ** 2))
    den = float(np.sum(reference.astype(np.float64) ** 2))
    return {"nsr": num / max(den, 1e-30), **err}


class VariantQuantizer:
    """Q/DQ variants of one float model from one calibration (ORT's calibration cache in ``work_dir``)."""

    def __init__(
        self, fp32_path: Union[str, Path], images: np.ndarray, calibration: Optional[Dict[str, Any]] = None,
        work_dir: Union[str, Path, None] = None, weight_range: Optional[str] = None,
    ) -> None:
        """``calibration``: the recipe's ``[calibration]`` section (None = the defaults)."""
        self.fp32_path = Path(fp32_path)
        self.images = images
        self.settings = calibration_settings(calibration)
        self.weight_range = weight_range  # None: the recipe default (see quantize.weight_range_for)
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="resnext-deploy-variants-")
        self.work_dir = Path(work_dir) if work_dir else Path(self._tmp.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # The cache holds ranges for this model, these images and this method only: key it by all three.
        self.cache = self.work_dir / f"calibration-{self.settings['method']}-{self.settings['percentile']:g}.json"
        self.calibration_seconds = 0.0
        self.quantize_seconds = 0.0
        self.count = 0

    def quantize(self, flavour: str, exclude: Sequence[str] = (), only: Sequence[str] = (), out: Union[str, Path, None] = None,
                 bias_correction: bool = False) -> Path:
        """Write a Q/DQ model of ``flavour`` with ``exclude`` left in float (or only ``only`` quantized), with the
        bias correction when asked (the fallback's candidates follow the recipe; the ranking does without)."""
        from .quantize import QuantizeOptions, qdq_from_onnx

        out = Path(out) if out else self.work_dir / f"variant-{flavour}.onnx"
        first = not self.cache.is_file()
        t = time.perf_counter()
        qdq_from_onnx(self.fp32_path, out, self.images, QuantizeOptions(
            flavour, self.settings, tuple(exclude), tuple(only), self.weight_range, bias_correction, self.cache, parent=None))
        spent = time.perf_counter() - t
        if first:
            self.calibration_seconds += spent
        else:
            self.quantize_seconds += spent
        self.count += 1
        return out

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def run_onnx_model(path: Union[str, Path], images: np.ndarray, settings: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """Logits of an ONNX model on ``images`` with the ONNX Runtime backend (the recipe's session settings)."""
    with backends.get("onnxruntime").load(Path(path), settings or {}) as runner:
        return predict_all(runner, images, EVAL_BATCH)


class VariantWorker:
    """One worker's share of the ranking (a Ray actor's object): the variants of a layer, quantized from the
    driver's calibration cache (copied in, so no worker calibrates again) and run in ONNX Runtime."""

    def __init__(self, fp32: Any, cache: Any, calibration: np.ndarray, images: np.ndarray, reference: np.ndarray,
                 calibration_cfg: Dict[str, Any], weight_range: Optional[str], ort_settings: Dict[str, Any]) -> None:
        import shutil

        self.quantizer = VariantQuantizer(fp32.path, calibration, calibration_cfg, weight_range=weight_range)
        shutil.copyfile(cache.path, self.quantizer.cache)
        self.images, self.reference, self.ort_settings = images, reference, ort_settings

    def _error(self, flavour: str, **kw: Any) -> Dict[str, float]:
        return logit_error(run_onnx_model(self.quantizer.quantize(flavour, **kw), self.images, self.ort_settings), self.reference)

    def measure(self, item: Tuple[int, str, str, str, Sequence[str]]) -> Dict[str, Any]:
        """The row of one layer: (index, node, op type, measure, flavours) -> its errors per flavour."""
        index, node, op_type, measure, flavours = item
        return _layer_row(self._error, index, node, op_type, measure, flavours)

    def close(self) -> None:
        self.quantizer.close()


@dataclass
class SensitivityResult:
    """The ranking and every measurement behind it (``to_dict`` is what report.json holds)."""

    measure: str
    ranked_by: str
    flavours: List[str]
    images: int
    calibration: Dict[str, Any]
    baseline: Dict[str, Dict[str, float]]  # flavour -> error of the fully quantized model
    layers: List[Dict[str, Any]]  # ranked, best (most sensitive) first
    seconds: Dict[str, float] = field(default_factory=dict)
    variants: int = 0

    def ranking(self) -> List[str]:
        return [layer["node"] for layer in self.layers]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SensitivityResult":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class _Measurer:
    """Measures Q/DQ variants of one model on fixed images against the float logits (one process), counting them."""

    def __init__(self, q: VariantQuantizer, images: np.ndarray, reference: np.ndarray, ort_settings: Optional[Dict[str, Any]],
                 total: int, progress: Progress) -> None:
        self.q, self.images, self.reference, self.ort = q, images, reference, ort_settings
        self.total, self.progress, self.done, self.eval_seconds = total, progress, 0, 0.0

    def __call__(self, flavour: str, **kw: Any) -> Dict[str, float]:
        path = self.q.quantize(flavour, **kw)
        t = time.perf_counter()
        err = logit_error(run_onnx_model(path, self.images, self.ort), self.reference)
        self.eval_seconds += time.perf_counter() - t
        self.advance(1)
        return err

    def advance(self, n: int, to: Optional[int] = None) -> None:
        self.done = self.done + n if to is None else to
        if self.progress:
            self.progress("sensitivity", self.done, self.total)


def _layer_row(m: Any, index: int, node: str, op_type: str, measure: str, flavours: Sequence[str]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"node": node, "op_type": op_type, "index": index}
    if measure in ("quantize-one", "both"):
        row["quantize_one"] = {fl: m(fl, only=[node]) for fl in flavours}
    if measure in ("float-one", "both"):
        row["float_one"] = {fl: m(fl, exclude=[node]) for fl in flavours}
    return row


def _rows_distributed(inference: Any, m: _Measurer, fp32_path: Any, calibration: np.ndarray, layers: List[Tuple[str, str]],
                      measure: str, flavours: List[str], ort_settings: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The layers' rows measured on Ray workers, a layer per task, from this process's calibration cache."""
    from ..scale import ModelFiles

    t = time.perf_counter()
    args = [ModelFiles.of("fp32 model", "onnxruntime", fp32_path), ModelFiles.of("calibration cache", "", m.q.cache),
            np.asarray(calibration, dtype=np.float32), np.asarray(m.images, dtype=np.float32), np.asarray(m.reference),
            m.q.settings, m.q.weight_range, inference.worker_settings(ort_settings)]
    items = [(index, node, op_type, measure, flavours) for index, (node, op_type) in enumerate(layers)]
    per_layer, start = len(flavours) * (2 if measure == "both" else 1), m.done
    rows = inference.map_items(VariantWorker, args, "measure", items, lambda n, _total: m.advance(0, start + n * per_layer))
    m.eval_seconds += time.perf_counter() - t  # quantize and evaluate, on the workers
    return rows


def _rank(rows: List[Dict[str, Any]], measure: str, flavours: List[str], baseline: Dict[str, Dict[str, float]]) -> str:
    """Score and rank ``rows`` in place; returns what they are ranked by."""
    by_alone = measure in ("quantize-one", "both")
    for row in rows:
        if by_alone:
            row["score"] = max(row["quantize_one"][fl]["nsr"] for fl in flavours)
        else:  # the error that goes away when this layer alone stays in float
            row["score"] = max(baseline[fl]["nsr"] - row["float_one"][fl]["nsr"] for fl in flavours)
    # Ties keep graph order, so the ranking is a function of the numbers alone.
    rows.sort(key=lambda r: (-r["score"], r["index"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return ("logit noise-to-signal ratio with only this layer quantized (worst over flavours)" if by_alone
            else "logit noise-to-signal ratio removed by leaving only this layer in float (best over flavours)")


def candidate_order(d: Dict[str, Any]) -> List[str]:
    """The fallback's order of candidates from a sensitivity result (``to_dict``): by the gated metric first
    (agreement lost with only this layer quantized, worst over flavours; or agreement won with only this layer in
    float), then by the ranking (logit noise). The agreement is what the gate checks; the noise breaks its ties."""
    base = d["baseline"]

    def harm(row: Dict[str, Any]) -> float:
        if "quantize_one" in row:
            return max(1.0 - v["agreement"] for v in row["quantize_one"].values())
        return max(v["agreement"] - base[fl]["agreement"] for fl, v in row["float_one"].items())

    return [r["node"] for r in sorted(d["layers"], key=lambda r: (-harm(r), r["rank"]))]


def analyze_sensitivity(
    fp32_path: Union[str, Path],
    calibration: np.ndarray,
    images: np.ndarray,
    flavours: Sequence[str] = ("int8",),
    calibration_cfg: Optional[Dict[str, Any]] = None,
    measure: str = "quantize-one",
    ort_settings: Optional[Dict[str, Any]] = None,
    quantizer: Optional[VariantQuantizer] = None,
    reference: Optional[np.ndarray] = None,
    progress: Progress = None,
    inference: Any = None,
) -> SensitivityResult:
    """Measure every layer of ``fp32_path`` on ``images`` (NCHW float32) and rank them.

    ``flavours`` are the activation flavours to quantize with (a layer's score is its worst over them);
    ``reference`` is the float model's logits on ``images`` if already computed. A ``quantizer`` passed in
    keeps its calibration for the caller (the fallback search reuses it). A distributed ``inference``
    (scale.open_inference with Ray) measures the layers on its workers, a layer per task, from this
    calibration; the rows are merged in layer order, so the ranking is the one this process would give.
    """
    if measure not in MEASURES:
        raise BadInputError(f"Unknown sensitivity measure '{measure}'; use one of {', '.join(MEASURES)}.")
    if len(images) == 0:
        raise BadInputError("The sensitivity analysis needs validation images; the subset is empty.")
    flavours = sorted(set(flavours))
    layers = quantizable_layers(fp32_path)
    if not layers:
        raise BadInputError(f"'{fp32_path}' has no Conv/Gemm/MatMul layer with weights: nothing to analyse.")
    t_start = time.perf_counter()
    q = quantizer or VariantQuantizer(fp32_path, calibration, calibration_cfg)
    try:
        t = time.perf_counter()
        ref = reference if reference is not None else run_onnx_model(fp32_path, images, ort_settings)
        m = _Measurer(q, images, ref, ort_settings, len(flavours) * (1 + len(layers) * (2 if measure == "both" else 1)), progress)
        m.eval_seconds += time.perf_counter() - t
        baseline = {fl: m(fl) for fl in flavours}  # the first also writes the calibration cache
        if inference is not None and getattr(inference, "distributed", False):
            rows = _rows_distributed(inference, m, fp32_path, calibration, layers, measure, flavours, ort_settings)
        else:
            rows = [_layer_row(m, i, node, op, measure, flavours) for i, (node, op) in enumerate(layers)]
    finally:
        seconds = {"calibration": q.calibration_seconds, "quantize": q.quantize_seconds}
        if quantizer is None:
            q.close()
    ranked_by = _rank(rows, measure, flavours, baseline)
    seconds.update(evaluate=m.eval_seconds, total=time.perf_counter() - t_start)
    result = SensitivityResult(
        measure=measure, ranked_by=ranked_by, flavours=list(flavours), images=int(len(images)),
        calibration={"method": q.settings["method"], "images": int(len(calibration)),
                     **({"percentile": q.settings["percentile"]} if q.settings["method"] == "percentile" else {})},
        baseline=baseline, layers=rows, seconds=seconds, variants=m.done,
    )
    log.info("sensitivity: %d layers x %d flavours on %d images in %.1f s; most sensitive: %s",
             len(layers), len(flavours), len(images), seconds["total"], ", ".join(result.ranking()[:3]))
    return result


# ------------------------------------------------------------------------------------------ rendering


def short_name(node: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1/layer1.0/conv1' (for plots)."""
    parts = [p for p in node.split("/") if p]
    if len(parts) > 1 and parts[-1] in LAYER_OPS:
        parts = parts[:-1]
    return "/".join(parts) or node


def write_plot(
    result: Union[SensitivityResult, Dict[str, Any]], path: Union[str, Path], top: int = 30, highlight: Sequence[str] = (),
) -> Path:
    """Horizontal bar plot of the ``top`` most sensitive layers' scores as a PNG: the report's sensitivity chart
    (report/charts.py), drawn by the same code. Layers in ``highlight`` (those the fallback left in float) in orange."""
    from ..report.charts import sensitivity_chart, write_chart

    d = result.to_dict() if isinstance(result, SensitivityResult) else result
    return write_chart(sensitivity_chart(d, top, highlight, name=Path(path).name), path, dpi=100)


def markdown_table(d: Dict[str, Any], top: int = 10) -> List[str]:
    """The ranking as Markdown table lines (top ``top`` layers)."""
    fls = d["flavours"]
    head = ["rank", "layer", "op"]
    if d["measure"] in ("quantize-one", "both"):
        head += [f"NSR alone quantized ({fl})" for fl in fls] + [f"agree alone quantized ({fl})" for fl in fls]
    if d["measure"] in ("float-one", "both"):
        head += [f"NSR with it in float ({fl})" for fl in fls] + [f"agree with it in float ({fl})" for fl in fls]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in d["layers"][:top]:
        cells = [str(r["rank"]), f"`{r['node']}`", r["op_type"]]
        for key in ("quantize_one", "float_one"):
            if key in r:
                cells += [f"{r[key][fl]['nsr']:.3g}" for fl in fls] + [f"{r[key][fl]['agreement'] * 100:.1f}%" for fl in fls]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_section(d: Dict[str, Any], top: int = 10) -> List[str]:
    """'## Layer sensitivity': how it was measured, the table, the plot."""
    base = ", ".join(f"{fl} activations: NSR {b['nsr']:.3g}, agreement {b['agreement'] * 100:.1f}%" for fl, b in sorted(d["baseline"].items()))
    s = d.get("seconds", {})
    lines = [
        "## Layer sensitivity",
        "",
        f"{len(d['layers'])} layers, {d['images']} validation images, ranked by {d['ranked_by']}. "
        f"Fully quantized: {base}. {d['variants']} Q/DQ variants from one calibration "
        f"({d['calibration']['images']} images, {d['calibration']['method']}) in {s.get('total', 0):.1f} s "
        f"(calibration {s.get('calibration', 0):.1f} s, quantization {s.get('quantize', 0):.1f} s, inference {s.get('evaluate', 0):.1f} s).",
        "",
    ]
    lines += markdown_table(d, top)
    if d.get("plot"):
        lines += ["", f"![layer sensitivity]({d['plot']['path']})"]
    return lines + [""]


def attach_plot(d: Dict[str, Any], out_dir: Union[str, Path], name: str = PLOT_NAME, highlight: Sequence[str] = ()) -> Dict[str, Any]:
    """Write the plot into ``out_dir`` and record its path (relative) and sha256 in ``d``."""
    path = write_plot(d, Path(out_dir) / name, highlight=highlight)
    d["plot"] = {"path": name, "sha256": sha256_file(path)}
    return d
