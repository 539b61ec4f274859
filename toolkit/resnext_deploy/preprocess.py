"""Image preprocessing: the one code path used by calibration, evaluation and the on-device runtime.

The spec is recorded in every build's manifest, so what the device does to an image is exactly what
calibration and evaluation did. Needs only numpy and Pillow (this module runs on the device).
"""

from __future__ import annotations

import functools
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import BadInputError
from .names import shown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
}

#: Preprocessing.shortcut values. "none": exact (the reference path; logits bit-identical to it). "draft": a JPEG
#: is decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least the resize size (Pillow's draft), other
#: images are reduced by an integer factor first (resize's reducing_gap=3), and only the crop box is resized.
#: Approximate: the pixels differ by the filter's rounding (README "Runtime": agreement measured in the report).
SHORTCUTS = ("none", "draft")
#: the largest whole-image resize (24 MB as RGB): past it only the crop box is resized. Photos stay far below
#: (a 4:3 image at resize 512 is 0.35 Mpx; the bound is reached at an aspect ratio of 32:1 at resize 512)
MAX_RESIZED_PIXELS = 8_000_000
#: Pillow's reducing_gap for the "draft" shortcut: reduce() while the image is 3x the target or more (Pillow's
#: documentation: 3.0 is "indistinguishable from fair resampling in most cases")
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1], normalize, RGB (or BGR), NCHW float32.

    ``color`` "BGR" reverses the channels before normalizing (``mean``/``std`` are then in BGR order);
    ``preset`` names the preset the values came from (:data:`PRESETS`), "" when given by hand.
    """

    resize: int = 256
    crop: int = 224
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    color: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    shortcut: str = "none"  # SHORTCUTS: "none" = exact; "draft" = JPEG DCT-scaled decode + crop-box resize (opt-in)
    preset: str = ""

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise BadInputError(
                f"Unknown preprocess shortcut '{self.shortcut}'; use one of {list(SHORTCUTS)} ('none' is exact)."
            )
        if self.interpolation not in _INTERPOLATION:
            raise BadInputError(
                f"Unknown interpolation '{self.interpolation}' in the preprocessing; use one of "
                f"{sorted(_INTERPOLATION)}."
            )
        if self.crop <= 0 or self.resize < self.crop:
            raise BadInputError(
                f"Preprocessing needs 0 < crop <= resize, got resize={self.resize}, crop={self.crop}."
            )
        if self.color not in ("RGB", "BGR"):
            raise BadInputError(f"Unknown color order '{self.color}' in the preprocessing; use 'RGB' or 'BGR'.")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise BadInputError(f"Preprocessing mean/std must be 3 values with std > 0, got {self.mean}/{self.std}.")

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (3, self.crop, self.crop)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["shortcut"] == "none":  # the exact default is left out: manifests and checkpoints stay as before
            del d["shortcut"]
        if not self.preset:  # recorded only when a preset named the values (older manifests and sidecars stay as they were)
            del d["preset"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Preprocessing":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(x) for x in known[key])
        return cls(**known)


class StageTimes:
    """Seconds spent per preprocessing / inference stage (decode, resize, normalise, infer, ...), summed over
    images; thread-safe, so a pool of preprocessing threads can share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + 1

    def per_image_ms(self, images: int) -> Dict[str, float]:
        return {k: v * 1e3 / max(images, 1) for k, v in self.seconds.items()}


def _add(times: Optional[StageTimes], stage: str, t0: float) -> float:
    t = time.perf_counter()
    if times is not None:
        times.add(stage, t - t0)
    return t


def _needs_transpose(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8)  # EXIF Orientation other than "normal"
    except Exception:  # an unreadable EXIF block: let exif_transpose decide, as before
        return True


# Keras applications' ``preprocess_input`` modes as specs on [0, 1] pixels: (x*255 - m) / s == (x - m/255) / (s/255).
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
#: name -> (mean, std, color): what ``--preprocessing NAME`` means (resize/crop come from the model's input size).
PRESETS: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float], str]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, "RGB"),
    # keras.applications ... preprocess_input(mode="caffe"): RGB->BGR, minus the ImageNet BGR mean, no scaling
    "keras-caffe": (tuple(m / 255.0 for m in _CAFFE_BGR_MEAN), (1 / 255.0,) * 3, "BGR"),  # type: ignore[dict-item]
    # mode="tf": x / 127.5 - 1, i.e. [-1, 1]
    "keras-tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB"),
    # mode="torch": x / 255, then ImageNet mean/std
    "keras-torch": (IMAGENET_MEAN, IMAGENET_STD, "RGB"),
}


def preset(name: str, crop: int = 224, resize: Optional[int] = None) -> Preprocessing:
    """The named preset (see :data:`PRESETS`) for a model taking ``crop`` x ``crop`` images; resize defaults
    to 256/224 of the crop (the ImageNet convention)."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise BadInputError(f"Unknown preprocessing preset '{name}'; use one of {', '.join(PRESETS)} or a JSON file.")
    mean, std, color = PRESETS[key]
    resize = resize if resize is not None else int(round(crop * 256 / 224))
    return Preprocessing(resize=resize, crop=crop, mean=mean, std=std, color=color, preset=key)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image (L, LA, P, CMYK, RGBA, 16-bit I;16/I, float F) to 8-bit RGB."""
    if _needs_transpose(img):  # exif_transpose copies the whole image even when it has nothing to do
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _resized_size(w: int, h: int, spec: Preprocessing) -> Tuple[int, int]:
    scale = spec.resize / min(w, h)
    return max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))


def is_regular_file(path: Union[str, Path]) -> bool:
    """True for a regular file (or a link to one); a FIFO, socket or device is not one (opening a FIFO blocks)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _open_regular(path: Union[str, Path]) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else BadInputError at once. O_NONBLOCK: a FIFO put in
    its place after a check still does not block the open; fstat then tells what was opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BadInputError(f"Cannot open image '{shown(str(path))}': {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"'{shown(str(path))}' is not a regular file (a FIFO, socket or device); pass image files.")
    return os.fdopen(fd, "rb")


def load_image(path: Union[str, Path], spec: Optional[Preprocessing] = None) -> Image.Image:
    """Open and fully decode an image as RGB. Raises BadInputError for unreadable files and non-regular ones.

    With ``spec`` whose shortcut is "draft", a JPEG is decoded DCT-scaled to no less than ``spec``'s resize size."""
    try:
        with _open_regular(path) as fh, Image.open(fh) as img:
            if spec is not None and spec.shortcut == "draft" and img.format == "JPEG":
                w, h = img.size
                if min(w, h) > spec.resize:
                    img.draft(img.mode, _resized_size(w, h, spec))
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"Cannot read image '{shown(str(path))}': {exc}. Is it a complete image file?") from exc


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: Tuple[float, ...], std: Tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: channel c's value for byte v, computed by the very float32 operations the reference
    path applies to each pixel ((v / 255 - mean) / std), so a look-up gives bit-identical results."""
    v = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1) / 255.0
    table = (v - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(table.T)


def normalise(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """An RGB crop -> float32 CHW, normalised: one table look-up per byte, written straight into CHW order."""
    arr = np.asarray(img)
    table = _normalise_table(tuple(spec.mean), tuple(spec.std))
    out = np.empty((3,) + arr.shape[:2], dtype=np.float32)
    bgr = spec.color == "BGR"  # Keras's "caffe" preset: channels reversed, mean/std given in BGR order
    for c in range(3):
        np.take(table[c], arr[:, :, 2 - c if bgr else c], out=out[c])
    return out


def resize_and_crop(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``spec.resize`` and center-crop ``spec.crop`` (RGB in, RGB out).

    An image whose resized size would exceed :data:`MAX_RESIZED_PIXELS` (a 1 x 1,000,000 strip: 32 x 32,000,000)
    has only its crop box resized, as the draft path does: memory bounded by the crop, pixels close to (not
    bit-identical with) the whole-image resize. Every other image is resized whole, exactly as before."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadInputError(f"An image of {w}x{h} pixels is empty; pass an image with pixels.")
    scale = spec.resize / min(w, h)
    nw, nh = _resized_size(w, h, spec)
    resample = _INTERPOLATION[spec.interpolation]
    left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
    if (spec.shortcut == "draft" and (nw, nh) != (w, h)) or nw * nh > MAX_RESIZED_PIXELS:
        # Resize only the crop box: the same filter centres up to float rounding (a pixel may differ by 1).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy)
        return img.resize((spec.crop, spec.crop), resample, box=box,
                          reducing_gap=_REDUCING_GAP if spec.shortcut == "draft" else None)
    if (w, h) != (spec.resize, spec.resize) or scale != 1.0:
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
    w, h = img.size
    left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
    return img.crop((left, top, left + spec.crop, top + spec.crop))


def preprocess_image(img: Image.Image, spec: Preprocessing, times: Optional[StageTimes] = None) -> np.ndarray:
    """One PIL image -> float32 CHW array. ``times`` collects the seconds of resize (with crop) and normalise."""
    t = time.perf_counter()
    crop = resize_and_crop(to_rgb(img), spec)
    t = _add(times, "resize", t)
    out = normalise(crop, spec)
    _add(times, "normalise", t)
    return out


def preprocess_file(path: Union[str, Path], spec: Preprocessing, times: Optional[StageTimes] = None) -> np.ndarray:
    """An image file -> float32 CHW array (decode, resize, crop, normalise): the runtime's file path."""
    t = time.perf_counter()
    img = load_image(path, spec)
    _add(times, "decode", t)
    return preprocess_image(img, spec, times)


def preprocess_paths(paths: Sequence[Union[str, Path]], spec: Preprocessing) -> np.ndarray:
    """Image files -> float32 NCHW batch."""
    return np.stack([preprocess_file(p, spec) for p in paths]) if paths else np.zeros(
        (0,) + spec.input_shape, np.float32
    )


def batches(n: int, size: int) -> List[slice]:
    """Slices covering range(n) in chunks of ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
