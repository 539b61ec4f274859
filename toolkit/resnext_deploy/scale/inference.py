"""Where logits are computed: in this process, or sharded over Ray workers; the same numbers either way.

The pipeline asks an inference object for a model's logits on an image list; it answers shard by shard
(``shards.py``), from the resume store when a shard is there, and says where the numbers came from.
Latency and throughput are never its business: ``evaluate.measure_latency`` runs in the driver process,
on the machine the user is on, whatever computed the logits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .. import backends
from ..buildfolder.artifacts import sha256_file
from ..backends.base import Runner
from ..errors import BadInputError
from ..evaluation.evaluate import predict_all
from .shards import SHARD_IMAGES, ShardStore, plan_shards

log = logging.getLogger(__name__)

StepProgress = Optional[Callable[[int, int], None]]


@dataclass
class ScaleOptions:
    """The one switch: ``workers`` > 0 starts a local Ray cluster of that many 1-CPU workers for the run;
    ``address`` joins an existing cluster (``workers`` then caps the actors per model; 0 = one per CPU).
    ``resume`` is a directory keeping every shard's logits, so an interrupted evaluation resumes."""

    workers: int = 0
    address: Optional[str] = None
    resume: Optional[Path] = None
    shard_images: int = SHARD_IMAGES

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise BadInputError(f"--workers must be 0 or more, got {self.workers}.")
        if self.shard_images <= 0:
            raise BadInputError(f"The shard size must be positive, got {self.shard_images}.")

    @property
    def distributed(self) -> bool:
        return bool(self.workers) or bool(self.address)


@dataclass
class ModelFiles:
    """A model as a worker needs it: its files with their sha256 (workers verify them), backend and settings."""

    name: str
    backend: str
    path: Path
    settings: Dict[str, Any] = field(default_factory=dict)
    files: List[Path] = field(default_factory=list)
    sha256: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, backend: str, path: Union[str, Path], settings: Optional[Dict[str, Any]] = None) -> "ModelFiles":
        """``path`` and its companion files (an OpenVINO .xml's .bin), hashed now."""
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"The model file '{path}' does not exist.")
        files = [path] + [p for p in (path.with_suffix(".bin"),) if p != path and p.is_file()]
        return cls(name, backend, path, dict(settings or {}), files, {p.name: sha256_file(p) for p in files})

    @property
    def digest(self) -> str:
        """One sha256 over the files' names and hashes: the content address of the model."""
        h = hashlib.sha256()
        for name in sorted(self.sha256):
            h.update(f"{name}:{self.sha256[name]}\n".encode())
        return h.hexdigest()


def images_digest(images: Any) -> str:
    """The resume key of an image list (its files' stats and preprocessing) or of an array (its bytes)."""
    if hasattr(images, "digest"):
        return str(images.digest())
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def driver_host() -> Dict[str, Any]:
    """Where the driver process runs (the machine latency and throughput are measured on)."""
    from ..host.cpu import host_cpu

    return {"host": platform.node(), "cpu": host_cpu().model, "cpus": os.cpu_count(), "pid": os.getpid()}


class LocalInference:
    """Logits in this process (the default): shard by shard, each shard from the resume store when it is there."""

    distributed = False

    def __init__(self, resume: Optional[Path] = None, shard_images: int = SHARD_IMAGES) -> None:
        self.store = ShardStore(resume) if resume else None
        self.shard_images = shard_images
        self.resumed_shards = 0

    def describe(self) -> str:
        return f"this process on host `{platform.node()}`"

    def provenance(self, runner: Optional[Runner] = None) -> Dict[str, Any]:
        """What report.json records beside the numbers: where the logits and where the timings were measured."""
        threads = (runner.details or {}).get("threads") if runner is not None else None
        return {"accuracy": self.describe(), "latency": {"where": "driver process", **driver_host(), "threads": threads}}

    def logits(self, model: ModelFiles, images: Any, batch_size: int, progress: StepProgress = None,
               runner: Optional[Runner] = None) -> np.ndarray:
        """``model``'s logits on ``images`` (an array or a lazy image list), in order; ``runner`` if already loaded."""
        plan = plan_shards(len(images), batch_size, self.shard_images)
        key = ShardStore.key(model.digest, images_digest(images), batch_size, model.settings) if self.store else ""
        out: List[np.ndarray] = []
        with contextlib.ExitStack() as stack:
            for shard in plan:
                got = self.store.get(key, shard) if self.store else None
                if got is None:
                    if runner is None:
                        runner = stack.enter_context(backends.get(model.backend).load(model.path, model.settings))
                    # a lazy list's subset decodes a batch at a time; an array's slice is a view
                    part = images.subset(shard.start, shard.stop) if hasattr(images, "subset") else images[shard.start : shard.stop]
                    got = predict_all(runner, part, batch_size)
                    if self.store:
                        self.store.put(key, shard, got)
                else:
                    self.resumed_shards += 1
                out.append(got)
                if progress:
                    progress(shard.stop, len(images))
        if self.resumed_shards:
            log.info("%s: %d of %d shards from the resume store", model.name, self.resumed_shards, len(plan))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def map_items(self, factory: Callable[..., Any], args: Sequence[Any], method: str, items: Sequence[Any],
                  progress: StepProgress = None) -> List[Any]:
        """``factory(*args).method(item)`` for each item, in order, in this process."""
        obj = factory(*args)
        out = []
        try:
            for i, item in enumerate(items):
                out.append(getattr(obj, method)(item))
                if progress:
                    progress(i + 1, len(items))
        finally:
            close = getattr(obj, "close", None)
            if close:
                close()
        return out
