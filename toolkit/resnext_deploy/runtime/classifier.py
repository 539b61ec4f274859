"""Load a build directory (or a Jetson bundle) and classify images with the artifact it shipped.

Needs numpy, Pillow and one backend package; never torch, onnx or click.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .. import backends
from ..buildfolder.artifacts import Artifact
from ..backends.base import Runner
from ..errors import ArtifactIntegrityError, BadInputError, DeployError
from ..host.cpu import SAFE_TARGET, CpuInfo, host_cpu, safe_on
from ..buildfolder.manifest import int8_weight_range, read_manifest, verify_artifacts
from ..preprocess import Preprocessing, StageTimes
from .inputs import ImageInput, default_workers, iter_images
from .selection import Candidate, choose

log = logging.getLogger(__name__)

#: runner settings a caller may set although the recipe section does not list them
_RUNTIME_ONLY_SETTINGS = ("device", "runtime_optimization")


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's result. ``top_k`` holds (index, label, probability), most probable first."""

    index: int
    label: str
    probability: float
    top_k: List[Tuple[int, str, float]]
    probabilities: np.ndarray = field(repr=False)  # softmax of the logits, float32 (classes,)
    logits: np.ndarray = field(repr=False)  # what the model returned, float32 (classes,)
    source: str = ""  # the file path, or "<array 0[3]>" for the 4th image of the first input

    def to_dict(self, logits: bool = False) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "source": self.source,
            "index": self.index,
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"index": i, "label": lab, "probability": p} for i, lab, p in self.top_k],
        }
        if logits:
            d["logits"] = [float(x) for x in self.logits]
        return d


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so large logits don't overflow."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def run_images(
    runner: Runner,
    inputs: Union[ImageInput, Iterable[ImageInput]],
    spec: Preprocessing,
    batch_size: int,
    workers: int = 0,
    times: Optional[StageTimes] = None,
    classes: int = 0,
) -> Tuple[List[str], np.ndarray]:
    """The file-to-logits path: (sources, float32 logits (N, classes)) in input order, in batches of
    ``batch_size``. With ``workers`` > 0 the next batch is decoded and preprocessed in a thread pool while this
    one runs (same arrays as without: the pool only changes when each image is computed)."""
    sources: List[str] = []
    chunk: List[np.ndarray] = []
    outs: List[np.ndarray] = []

    def infer() -> None:
        t0 = time.perf_counter()
        outs.append(runner.infer(np.stack(chunk)))
        if times is not None:
            times.add("infer", time.perf_counter() - t0)

    # Batches of the recipe's evaluation batch size, in order: the same calls the evaluate stage made.
    for src, chw in iter_images(inputs, spec, workers, batch_size + 2 * workers, times):
        sources.append(src)
        chunk.append(chw)
        if len(chunk) == batch_size:
            infer()
            chunk = []
    if chunk:
        infer()
    if not outs:
        return sources, np.zeros((0, classes), np.float32)
    return sources, np.concatenate(outs).astype(np.float32, copy=False)


def predictions(sources: List[str], logits: np.ndarray, top_k: int, label: Any) -> List[Prediction]:
    """Softmax and the top ``top_k`` classes of each row (``label``: class index -> name)."""
    if len(sources) == 0:
        return []
    probs = softmax(logits)
    k = min(int(top_k), logits.shape[1])
    # Stable sort of -logits: ties go to the lower index, as in the evaluate stage's top-k.
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for n, src in enumerate(sources):
        top = [(int(c), label(int(c)), float(probs[n, c])) for c in order[n]]
        out.append(Prediction(top[0][0], top[0][1], top[0][2], top, probs[n], logits[n], src))
    return out


class Classifier:
    """A loaded artifact with the build's preprocessing and labels. One instance serves many threads."""

    def __init__(
        self,
        runner: Runner,
        candidate: Candidate,
        manifest: Dict[str, Any],
        root: Path,
        settings: Dict[str, Any],
        batch_size: int,
        workers: Optional[int] = None,
    ) -> None:
        self._runner: Optional[Runner] = runner
        #: threads decoding and preprocessing ahead of inference (0: in the calling thread)
        self.workers = default_workers() if workers is None else int(workers)
        self._candidate = candidate
        self.manifest = manifest
        self.root = root
        self.settings = settings
        self.batch_size = batch_size
        self.preprocessing = Preprocessing.from_dict(manifest.get("preprocessing") or {})
        model = manifest.get("model") or {}
        self.labels: Optional[List[str]] = manifest.get("labels") or model.get("labels")

    @property
    def backend(self) -> str:
        """The backend running the model: tensorrt, openvino or onnxruntime."""
        return self._candidate.backend

    @property
    def artifact(self) -> Artifact:
        """The manifest's record of the artifact being run (name, path, precision, sha256, parent)."""
        return self._candidate.artifact

    @property
    def precision(self) -> str:
        return self._candidate.artifact.precision

    @property
    def details(self) -> Dict[str, Any]:
        """What the backend reports about its execution (providers, precision per convolution, ...)."""
        return dict(self._runner.details) if self._runner else {}

    def label(self, index: int) -> str:
        if self.labels is not None and 0 <= index < len(self.labels):
            return str(self.labels[index])
        return str(index)

    def logits(self, inputs: Union[ImageInput, Iterable[ImageInput]], times: Optional[StageTimes] = None) -> np.ndarray:
        """Raw logits (N, classes) for the inputs, in order."""
        return self._run(inputs, times)[1]

    def predict(self, inputs: Union[ImageInput, Iterable[ImageInput]], top_k: int = 5,
                times: Optional[StageTimes] = None) -> List[Prediction]:
        """Classify one input or a list of them; one Prediction per image (a batch array gives one per row).

        ``times`` (a preprocess.StageTimes) collects the seconds spent per stage: decode, resize, normalise,
        infer, postprocess, and wait (inference waiting for the preprocessing threads)."""
        if int(top_k) < 1:
            raise BadInputError(f"top_k must be at least 1, got {top_k}.")
        sources, logits = self._run(inputs, times)
        t0 = time.perf_counter()
        out = predictions(sources, logits, top_k, self.label)
        if times is not None:
            times.add("postprocess", time.perf_counter() - t0)
        return out

    def _run(self, inputs: Union[ImageInput, Iterable[ImageInput]], times: Optional[StageTimes] = None) -> Tuple[List[str], np.ndarray]:
        runner = self._runner
        if runner is None:
            raise BadInputError("This classifier was closed; load the build again.")
        return run_images(runner, inputs, self.preprocessing, self.batch_size, self.workers, times, len(self.labels or []))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({self.artifact.name!r}, backend={self.backend!r}, root='{self.root}')"


def _locate(path: Union[str, Path]) -> Path:
    """The build / bundle directory of ``path`` (a directory, or its manifest.json)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_file() and (name.endswith(".tar.gz") or name.endswith(".tgz") or name.endswith(".tar")):
        raise BadInputError(
            f"'{p}' is an archive. Unpack it first (tar xzf '{p}') and load the directory it contains."
        )
    if p.is_file() and p.name == "manifest.json":
        return p.parent
    if not p.exists():
        raise BadInputError(f"The build directory '{p}' does not exist. Pass a directory made by `resnext-deploy build`.")
    return p


def runner_settings(manifest: Dict[str, Any], backend: str, overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The backend's settings from the build's recipe, with the caller's overrides (unknown keys are errors)."""
    recipe = (manifest.get("recipe") or {}).get("backends", {}).get(backend, {})
    settings = dict(recipe)
    for key, value in (overrides or {}).items():
        if key not in recipe and key not in _RUNTIME_ONLY_SETTINGS:
            known = sorted(set(recipe) | set(_RUNTIME_ONLY_SETTINGS))
            raise BadInputError(f"Unknown {backend} setting '{key}'. Known settings: {', '.join(known)}.")
        settings[key] = value
    return settings


def _batch_size(manifest: Dict[str, Any], backend: str, batch_size: Optional[int]) -> int:
    recipe = manifest.get("recipe") or {}
    if batch_size is None:
        batch_size = int((recipe.get("evaluation") or {}).get("batch_size", 8))
        cap = (recipe.get("backends", {}).get(backend) or {}).get("max_batch")
        if cap:  # a backend with a batch profile (TensorRT engines' optimization profile) caps the batch
            batch_size = min(batch_size, int(cap))
    if int(batch_size) < 1:
        raise BadInputError(f"batch_size must be at least 1, got {batch_size}.")
    return int(batch_size)


def cpu_guard(manifest: Dict[str, Any], cand: Candidate, settings: Dict[str, Any], host: Optional[CpuInfo] = None) -> Dict[str, Any]:
    """Warn when a full-range INT8 artifact is about to run on an x86 CPU whose u8s8 kernels saturate (no VNNI),
    and return the backend's settings with its runtime guard when it has one (ONNX Runtime: U8U8 kernels)."""
    be = backends.get(cand.backend)
    if cand.artifact.precision != "int8" or not be.cpu_u8s8:
        return settings
    host = host or host_cpu()
    weights = int8_weight_range(manifest, cand.artifact.name)
    if safe_on(weights, host.isa):
        return settings
    guarded = be.saturation_guard(settings)
    made_for = (manifest.get("isa") or {}).get("target") or "an unrecorded CPU class"
    log.warning(
        "%s has full-range INT8 weights (made for %s CPUs) but this CPU, %s (ISA %s), has no VNNI: its uint8 x int8 "
        "kernels sum pairs in saturating int16 and the model can lose accuracy. %s Rebuild with --target %s "
        "(7-bit weights, exact on every x86-64 CPU) for this machine.",
        cand.artifact.name, made_for, host.model, host.isa,
        f"Running it with {cand.backend}'s guard ({be.saturation_guard_name}; slower)."
        if guarded is not None else f"{cand.backend} has no runtime guard for this.",
        SAFE_TARGET,
    )
    return guarded if guarded is not None else settings


def load(
    path: Union[str, Path],
    backend: str = "auto",
    precision: str = "auto",
    verify: bool = True,
    settings: Optional[Dict[str, Any]] = None,
    artifact: Optional[str] = None,
    batch_size: Optional[int] = None,
    workers: Optional[int] = None,
) -> Classifier:
    """Load the best artifact of a build directory or bundle for this machine.

    ``backend``: auto | tensorrt | openvino | onnxruntime; ``precision``: auto | int8 | fp16 | fp32
    (auto prefers INT8); ``artifact``: a manifest artifact name, e.g. "openvino-fp32". ``verify`` checks the
    sha256 of the artifact's files against the manifest. ``settings`` override the recipe's backend
    settings (threads, streams, inference_precision, performance_hint, ...). ``workers``: threads decoding
    and preprocessing the next images while the model runs (default: half the cores, at most 4; 0 = none). Raises BadInputError (or
    MissingDependencyError when the asked backend's package is absent) with what to do.
    """
    root = _locate(path)
    manifest = read_manifest(root)
    cand = choose(manifest, backend, precision, artifact, where=f"The build '{root}'")
    files = cand.artifact.files or {cand.artifact.path: ""}
    missing = [rel for rel in files if not (root / rel).is_file()]
    if missing:
        raise BadInputError(
            f"The build '{root}' lists {cand.artifact.name} but its file(s) {', '.join(missing)} are missing. "
            "Copy the whole build directory, or rebuild it."
        )
    if verify:
        bad = verify_artifacts({"artifacts": [cand.artifact.to_dict()]}, root)
        if bad:
            raise ArtifactIntegrityError(
                f"{cand.artifact.name} in '{root}' is not what was built and gated: {'; '.join(bad)}. "
                "Copy the build again (or rebuild it); load(verify=False) / --no-verify skips this check."
            )
    cfg = cpu_guard(manifest, cand, runner_settings(manifest, cand.backend, settings))
    size = _batch_size(manifest, cand.backend, batch_size)
    try:
        runner = backends.get(cand.backend).load(root / cand.artifact.path, cfg)
    except DeployError:
        raise  # e.g. a TensorRT engine built for another GPU / TensorRT version: the backend explains
    except Exception as exc:
        raise BadInputError(
            f"{cand.backend} could not load {cand.artifact.name} ('{root / cand.artifact.path}'): "
            f"{type(exc).__name__}: {exc}. The file may be damaged (load with verify=True checks it) or made by "
            "an incompatible version; rebuild it."
        ) from exc
    gate = manifest.get("gate") or {}
    failed = [c for c in gate.get("checks", []) if c.get("artifact") == cand.artifact.name and not c.get("passed")]
    if failed:
        log.warning("%s failed the build's gate (%s); it runs anyway", cand.artifact.name,
                    ", ".join(f"{c['metric']} = {c['value']:.4g}" for c in failed))
    clf = Classifier(runner, cand, manifest, root, cfg, size, workers)
    log.info("runtime: running %s from %s%s", cand.describe(), root, "" if verify else " (sha256 not verified)")
    return clf
