"""The interface every inference backend implements: compile an ONNX artifact, load it as a Runner."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..artifacts import Artifact


class Runner(abc.ABC):
    """A loaded model. ``infer`` maps a float32 NCHW batch to logits; safe to call from several threads."""

    backend: str = ""
    #: what the backend actually runs (e.g. OpenVINO's execution precision), for reports
    details: Dict[str, Any]

    def __init__(self) -> None:
        self.details = {}

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW -> float32 logits (N, classes)."""

    def close(self) -> None:
        """Release the model."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend(abc.ABC):
    """A deployment backend. Subclasses import their package lazily, through optional.require."""

    name: str = ""
    #: the Python module whose presence makes this backend available
    module: str = ""
    #: the artifact kind `compile` produces
    kind: str = ""

    def available(self) -> bool:
        from ..optional import available

        return available(self.module)

    @abc.abstractmethod
    def compile(
        self, source: Artifact, out_dir: Path, precision: str, settings: Dict[str, Any], root: Optional[Path] = None
    ) -> Artifact:
        """Build this backend's artifact from an ONNX (``source``), writing into ``out_dir``."""

    @abc.abstractmethod
    def load(self, path: Path, settings: Optional[Dict[str, Any]] = None) -> Runner:
        """Load a compiled artifact for inference."""

    def version(self) -> str:
        mod = __import__(self.module.split(".")[0])
        return str(getattr(mod, "__version__", "unknown"))
