"""A TensorFlow SavedModel folder: converted by tf2onnx (needs TensorFlow) and rewritten like a Keras export.

The folder is the model: :meth:`ModelFormat.source_sha256` is where a digest over its files belongs. Converting in
:meth:`load` gives the input size the preprocessing needs; a loader that reads the serving signature in TensorFlow
can instead keep the loaded model as ``ModelSource.module``, convert in :meth:`export` with its comparison against
TensorFlow (``compared_with``, ``max_abs_diff_vs_<compared_with>`` in the artifact's settings) and run it as the float
reference from :meth:`runner` (``runner_row``) - the same interface the Keras plug-in implements.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BadInputError
from ...preprocess import Preprocessing, preprocessing_option, sized_preprocessing
from .base import CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, Sniff
from .keras_file import no_preprocessing
from .onnx_file import copied, onnx_checker

SAVED_MODEL_FILE = "saved_model.pb"


class SavedModelFormat(ModelFormat):
    name = "saved_model"
    kind = "onnx"  # it enters the pipeline as the ONNX tf2onnx makes
    packages = ("tensorflow", "tf2onnx", "onnx", "onnxruntime")
    help = "a TensorFlow SavedModel folder (needs tensorflow and tf2onnx)"

    def detect(self, sniff: Sniff) -> bool:
        return sniff.path.is_dir() and (sniff.path / SAVED_MODEL_FILE).is_file()

    def load(self, path: Path, request: LoadRequest) -> ModelSource:
        """SavedModel -> tf2onnx -> the NCHW rewrite of a Keras export, in a temporary folder removed at exit."""
        import atexit
        import shutil
        import tempfile

        from ...optional import require
        from ..export.keras_onnx import keras_onnx_from_raw
        from ..keras import onnx_from_tensorflow
        from . import model_name

        option = preprocessing_option(request.preprocessing) if request.preprocessing is not None else None
        name = model_name(path)
        work = Path(tempfile.mkdtemp(prefix="resnext-deploy-tf2onnx-"))
        atexit.register(shutil.rmtree, work, True)
        raw = onnx_from_tensorflow(path, work / "raw.onnx")
        onnx = require("onnx", "read the converted model")
        proto = keras_onnx_from_raw(onnx.load(str(raw)), simplify=True)
        out = work / f"{name}.onnx"
        onnx.save(proto, str(out))
        size = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][-1]
        if option is None:  # the conversion first: the message names the input size it found
            raise BadInputError(no_preprocessing(path, size))
        spec = sized_preprocessing(option, size)
        spec = Preprocessing.from_dict({**spec.to_dict(), **request.overrides})
        classes = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
        return ModelSource(name, out, self, None, classes, None, spec, None, "saved_model")

    def check(self, src: ModelSource) -> CheckOutcome:
        return onnx_checker(src.path)

    def export(self, src: ModelSource, out_path: Path, sample: np.ndarray, settings: ExportSettings) -> Exported:
        return copied(src, out_path, settings,
                      "The model was given as a TensorFlow SavedModel: tf2onnx converted it, and the architecture check "
                      "was onnx.checker's.")
