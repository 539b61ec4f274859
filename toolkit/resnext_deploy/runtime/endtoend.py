"""End to end: image file to label through the runtime's own path (decode, preprocess, infer, softmax/top-k).

What an application on the device gets, measured by the code it runs (classifier.run_images / predictions):
- batch-1 latency: one file at a time, in the calling thread, p50/p99 over the files, with the time per stage;
- images/s: every file through the pipelined path (a thread pool decoding ahead of inference), at the batch
  size the runtime uses, with the time per stage (``wait``: inference blocked on preprocessing).
The source images' sizes are recorded beside: the end-to-end time depends on them.
- the decode floor: the same files through the same preprocessing threads with no model at all (decode, resize,
  crop, normalise): the images/s no model can beat with exact decoding on these threads.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
from PIL import Image

from ..backends.base import Runner
from ..preprocess import Preprocessing, StageTimes
from .classifier import predictions, run_images
from .inputs import default_workers, iter_images

#: files timed one at a time for the batch-1 percentiles (the pipelined images/s uses the same files)
DEFAULT_FILES = 64


def source_sizes(paths: Sequence[Union[str, Path]]) -> Dict[str, int]:
    """{"WxH": count} of the image files (read from their headers; nothing is decoded)."""
    sizes: Counter = Counter()
    for p in paths:
        try:
            with Image.open(p) as img:
                sizes[f"{img.size[0]}x{img.size[1]}"] += 1
        except (OSError, ValueError):
            sizes["unreadable"] += 1
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def measure_end_to_end(
    runner: Runner,
    paths: Sequence[Union[str, Path]],
    spec: Preprocessing,
    batch_size: int = 8,
    workers: Union[int, None] = None,
    warmup: int = 2,
    top_k: int = 5,
    keep_logits: bool = False,
) -> Dict[str, Any]:
    """The end-to-end numbers of one loaded model on ``paths`` (report.json's ``end_to_end``); with
    ``keep_logits`` also the pipelined run's logits (key "logits", a numpy array: not JSON)."""
    files = [str(p) for p in paths]
    if not files:
        return {"skipped": "no image files to measure end to end on"}
    workers = default_workers() if workers is None else int(workers)
    label = str
    for p in files[:warmup]:
        predictions(*run_images(runner, [p], spec, 1), top_k, label)
    one = StageTimes()
    ms: List[float] = []
    for p in files:
        t0 = time.perf_counter()
        sources, logits = run_images(runner, [p], spec, 1, 0, one)
        t1 = time.perf_counter()
        predictions(sources, logits, top_k, label)
        t2 = time.perf_counter()
        one.add("postprocess", t2 - t1)
        ms.append((t2 - t0) * 1e3)
    piped = StageTimes()
    t0 = time.perf_counter()
    sources, logits = run_images(runner, files, spec, batch_size, workers, piped)
    t1 = time.perf_counter()
    predictions(sources, logits, top_k, label)
    elapsed = time.perf_counter() - t0
    piped.add("postprocess", time.perf_counter() - t1)
    arr = np.asarray(ms)
    out: Dict[str, Any] = {"logits": logits} if keep_logits else {}
    return {**out,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "images_per_s": len(files) / elapsed,
        "images": len(files),
        "batch": int(batch_size),
        "workers": workers,
        "source_sizes": source_sizes(files),
        "preprocess_shortcut": spec.shortcut,
        # batch 1, one file at a time: where one image's latency goes
        "stages_ms": one.per_image_ms(len(files)),
        # the pipelined run: per image, summed over threads (decode/resize/normalise overlap with infer)
        "pipelined_stages_ms": piped.per_image_ms(len(files)),
    }


def measure_decode_floor(
    paths: Sequence[Union[str, Path]],
    spec: Preprocessing,
    batch_size: int = 8,
    workers: Union[int, None] = None,
    warmup: int = 2,
) -> Dict[str, Any]:
    """Images/s of decode + resize + crop + normalise alone, on the threads :func:`measure_end_to_end`'s pipelined
    run uses (``workers`` background threads, the same look-ahead), consumed as fast as they come."""
    files = [str(p) for p in paths]
    if not files:
        return {"skipped": "no image files to measure the decode floor on"}
    workers = default_workers() if workers is None else int(workers)
    for _ in iter_images(files[:warmup], spec, 0):
        pass
    times = StageTimes()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_images(files, spec, workers, batch_size + 2 * workers, times))
    elapsed = time.perf_counter() - t0
    return {"images_per_s": n / elapsed, "images": n, "workers": workers, "batch": int(batch_size),
            "preprocess_shortcut": spec.shortcut, "pipelined_stages_ms": times.per_image_ms(n)}
