"""The one place optional heavy packages are imported (torch, onnx, onnxruntime, openvino, tensorrt, ...).

Call ``require("openvino")`` inside a function; a missing package becomes a
:class:`MissingDependencyError` that says what to install, instead of an ImportError at import time.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
import sys
import tempfile
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
    "onnx_graphsurgeon": "pip install onnx-graphsurgeon",
    "openvino": "pip install openvino",
    "nncf": "pip install nncf",
    "tensorrt": "TensorRT comes with JetPack on a Jetson, or from NVIDIA's package index on an x86 GPU machine "
    "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)",
    "sklearn": "pip install scikit-learn",
    "matplotlib": "pip install matplotlib",
    "psutil": "pip install psutil",
    "safetensors": "pip install 'resnext-deploy[build]' (or: pip install safetensors)",
    "jinja2": "pip install 'resnext-deploy[build]' (Jinja2 writes report.html)",
    "markdown_it": "pip install 'resnext-deploy[build]' (markdown-it-py renders report.html's extra sections)",
    "ray": "pip install 'resnext-deploy[scale]' (Ray >= 2.10), on the driver and on every node of the cluster",
    "keras": "pip install 'resnext-deploy[keras]' (Keras 3 runs on the torch backend; no TensorFlow needed)",
    "h5py": "pip install h5py (Keras reads legacy .h5 files with it)",
    "tensorflow": "pip install 'resnext-deploy[tensorflow]' (or: pip install tensorflow tf2onnx; TensorFlow SavedModels "
    "go through tf2onnx)",
    "tf2onnx": "pip install 'resnext-deploy[tensorflow]' (or: pip install tensorflow tf2onnx)",
}


log = logging.getLogger(__name__)

#: environment switches that turn libraries' usage reporting off, set before they are imported (a Ray cluster
#: the toolkit starts inherits them):
#: - ONNX Runtime >= 1.29 on Linux reports to Microsoft (1DS, mobile.events.data.microsoft.com) and writes
#:   ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db}; ORT_DISABLE_TELEMETRY is its opt-out
#:   (read by libonnxruntime when its environment is created; measured: with it, nothing is written under ~)
#: - Ray's usage stats: RAY_USAGE_STATS_ENABLED=0 (docs.ray.io, "Usage Stats Collection")
#: - NNCF: NNCF_CI (nncf/definitions.py; nncf.telemetry reads it at import and then sends nothing)
NO_TELEMETRY_ENV = {"ORT_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0", "NNCF_CI": "1"}
#: the package OpenVINO (ov.convert_model) and NNCF send their usage reports through
_TELEMETRY_PACKAGE = "openvino_telemetry"


def no_telemetry() -> None:
    """Make sure nothing leaves the machine from the libraries we load; idempotent, called before any import.

    OpenVINO's telemetry (``openvino_telemetry``) sends to Google Analytics unless a consent file says no, and
    writes ~/intel/openvino_ga_cid and ~/intel/stats. Its documented opt-out, ``opt_in_out --opt_out``, writes
    ~/intel/openvino_telemetry: a file in the user's home we may not write either. Both of its users handle
    the package being absent: ``openvino.tools.ovc`` falls back to its own ``telemetry_stub`` and NNCF to
    ``NNCFTelemetryStub`` (their code for installs without it). So the toolkit's processes see it as absent
    (``sys.modules[name] = None`` makes its import raise ImportError, as Python documents), unless something
    imported it before us, which is logged."""
    for key, value in NO_TELEMETRY_ENV.items():
        os.environ[key] = value
    if "MPLCONFIGDIR" not in os.environ:  # matplotlib's config and font cache: a temporary folder, never ~
        os.environ["MPLCONFIGDIR"] = matplotlib_dir()
    if _TELEMETRY_PACKAGE not in sys.modules:
        sys.modules[_TELEMETRY_PACKAGE] = None  # type: ignore[assignment]
    elif sys.modules[_TELEMETRY_PACKAGE] is not None:
        log.warning("%s was imported before resnext-deploy could switch it off; OpenVINO may report usage", _TELEMETRY_PACKAGE)


def matplotlib_dir() -> str:
    """This user's folder for matplotlib's config and font cache under the system's temporary folder (kept across
    runs, so the font cache is built once), made 0700; one that is not ours (a link, another user's) is not used:
    a fresh private folder is made instead."""
    path = os.path.join(tempfile.gettempdir(), f"resnext-deploy-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="resnext-deploy-matplotlib-")
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o077:
        return tempfile.mkdtemp(prefix="resnext-deploy-matplotlib-")
    return path


def require(module: str, purpose: Optional[str] = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the package to install."""
    no_telemetry()
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
    no_telemetry()
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
