"""The interface every inference backend implements: compile an ONNX artifact, load it as a Runner."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..buildfolder.artifacts import Artifact
from ..errors import BadInputError


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


@dataclass
class BuildAddition:
    """What a backend adds to a build after its evaluation (e.g. TensorRT's engines or device bundle)."""

    artifacts: List[Artifact] = field(default_factory=list)
    results: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A deployment backend. Subclasses import their package lazily, through optional.require.

    A backend declares what the rest of the toolkit needs to know about it, so that nothing outside
    ``backends/`` (and ``tensorrt/``) tests a backend's name: its recipe defaults, the precisions it
    compiles, the Q/DQ flavour its INT8 comes from, where its artifacts are built, the files it runs and
    its rank when the runtime picks an artifact.
    """

    name: str = ""
    #: the Python module whose presence makes this backend available
    module: str = ""
    #: the artifact kind `compile` produces
    kind: str = ""
    #: precisions `compile` builds
    precisions: Tuple[str, ...] = ("fp32", "int8")
    #: artifact file suffixes this backend runs (how the by-path stage commands tell the backend of a file)
    suffixes: Tuple[str, ...] = ()
    #: rank when a build has several runnable artifacts (lower first)
    preference: int = 100
    #: True when its artifacts can only be built on the device (the workstation build ends in a bundle)
    builds_on_device: bool = False
    #: the recipe's ``[backends.<name>]`` keys and their defaults (besides ``precisions``, default ``[]``)
    defaults: Dict[str, Any] = {}

    def int8_flavour(self, settings: Dict[str, Any]) -> Optional[str]:
        """Activation type of the Q/DQ model its INT8 artifact compiles from; None when it builds no INT8."""
        return settings.get("activations", "int8") if "int8" in settings["precisions"] else None

    def validate(self, settings: Dict[str, Any], source: str) -> None:
        """Check this backend's recipe section (unknown keys and types are checked by recipes.py)."""
        bad = [p for p in settings["precisions"] if p not in self.precisions]
        if bad:
            raise BadInputError(
                f"backends.{self.name}.precisions in {source} has {bad}; {self.name} builds {', '.join(self.precisions)}."
            )
        act = settings.get("activations")
        if act is not None and act not in ("uint8", "int8"):
            raise BadInputError(f"backends.{self.name}.activations in {source} must be 'uint8' or 'int8', got '{act}'.")

    def workstation_results(self, ctx: Any, artifacts: List[Artifact]) -> List[Dict[str, Any]]:
        """Extra evaluation rows the build measures on the workstation for this backend (``ctx``: a BuildContext)."""
        return []

    def finish_build(self, ctx: Any, artifacts: List[Artifact], results: List[Dict[str, Any]]) -> Optional[BuildAddition]:
        """What this backend adds after evaluation and any accuracy fallback (None: nothing)."""
        return None

    def place_qdq(self, path: Path, flavour: str) -> Optional[Dict[str, Any]]:
        """Rewrite the Q/DQ model just quantized at ``path`` (in place, inside the caller's atomic write) for this
        backend's compiler, when its INT8 comes from models of ``flavour``; returns what it did for the artifact's
        settings, or None when it leaves the model alone (the default: the model stays as ONNX Runtime wrote it)."""
        return None

    #: whether its INT8 runs x86 uint8 x int8 CPU kernels, which saturate without VNNI (host/cpu.py)
    cpu_u8s8: bool = False
    #: what saturation_guard turns on, for messages
    saturation_guard_name: str = ""

    def saturation_guard(self, settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Settings that keep full-range INT8 exact on an x86 CPU without VNNI, or None when there are none."""
        return None

    def cannot_build(self, precision: str) -> Optional[str]:
        """Why this machine cannot build (and measure) ``precision``, or None when it can: the build then skips
        that rung and says why (e.g. OpenVINO's bf16 on a CPU without BF16 arithmetic)."""
        return None

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
