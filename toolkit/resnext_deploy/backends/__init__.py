"""Backend plug-ins. The registry maps names to module paths so listing backends imports nothing heavy."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import BadInputError
from .base import Backend, BuildAddition, Runner

_REGISTRY: Dict[str, str] = {
    "onnxruntime": "resnext_deploy.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "resnext_deploy.backends.openvino:OpenVinoBackend",
    "tensorrt": "resnext_deploy.tensorrt.backend:TensorRtBackend",
}

_CACHE: Dict[str, Backend] = {}


def register(name: str, target: str) -> None:
    """Add a backend as 'module:Class' (imported on first use)."""
    _REGISTRY[name] = target


def names() -> List[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    if name not in _REGISTRY:
        raise BadInputError(f"Unknown backend '{name}'. Known backends: {', '.join(_REGISTRY)}.")
    if name not in _CACHE:
        module, cls = _REGISTRY[name].split(":")
        _CACHE[name] = getattr(importlib.import_module(module), cls)()
    return _CACHE[name]


def by_preference() -> List[str]:
    """Registered backends, the runtime's preferred first."""
    return sorted(_REGISTRY, key=lambda n: (get(n).preference, n))


def for_file(path: Path) -> str:
    """The backend that runs an artifact file, from its suffix."""
    name = path.name.lower()
    for n in _REGISTRY:
        if name.endswith(get(n).suffixes):
            return n
    known = ", ".join(f"{s} ({n})" for n in _REGISTRY for s in get(n).suffixes)
    raise BadInputError(f"Cannot tell which backend runs '{path}': expected one of {known}.")


def place_qdq(path: Path, flavour: str) -> Optional[Dict[str, Any]]:
    """Let each backend re-place the Q/DQ of a freshly quantized ``flavour`` model (Backend.place_qdq): the
    quantizer stays backend-neutral. Returns the first placement record, None when no backend changed the model."""
    records = [r for r in (get(n).place_qdq(path, flavour) for n in _REGISTRY) if r is not None]
    return records[0] if records else None


def available() -> List[str]:
    """Backends whose package imports on this machine."""
    return [n for n in _REGISTRY if get(n).available()]


__all__ = ["Backend", "BuildAddition", "Runner", "available", "by_preference", "for_file", "get", "names", "place_qdq", "register"]
