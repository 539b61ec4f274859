"""What an engine is tied to on this machine (TensorRT, GPU, compute capability, L4T release), and TensorRT itself.

Its own module so that the engine builder (engines.py) and the backend (backend.py) both use it without importing
each other. Standard library and the CUDA driver (ctypes) only; TensorRT is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from . import cuda_runtime as cuda
from . import device_facts
from ..optional import require

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_MODEL = Path("/proc/device-tree/model")


def tensorrt_module(purpose: str = "build and run TensorRT engines") -> Any:
    return require("tensorrt", purpose)


def l4t_release(path: Path = TEGRA_RELEASE) -> Optional[str]:
    """The L4T release of a Jetson from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.3, ...' -> '36.4.3')."""
    return device_facts.release_from_text(device_facts.read_text(Path(path)) or "")


def is_jetson() -> bool:
    return TEGRA_RELEASE.is_file()


def machine_record(trt: Any = None) -> Dict[str, Any]:
    """What an engine is tied to on this machine: TensorRT version, GPU, compute capability, L4T release."""
    gpu = cuda.gpu_info() or {}
    model = None
    try:
        model = DEVICE_MODEL.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        pass
    return {
        "tensorrt_version": str(trt.__version__) if trt is not None else None,
        "gpu": gpu.get("name"),
        "compute_capability": gpu.get("compute_capability"),
        "l4t": l4t_release(),
        "device_model": model,
    }
