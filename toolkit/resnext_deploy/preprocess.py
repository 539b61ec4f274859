"""Image preprocessing: the one code path used by calibration, evaluation and the on-device runtime.

The spec is recorded in every build's manifest, so what the device does to an image is exactly what
calibration and evaluation did. Needs only numpy and Pillow (this module runs on the device).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import BadInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
}


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
    preset: str = ""

    def __post_init__(self) -> None:
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


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open and fully decode an image as RGB. Raises BadInputError for unreadable files."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"Cannot read image '{path}': {exc}. Is it a complete image file?") from exc


def preprocess_image(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One PIL image -> float32 CHW array."""
    img = to_rgb(img)
    w, h = img.size
    scale = spec.resize / min(w, h)
    if (w, h) != (spec.resize, spec.resize) or scale != 1.0:
        nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _INTERPOLATION[spec.interpolation])
    w, h = img.size
    left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if spec.color == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_paths(paths: Sequence[Union[str, Path]], spec: Preprocessing) -> np.ndarray:
    """Image files -> float32 NCHW batch."""
    return np.stack([preprocess_image(load_image(p), spec) for p in paths]) if paths else np.zeros(
        (0,) + spec.input_shape, np.float32
    )


def batches(n: int, size: int) -> List[slice]:
    """Slices covering range(n) in chunks of ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
