"""Keras intake: ``.keras`` (Keras 3) and ``.h5`` (legacy) files load through Keras 3 on the torch backend.

No TensorFlow is needed: on the torch backend a Keras model is a ``torch.nn.Module``, its ops are torch ops
(so the forward-pass check sees them) and ``model.export(format="onnx")`` goes through torch's exporter.
A TensorFlow SavedModel folder is read by models/savedmodel.py (TensorFlow + tf2onnx, the ``[tensorflow]`` extra);
a Keras file only TensorFlow can read is refused with a MissingDependencyError saying what to do.

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
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from ..backends.base import Runner
from ..errors import BadInputError, MissingDependencyError
from ..optional import available, require, require_keras
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
    """True for a TensorFlow SavedModel folder (models/savedmodel.py reads it)."""
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


#: config keys under which a layer holds other layers: a model's ``layers``, a wrapper's ``layer`` (TimeDistributed,
#: Bidirectional) and ``backward_layer`` (Bidirectional), an RNN's ``cell`` / StackedRNNCells' ``cells``
NESTED_LAYER_KEYS = ("layers", "layer", "backward_layer", "cell", "cells")
#: model classes a legacy config names (they are not in keras.layers)
MODEL_CLASSES = ("Functional", "Sequential", "Model")


def unsafe_objects(config: Any, known_layer: Optional[Callable[[str], bool]] = None) -> List[str]:
    """Every place in a Keras config that needs ``safe_mode=False``: Lambda layers (their code is serialized
    bytecode) and objects of classes from outside Keras (custom layers, models, functions), at any depth: inside
    wrappers (TimeDistributed, Bidirectional), RNN cells and nested Functional / Sequential models. Each is named
    with the layers it sits in, e.g. "Lambda layer 'double' (in TimeDistributed 'td')".

    ``known_layer`` is for legacy HDF5 configs, whose top-level layers name their class without a module: a layer
    class it does not know is a custom object. Keras 3 configs (``.keras``) name every class's module.
    """
    found: List[str] = []

    def walk(node: Any, inside: Optional[Tuple[str, ...]], layer_slot: bool) -> None:  # inside None: the root
        if isinstance(node, list):
            for x in node:
                walk(x, inside, layer_slot)
            return
        if not isinstance(node, dict):
            return
        cls, module, cfg = node.get("class_name"), node.get("module"), node.get("config")
        name = str(cfg.get("name")) if isinstance(cfg, dict) and cfg.get("name") else ""
        where = f" (in {' > '.join(inside)})" if inside else ""
        if cls == "Lambda":
            found.append(f"Lambda layer '{name}'{where}")
        elif cls == "__lambda__":
            pass  # the function inside a Lambda layer, already named by its layer
        elif isinstance(cls, str) and isinstance(module, str):
            if module.split(".")[0] not in ("keras", "builtins"):
                found.append(f"custom object {cls} from module '{module}'" + (f" ('{name}')" if name else "") + where)
        elif layer_slot and known_layer is not None and isinstance(cls, str) and not known_layer(cls):
            found.append(f"custom object {cls}" + (f" ('{name}')" if name else "") + where)
        elif layer_slot and cls is not None and not isinstance(cls, str):
            found.append(f"layer of class {cls!r}" + where)
        here = inside + (f"{cls} '{name}'",) if inside is not None and isinstance(cls, str) and name else (inside or ())
        for key, value in node.items():
            if key == "config" and isinstance(value, dict):
                for ckey, cvalue in value.items():
                    walk(cvalue, here, ckey in NESTED_LAYER_KEYS)
            else:
                walk(value, inside or (), False)

    walk(config, None, True)
    return found


def legacy_layer_known(keras: Any) -> Callable[[str], bool]:
    """For :func:`unsafe_objects` on a legacy HDF5 config: is ``cls`` a layer or model class Keras has?"""
    return lambda cls: cls in MODEL_CLASSES or hasattr(keras.layers, cls)


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


def scan_keras_file(p: Path, allow_pickle: bool = False) -> Tuple[Dict[str, Any], List[str]]:
    """The model's config, read as JSON (nothing from the file runs), and what in it needs ``safe_mode=False``:
    refused (BadInputError) unless ``allow_pickle``, the one opt-in of models/trust.py (which logs when allowed)."""
    keras = require_keras("load Keras models")
    config = _config_of(p)
    if config is None:
        raise BadInputError(f"'{p}' holds weights only (no model config). Save the whole model: model.save('model.keras').")
    unsafe = unsafe_objects(config, None if p.suffix.lower() == ".keras" else legacy_layer_known(keras))
    if unsafe:
        refuse_code_execution(p, f"holds {', '.join(unsafe)}: loading it needs Keras's safe_mode=False", allow_pickle)
    return config, unsafe


def load_keras_model(path: Union[str, Path], *, allow_pickle: bool = False) -> LoadedKeras:
    """Load a .keras / .h5 file through Keras 3 on the torch backend (see the module docstring).

    Raises BadInputError (exit 2) for a file that needs ``safe_mode=False`` without ``allow_pickle``, naming the
    layers and objects; MissingDependencyError (exit 5) for a SavedModel or a TensorFlow-only file without TensorFlow.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"The Keras model '{p}' does not exist.")
    if is_saved_model(p):
        if not available("tensorflow") or not available("tf2onnx"):
            raise _needs_tensorflow(p, "a TensorFlow SavedModel folder")
        raise BadInputError(f"'{p}' is a TensorFlow SavedModel folder, not a Keras file: read it with "
                            "resnext_deploy.models.savedmodel.load_saved_model (the CLI's --model does).")
    if p.is_dir():
        raise BadInputError(f"'{p}' is a folder without {SAVED_MODEL_FILE}: pass a .keras or .h5 file, or a SavedModel folder.")
    keras = require_keras("load Keras models")
    config, unsafe = scan_keras_file(p, allow_pickle)
    bad_convs = conv_config_problems(config)
    if bad_convs:
        from ..errors import ModelCheckError

        raise ModelCheckError(f"The Keras model '{p}' has grouped convolutions Keras cannot build: {'; '.join(bad_convs)}. "
                              "Use a groups value (cardinality) that divides both the filters and the input channels.")
    try:
        model = _keras_load(keras, p, safe_mode=not unsafe)
    except _SafeModeRefused as exc:  # something the scan above did not see; Keras's safe mode caught it
        refuse_code_execution(p, f"needs Keras's safe_mode=False to load (Keras: {exc})", allow_pickle)
        model = _keras_load(keras, p, safe_mode=False)
        unsafe = [f"what Keras's safe mode refused ({exc})"]
    hints = read_hints(p)
    return LoadedKeras(model, input_hwc(model), output_classes(model), "keras" if p.suffix.lower() == ".keras" else "h5",
                       _labels(hints.get("labels")), hints.get("preprocessing"), unsafe)


class _SafeModeRefused(Exception):
    """Keras refused the file in safe mode (its message says why)."""


def _keras_load(keras: Any, p: Path, safe_mode: bool) -> Any:
    """keras.saving.load_model with the toolkit's errors (exit 2 or 5, never a traceback)."""
    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=safe_mode)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "tensorflow":
            raise _needs_tensorflow(p, "a Keras file that only TensorFlow can read") from exc
        raise BadInputError(f"The Keras model '{p}' needs the Python module '{exc.name}' to load ({exc}).") from exc
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError ... for files it cannot read
        detail = " ".join(str(exc).split())[:300]
        if safe_mode and "safe_mode" in detail:
            raise _SafeModeRefused(detail) from exc
        raise BadInputError(f"Keras could not load '{p}' ({type(exc).__name__}: {detail}). Re-save it with Keras 3 "
                            "(model.save('model.keras')); custom layers must be importable and registered.") from exc


def _labels(value: Any) -> Optional[List[str]]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def _needs_tensorflow(p: Path, what: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"'{p}' is {what}: it needs TensorFlow (and tf2onnx), which is not installed. Install it: pip install "
        "'resnext-deploy[tensorflow]' (or: pip install tensorflow tf2onnx). Or, with Keras 3, load it once where "
        "TensorFlow is installed and re-save it as model.save('model.keras'), which loads here without TensorFlow."
    )


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
