"""What `predict` accepts, turned into preprocessed float32 CHW images by the one preprocessing path.

Accepted, alone or in a list: image file paths (str / PathLike), PIL images, uint8 numpy images
(HxW grayscale, HxWx1/3/4, or a batch NxHxWx1/3/4), and already-preprocessed float arrays (CHW or NCHW,
matching the build's preprocessing). Images are produced lazily so a long list never sits in memory whole.

With ``workers`` > 0 a thread pool decodes and preprocesses the next images while the caller runs the model on
the current batch (Pillow's decode and resize and the backends' inference release the GIL); results keep the
input order, and each image is computed by the same functions as without the pool (identical arrays).
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Deque, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import BadInputError
from ..preprocess import Preprocessing, StageTimes, preprocess_file, preprocess_image

ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]

_FORMS = (
    "image file paths, PIL images, uint8 numpy images (HxW, HxWx3 or a batch NxHxWx3) or preprocessed "
    "float32 arrays (NCHW)"
)


def _is_single(x: Any) -> bool:
    return isinstance(x, (str, bytes, os.PathLike, Image.Image, np.ndarray))


def default_workers() -> int:
    """Preprocessing threads when the caller does not say: half the cores, at most 4. The backends' inference
    already uses every core; on 2 shared cores one background thread gave 5.69 img/s on camera JPEGs with
    ResNeXt-50 INT8, two 5.56, none 5.37 (benchmarks/results/resnext50_32x4d-zen3-avx2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // 2))


def iter_images(
    inputs: Union[ImageInput, Iterable[ImageInput]],
    spec: Preprocessing,
    workers: int = 0,
    lookahead: int = 0,
    times: Optional[StageTimes] = None,
) -> Iterator[Tuple[str, np.ndarray]]:
    """(source description, float32 CHW array) per image, in input order; a batch array yields each row.

    ``workers`` > 0: preprocess in that many background threads, up to ``lookahead`` inputs (default 2 x workers) ahead of
    the consumer. ``times`` collects seconds per stage (decode, resize, normalise; "wait": the consumer blocked
    on an image not ready yet)."""
    items = [inputs] if _is_single(inputs) else inputs
    if isinstance(items, (dict, set, frozenset)):  # unordered, or keyed: results could not be matched to inputs
        raise BadInputError(f"predict() got a {type(inputs).__name__}; pass {_FORMS}, or a list of them.")
    try:
        it = iter(items)  # type: ignore[arg-type]
    except TypeError:
        raise BadInputError(f"predict() got a {type(inputs).__name__}; pass {_FORMS}, or a list of them.") from None
    if workers <= 0 or _is_single(inputs):  # one input: nothing to overlap, no pool to start
        for i, item in enumerate(it):
            yield from _one(item, i, spec, times)
        return
    yield from _pipelined(enumerate(it), spec, workers, max(lookahead, 2 * workers), times)


def _all(item: Any, i: int, spec: Preprocessing, times: Optional[StageTimes]) -> List[Tuple[str, np.ndarray]]:
    return list(_one(item, i, spec, times))


def _pipelined(items: Iterator[Tuple[int, Any]], spec: Preprocessing, workers: int, lookahead: int,
               times: Optional[StageTimes]) -> Iterator[Tuple[str, np.ndarray]]:
    pending: Deque["Future[List[Tuple[str, np.ndarray]]]"] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resnext-preprocess")
    try:
        def fill() -> None:
            while len(pending) < lookahead:
                nxt = next(items, None)
                if nxt is None:
                    return
                pending.append(pool.submit(_all, nxt[1], nxt[0], spec, times))

        fill()
        while pending:
            t0 = time.perf_counter()
            done = pending.popleft().result()  # re-raises the item's BadInputError, in input order
            if times is not None:
                times.add("wait", time.perf_counter() - t0)
            fill()
            yield from done
    finally:  # an error or an abandoned generator: drop what was queued, let running items finish
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


def _one(item: Any, i: int, spec: Preprocessing, times: Optional[StageTimes] = None) -> Iterator[Tuple[str, np.ndarray]]:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)  # a FIFO, socket or device is refused by the open itself (preprocess.load_image)
        if not path.exists():
            raise BadInputError(f"The image file '{path}' does not exist. Pass the path of an image file.")
        if path.is_dir():
            raise BadInputError(
                f"'{path}' is a folder, not an image. Pass the image files in it (see examples/classify_folder.py)."
            )
        yield str(path), preprocess_file(path, spec, times)
    elif isinstance(item, Image.Image):
        yield f"<PIL image {i}>", preprocess_image(item, spec, times)
    elif isinstance(item, np.ndarray):
        yield from _array(item, i, spec)
    else:
        raise BadInputError(f"Input {i} is a {type(item).__name__}; predict() takes {_FORMS}.")


def _array(arr: np.ndarray, i: int, spec: Preprocessing) -> Iterator[Tuple[str, np.ndarray]]:
    shape = tuple(arr.shape)
    if arr.size == 0:
        raise BadInputError(f"Input {i} is an empty array (shape {shape}); pass images with pixels.")
    if arr.dtype == np.uint8:
        if arr.ndim == 2 or (arr.ndim == 3 and shape[-1] in (1, 3, 4)):
            yield f"<array {i}>", preprocess_image(_pil(arr), spec)
        elif arr.ndim == 4 and shape[-1] in (1, 3, 4):
            for j in range(shape[0]):
                yield f"<array {i}[{j}]>", preprocess_image(_pil(arr[j]), spec)
        else:
            raise BadInputError(
                f"Input {i} is a uint8 array of shape {shape}; a raw image must be HxW (grayscale), HxWxC or a "
                "batch NxHxWxC with C = 1, 3 (RGB) or 4 (RGBA)."
            )
    elif np.issubdtype(arr.dtype, np.floating):
        expected = tuple(spec.input_shape)
        if arr.ndim not in (3, 4) or shape[-3:] != expected:
            raise BadInputError(
                f"Input {i} is a float array of shape {shape}. Float arrays are taken as already preprocessed, "
                f"and this build expects (N, {', '.join(map(str, expected))}) (NCHW, or one CHW image) after "
                f"{spec.resize}px resize, {spec.crop}px crop and normalization. Pass raw images as uint8 HxWx3 "
                "arrays, PIL images or files to have them preprocessed."
            )
        batch = np.asarray(arr, dtype=np.float32).reshape((-1,) + expected)
        if not np.isfinite(batch).all():
            raise BadInputError(f"Input {i} (a preprocessed float array) contains NaN or infinite values.")
        for j in range(batch.shape[0]):
            yield (f"<array {i}>" if arr.ndim == 3 else f"<array {i}[{j}]>"), np.ascontiguousarray(batch[j])
    else:
        raise BadInputError(
            f"Input {i} is a {arr.dtype} array; pass uint8 images (HxW, HxWx3, NxHxWx3) or preprocessed float32 "
            "NCHW arrays. Convert 16-bit or integer images to uint8 first."
        )


def _pil(arr: np.ndarray) -> Image.Image:
    """uint8 HxW / HxWx1 / HxWx3 / HxWx4 -> a PIL image (L, RGB or RGBA, inferred from the shape)."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))
