"""Keras 3 files (.keras zip, legacy .h5 HDF5), loaded by Keras on the torch backend (models/keras.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ...errors import BadInputError
from ...preprocess import PRESETS, Preprocessing, preprocessing_option, sized_preprocessing
from .base import HDF5_MAGIC, CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, Sniff, preprocessing_for
from .torch_module import outcome


def keras_preprocessing(path: Path, size: int, carried: Any, request: LoadRequest, option: Optional[Dict[str, Any]]) -> Preprocessing:
    """--preprocessing (``option``, parsed), else what the model's sidecar carries, else the recipe's mean/std; a Keras
    file itself says nothing, and guessing would give wrong accuracy without an error."""
    if option is not None:
        spec = sized_preprocessing(option, size)
        return Preprocessing.from_dict({**spec.to_dict(), **request.overrides})
    if carried:
        return preprocessing_for(carried, None, request.overrides)
    if {"mean", "std"} <= set(request.overrides) or not request.need_preprocessing:
        return preprocessing_for(None, size, request.overrides)
    raise BadInputError(no_preprocessing(path, size))


def no_preprocessing(path: Path, size: Optional[int]) -> str:
    crop = f"crop {size}" if size else "the crop"
    return (f"The Keras model '{path}' carries no preprocessing (how its training images were scaled and normalized), "
            f"and guessing would give wrong accuracy without an error. Pass --preprocessing with one of "
            f"{', '.join(PRESETS)} (Keras applications' preprocess_input modes: keras-caffe = BGR minus the ImageNet mean, "
            f"keras-tf = [-1, 1], keras-torch = ImageNet mean/std; {crop} from the model's input) or a JSON file, "
            f"or put a sidecar {path.name}.json with a 'preprocessing' entry beside the model.")


class KerasFormat(ModelFormat):
    name = "keras"
    kind = "keras"
    packages = ("keras", "torch", "onnx", "onnxruntime")
    extra = "keras"
    suffixes = (".keras", ".h5", ".hdf5")
    help = "Keras (.keras, .h5; a Lambda layer or custom object needs --trust-pickle)"
    compared_with = "keras"
    runner_row = "keras-fp32"

    def detect(self, sniff: Sniff) -> bool:
        """A Keras 3 zip (``config.json`` and ``metadata.json`` at its top) or an HDF5 file."""
        names = set(sniff.zip_names or ())
        return {"config.json", "metadata.json"} <= names or sniff.head.startswith(HDF5_MAGIC)

    def scan(self, path: Path, allow_pickle: bool) -> None:
        """The archive bounds (a .keras zip's directory, an .h5's object headers), then the config, read as JSON: a
        Lambda layer or a class from outside Keras needs safe_mode=False (runs code)."""
        from ..archive_bounds import check_archive
        from ..keras import scan_keras_file

        if path.is_file():
            check_archive(path)  # before the config is inflated or parsed (keras._config_of checks again for its callers)
            scan_keras_file(path, allow_pickle)

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        from ..keras import load_keras_model
        from ..demo.keras import KERAS_DEMO
        from . import model_name

        option = preprocessing_option(request.preprocessing) if request.preprocessing is not None else None  # before the load
        loaded = load_keras_model(path, allow_pickle=request.allow_pickle)
        spec = keras_preprocessing(path, loaded.input_shape[0], loaded.preprocessing, request, option)
        return ModelSource(model_name(path), path, self, None, loaded.num_classes, loaded.labels, spec, loaded.model,
                           loaded.source, is_demo=path.resolve() == KERAS_DEMO.resolve())

    def check(self, src: ModelSource) -> CheckOutcome:
        from ..check import check_keras_or_raise

        return outcome(check_keras_or_raise(src.module))

    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        from ..export.keras_onnx import onnx_from_keras

        res = onnx_from_keras(src.module, out_path, sample, settings.opset, settings.tolerance, settings.simplify,
                              root=settings.root)
        art = res.artifact
        art.settings["compared_with"] = self.compared_with
        record = {**res.to_dict(), "source": "keras", "compared_with": "keras",
                  "keras_export_seconds": art.settings["keras_export_seconds"], "input_layout": art.settings["input_layout"]}
        return Exported(art, record)

    def runner(self, src: ModelSource, threads: int = 0) -> Any:
        from ..keras import KerasRunner

        return KerasRunner(src.module, threads=threads)
