"""Image shards of an evaluation and the resume store that keeps each shard's logits.

A shard is a run of consecutive images whose length is a multiple of the batch size, so every batch a
shard runs is the very batch one process would run: same inputs, same kernels, the same logits bit for
bit, and the shards' logits concatenated in shard order are one process's logits in its order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..buildfolder.artifacts import atomic_file, ensure_writable_dir
from ..errors import BadInputError

log = logging.getLogger(__name__)

#: images per evaluation shard (rounded up to a multiple of the batch size)
SHARD_IMAGES = 256


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(n: int, batch_size: int, shard_images: int = SHARD_IMAGES) -> List[Shard]:
    """Consecutive shards covering ``n`` images, each a whole number of batches (the last may be short)."""
    if batch_size <= 0 or shard_images <= 0:
        raise BadInputError(f"Shards need a positive batch size and shard size, got {batch_size} and {shard_images}.")
    size = -(-shard_images // batch_size) * batch_size
    return [Shard(i, start, min(start + size, n)) for i, start in enumerate(range(0, n, size))]


def settings_digest(settings: Optional[Dict[str, Any]]) -> str:
    """A short digest of the backend settings (threads, precision hints, ...) that may change logits."""
    return hashlib.sha256(json.dumps(settings or {}, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ShardStore:
    """Per-shard logits under ``root``, keyed by the model's sha256 and the image list's digest (``--resume DIR``).

    Each shard is written atomically (temp file, then rename), so an interrupted run leaves only whole
    shards, and a re-run with the same model, images, batch size and settings picks up where it stopped.
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = ensure_writable_dir(Path(root))

    def _path(self, key: str, shard: Shard) -> Path:
        return self.root / key / f"shard-{shard.start:08d}-{shard.stop:08d}.npy"

    @staticmethod
    def key(model_sha256: str, images_digest: str, batch_size: int, settings: Optional[Dict[str, Any]]) -> str:
        return f"{model_sha256[:16]}-{images_digest[:16]}-b{batch_size}-{settings_digest(settings)}"

    def get(self, key: str, shard: Shard) -> Optional[np.ndarray]:
        path = self._path(key, shard)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # a damaged file: recompute rather than trust it
            log.warning("resume: ignoring unreadable shard %s (%s)", path, exc)
            return None
        if arr.ndim != 2 or len(arr) != len(shard):
            log.warning("resume: ignoring shard %s of shape %s (expected %d rows)", path, arr.shape, len(shard))
            return None
        return arr

    def put(self, key: str, shard: Shard, logits: np.ndarray) -> None:
        path = self._path(key, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(logits, dtype=np.float32), allow_pickle=False)
