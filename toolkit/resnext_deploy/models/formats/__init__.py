"""Model format plug-ins. The registry maps names to 'module:Class' so listing formats imports no framework.

Detection asks each registered format, in order, whether a file's bytes are its own; only when none says so does a
format's file name ending decide, and a file nobody recognises goes to the PyTorch checkpoint loader (whose safe
loader says what the file is not). Adding a format: one module with a :class:`ModelFormat` subclass and one line in
``_REGISTRY`` (or :func:`register`); tests/models/test_formats_contract.py then runs it through the same checks.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Dict, List, Optional, Union

from ...errors import BadInputError
from .base import (CheckOutcome, Exported, ExportSettings, LoadRequest, ModelFormat, ModelSource, Sniff,
                   preprocessing_for)

#: name -> 'module:Class', in detection order (the more specific first: a TorchScript zip is also a torch zip)
_REGISTRY: Dict[str, str] = {
    "saved_model": "resnext_deploy.models.formats.saved_model:SavedModelFormat",
    "keras": "resnext_deploy.models.formats.keras_file:KerasFormat",
    "torchscript": "resnext_deploy.models.formats.torchscript:TorchScriptFormat",
    "safetensors": "resnext_deploy.models.formats.safetensors_file:SafetensorsFormat",
    "onnx": "resnext_deploy.models.formats.onnx_file:OnnxFormat",
    "torch": "resnext_deploy.models.formats.checkpoint:CheckpointFormat",
    "demo": "resnext_deploy.models.formats.demo:DemoFormat",
}
#: what a file no format recognises is read as (torch.load's safe loader then says what it is not)
_FALLBACK = "torch"
#: what no --model means
_DEFAULT = "demo"

_CACHE: Dict[str, ModelFormat] = {}


def register(name: str, target: str) -> None:
    """Add a format as 'module:Class' (imported on first use); it is tried after the formats registered before it."""
    _REGISTRY[name] = target


def names() -> List[str]:
    return list(_REGISTRY)


def get(name: str) -> ModelFormat:
    if name not in _REGISTRY:
        raise BadInputError(f"Unknown model format '{name}'. Known formats: {', '.join(_REGISTRY)}.")
    if name not in _CACHE:
        module, cls = _REGISTRY[name].split(":")
        _CACHE[name] = getattr(importlib.import_module(module), cls)()
    return _CACHE[name]


def detect(path: Union[str, Path]) -> ModelFormat:
    """The format of a model file or folder: from its bytes first, then its name's ending, else the fallback."""
    p = Path(path)
    sniff = Sniff.of(p)
    for name in _REGISTRY:
        if get(name).detect(sniff):
            return get(name)
    suffix = p.suffix.lower()
    for name in _REGISTRY:
        if suffix and suffix in get(name).suffixes:
            return get(name)
    return get(_FALLBACK)


def resolve(model: Union[str, Path, None], request: Optional[LoadRequest] = None) -> ModelSource:
    """The ModelSource of --model (None: the shipped demo): detect, scan (the trust rule), load."""
    request = request or LoadRequest()
    if model is None:
        return get(_DEFAULT).load(Path(), request)
    path = Path(model)
    if not path.exists():
        raise BadInputError(f"The model file '{path}' does not exist. Pass a checkpoint, a TorchScript file or an ONNX file.")
    fmt = detect(path)
    fmt.scan(path, request.allow_pickle)
    return fmt.load(path, request)


def model_name(path: Path) -> str:
    """The model's name for build folders and reports: the file's stem, made safe for a path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)


def help_text() -> str:
    """The --model help, from every format's own line."""
    lines = [get(n).help for n in _REGISTRY if get(n).help]
    return "; ".join(lines) + "."


__all__ = ["CheckOutcome", "ExportSettings", "Exported", "LoadRequest", "ModelFormat", "ModelSource", "Sniff",
           "detect", "get", "help_text", "model_name", "names", "preprocessing_for", "register", "resolve"]
