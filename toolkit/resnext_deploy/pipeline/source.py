"""Intake: what the user brought (checkpoint, TorchScript, ONNX or nothing = the demo), its preprocessing and data folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..artifacts import sha256_file
from ..errors import BadInputError
from ..preprocess import Preprocessing
from ..recipes import Recipe


@dataclass
class ModelSource:
    """What the user brought, resolved: a torch module or an ONNX file, with its metadata."""

    name: str
    path: Path
    kind: str  # "demo" | "torch" | "onnx"
    arch: Optional[str]
    num_classes: Optional[int]
    labels: Optional[List[str]]
    preprocessing: Preprocessing
    module: Any = None  # torch.nn.Module when kind != "onnx"
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
    *,
    allow_pickle: bool = False,
) -> ModelSource:
    """Turn --model/--arch/--num-classes into a ModelSource (None = the shipped demo).

    ``allow_pickle`` (``--trust-pickle``) lets a file that needs full unpickling load (models/trust.py)."""
    overrides = preprocess_overrides or {}
    if model is None:
        from ..demo import DEMO_CHECKPOINT, demo_model_info

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
    from ..models.trust import model_format

    if model_format(path) == "onnx":
        from .export import onnx_input_info

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
    is_demo = src.kind == "demo" if isinstance(src, ModelSource) else bool(src)
    recorded = recorded or {}
    sections = {"calib": recipe.section("calibration")["folder"], "val": recipe.section("evaluation")["folder"]}
    given = {"calib": calib, "val": val}
    found: Dict[str, Optional[Path]] = {}
    for key in ("calib", "val"):
        folder = given[key] or sections[key] or recorded.get(key)
        if folder is None and is_demo:
            from ..demo import DEMO_CALIB, DEMO_VAL

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
