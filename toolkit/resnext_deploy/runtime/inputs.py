"""What `predict` accepts, turned into preprocessed float32 CHW images by the one preprocessing path.

Accepted, alone or in a list: image file paths (str / PathLike), PIL images, uint8 numpy images
(HxW grayscale, HxWx1/3/4, or a batch NxHxWx1/3/4), and already-preprocessed float arrays (CHW or NCHW,
matching the build's preprocessing). Images are produced lazily so a long list never sits in memory whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import BadInputError
from ..preprocess import Preprocessing, load_image, preprocess_image

ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]

_FORMS = (
    "image file paths, PIL images, uint8 numpy images (HxW, HxWx3 or a batch NxHxWx3) or preprocessed "
    "float32 arrays (NCHW)"
)


def _is_single(x: Any) -> bool:
    return isinstance(x, (str, bytes, os.PathLike, Image.Image, np.ndarray))


def iter_images(inputs: Union[ImageInput, Iterable[ImageInput]], spec: Preprocessing) -> Iterator[Tuple[str, np.ndarray]]:
    """(source description, float32 CHW array) per image, in input order; a batch array yields each row."""
    items = [inputs] if _is_single(inputs) else inputs
    if isinstance(items, (dict, set, frozenset)):  # unordered, or keyed: results could not be matched to inputs
        raise BadInputError(f"predict() got a {type(inputs).__name__}; pass {_FORMS}, or a list of them.")
    try:
        it = iter(items)  # type: ignore[arg-type]
    except TypeError:
        raise BadInputError(f"predict() got a {type(inputs).__name__}; pass {_FORMS}, or a list of them.") from None
    for i, item in enumerate(it):
        yield from _one(item, i, spec)


def _one(item: Any, i: int, spec: Preprocessing) -> Iterator[Tuple[str, np.ndarray]]:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise BadInputError(f"The image file '{path}' does not exist. Pass the path of an image file.")
        if path.is_dir():
            raise BadInputError(
                f"'{path}' is a folder, not an image. Pass the image files in it (see examples/classify_folder.py)."
            )
        yield str(path), preprocess_image(load_image(path), spec)
    elif isinstance(item, Image.Image):
        yield f"<PIL image {i}>", preprocess_image(item, spec)
    elif isinstance(item, np.ndarray):
        yield from _array(item, i, spec)
    else:
        raise BadInputError(f"Input {i} is a {type(item).__name__}; predict() takes {_FORMS}.")


def _array(arr: np.ndarray, i: int, spec: Preprocessing) -> Iterator[Tuple[str, np.ndarray]]:
    shape = tuple(arr.shape)
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
