"""Logits on a Ray cluster: shards of images to one actor per model per worker, merged in shard order.

On a cluster of other machines the driver decodes a shard only when a worker has a free slot and hands it
over as an object ref, so its memory follows the shards in flight, not the folder; on a local cluster
(``--workers``), whose workers see the same files, it hands out the shard's paths and the workers decode. Each actor loads its model's session once (files by
content hash, verified), runs the shard in the same batches one process would, and returns float32 logits;
the driver puts them back in shard order, so accuracy, agreement, cosine and the logits themselves are
those of one process with the same settings, bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import backends
from ..backends.base import Runner
from ..evaluation.evaluate import predict_all
from ..optional import require
from .actors import ActorGroup
from .cluster import Cluster
from .inference import SHARD_IMAGES, ModelFiles, StepProgress, driver_host, images_digest
from .shards import Shard, ShardStore, plan_shards

log = logging.getLogger(__name__)

#: intra-op threads of a worker's session: a worker is one CPU
WORKER_THREADS = 1


class ArtifactSession:
    """What one actor holds: one loaded model (its backend's runner)."""

    def __init__(self, model: ModelFiles) -> None:
        be = backends.get(model.backend)
        require(be.module, f"run {model.name} ({model.backend}) on this Ray worker")
        self.runner: Runner = be.load(model.path, model.settings)

    def infer(self, images: Any, batch_size: int) -> np.ndarray:
        """Logits of a decoded shard or of an image list (decoded here, a batch at a time)."""
        return predict_all(self.runner, images, batch_size)


class RayInference:
    """Logits and per-item work (sensitivity's layers) on the cluster; see the module doc."""

    distributed = True

    def __init__(self, cluster: Cluster, resume: Optional[Path] = None, shard_images: int = SHARD_IMAGES) -> None:
        self.cluster = cluster
        self.store = ShardStore(resume) if resume else None
        self.shard_images = shard_images
        self.resumed_shards = 0
        self.seen_nodes: List[str] = []

    def describe(self) -> str:
        nodes = ", ".join(self.seen_nodes) or f"{len(self.cluster.nodes())} nodes"
        return (f"Ray ({'local cluster started for the run' if self.cluster.started and self.cluster.address == 'local' else self.cluster.address}): "
                f"{self.cluster.workers} workers of 1 CPU, {WORKER_THREADS} thread each, on {nodes}")

    def provenance(self, runner: Optional[Runner] = None) -> Dict[str, Any]:
        threads = (runner.details or {}).get("threads") if runner is not None else None
        return {"accuracy": self.describe(), "latency": {"where": "driver process", **driver_host(), "threads": threads}}

    @staticmethod
    def worker_settings(settings: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """A backend's settings as a worker runs them: one thread (the worker is one CPU)."""
        return dict(settings or {}, threads=WORKER_THREADS)

    def _note(self, group: ActorGroup) -> None:
        self.seen_nodes = sorted(set(self.seen_nodes) | set(group.nodes()))

    def logits(self, model: ModelFiles, images: Any, batch_size: int, progress: StepProgress = None,
               runner: Optional[Runner] = None) -> np.ndarray:
        """``model``'s logits on ``images`` in order (``runner`` is not used: the workers load their own)."""
        ray = self.cluster.ray
        work = ModelFiles(model.name, model.backend, model.path, self.worker_settings(model.settings), model.files, model.sha256)
        plan = plan_shards(len(images), batch_size, self.shard_images)
        key = ShardStore.key(work.digest, images_digest(images), batch_size, work.settings) if self.store else ""
        got: Dict[int, np.ndarray] = {}
        for shard in plan:
            cached = self.store.get(key, shard) if self.store else None
            if cached is not None:
                got[shard.index] = cached
                self.resumed_shards += 1
        todo = [s for s in plan if s.index not in got]
        done_images = sum(len(s) for s in plan if s.index in got)
        if progress and done_images:
            progress(done_images, len(images))
        if todo:
            def on_done(shard: Shard, logits: np.ndarray) -> None:
                nonlocal done_images
                got[shard.index] = logits
                if self.store:
                    self.store.put(key, shard, logits)
                done_images += len(shard)
                if progress:
                    progress(done_images, len(images))

            def make(shard: Shard) -> Callable[[], tuple]:
                if self.cluster.shared_files and hasattr(images, "subset"):
                    # Workers of a local cluster see the driver's files: they decode their own shards (same code,
                    # same libraries, same pixels) and the driver only hands out paths.
                    return lambda: (images.subset(shard.start, shard.stop), batch_size)
                return lambda: (ray.put(np.ascontiguousarray(images[shard.start : shard.stop], dtype=np.float32)), batch_size)

            with ActorGroup(self.cluster, ArtifactSession, [work], min(self.cluster.workers, len(todo)), f"evaluate {model.name}") as group:
                self._note(group)
                group.run("infer", ((s, make(s)) for s in todo), on_done)
        return np.concatenate([got[s.index] for s in plan]).astype(np.float32)

    def map_items(self, factory: Callable[..., Any], args: Sequence[Any], method: str, items: Sequence[Any],
                  progress: StepProgress = None) -> List[Any]:
        """``factory(*args).method(item)`` for every item on the workers, results in item order."""
        out: Dict[int, Any] = {}

        def on_done(i: int, result: Any) -> None:
            out[i] = result
            if progress:
                progress(len(out), len(items))

        if items:
            with ActorGroup(self.cluster, factory, args, min(self.cluster.workers, len(items)), getattr(factory, "__name__", "work")) as group:
                self._note(group)
                group.run(method, ((i, (lambda item=item: (item,))) for i, item in enumerate(items)), on_done)
        return [out[i] for i in range(len(items))]
