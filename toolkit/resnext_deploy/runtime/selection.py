"""Which artifact of a build the runtime runs: the best one this machine can execute, or the one asked for.

Preference: backend first (TensorRT engine, then OpenVINO, then ONNX Runtime), then precision (INT8, FP16,
FP32). ONNX files (the float reference and the Q/DQ models) come last, run by ONNX Runtime: they let a
Jetson bundle classify before `compile --bundle` has built its engines, and let a caller run the exact
reference the report compared against (``artifact="onnx-fp32"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import backends
from ..buildfolder.artifacts import Artifact
from ..errors import BadInputError, MissingDependencyError

log = logging.getLogger(__name__)

#: the registered backends, preferred first (each declares its ``preference``)
BACKEND_ORDER: Tuple[str, ...] = tuple(backends.by_preference())
PRECISION_ORDER: Tuple[str, ...] = ("int8", "fp16", "bf16", "fp32")
#: artifact backends that another backend executes (ONNX files run in ONNX Runtime)
_RUN_BY = {"onnx": "onnxruntime"}


BUNDLE_HINT = "Build the engines on the device with `resnext-deploy compile --bundle DIR`, then load it again."


def _unbuilt_bundle(manifest: Dict[str, Any]) -> bool:
    """A device bundle (manifest with a "bundle" section) that lists none of the artifacts built on the device yet."""
    on_device = {n for n in backends.names() if backends.get(n).builds_on_device}
    return "bundle" in manifest and not any(a.get("backend") in on_device for a in manifest.get("artifacts", []))


@dataclass(frozen=True)
class Candidate:
    """An artifact of the build and the backend that would run it."""

    artifact: Artifact
    backend: str

    @property
    def compiled(self) -> bool:
        return self.artifact.backend == self.backend

    def describe(self) -> str:
        return f"{self.artifact.name} ({self.backend}, {self.artifact.precision})"


def candidates(manifest: Dict[str, Any]) -> List[Candidate]:
    """Every runnable artifact of the manifest, most preferred first."""
    out = []
    for d in manifest.get("artifacts", []):
        art = Artifact.from_dict(d)
        runner = _RUN_BY.get(art.backend, art.backend)
        if runner in BACKEND_ORDER:
            out.append(Candidate(art, runner))

    selected = (manifest.get("device") or {}).get("selected")  # `compile --bundle`'s measured pick (ondevice.py)

    def rank(c: Candidate) -> Tuple[int, int, int, int]:
        prec = PRECISION_ORDER.index(c.artifact.precision) if c.artifact.precision in PRECISION_ORDER else len(PRECISION_ORDER)
        return (0 if c.compiled else 1, BACKEND_ORDER.index(c.backend), 0 if c.artifact.name == selected else 1, prec)

    return sorted(out, key=rank)


def backend_status(name: str) -> Optional[str]:
    """None when ``name`` can run here, else why not (for messages)."""
    if name not in backends.names():
        return f"this resnext-deploy has no '{name}' backend"
    try:
        be = backends.get(name)
        if be.available():
            return None
        return f"its Python package '{be.module}' is not installed"
    except Exception as exc:  # a backend module that fails to import is simply not available
        return f"its backend failed to import ({type(exc).__name__}: {exc})"


def choose(
    manifest: Dict[str, Any],
    backend: str = "auto",
    precision: str = "auto",
    artifact: Optional[str] = None,
    where: str = "the build",
) -> Candidate:
    """The artifact to run for the caller's backend / precision / artifact-name choice."""
    allc = candidates(manifest)
    if not allc:
        raise BadInputError(f"{where} lists no artifact the runtime can run (no ONNX, OpenVINO or TensorRT model). Rebuild it.")
    if backend != "auto" and backend not in BACKEND_ORDER:
        raise BadInputError(f"Unknown backend '{backend}'. Use auto, {', '.join(BACKEND_ORDER)}.")
    if precision != "auto" and precision not in PRECISION_ORDER:
        raise BadInputError(f"Unknown precision '{precision}'. Use auto, {', '.join(PRECISION_ORDER)}.")
    status: Dict[str, Optional[str]] = {}

    def runnable(c: Candidate) -> bool:
        if c.backend not in status:  # checked lazily: asking imports the backend's package
            status[c.backend] = backend_status(c.backend)
        return status[c.backend] is None

    if backend != "auto" and backends.get(backend).builds_on_device and _unbuilt_bundle(manifest):
        raise BadInputError(f"{where} is a {backend} bundle whose engines are not built yet. {BUNDLE_HINT}")
    wanted = [
        c for c in allc
        if (artifact is None or c.artifact.name == artifact)
        and (backend == "auto" or c.backend == backend)
        and (precision == "auto" or c.artifact.precision == precision)
    ]
    asked = ", ".join(
        f"{k} {v}" for k, v in (("backend", backend), ("precision", precision), ("artifact", artifact)) if v not in (None, "auto")
    )
    if not wanted:
        listing = ", ".join(c.describe() for c in allc)
        raise BadInputError(f"{where} has no artifact for {asked}. It has: {listing}. Choose one of those.")
    for c in wanted:
        if runnable(c):
            skipped = [s.describe() for s in wanted[: wanted.index(c)]]
            if skipped:
                log.info("skipped %s: not runnable on this machine", ", ".join(skipped))
            if _unbuilt_bundle(manifest):
                log.warning("%s has no TensorRT engines yet: running %s. %s", where, c.describe(), BUNDLE_HINT)
            return c
    # Nothing asked for can run: say why, and what could.
    why = "; ".join(f"{b}: {status[b]}" for b in dict.fromkeys(c.backend for c in wanted))
    here = [c.describe() for c in allc if runnable(c)]
    runnable_here = ", ".join(here) if here else "none (install onnxruntime or openvino)"
    msg = (
        f"{where} cannot be run here with {asked or 'any backend'} ({why}). "
        f"Available on this machine: {runnable_here}."
    )
    if _unbuilt_bundle(manifest):
        msg += f" {BUNDLE_HINT}"
    if any((status.get(c.backend) or "").startswith("its Python package") for c in wanted):
        raise MissingDependencyError(msg)
    raise BadInputError(msg)
