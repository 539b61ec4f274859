"""The one place optional heavy packages are imported (torch, onnx, onnxruntime, openvino, tensorrt, ...).

Call ``require("openvino")`` inside a function; a missing package becomes a
:class:`MissingDependencyError` that says what to install, instead of an ImportError at import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

from .errors import MissingDependencyError

# module -> what to tell the user
_ADVICE: Dict[str, str] = {
    "torch": "pip install 'resnext-deploy[build]' (or: pip install torch==2.13.0 for the CPU build)",
    "onnx": "pip install onnx",
    "onnxruntime": "pip install onnxruntime",
    "onnxruntime.quantization": "pip install onnxruntime",
    "onnxslim": "pip install onnxslim",
    "openvino": "pip install openvino",
    "nncf": "pip install nncf",
    "tensorrt": "TensorRT comes with JetPack on a Jetson, or from NVIDIA's package index on an x86 GPU machine "
    "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)",
    "sklearn": "pip install scikit-learn",
    "matplotlib": "pip install matplotlib",
    "psutil": "pip install psutil",
    "ray": "pip install 'resnext-deploy[scale]' (Ray >= 2.10), on the driver and on every node of the cluster",
    "keras": "pip install 'resnext-deploy[keras]' (Keras 3 runs on the torch backend; no TensorFlow needed)",
    "h5py": "pip install h5py (Keras reads legacy .h5 files with it)",
    "tensorflow": "pip install tensorflow tf2onnx (TensorFlow SavedModels and Keras files only TensorFlow reads go "
    "through tf2onnx)",
    "tf2onnx": "pip install tf2onnx (with tensorflow)",
}


def require(module: str, purpose: Optional[str] = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        advice = _ADVICE.get(module) or _ADVICE.get(top) or f"pip install {top}"
        why = f" to {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"The Python package '{top}' is needed{why} but could not be imported ({exc}). Install it: {advice}."
        ) from exc


def available(module: str) -> bool:
    """True if ``module`` imports (used to list backends without failing)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # a broken install (not just a missing one) also means "not available"
        return False


def require_keras(purpose: Optional[str] = None) -> ModuleType:
    """Import Keras 3 on the torch backend (KERAS_BACKEND=torch is set before the first import: no TensorFlow).

    A Keras already imported on another backend in this process is refused: its models are not torch modules.
    """
    import os
    import sys

    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    require("torch", purpose)
    keras = require("keras", purpose)
    backend = keras.backend.backend() if hasattr(keras, "backend") else "?"
    if backend != "torch":
        raise MissingDependencyError(
            f"Keras was already imported in this process on the '{backend}' backend; resnext-deploy runs Keras on "
            "the torch backend. Set KERAS_BACKEND=torch before anything imports keras."
        )
    major = int(str(getattr(keras, "__version__", "0")).split(".")[0] or 0)
    if major < 3:
        raise MissingDependencyError(
            f"Keras {keras.__version__} is installed; Keras 3 is needed. Install it: {_ADVICE['keras']}."
        )
    return keras
