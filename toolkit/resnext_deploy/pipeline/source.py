"""Intake: what the user brought (checkpoint, TorchScript, ONNX or nothing = the demo), its preprocessing and data folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..buildfolder.artifacts import sha256_file
from ..errors import BadInputError
from ..preprocess import Preprocessing
from ..recipes import Recipe


@dataclass
class ModelSource:
    """What the user brought, resolved: a torch module or an ONNX file, with its metadata."""

    name: str
    path: Path
    kind: str  # "demo" | "torch" | "onnx" | "keras"
    arch: Optional[str]
    num_classes: Optional[int]
    labels: Optional[List[str]]
    preprocessing: Preprocessing
    module: Any = None  # torch.nn.Module when kind != "onnx" (a keras.Model on the torch backend for "keras")
    source_kind: str = ""
    #: where ``labels`` came from: the model itself, or (a model without labels) what a build recorded or the
    #: validation folders' sorted names (pipeline/labels.py)
    labels_from: str = "the model"

    def describe(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.path),
            "source_sha256": sha256_file(self.path),
            "kind": self.kind,
            "loaded_as": self.source_kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": self.labels,
            "labels_from": self.labels_from if self.labels else None,
        }


def preprocessing_for(base: Optional[Dict[str, Any]], input_size: Optional[int], overrides: Dict[str, Any]) -> Preprocessing:
    """The model's own preprocessing (``base``), else the default scaled to ``input_size``; the recipe's overrides on top."""
    d: Dict[str, Any] = dict(base or {})
    if not base and input_size and input_size != 224:
        d.update(resize=int(round(input_size * 256 / 224)), crop=input_size)
    d.update(overrides)
    return Preprocessing.from_dict(d)


def resolve_model(
    model: Union[str, Path, None],
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    preprocess_overrides: Optional[Dict[str, Any]] = None,
    preprocessing: Optional[str] = None,
    allow_pickle: bool = False,
    need_preprocessing: bool = True,
) -> ModelSource:
    """Turn --model/--arch/--num-classes into a ModelSource (None = the shipped demo).

    ``preprocessing`` (--preprocessing: a preset name or a JSON file) and ``allow_pickle`` (--trust-pickle) are
    used by Keras models, which carry no preprocessing of their own (a sidecar <file>.json may give it).
    """
    overrides = preprocess_overrides or {}
    if model is None:
        from ..models.demo.digits import DEMO_CHECKPOINT, demo_model_info

        info = demo_model_info()
        src = resolve_model(DEMO_CHECKPOINT, info["arch"], info["num_classes"], overrides)
        src.kind, src.name = "demo", info["arch"]
        src.labels = src.labels or list(info["labels"])
        if not src.preprocessing or src.preprocessing == Preprocessing():
            src.preprocessing = preprocessing_for(info["preprocessing"], None, overrides)
        return src
    path = Path(model)
    if not path.exists():
        raise BadInputError(f"The model file '{path}' does not exist. Pass a checkpoint, a TorchScript file or an ONNX file.")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
    from ..models.keras import is_keras_source
    from ..models.trust import model_format

    if is_keras_source(path):
        return keras_source(path, name, overrides, preprocessing, allow_pickle, need_preprocessing)
    if model_format(path) == "onnx":
        from ..models.onnx_inputs import scan_onnx
        from .export import onnx_input_info

        scan_onnx(path, quantized_ok=False)  # external data in its folder, finite weights, a float model
        info = onnx_input_info(path)
        shape = info["shape"]
        size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else 224
        if len(shape) != 4 or shape[1] != 3:
            raise BadInputError(f"The ONNX model '{path}' takes input of shape {shape}; expected (batch, 3, H, W) images.")
        classes = info["output_shape"][-1] if isinstance(info["output_shape"][-1], int) else num_classes
        return ModelSource(name, path, "onnx", arch, classes, None, preprocessing_for(None, size, overrides), None, "onnx")
    from ..models.loading import load_torch_model
    from ..models.resnext import ARCHS

    loaded = load_torch_model(path, arch, num_classes, allow_pickle=allow_pickle)
    size = ARCHS[loaded.arch].input_size if loaded.arch in ARCHS else 224
    return ModelSource(
        name, path, "torch", loaded.arch, loaded.num_classes, loaded.labels,
        preprocessing_for(loaded.preprocessing, size, overrides), loaded.module, loaded.source,
    )


def preprocessing_option(value: str, crop: int) -> Preprocessing:
    """--preprocessing for a model of input size ``crop``: a preset (preprocess.PRESETS) or a JSON file holding a
    ``preprocessing`` entry (a manifest or sidecar) or the spec itself."""
    import json

    from ..preprocess import PRESETS, preset

    if value.strip().lower() in PRESETS:
        return preset(value, crop)
    p = Path(value)
    if not p.is_file():
        raise BadInputError(f"--preprocessing '{value}' is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file.")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"--preprocessing '{p}' is not valid JSON ({exc}).") from exc
    data = data.get("preprocessing", data) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not ({"mean", "std"} <= set(data)):
        raise BadInputError(f"--preprocessing '{p}' holds no preprocessing: expected a 'preprocessing' entry or a dict with "
                            "resize, crop, mean and std.")
    return Preprocessing.from_dict({"crop": crop, "resize": int(round(crop * 256 / 224)), **data})


def keras_source(path: Path, name: str, overrides: Dict[str, Any], preprocessing: Optional[str], allow_pickle: bool,
                 need_preprocessing: bool = True) -> ModelSource:
    """A Keras file (kind "keras", the model on the torch backend) or a SavedModel converted by tf2onnx (kind "onnx")."""
    from ..models.keras import is_saved_model, load_keras_model

    if is_saved_model(path):
        return _saved_model_source(path, name, overrides, preprocessing)
    loaded = load_keras_model(path, allow_pickle=allow_pickle)
    h, w, c = loaded.input_shape
    if preprocessing is not None:
        spec = preprocessing_option(preprocessing, h)
        spec = Preprocessing.from_dict({**spec.to_dict(), **overrides})
    elif loaded.preprocessing:
        spec = preprocessing_for(loaded.preprocessing, None, overrides)
    elif {"mean", "std"} <= set(overrides):
        spec = preprocessing_for(None, h, overrides)
    elif need_preprocessing:
        raise BadInputError(_no_hint(path, h))
    else:
        spec = preprocessing_for(None, h, overrides)
    return ModelSource(name, path, "keras", None, loaded.num_classes, loaded.labels, spec, loaded.model, loaded.source)


def _no_hint(path: Path, size: int) -> str:
    from ..preprocess import PRESETS

    return (f"The Keras model '{path}' carries no preprocessing (how its training images were scaled and normalized), "
            f"and guessing would give wrong accuracy without an error. Pass --preprocessing with one of "
            f"{', '.join(PRESETS)} (Keras applications' preprocess_input modes: keras-caffe = BGR minus the ImageNet mean, "
            f"keras-tf = [-1, 1], keras-torch = ImageNet mean/std; crop {size} from the model's input) or a JSON file, "
            f"or put a sidecar {path.name}.json with a 'preprocessing' entry beside the model.")


def _saved_model_source(path: Path, name: str, overrides: Dict[str, Any], preprocessing: Optional[str]) -> ModelSource:
    """SavedModel -> tf2onnx -> the same NCHW rewrite as a Keras export -> an ONNX source (needs TensorFlow)."""
    import atexit
    import shutil
    import tempfile

    from ..models.keras import onnx_from_tensorflow
    from ..optional import require
    from .keras_export import keras_onnx_from_raw

    work = Path(tempfile.mkdtemp(prefix="resnext-deploy-tf2onnx-"))
    atexit.register(shutil.rmtree, work, True)
    raw = onnx_from_tensorflow(path, work / "raw.onnx")
    onnx = require("onnx", "read the converted model")
    proto = keras_onnx_from_raw(onnx.load(str(raw)), simplify=True)
    out = work / f"{name}.onnx"
    onnx.save(proto, str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if preprocessing is None:
        raise BadInputError(_no_hint(path, dims[-1]))
    spec = Preprocessing.from_dict({**preprocessing_option(preprocessing, dims[-1]).to_dict(), **overrides})
    classes = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
    return ModelSource(name, out, "onnx", None, classes, None, spec, None, "saved_model")


def is_keras_demo(src: ModelSource) -> bool:
    """The shipped Keras demo (models/keras_demo.py) also defaults to the demo's images."""
    if src.kind != "keras":
        return False
    from ..models.demo.keras import KERAS_DEMO

    return src.path.resolve() == KERAS_DEMO.resolve()


_FOLDER_OPTIONS = {
    "calib": ("--calib", "calibration.folder", "a folder of calibration images"),
    "val": ("--val", "evaluation.folder", "an ImageFolder folder of labeled validation images"),
}


def data_folders(
    src: Union[ModelSource, bool],
    recipe: Recipe,
    calib: Optional[Path] = None,
    val: Optional[Path] = None,
    *,
    need: Sequence[str] = ("calib", "val"),
    recorded: Optional[Mapping[str, Optional[str]]] = None,
    purpose: str = "Building your own model",
) -> Tuple[Optional[Path], Optional[Path]]:
    """The one place data folders default: --calib/--val, else the recipe's folders, else ``recorded`` (the folders
    the build that made an artifact used, for a stage run on it by path), else the demo's (only for the demo
    model, ``src`` being its ModelSource or True). A folder in ``need`` that none of these gives is a BadInputError
    naming the options that supply it; one not needed may come back None.
    """
    is_demo = (src.kind == "demo" or is_keras_demo(src)) if isinstance(src, ModelSource) else bool(src)
    recorded = recorded or {}
    sections = {"calib": recipe.section("calibration")["folder"], "val": recipe.section("evaluation")["folder"]}
    given = {"calib": calib, "val": val}
    found: Dict[str, Optional[Path]] = {}
    for key in ("calib", "val"):
        folder = given[key] or sections[key] or recorded.get(key)
        if folder is None and is_demo:
            from ..models.demo.digits import DEMO_CALIB, DEMO_VAL

            folder = DEMO_CALIB if key == "calib" else DEMO_VAL
        found[key] = Path(folder) if folder else None
    missing = [key for key in need if found[key] is None]
    if missing:
        opts = " and ".join(_FOLDER_OPTIONS[k][0] for k in missing)
        what = " and ".join(_FOLDER_OPTIONS[k][2] for k in missing)
        keys = " and ".join(_FOLDER_OPTIONS[k][1] for k in missing)
        raise BadInputError(
            f"{purpose} needs {opts}: {what} (see calibration/README.md), or set {keys} in the recipe. "
            "The demo's images are the default only for the demo model."
        )
    return found["calib"], found["val"]
