"""Stage `export`: PyTorch module -> checked, simplified ONNX with a dynamic batch axis."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from ...buildfolder.artifacts import Artifact, atomic_file, resource_cause
from ...errors import BadInputError, DeployError, InternalError
from ...optional import require

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    artifact: Artifact
    max_abs_diff: float
    tolerance: float
    simplified: bool
    nodes_before: int
    nodes_after: int

    def to_dict(self) -> Dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "simplified": self.simplified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
        }


def _torch_export(model: Any, sample: Any, path: Path, opset: int) -> None:
    torch = require("torch", "export to ONNX")
    kwargs = dict(
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript-based exporter: fast, one self-contained file, BN folded into Conv,
            # readable tensor names (/layer1/layer1.0/conv1/Conv_output_0) that reports can show.
            torch.onnx.export(model, (sample,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (sample,), str(path), **kwargs)


class ExportFailedError(BadInputError):
    """torch.onnx.export or the ONNX checker rejected the model (exit 2: the model is at fault)."""


def default_log_path(out_path: Path) -> Path:
    """Where the exporter's full output goes when the caller names no place: the temp folder, never the build."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Path(tempfile.gettempdir()) / f"resnext-deploy-export-{out_path.stem}-{stamp}.log"


@contextmanager
def _captured_output(log_path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 (the exporter's C++ logging: its Torch IR dumps) and Python warnings to
    ``log_path`` for the duration; the log is kept only when something fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    with open(log_path, "w+b") as fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = [os.dup(1), os.dup(2)]
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for w in caught:
                fh.write(f"{w.category.__name__}: {w.message}\n".encode())
    if ok:
        log_path.unlink(missing_ok=True)


def _scope_to_module(scope: str) -> Tuple[str, str]:
    """'pkg.ResNeXt::/torch.nn...Sequential::layer2/pkg.Bottleneck::0' -> ('layer2.0', 'Bottleneck')."""
    parts = [seg.split("::", 1) for seg in scope.strip().split("/") if "::" in seg]
    path = ".".join(name for _, name in parts if name)
    kind = parts[-1][0].rsplit(".", 1)[-1] if parts else ""
    return path, kind


def _scope_of(text: str, log: str, op: Optional[str]) -> Optional[Tuple[str, str]]:
    """The module scope the exporter's error (or, for an unsupported operator, its IR dump) points at."""
    m = re.search(r"scope: ?([^\s#]+)", text)
    if m is None and op:
        for line in log.splitlines():
            if f"{op}(" in line:
                m = re.search(r"scope: ?([^\s#]+)", line)
                if m:
                    break
    return _scope_to_module(m.group(1)) if m else None


def _first_sentence(text: str, limit: int = 240) -> str:
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = line.split("[Caused by", 1)[0].strip()
    return line if len(line) <= limit else line[:limit] + "..."


def _ours(exc: BaseException) -> bool:
    """True when the failure was raised by this toolkit's own code (a bug: exit 4), not by torch or the model."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    here = Path(__file__).resolve().parents[1]
    last = Path(frames[-1].filename).resolve()
    return here in last.parents and (here / "models") not in last.parents


def export_error(exc: BaseException, log_path: Path, opset: int) -> DeployError:
    """One short error for a failure inside torch.onnx.export; the full text and traceback go to ``log_path``."""
    text = str(exc)
    try:
        captured = log_path.read_text(errors="replace") if log_path.is_file() else ""
        with open(log_path, "a") as fh:
            fh.write("\n--- exception ---\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        log_note = f"The exporter's full output: {log_path}"
    except OSError:
        captured, log_note = "", "Rerun with --verbose for the exporter's output."
    log.debug("torch.onnx.export failed; its output:\n%s\n%s", captured, text)  # --verbose shows it all
    if _ours(exc):
        return InternalError(
            f"Exporting to ONNX failed inside resnext-deploy ({type(exc).__name__}: {_first_sentence(text)}). "
            f"This is a bug; please report it with the log. {log_note}"
        )
    op_match = re.search(r"operator '([\w:.]+)'", text)
    op = op_match.group(1) if op_match else None
    scope = _scope_of(text, captured, op)
    node = re.search(r"containing node has kind '([\w:.]+)'", text)
    lines = [f"torch.onnx.export could not convert the model ({type(exc).__name__}): {_first_sentence(text)}"]
    if scope is not None:
        path, kind = scope
        where = f"module '{path}' ({kind})" if path else f"the top-level module ({kind})"
        lines.append(f"  where: {where}" + (f", at an {node.group(1)} node" if node else ""))
    if op and "not supported" in text:
        lines.append(f"  what to try: replace '{op}' in the model with operators ONNX opset {opset} has, or set a newer "
                     "export.opset in the recipe if one supports it, or export the ONNX yourself and pass --model model.onnx.")
    else:
        lines.append("  what to try: run `resnext-deploy check --model ...` (it names broken residual adds and grouped "
                     "convs); make the shapes around that module agree; export the eager module rather than TorchScript; "
                     "or export the ONNX yourself and pass --model model.onnx.")
    lines.append(f"  {log_note}")
    return ExportFailedError("\n".join(lines))


def _checked(onnx: Any, proto: Any, simplify: bool, log_path: Path) -> Any:
    """onnx.checker + strict shape inference (and onnxslim), each failure one short error naming the step."""
    def step(what: str, hint: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except DeployError:
            raise
        except Exception as exc:  # onnx and onnxslim raise several types
            try:
                with open(log_path, "a") as fh:
                    fh.write(f"--- {what} ---\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                note = f"Full text: {log_path}"
            except OSError:
                note = "Rerun with --verbose for the full text."
            nodes = re.findall(r"(/[\w.]+(?:/[\w.]+)*)/\w+", str(exc))
            where = f"\n  where: node '{nodes[0]}'" if nodes else ""
            raise ExportFailedError(
                f"The exported ONNX fails {what} ({type(exc).__name__}): {_first_sentence(str(exc))}{where}\n"
                f"  what to try: {hint}\n  {note}"
            ) from exc

    retry = "run `resnext-deploy check --model ...`; export with another export.opset in the recipe"
    step("onnx.checker", retry, onnx.checker.check_model, proto)
    proto = step("shape inference", retry, lambda p: onnx.shape_inference.infer_shapes(p, strict_mode=True), proto)
    if simplify:
        proto = step("simplification (onnxslim)", "set export.simplify = false in the recipe", simplify_onnx, proto)
        proto = step("shape inference after onnxslim", "set export.simplify = false in the recipe",
                     lambda p: onnx.shape_inference.infer_shapes(p, strict_mode=True), proto)
    step("onnx.checker", retry, onnx.checker.check_model, proto)
    return proto


def simplify_onnx(model_proto: Any) -> Any:
    """onnxslim: constant folding, dead-node and identity elimination, shape-op fusion."""
    onnxslim = require("onnxslim", "simplify the ONNX graph")
    return onnxslim.slim(model_proto)


def onnx_from_torch(
    model: Any,
    out_path: Union[str, Path],
    sample: np.ndarray,
    opset: int = 17,
    tolerance: float = 1e-3,
    simplify: bool = True,
    parent: Optional[str] = None,
    root: Optional[Path] = None,
    log_path: Optional[Path] = None,
) -> ExportResult:
    """Export ``model`` (eval mode) to ONNX, check it, infer shapes, simplify, and compare to PyTorch.

    ``sample`` is a preprocessed float32 NCHW batch of real images (2+ images, so the dynamic batch
    axis is exercised). Raises BadInputError when the ONNX output differs from PyTorch by more than
    ``tolerance``, and :class:`ExportFailedError` (short: what failed, the module, what to try) when the
    exporter or the ONNX checker rejects the model; the exporter's full output goes to ``log_path`` (default:
    a file in the temp folder), named in the message.
    """
    torch = require("torch", "export to ONNX")
    onnx = require("onnx", "export to ONNX")
    if opset < 17:
        raise BadInputError(f"ONNX opset {opset} is too old: use opset >= 17 (recipe export.opset).")
    out_path = Path(out_path)
    model = model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample[:1]))
    log_path = Path(log_path) if log_path else default_log_path(out_path)
    with atomic_file(out_path) as tmp:
        try:
            with _captured_output(log_path):
                _torch_export(model, x, tmp, opset)
        except Exception as exc:  # the exporter's errors are many and unstructured: make them one short error
            if resource_cause(exc) is not None:  # a full disk is not the model's fault: atomic_file reports it
                raise
            raise export_error(exc, log_path, opset) from exc
        proto = onnx.load(str(tmp))
        nodes_before = len(proto.graph.node)
        proto = _checked(onnx, proto, simplify, log_path)
        onnx.save(proto, str(tmp))
        nodes_after = len(proto.graph.node)
        with torch.no_grad():
            expected = model(torch.from_numpy(np.ascontiguousarray(sample))).numpy()
        got = run_onnx(tmp, sample)
        diff = float(np.abs(expected - got).max())
        log.info("export: %d -> %d nodes, max |onnx - torch| = %.3g on %d images", nodes_before, nodes_after, diff, len(sample))
        if not np.isfinite(diff):
            from ..check import nonfinite_tensors

            bad = nonfinite_tensors(model)
            where = (f"the {bad[0][1]} '{bad[0][0]}' holds NaN or Inf ({len(bad)} tensor(s) in all)" if bad else
                     "no weight holds NaN or Inf, so a layer overflows or divides by zero on these images")
            side = "PyTorch's" if not np.isfinite(expected).all() else "the ONNX model's"
            raise BadInputError(
                f"The outputs ({side}) hold NaN or Inf on {len(sample)} real images: {where}. "
                "Run `resnext-deploy check` on the model; no tolerance can fix this."
            )
        require_close(diff, tolerance, "PyTorch", len(sample),
                      "Check the model for training-only behaviour in eval mode, or raise export.tolerance in the recipe.")
    art = Artifact.from_files(
        "onnx-fp32", [out_path], root, kind="onnx", backend="onnx", precision="fp32", parent=parent, stage="export",
        settings={"opset": opset, "simplified": simplify, "max_abs_diff_vs_torch": diff},
    )
    return ExportResult(art, diff, tolerance, simplify, nodes_before, nodes_after)


#: what to try when a Keras or TensorFlow export is not close to its framework's outputs
SIMPLIFY_ADVICE = ("Set export.simplify = false in the recipe to see whether the simplification is at fault, or raise "
                   "export.tolerance.")


def require_close(diff: float, tolerance: float, framework: str, images: int, advice: str) -> None:
    """The exported ONNX agrees with ``framework`` on ``images`` real images: its max abs logit difference ``diff`` is
    finite and within ``tolerance``, else BadInputError (one wording for every format's export)."""
    if not np.isfinite(diff) or diff > tolerance:
        raise BadInputError(f"The exported ONNX differs from {framework} by {diff:.3g} (max abs logit difference on "
                            f"{images} real images), above the tolerance {tolerance:g}. {advice}")


def run_onnx(path: Union[str, Path], batch: np.ndarray) -> np.ndarray:
    """Reference inference with ONNX Runtime's CPU provider (no graph optimizations beyond basic)."""
    ort = require("onnxruntime", "run ONNX models")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: batch.astype(np.float32)})[0]


def onnx_input_info(path: Union[str, Path]) -> Dict[str, Any]:
    """Input name and shape of an ONNX model a user brings (for `--model model.onnx`)."""
    onnx = require("onnx", "read ONNX models")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"'{path}' is not a readable ONNX model ({exc}). Re-export it.") from exc
    if len(proto.graph.input) == 0 or len(proto.graph.output) == 0:
        raise BadInputError(f"The ONNX model '{path}' has no graph inputs or outputs.")
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]
    out_dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in proto.graph.output[0].type.tensor_type.shape.dim
    ]
    return {"input": inp.name, "shape": dims, "output": proto.graph.output[0].name, "output_shape": out_dims, "opset": max(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)}
