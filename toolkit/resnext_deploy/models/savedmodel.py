"""TensorFlow SavedModel folders in: detect, read the serving signature, run it in TensorFlow, convert with tf2onnx.

Two kinds of folder are read, both through ``tf.saved_model.load``:

- what Keras 3 writes with ``model.export(dir, format="tf_saved_model")``: the endpoint ``serve`` (and the same
  function as the signature ``serving_default``);
- what ``tf.saved_model.save(model, dir)`` writes: the signature ``serving_default``.

The signature must take one float image batch (batch, H, W, C) of a fixed size and give one (batch, classes) output.
:func:`raw_onnx_from_savedmodel` converts that signature with tf2onnx (``tf_loader.from_saved_model`` freezes the
signature's concrete function, ``convert.from_graph_def`` converts the frozen graph, as tf2onnx's command line does);
models/export/savedmodel_onnx.py makes it deployable and compares it with TensorFlow; the saved_model format plug-in
(models/formats/saved_model.py) detects the folder and calls both.

Trust: loading a SavedModel runs the TensorFlow graph stored in the file, not Python code from it: no opt-in is
asked. A folder carries no preprocessing; it comes from a sidecar ``<folder>.json`` beside it (``{"preprocessing":
{...}, "labels": [...]}``, as for Keras files) or from ``--preprocessing``. TensorFlow and tf2onnx are the
``[tensorflow]`` extra; without them every entry point raises MissingDependencyError (exit 5) saying what to install.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..backends.base import Runner
from ..errors import BadInputError, MissingDependencyError
from ..optional import require
from .keras import read_hints

log = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
#: the signatures tried, in order: Keras 3's export endpoint, then the default serving signature
SERVING_SIGNATURES = ("serve", "serving_default")
INSTALL = "pip install 'resnext-deploy[tensorflow]' (or: pip install tensorflow tf2onnx)"
#: a SavedModel folder holding more files than this is not an image classifier we read (bounds the hashing)
MAX_FILES = 10_000


def tensorflow_modules(p: Path) -> Tuple[Any, Any]:
    """(tensorflow, tf2onnx), imported quietly; MissingDependencyError (exit 5) naming the folder and the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, not the toolkit's log
    # tf2onnx imports keras; Keras in this process runs on torch (optional.require_keras), whoever imports it first
    os.environ.setdefault("KERAS_BACKEND", "torch")
    # TensorFlow's Python deprecation notices (tf2onnx freezes through TF1-era APIs) say nothing to our user
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return require("tensorflow", "read TensorFlow SavedModels"), require("tf2onnx", "convert TensorFlow SavedModels")
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"'{p}' is a TensorFlow SavedModel folder: reading it needs TensorFlow and tf2onnx, which are not installed. "
            f"Install them: {INSTALL}. Or load the model where TensorFlow is, re-save it with Keras 3 as "
            "model.save('model.keras'), which loads here without TensorFlow.") from exc


@dataclass
class SavedModelSignature:
    """The serving signature of a SavedModel: one NHWC image input, one logits output."""

    name: str  # "serve" | "serving_default"
    input_name: str
    input_hwc: Tuple[int, int, int]
    output_name: str
    num_classes: int

    def to_dict(self) -> Dict[str, Any]:
        return {"signature": self.name, "input": self.input_name, "input_hwc": list(self.input_hwc),
                "output": self.output_name, "num_classes": self.num_classes}


@dataclass
class LoadedSavedModel:
    """A SavedModel loaded in TensorFlow, its signature, and what its sidecar told us."""

    path: Path
    signature: SavedModelSignature
    function: Any  # the signature's concrete function (keyword input -> dict of outputs)
    tensorflow_version: str
    size_bytes: int
    labels: Optional[List[str]] = None
    preprocessing: Optional[Dict[str, Any]] = None
    files: List[Path] = field(default_factory=list)


def saved_model_files(p: Path) -> List[Path]:
    """Every file in a SavedModel folder, sorted; BadInputError past MAX_FILES (bounds the hashing)."""
    files = []
    for f in sorted(p.rglob("*")):
        if f.is_file():
            files.append(f)
            if len(files) > MAX_FILES:
                raise BadInputError(f"The SavedModel folder '{p}' holds more than {MAX_FILES} files: not an image "
                                    "classifier this tool reads. Pass the folder that holds saved_model.pb.")
    return files


def saved_model_sha256(path: Union[str, Path]) -> str:
    """One digest of a SavedModel folder: every file's relative path and contents, in sorted order."""
    p = Path(path)
    h = hashlib.sha256()
    for f in saved_model_files(p):
        h.update(f.relative_to(p).as_posix().encode("utf-8") + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _pick(imported: Any, p: Path, wanted: Optional[str]) -> Tuple[str, Any]:
    sigs = dict(getattr(imported, "signatures", {}) or {})
    names = [wanted] if wanted else [n for n in SERVING_SIGNATURES if n in sigs]
    if not names or names[0] not in sigs:
        have = ", ".join(sorted(sigs)) or "none"
        raise BadInputError(f"The SavedModel '{p}' has no serving signature {wanted or ' or '.join(SERVING_SIGNATURES)} "
                            f"(its signatures: {have}). Export it with Keras 3's model.export(dir, "
                            "format='tf_saved_model') or tf.saved_model.save(model, dir).")
    return names[0], sigs[names[0]]


def saved_model_signature(function: Any, name: str, p: Path) -> SavedModelSignature:
    """The image input and logits output of a loaded signature ``function``; BadInputError for anything else."""
    _, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    if len(kwargs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
        raise BadInputError(f"The SavedModel '{p}' signature '{name}' takes {sorted(kwargs)} and gives "
                            f"{sorted(outputs) if isinstance(outputs, dict) else outputs}; one image input and one "
                            "logits output are needed.")
    (in_name, spec), (out_name, out_spec) = next(iter(kwargs.items())), next(iter(outputs.items()))
    shape, out_shape = spec.shape.as_list(), out_spec.shape.as_list()
    if spec.dtype.name != "float32" or len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
        raise BadInputError(f"The SavedModel '{p}' signature '{name}' takes {spec.dtype.name} input of shape {shape}; "
                            "expected float32 (batch, H, W, C) images with a fixed size.")
    if len(out_shape) != 2 or not isinstance(out_shape[1], int):
        raise BadInputError(f"The SavedModel '{p}' signature '{name}' gives output of shape {out_shape}; expected "
                            "(batch, classes) logits.")
    return SavedModelSignature(name, in_name, (shape[1], shape[2], shape[3]), out_name, out_shape[1])


def load_saved_model(path: Union[str, Path], signature: Optional[str] = None) -> LoadedSavedModel:
    """Load a SavedModel folder in TensorFlow and read its serving signature (``signature`` or the first of
    SERVING_SIGNATURES it has), with labels and preprocessing from a sidecar ``<folder>.json``.

    MissingDependencyError (exit 5) without TensorFlow; BadInputError (exit 2) for a folder TensorFlow cannot read
    or whose signature is not one image in, one logits out.
    """
    p = Path(path)
    if not (p / SAVED_MODEL_FILE).is_file():
        raise BadInputError(f"'{p}' is not a SavedModel folder (no {SAVED_MODEL_FILE} in it).")
    tf, _ = tensorflow_modules(p)
    files = saved_model_files(p)
    try:
        imported = tf.saved_model.load(str(p))
    except Exception as exc:  # TensorFlow raises many types for files it cannot read
        detail = " ".join(str(exc).split())[:300]
        raise BadInputError(f"TensorFlow could not load the SavedModel '{p}' ({type(exc).__name__}: {detail}). "
                            "Re-export it with the TensorFlow that trained it.") from exc
    name, function = _pick(imported, p, signature)
    sig = saved_model_signature(function, name, p)
    hints = read_hints(p)
    labels = hints.get("labels")
    return LoadedSavedModel(p, sig, function, tf.__version__, sum(f.stat().st_size for f in files),
                            [str(v) for v in labels] if isinstance(labels, (list, tuple)) else None,
                            hints.get("preprocessing"), files)


def tensorflow_predict(loaded: LoadedSavedModel, batch_nchw: np.ndarray) -> np.ndarray:
    """TensorFlow's own outputs of the signature for a preprocessed NCHW batch (the signature takes NHWC)."""
    tf = require("tensorflow", "run the SavedModel")
    x = tf.constant(np.ascontiguousarray(batch_nchw.transpose(0, 2, 3, 1), dtype=np.float32))
    out = loaded.function(**{loaded.signature.input_name: x})[loaded.signature.output_name]
    return np.asarray(out.numpy(), dtype=np.float32)


class SavedModelRunner(Runner):
    """The SavedModel's signature in TensorFlow as a Runner: the float model a TensorFlow user starts from."""

    backend = "tensorflow"

    def __init__(self, loaded: LoadedSavedModel, threads: int = 0) -> None:
        super().__init__()
        tf = require("tensorflow", "run the SavedModel")
        self._loaded = loaded
        self.details = {"tensorflow_version": tf.__version__, "signature": loaded.signature.name,
                        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
                        "threads_asked": threads}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return tensorflow_predict(self._loaded, batch)


#: function attributes that keep grappler from inlining a function into the graph tf2onnx converts
NO_INLINE_ATTRS = ("_XlaMustCompile", "_noinline")


def allow_inlining(graph_def: Any) -> int:
    """Let grappler inline the functions a frozen graph still calls, in place; returns how many were marked.

    Keras 3 on TensorFlow runs a grouped convolution as a ``tf.function(jit_compile=True)`` (TensorFlow's CPU kernel
    has no groups); the frozen SavedModel keeps it as a ``StatefulPartitionedCall`` of a function marked
    ``_XlaMustCompile``/``_noinline``, which grappler does not inline and tf2onnx cannot convert ("Tensorflow op
    StatefulPartitionedCall is not supported"). Without the marks, tf2onnx's own grappler pass inlines the function,
    and its Conv2D (a filter with fewer input channels than the input: a grouped convolution) converts to an ONNX Conv
    with ``group``.
    """
    marked = 0
    for fn in graph_def.library.function:
        hit = [k for k in NO_INLINE_ATTRS if k in fn.attr]
        for k in hit:
            del fn.attr[k]
        marked += bool(hit)
    for node in graph_def.node:
        for k in [k for k in NO_INLINE_ATTRS if k in node.attr]:
            del node.attr[k]
    return marked


def raw_onnx_from_savedmodel(loaded: LoadedSavedModel, opset: int = 17) -> Any:
    """The signature converted by tf2onnx, as tf2onnx writes it (NHWC input; an onnx ModelProto).

    BadInputError (exit 2) when tf2onnx cannot convert it (its message included).
    """
    _, tf2onnx = tensorflow_modules(loaded.path)
    tf_loader = require("tf2onnx.tf_loader", "convert TensorFlow SavedModels")  # what tf2onnx's command line uses

    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(loaded.path), None, None, tag=["serve"], signatures=[loaded.signature.name],
            return_tensors_to_rename=True)
        inlined = allow_inlining(graph_def)
        if inlined:
            log.info("savedmodel: %d XLA-compiled function(s) (Keras's grouped convolutions) inlined for tf2onnx", inlined)
        proto, _ = tf2onnx.convert.from_graph_def(graph_def, name=loaded.path.name, input_names=inputs,
                                                  output_names=outputs, opset=opset, tensors_to_rename=renames)
    except Exception as exc:  # TensorFlow and tf2onnx raise many types
        detail = " ".join(str(exc).split())[:300]
        raise BadInputError(f"tf2onnx could not convert the SavedModel '{loaded.path}' (signature "
                            f"'{loaded.signature.name}'; {type(exc).__name__}: {detail}).") from exc
    return proto
