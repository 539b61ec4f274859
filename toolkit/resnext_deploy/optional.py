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
    "jinja2": "pip install 'resnext-deploy[build]' (Jinja2 writes report.html)",
    "markdown_it": "pip install 'resnext-deploy[build]' (markdown-it-py renders report.html's extra sections)",
    "ray": "pip install 'resnext-deploy[scale]' (Ray >= 2.10), on the driver and on every node of the cluster",
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
