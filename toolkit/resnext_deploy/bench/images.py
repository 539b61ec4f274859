"""Natural images offline: seeded random crops of scikit-learn's two sample photos.

A 224x224 ResNeXt needs calibration images that look like photographs (the demo's 32x32 digits do not:
upscaled, their activation ranges are nothing like a photo's). scikit-learn ships two 427x640 photos
(china.jpg, flower.jpg); random crops at random scales, flips, small colour and brightness changes give
hundreds of distinct natural-image crops, deterministically for a seed, with no download.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image, ImageEnhance

from ..buildfolder.artifacts import atomic_dir
from ..errors import BadInputError
from ..optional import require

log = logging.getLogger(__name__)

#: bump when the recipe below changes, so cached folders are regenerated
GENERATOR_VERSION = 1


def _sources() -> List[Image.Image]:
    datasets = require("sklearn.datasets", "generate natural calibration images")
    return [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in datasets.load_sample_images().images]


def _crop(src: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    w, h = src.size
    side = int(rng.uniform(0.25, 1.0) * min(w, h))  # scale: from a quarter of the short side to all of it
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, int(side * aspect)), min(h, int(side / aspect))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    return ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))


def natural_crops(count: int, seed: int = 0, size: int = 256) -> List[Image.Image]:
    """``count`` distinct RGB crops of the sample photos, ``size`` x ``size``, deterministic for ``seed``."""
    if count <= 0:
        raise BadInputError(f"The number of generated images must be positive, got {count}.")
    sources = _sources()
    rng = np.random.default_rng(seed)
    return [_crop(sources[i % len(sources)], rng, size) for i in range(count)]


def write_natural_images(folder: Union[str, Path], count: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``count`` crops as JPEG into ``folder`` (replaced whole; atomic). Returns the folder."""
    folder = Path(folder)
    # ours: the cache's folder of crops (only JPEG files), e.g. one that a run stopped early left short
    with atomic_dir(folder, ours=lambda p: all(e.suffix == ".jpg" and e.is_file() for e in p.iterdir())) as tmp:
        for i, img in enumerate(natural_crops(count, seed, size)):
            img.save(tmp / f"img{i:05d}.jpg", quality=92)
    log.info("wrote %d natural-image crops to %s", count, folder)
    return folder


def cached_natural_images(cache: Union[str, Path], count: int, seed: int = 0, size: int = 256,
                          name: Optional[str] = None) -> Path:
    """The folder of ``count`` crops under ``cache``, generated on first use (keyed by count, seed, size)."""
    folder = Path(cache) / (name or f"natural-v{GENERATOR_VERSION}-n{count}-s{seed}-{size}px")
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    return write_natural_images(folder, count, seed, size)


#: the end-to-end set's sizes: a 4:3 phone/webcam photo and a 16:9 camera frame
CAMERA_SIZES = ((1280, 960), (1920, 1080))


def write_camera_images(folder: Union[str, Path], count: int, seed: int = 0) -> Path:
    """``count`` camera-size JPEGs (alternately 1280x960 and 1920x1080, quality 90): crops of the sample photos
    scaled up, with seeded sensor-like noise so the JPEG carries fine detail as a camera's does. Atomic."""
    folder = Path(folder)
    rng = np.random.default_rng(seed + 1000)
    crops = natural_crops(count, seed, size=480)
    with atomic_dir(folder) as tmp:
        for i, crop in enumerate(crops):
            w, h = CAMERA_SIZES[i % len(CAMERA_SIZES)]
            img = crop.resize((w, h), Image.BICUBIC)
            noisy = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp / f"cam{i:04d}-{w}x{h}.jpg", quality=90)
    log.info("wrote %d camera-size JPEGs to %s", count, folder)
    return folder


def cached_camera_images(cache: Union[str, Path], count: int, seed: int = 0) -> Path:
    """The folder of ``count`` camera-size JPEGs under ``cache``, generated on first use."""
    folder = Path(cache) / f"camera-v{GENERATOR_VERSION}-n{count}-s{seed}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    return write_camera_images(folder, count, seed)
