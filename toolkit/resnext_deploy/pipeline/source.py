"""Intake: what the user brought (checkpoint, TorchScript, ONNX or nothing = the demo), its preprocessing and data folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

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
) -> ModelSource:
    """Turn --model/--arch/--num-classes into a ModelSource (None = the shipped demo)."""
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
    if path.suffix.lower() == ".onnx":
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

    loaded = load_torch_model(path, arch, num_classes)
    size = ARCHS[loaded.arch].input_size if loaded.arch in ARCHS else 224
    return ModelSource(
        name, path, "torch", loaded.arch, loaded.num_classes, loaded.labels,
        preprocessing_for(loaded.preprocessing, size, overrides), loaded.module, loaded.source,
    )


def data_folders(src: ModelSource, recipe: Recipe, calib: Optional[Path], val: Optional[Path]) -> Tuple[Path, Path]:
    """--calib/--val, else the recipe's folders, else the demo's (only for the demo model)."""
    calib = calib or (Path(recipe.section("calibration")["folder"]) if recipe.section("calibration")["folder"] else None)
    val = val or (Path(recipe.section("evaluation")["folder"]) if recipe.section("evaluation")["folder"] else None)
    if calib is None or val is None:
        if src.kind != "demo":
            missing = " and ".join(n for n, v in (("--calib", calib), ("--val", val)) if v is None)
            raise BadInputError(
                f"Building your own model needs {missing}: a folder of calibration images and an ImageFolder "
                "folder of labeled validation images (see calibration/README.md), or set calibration.folder "
                "and evaluation.folder in the recipe."
            )
        from ..demo import DEMO_CALIB, DEMO_VAL

        calib, val = calib or DEMO_CALIB, val or DEMO_VAL
    return Path(calib), Path(val)
