"""A TensorFlow SavedModel folder: read in TensorFlow (models/savedmodel.py), converted by tf2onnx and compared with
TensorFlow (models/export/savedmodel_onnx.py). Needs the ``[tensorflow]`` extra (tensorflow, tf2onnx).

The loaded model (its serving signature) is ``ModelSource.module``; the folder is the model, so its digest and size
are over its files. Loading runs the TensorFlow graph stored in the folder, not Python code from it: no opt-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...preprocess import preprocessing_option
from .base import CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, Sniff
from .keras_file import keras_preprocessing

SAVED_MODEL_FILE = "saved_model.pb"


class SavedModelFormat(ModelFormat):
    name = "saved_model"
    kind = "tensorflow"
    packages = ("tensorflow", "tf2onnx", "onnx", "onnxruntime")
    extra = "tensorflow"
    help = "a TensorFlow SavedModel folder (the [tensorflow] extra: tensorflow and tf2onnx)"
    compared_with = "tensorflow"
    runner_row = "tensorflow-fp32"

    def detect(self, sniff: Sniff) -> bool:
        return sniff.path.is_dir() and (sniff.path / SAVED_MODEL_FILE).is_file()

    def source_sha256(self, path: Path) -> str:
        from ..savedmodel import saved_model_sha256

        return saved_model_sha256(path)

    def source_size_bytes(self, path: Path) -> int:
        from ..savedmodel import saved_model_files

        return sum(f.stat().st_size for f in saved_model_files(path))

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        """The serving signature in TensorFlow; preprocessing from --preprocessing or the sidecar ``<folder>.json``."""
        from ..savedmodel import load_saved_model
        from . import model_name

        option = preprocessing_option(request.preprocessing) if request.preprocessing is not None else None  # before the load
        loaded = load_saved_model(path)
        sig = loaded.signature
        spec = keras_preprocessing(path, sig.input_hwc[0], loaded.preprocessing, request, option)
        return ModelSource(model_name(path), path, self, None, sig.num_classes, loaded.labels, spec, loaded, "saved_model")

    def check(self, src: ModelSource) -> CheckOutcome:
        """tf2onnx converts the signature, onnx.checker passes and the ONNX agrees with TensorFlow on random inputs."""
        from ..export.savedmodel_onnx import check_savedmodel

        record = check_savedmodel(src.module)
        summary = record.pop("summary")
        return CheckOutcome({"model": str(src.path), **record}, summary)

    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        from ..export.savedmodel_onnx import onnx_from_savedmodel

        res = onnx_from_savedmodel(src.module, out_path, sample, settings.opset, settings.tolerance, settings.simplify,
                                   root=settings.root)
        art = res.artifact
        record = {**res.to_dict(), "source": "saved_model", "compared_with": self.compared_with,
                  **{k: art.settings[k] for k in ("signature", "tensorflow_version", "tf2onnx_seconds")}}
        note = (f"The model was given as a TensorFlow SavedModel (signature '{src.module.signature.name}'): tf2onnx "
                "converted it and the ONNX was compared with TensorFlow's outputs; the architecture check runs on "
                "PyTorch and Keras models only.")
        return Exported(art, record, note)

    def runner(self, src: ModelSource, threads: int = 0) -> Any:
        from ..savedmodel import SavedModelRunner

        return SavedModelRunner(src.module, threads=threads)
