"""End to end in the bench: our runtime's file-to-label path beside what a typical user writes, on the same files.

- ``typical``: PIL plus torchvision's standard transforms (Resize(256), CenterCrop(224), ToTensor, Normalize)
  feeding NNCF's INT8 model one image at a time, softmax and top-k in torch. When torchvision does not import
  (PyPI's torchvision does not load beside the torch 2.13 CPU build this project pins), a stand-in runs the same
  operations the way torchvision's PIL path does them, and says so: Resize calls PIL's resize with BILINEAR at
  torchvision's size rule (shorter side 256, longer side truncated), CenterCrop crops at torchvision's rounded
  offsets, ToTensor permutes to CHW and divides by 255 in float32, Normalize subtracts and divides in place.
- ``before``: this toolkit's file-to-label path as it was before the end-to-end work (issue 22): one image at a
  time in the calling thread, an EXIF copy per call, float32 numpy normalisation in HWC then a transpose. Kept
  verbatim as the reference the default path must equal bit for bit (tests/runtime/test_end_to_end.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from ..preprocess import Preprocessing, StageTimes

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------------------ before


def _before_to_rgb(img: Image.Image) -> Image.Image:
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


def before_load_image(path: PathLike) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return _before_to_rgb(img)


def before_resize(img: Image.Image, spec: Preprocessing) -> Image.Image:
    img = _before_to_rgb(img)
    w, h = img.size
    scale = spec.resize / min(w, h)
    if (w, h) != (spec.resize, spec.resize) or scale != 1.0:
        nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec.interpolation])
    w, h = img.size
    left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
    return img.crop((left, top, left + spec.crop, top + spec.crop))


def before_normalise(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def before_preprocess_file(path: PathLike, spec: Preprocessing, times: Any = None) -> np.ndarray:
    """The pre-issue-22 file -> float32 CHW path, stage by stage."""
    stages: List[Tuple[str, Callable[[Any], Any]]] = [
        ("decode", before_load_image), ("resize", lambda im: before_resize(im, spec)), ("normalise", lambda im: before_normalise(im, spec))]
    x: Any = path
    for name, fn in stages:
        t = time.perf_counter()
        x = fn(x)
        if times is not None:
            times.add(name, time.perf_counter() - t)
    return x


# ------------------------------------------------------------------------------------------------ typical


def typical_transform(spec: Preprocessing) -> Tuple[Callable[[Image.Image], Any], str]:
    """torchvision's standard eval transform with the model's numbers (ImageNet: Resize(256), CenterCrop(224),
    ToTensor, Normalize(mean, std)), or the labelled stand-in; and which one it is."""
    what = f"Resize({spec.resize}), CenterCrop({spec.crop}), ToTensor, Normalize"
    try:
        from torchvision import transforms  # type: ignore

        return transforms.Compose([
            transforms.Resize(spec.resize), transforms.CenterCrop(spec.crop), transforms.ToTensor(),
            transforms.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]), f"torchvision.transforms ({what})"
    except Exception as exc:  # absent, or broken beside this torch build
        return _stand_in(spec), (f"torchvision does not import here ({type(exc).__name__}); a stand-in runs its PIL-path "
                                 f"operations ({what}) written out: PIL BILINEAR resize at torchvision's size rule, rounded "
                                 "center-crop offsets, ToTensor's permute and /255, Normalize's in-place sub/div, in torch")


def _stand_in(spec: Preprocessing) -> Callable[[Image.Image], Any]:
    import torch

    mean = torch.tensor(list(spec.mean)).view(3, 1, 1)
    std = torch.tensor(list(spec.std)).view(3, 1, 1)
    r, c = spec.resize, spec.crop

    def transform(img: Image.Image) -> Any:
        w, h = img.size  # Resize(r): shorter side r, the other int(r * long / short) (torchvision's rule)
        if w <= h:
            size = (r, int(r * h / w))
        else:
            size = (int(r * w / h), r)
        img = img.resize(size, Image.BILINEAR)
        w, h = img.size  # CenterCrop(c)
        left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
        img = img.crop((left, top, left + c, top + c))
        t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()  # ToTensor
        t = t.to(dtype=torch.get_default_dtype()).div(255)
        return t.sub_(mean).div_(std)  # Normalize

    return transform


def typical_end_to_end(infer: Callable[[np.ndarray], np.ndarray], files: Sequence[PathLike], spec: Preprocessing,
                       top_k: int = 5, warmup: int = 2) -> Dict[str, Any]:
    """The typical user's loop: open, convert, transform, infer batch 1, softmax and top-k; one file at a time."""
    import torch

    transform, what = typical_transform(spec)
    for p in list(files)[:warmup]:
        infer(transform(Image.open(p).convert("RGB")).unsqueeze(0).numpy())
    times = StageTimes()
    ms, logits = [], []
    t_all = time.perf_counter()
    for p in files:
        t0 = time.perf_counter()
        img = Image.open(p).convert("RGB")
        t1 = time.perf_counter()
        x = transform(img).unsqueeze(0).numpy()
        t2 = time.perf_counter()
        out = infer(x)
        t3 = time.perf_counter()
        torch.topk(torch.softmax(torch.from_numpy(out), 1), min(top_k, out.shape[1]))
        t4 = time.perf_counter()
        for name, a, b in (("decode", t0, t1), ("transforms", t1, t2), ("infer", t2, t3), ("postprocess", t3, t4)):
            times.add(name, b - a)
        ms.append((t4 - t0) * 1e3)
        logits.append(out[0])
    elapsed = time.perf_counter() - t_all
    arr = np.asarray(ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()),
            "images_per_s": len(ms) / elapsed, "images": len(ms), "batch": 1, "workers": 0,
            "stages_ms": times.per_image_ms(len(ms)), "pipeline": what, "logits": np.stack(logits)}


def before_end_to_end(infer: Callable[[np.ndarray], np.ndarray], files: Sequence[PathLike], spec: Preprocessing,
                      batch_size: int = 8, warmup: int = 2) -> Dict[str, Any]:
    """The pre-issue-22 runtime path: batch-1 latency per file, then all files in batches, preprocessing in line."""
    from ..runtime.classifier import softmax

    for p in list(files)[:warmup]:
        infer(before_preprocess_file(p, spec)[None])
    one = StageTimes()
    ms = []
    for p in files:
        t0 = time.perf_counter()
        x = before_preprocess_file(p, spec, one)[None]
        t1 = time.perf_counter()
        out = infer(x)
        t2 = time.perf_counter()
        np.argsort(-out, axis=1, kind="stable")[:, :5], softmax(out)
        t3 = time.perf_counter()
        one.add("infer", t2 - t1)
        one.add("postprocess", t3 - t2)
        ms.append((t3 - t0) * 1e3)
    piped = StageTimes()
    t0 = time.perf_counter()
    chunk: List[np.ndarray] = []
    outs = []
    for i, p in enumerate(files):
        chunk.append(before_preprocess_file(p, spec, piped))
        if len(chunk) == batch_size or i == len(files) - 1:
            t = time.perf_counter()
            outs.append(infer(np.stack(chunk)))
            piped.add("infer", time.perf_counter() - t)
            chunk = []
    logits = np.concatenate(outs)
    softmax(logits)
    elapsed = time.perf_counter() - t0
    arr = np.asarray(ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()),
            "images_per_s": len(files) / elapsed, "images": len(files), "batch": batch_size, "workers": 0,
            "stages_ms": one.per_image_ms(len(files)), "pipelined_stages_ms": piped.per_image_ms(len(files)), "logits": logits}
