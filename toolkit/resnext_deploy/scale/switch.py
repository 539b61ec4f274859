"""The one switch: this process, or a Ray cluster started (or joined) for the run."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from .inference import LocalInference, ScaleOptions


@contextlib.contextmanager
def open_inference(options: Optional[ScaleOptions] = None) -> Iterator[Any]:
    """The inference object for ``options``: this process, or a Ray cluster started (or joined) for the block."""
    options = options or ScaleOptions()
    if not options.distributed:
        yield LocalInference(options.resume, options.shard_images)
        return
    from .cluster import connect
    from .ray_inference import RayInference

    with connect(options.workers, options.address) as cluster:
        yield RayInference(cluster, options.resume, options.shard_images)
