"""Keras intake: ``.keras`` (Keras 3) and ``.h5`` (legacy) files load through Keras 3 on the torch backend.

No TensorFlow is needed: on the torch backend a Keras model is a ``torch.nn.Module``, its ops are torch ops
(so the forward-pass check sees them) and ``model.export(format="onnx")`` goes through torch's exporter.
A TensorFlow SavedModel folder, and Keras files only TensorFlow can read, go through tf2onnx
(:func:`onnx_from_tensorflow`) when TensorFlow is installed; otherwise a MissingDependencyError says what to install.

Model files are data: a Keras file whose config holds a ``Lambda`` layer (Python bytecode) or a custom object
(a class from outside Keras) needs ``safe_mode=False``, which runs code from the file. That is refused unless the
caller opts in with ``allow_pickle=True`` (``--trust-pickle``), the same switch as pickled PyTorch files. The file's
config is read as JSON before Keras sees it, so the refusal names every such layer.

A Keras file carries no preprocessing: it comes from a sidecar ``<file>.json`` (``{"preprocessing": {...},
"labels": [...]}``, what the Keras demo ships) or from ``--preprocessing`` (a preset such as ``keras-caffe``).
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..backends.base import Runner
from ..errors import BadInputError, MissingDependencyError
from ..optional import require, require_keras
from .archive_bounds import check_archive
from .trust import refuse_code_execution

log = logging.getLogger(__name__)

#: file suffixes Keras 3 reads (".keras": Keras 3 zip; ".h5"/".hdf5": the legacy HDF5 format)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"


def is_keras_source(path: Union[str, Path]) -> bool:
    """True for a Keras file (by suffix) or a TensorFlow SavedModel folder."""
    p = Path(path)
    return p.suffix.lower() in KERAS_SUFFIXES or (p.is_dir() and (p / SAVED_MODEL_FILE).is_file())


def is_saved_model(path: Union[str, Path]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SAVED_MODEL_FILE).is_file()


@dataclass
class LoadedKeras:
    """A Keras model on the torch backend and what its file (and sidecar) told us."""

    model: Any  # keras.Model (a torch.nn.Module on the torch backend)
    input_shape: Tuple[int, int, int]  # (H, W, C): Keras images are NHWC
    num_classes: Optional[int]
    source: str  # "keras" | "h5"
    labels: Optional[List[str]] = None
    preprocessing: Optional[Dict[str, Any]] = None
    unsafe: List[str] = field(default_factory=list)  # what needed safe_mode=False (when the caller allowed it)


# --------------------------------------------------------------------------------------------------
# reading the config without running anything


def _config_of(p: Path) -> Optional[Dict[str, Any]]:
    """The model's config as plain JSON, read without Keras: config.json inside a .keras zip, or the
    ``model_config`` attribute of a legacy HDF5 file. None when the file has none (weights only)."""
    check_archive(p)  # before anything is inflated or parsed
    if p.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(p):
            raise BadInputError(f"'{p}' is not a Keras 3 .keras file (not a zip archive): truncated or another format. "
                                "Re-save it with model.save('model.keras').")
        with zipfile.ZipFile(p) as zf:
            if "config.json" not in zf.namelist():
                raise BadInputError(f"'{p}' has no config.json: not a Keras 3 model file. Re-save it with model.save('model.keras').")
            return json.loads(zf.read("config.json"))
    h5py = require("h5py", "read legacy Keras .h5 files")
    try:
        with h5py.File(p, "r") as fh:
            raw = fh.attrs.get("model_config")
    except OSError as exc:
        raise BadInputError(f"'{p}' is not a readable HDF5 file ({exc}). Re-save the model with model.save('model.keras').") from exc
    if raw is None:
        return None
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def unsafe_objects(config: Any) -> List[str]:
    """Every place in a Keras config that needs ``safe_mode=False``: Lambda layers (their code is serialized
    bytecode) and objects of classes from outside Keras (custom layers, models, functions). Named for messages."""
    found: List[str] = []

    def name_of(node: Dict[str, Any]) -> str:
        cfg = node.get("config")
        return str(cfg.get("name")) if isinstance(cfg, dict) and cfg.get("name") else ""

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
            return
        if not isinstance(node, dict):
            return
        cls, module = node.get("class_name"), node.get("module")
        if cls == "Lambda":
            found.append(f"Lambda layer '{name_of(node)}'")
        elif cls == "__lambda__":
            pass  # the function inside a Lambda layer, already named by its layer
        elif isinstance(cls, str) and isinstance(module, str) and not module.split(".")[0] in ("keras", "builtins"):
            label = name_of(node)
            found.append(f"custom object {cls} from module '{module}'" + (f" ('{label}')" if label else ""))
        for v in node.values():
            walk(v)

    walk(config)
    return found


def _legacy_unsafe(config: Any, keras: Any) -> List[str]:
    """Legacy HDF5 configs name classes without their module: a class Keras does not have is a custom object."""
    found: List[str] = []
    containers = {"Functional", "Sequential", "Model"}

    def walk(model: Any) -> None:  # the layers of a model config, and of the models nested in it
        cfg = model.get("config") if isinstance(model, dict) else None
        for layer in (cfg.get("layers") if isinstance(cfg, dict) else None) or []:
            cls, lcfg = layer.get("class_name"), layer.get("config") or {}
            name = lcfg.get("name") if isinstance(lcfg, dict) else None
            if cls == "Lambda":
                found.append(f"Lambda layer '{name}'")
            elif cls in containers:
                walk(layer)
            elif not isinstance(cls, str) or not hasattr(keras.layers, cls):
                found.append(f"custom object {cls} ('{name}')")

    walk(config)
    return found


def conv_config_problems(config: Any) -> List[str]:
    """Grouped convolutions in a config whose ``groups`` do not divide their filters or their input channels
    (the input channels from the layer's recorded build shape): Keras would fail to build them, without a name."""
    problems: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("groups"), int) and "filters" in cfg:
                groups, filters, name = int(cfg["groups"]), cfg.get("filters"), cfg.get("name")
                build = node.get("build_config") or {}
                shape = build.get("input_shape") if isinstance(build, dict) else None
                first = cfg.get("data_format") == "channels_first"
                channels = shape[1 if first else -1] if isinstance(shape, list) and shape else None
                if groups > 0 and isinstance(filters, int) and filters % groups:
                    problems.append(f"{node.get('class_name')} layer '{name}': filters={filters} is not divisible by groups={groups}")
                if groups > 0 and isinstance(channels, int) and channels % groups:
                    problems.append(f"{node.get('class_name')} layer '{name}': its {channels} input channels (input shape "
                                    f"{tuple(shape)}) are not divisible by groups={groups}")
            for v in node.values():
                walk(v)

    walk(config)
    return problems


# --------------------------------------------------------------------------------------------------
# loading


def read_hints(p: Path) -> Dict[str, Any]:
    """The sidecar ``<file>.json`` beside a Keras file (preprocessing, labels), or {}."""
    side = Path(str(p) + ".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"The sidecar '{side}' is not valid JSON ({exc}); fix or delete it.") from exc
    return data if isinstance(data, dict) else {}


def load_keras_model(path: Union[str, Path], *, allow_pickle: bool = False) -> LoadedKeras:
    """Load a .keras / .h5 file through Keras 3 on the torch backend (see the module docstring).

    Raises BadInputError (exit 2) for a file that needs ``safe_mode=False`` without ``allow_pickle``, naming the
    layers and objects; MissingDependencyError (exit 5) for a SavedModel or a TensorFlow-only file without TensorFlow.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"The Keras model '{p}' does not exist.")
    if is_saved_model(p):
        raise _needs_tensorflow(p, "a TensorFlow SavedModel folder")
    if p.is_dir():
        raise BadInputError(f"'{p}' is a folder without {SAVED_MODEL_FILE}: pass a .keras or .h5 file, or a SavedModel folder.")
    keras = require_keras("load Keras models")
    config = _config_of(p)
    if config is None:
        raise BadInputError(f"'{p}' holds weights only (no model config). Save the whole model: model.save('model.keras').")
    unsafe = unsafe_objects(config) if p.suffix.lower() == ".keras" else _legacy_unsafe(config, keras)
    if unsafe:  # the one opt-in for files that run code while they load (models/trust.py); logs when allowed
        refuse_code_execution(p, f"holds {', '.join(unsafe)}: loading it needs Keras's safe_mode=False", allow_pickle)
    bad_convs = conv_config_problems(config)
    if bad_convs:
        from ..errors import ModelCheckError

        raise ModelCheckError(f"The Keras model '{p}' has grouped convolutions Keras cannot build: {'; '.join(bad_convs)}. "
                              "Use a groups value (cardinality) that divides both the filters and the input channels.")
    try:
        model = keras.saving.load_model(str(p), compile=False, safe_mode=not unsafe)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "tensorflow":
            raise _needs_tensorflow(p, "a Keras file that only TensorFlow can read") from exc
        raise BadInputError(f"The Keras model '{p}' needs the Python module '{exc.name}' to load ({exc}).") from exc
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError ... for files it cannot read
        detail = " ".join(str(exc).split())[:300]
        raise BadInputError(f"Keras could not load '{p}' ({type(exc).__name__}: {detail}). Re-save it with Keras 3 "
                            "(model.save('model.keras')); custom layers must be importable and registered.") from exc
    hints = read_hints(p)
    return LoadedKeras(model, input_hwc(model), output_classes(model), "keras" if p.suffix.lower() == ".keras" else "h5",
                       _labels(hints.get("labels")), hints.get("preprocessing"), unsafe)


def _labels(value: Any) -> Optional[List[str]]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def _needs_tensorflow(p: Path, what: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"'{p}' is {what}: it goes through tf2onnx, which needs TensorFlow, and TensorFlow is not installed. "
        "Install it: pip install tensorflow tf2onnx. Or, with Keras 3, load it once where TensorFlow is installed "
        "and re-save it as model.save('model.keras'), which loads here without TensorFlow."
    )


def onnx_from_tensorflow(path: Union[str, Path], out_path: Union[str, Path], opset: int = 17) -> Path:
    """A SavedModel folder (its serving signature) or a TensorFlow-only Keras file -> raw ONNX via tf2onnx.

    Needs TensorFlow and tf2onnx: without them, a MissingDependencyError (exit 5) says what to install.
    """
    p = Path(path)
    what = "a TensorFlow SavedModel folder" if is_saved_model(p) else "a Keras file that only TensorFlow can read"
    try:
        tf = require("tensorflow", "convert TensorFlow models")
        tf2onnx = require("tf2onnx", "convert TensorFlow models")
    except MissingDependencyError as exc:
        raise _needs_tensorflow(p, what) from exc
    try:
        if is_saved_model(p):
            fn = tf.saved_model.load(str(p)).signatures["serving_default"]
            specs = list(fn.structured_input_signature[1].values())
            tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset, output_path=str(out_path))
        else:
            model = tf.keras.models.load_model(str(p), compile=False)
            tf2onnx.convert.from_keras(model, opset=opset, output_path=str(out_path))
    except Exception as exc:  # TensorFlow and tf2onnx raise many types
        detail = " ".join(str(exc).split())[:300]
        raise BadInputError(f"tf2onnx could not convert '{p}' ({type(exc).__name__}: {detail}).") from exc
    return Path(out_path)


def input_hwc(model: Any) -> Tuple[int, int, int]:
    """(H, W, C) of a Keras image model's single NHWC input; BadInputError for anything else."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise BadInputError(f"The Keras model '{model.name}' has {len(inputs or [])} inputs; one image input is needed.")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
        raise BadInputError(f"The Keras model '{model.name}' takes input of shape {shape}; expected (batch, H, W, C) "
                            "images with a fixed size.")
    return int(shape[1]), int(shape[2]), int(shape[3])


def output_classes(model: Any) -> Optional[int]:
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1 and len(outputs[0].shape) == 2 and isinstance(outputs[0].shape[-1], int):
        return int(outputs[0].shape[-1])
    return None


# --------------------------------------------------------------------------------------------------
# running


def keras_predict(model: Any, batch_nchw: np.ndarray) -> np.ndarray:
    """The Keras model's own outputs for a preprocessed NCHW batch (Keras takes NHWC)."""
    torch = require("torch", "run the Keras model")
    x = torch.from_numpy(np.ascontiguousarray(batch_nchw.transpose(0, 2, 3, 1), dtype=np.float32))
    with torch.no_grad():
        out = model(x, training=False)
    return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=np.float32)


class KerasRunner(Runner):
    """The Keras model on the torch backend as a Runner: the float model a Keras user starts from."""

    backend = "keras"

    def __init__(self, model: Any, threads: int = 0) -> None:
        super().__init__()
        torch = require("torch", "run the Keras model")
        keras = require_keras("run the Keras model")
        if threads > 0:
            torch.set_num_threads(threads)
        self._model = model
        self.details = {"threads": torch.get_num_threads(), "keras_version": keras.__version__,
                        "keras_backend": "torch", "torch_version": torch.__version__}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return keras_predict(self._model, batch)
