"""The trained full-depth stand-in: ResNeXt-50 32x4d on a procedural 10-class image task at 48x48.

The digits demo is small and easy (99.8 %, wide margins); seeded ResNeXt-50 weights are untrained, so
agreement measured on them means nothing. The stand-in is what a user brings: a full-depth ResNeXt-50
32x4d (torchvision names) with trained BatchNorm and real, imperfect confidence.

The task ("shapes"): 10 classes, each image drawn by numpy/Pillow from a seed and its index alone, so
every image is reproducible without any download:

* shapes 0-4: circle, square, triangle, ring, cross (random size, position, rotation, colours);
* textures 5-9: horizontal, vertical and diagonal stripes, checkerboard, dots (random period, phase,
  patch, colours);

on a background with a colour gradient, a distractor blob and Gaussian noise of random strength, and
with random (sometimes low) contrast, so that the task is not solved in a few hundred steps.

:func:`write_standin_dataset` writes the calibration and validation splits as 48x48 RGB PNGs in
ImageFolder layout; :func:`train_standin` trains on images drawn from other indices (never the shipped
ones), preprocessed by the same :func:`~resnext_deploy.preprocess.preprocess_image`, and writes the
checkpoint (state_dict in float16: half the bytes, the float model is built in float32 from it) and
``standin.json``. The shipped result lives in :data:`STANDIN_DIR` (the repo's ``calibration/standin``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from ...errors import BadInputError
from ...optional import require
from ...preprocess import Preprocessing, preprocess_image
from ...data.resources import data_dir as shipped_data_dir

log = logging.getLogger(__name__)

STANDIN_ARCH = "resnext50_32x4d"
# What each kind is drawn as (0-4 shapes, 5-9 textures); the labels (model outputs) are their sorted names,
# the order of ImageFolder's class indices, so the validation folder's labels are the model's outputs.
KINDS: List[str] = [
    "circle", "square", "triangle", "ring", "cross",
    "hstripes", "vstripes", "dstripes", "checker", "dots",
]
STANDIN_LABELS: List[str] = sorted(KINDS)
STANDIN_NUM_CLASSES = len(STANDIN_LABELS)
STANDIN_SIZE = 48
CALIB_COUNT = 256
VAL_COUNT = 500
# Image indices: calibration 0.., validation 100000.., training 1000000.. (disjoint by construction).
_CALIB_BASE, _VAL_BASE, _TRAIN_BASE = 0, 100_000, 1_000_000
STANDIN_PREPROCESSING = Preprocessing(
    resize=STANDIN_SIZE, crop=STANDIN_SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)
DEFAULT_STEPS = 800
BATCH_SIZE = 32

STANDIN_DIR: Path = shipped_data_dir() / "standin"
STANDIN_CHECKPOINT: Path = STANDIN_DIR / "resnext50_standin.pt"
STANDIN_CALIB: Path = STANDIN_DIR / "calib"
STANDIN_VAL: Path = STANDIN_DIR / "val"
STANDIN_INFO: Path = STANDIN_DIR / "standin.json"


# ---------------------------------------------------------------------------------------------- images


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _foreground(rng: np.random.Generator, bg: np.ndarray) -> tuple:
    """A colour that differs from the background by a random, sometimes small, contrast."""
    contrast = rng.uniform(45, 170)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    fg = bg + direction * contrast * math.sqrt(3)
    return tuple(int(v) for v in np.clip(fg, 0, 255))


def _shape_mask(kind: int, rng: np.random.Generator, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    r = rng.uniform(7, 17)
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    angle = rng.uniform(0, 2 * math.pi)

    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == 0:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == 1:
        h = r * 0.85
        d.polygon(rot([(-h, -h), (h, -h), (h, h), (-h, h)]), fill=255)
    elif kind == 2:
        d.polygon(rot([(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]), fill=255)
    elif kind == 3:
        w = max(2.0, r * rng.uniform(0.2, 0.4))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        d.ellipse([cx - r + w, cy - r + w, cx + r - w, cy + r - w], fill=0)
    else:
        w = max(2.0, r * rng.uniform(0.25, 0.45))
        d.polygon(rot([(-r, -w), (r, -w), (r, w), (-r, w)]), fill=255)
        d.polygon(rot([(-w, -r), (w, -r), (w, r), (-w, r)]), fill=255)
    return mask


def _texture_mask(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(4, 10)
    phase = rng.uniform(0, period)
    tilt = rng.uniform(-0.15, 0.15)  # small rotation: stripes are not perfectly axis-aligned
    if kind == 5:
        v = ((yy + tilt * xx + phase) % period) < period / 2
    elif kind == 6:
        v = ((xx + tilt * yy + phase) % period) < period / 2
    elif kind == 7:
        sign = 1 if rng.random() < 0.5 else -1
        v = ((xx + sign * yy + phase) % (period * 1.4)) < period * 0.7
    elif kind == 8:
        v = (((xx + phase) // (period / 2)) + ((yy + phase) // (period / 2))) % 2 == 0
    else:
        cx, cy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2
        v = cx * cx + cy * cy < (period * rng.uniform(0.2, 0.32)) ** 2
    # The texture fills a random rectangle covering a third to all of the image.
    w, h = int(rng.uniform(0.55, 1.0) * size), int(rng.uniform(0.55, 1.0) * size)
    x0, y0 = int(rng.uniform(0, size - w + 1)), int(rng.uniform(0, size - h + 1))
    patch = np.zeros((size, size), dtype=bool)
    patch[y0 : y0 + h, x0 : x0 + w] = True
    return (v & patch).astype(np.uint8) * 255


def render_standin(label: int, index: int, seed: int = 0) -> Image.Image:
    """The image of class ``label`` drawn from (seed, index): a 48x48 RGB Pillow image, deterministic."""
    if not 0 <= int(label) < STANDIN_NUM_CLASSES:
        raise BadInputError(f"A stand-in label is 0..{STANDIN_NUM_CLASSES - 1}, got {label}.")
    rng = np.random.default_rng([int(seed), int(index), int(label)])
    kind = KINDS.index(STANDIN_LABELS[int(label)])
    size = STANDIN_SIZE
    bg0, bg1 = _colour(rng), _colour(rng)
    t = np.linspace(0.0, 1.0, size)[None, :, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    bg = bg0 * (1 - t) + bg1 * t
    canvas = np.broadcast_to(bg, (size, size, 3)).copy()
    fg = _foreground(rng, (bg0 + bg1) / 2)
    if kind < 5:
        mask = np.asarray(_shape_mask(kind, rng, size), dtype=np.float64) / 255.0
    else:
        mask = _texture_mask(kind, rng, size).astype(np.float64) / 255.0
    canvas = canvas * (1 - mask[..., None]) + np.asarray(fg, dtype=np.float64) * mask[..., None]
    # A distractor: a small blob of a third colour somewhere (shapes and textures alike).
    blob = Image.new("L", (size, size), 0)
    br = rng.uniform(2, 6)
    bx, by = rng.uniform(0, size), rng.uniform(0, size)
    ImageDraw.Draw(blob).ellipse([bx - br, by - br, bx + br, by + br], fill=255)
    bm = np.asarray(blob, dtype=np.float64)[..., None] / 255.0
    canvas = canvas * (1 - bm) + _colour(rng) * bm
    canvas += rng.normal(0.0, rng.uniform(4, 36), canvas.shape)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


def _label_of(index: int) -> int:
    return int(index) % STANDIN_NUM_CLASSES


def _write_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_standin_dataset(out_dir: Path, seed: int = 0) -> Dict[str, Any]:
    """Write ``calib/<class>/<id>.png`` (256) and ``val/<class>/<id>.png`` (500), 48x48 RGB, balanced classes.

    Deterministic: the same bytes for the same seed. Returns the counts per split.
    """
    out_dir = Path(out_dir)
    counts: Dict[str, int] = {}
    for name, base, count in (("calib", _CALIB_BASE, CALIB_COUNT), ("val", _VAL_BASE, VAL_COUNT)):
        for label in STANDIN_LABELS:
            (out_dir / name / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            index = base + i
            label = _label_of(index)
            _write_png(render_standin(label, index, seed), out_dir / name / STANDIN_LABELS[label] / f"{index:06d}.png")
        counts[name] = count
    log.info("stand-in data: wrote %d calibration and %d validation images to %s (seed %d)",
             counts["calib"], counts["val"], out_dir, seed)
    return {"out_dir": str(out_dir), "seed": int(seed), "counts": counts}


def training_batch(step: int, seed: int = 0, batch: int = BATCH_SIZE) -> Dict[str, np.ndarray]:
    """The ``step``-th training batch, preprocessed as for deployment: {"x": NCHW float32, "y": int64}."""
    indices = [_TRAIN_BASE + step * batch + j for j in range(batch)]
    labels = [int(np.random.default_rng([int(seed), i]).integers(STANDIN_NUM_CLASSES)) for i in indices]
    x = np.stack([preprocess_image(render_standin(lab, i, seed), STANDIN_PREPROCESSING) for lab, i in zip(labels, indices)])
    return {"x": x, "y": np.asarray(labels, dtype=np.int64)}


# -------------------------------------------------------------------------------------------- training




def train_standin(data_dir: Path, out_path: Path, steps: int = DEFAULT_STEPS, seed: int = 0) -> Dict[str, Any]:
    """Train ResNeXt-50 32x4d on the shapes task for ``steps`` batches of 32; write the checkpoint and standin.json.

    Seeded, one process, one torch thread, so the same command gives the same weights on the
    same machine and library versions. ``data_dir/val`` (from :func:`write_standin_dataset`) is the
    validation set. The checkpoint holds the state_dict in float16 plus arch, labels and preprocessing.
    """
    torch = require("torch", "train the stand-in model")
    from ..resnext import create
    from ..runner import eval_top1, save_checkpoint
    from ...data import datasets

    data_dir, out_path = Path(data_dir), Path(out_path)
    if steps < 1:
        raise BadInputError(f"steps must be at least 1, got {steps}.")
    val = datasets.load_labeled(data_dir / "val", STANDIN_PREPROCESSING)
    classes = datasets.list_classes(data_dir / "val")
    if classes != STANDIN_LABELS:
        raise BadInputError(f"The stand-in validation folder '{data_dir / 'val'}' must have classes {STANDIN_LABELS}, has {classes}.")
    val_y = val.labels

    started = time.perf_counter()
    torch.manual_seed(seed)
    # One thread: bit-reproducible on one machine, and on a shared machine faster than two (measured: 3.3 s a step
    # against 7-11 s with two threads at load 7 on 2 cores; about 1 s with two threads on 2 quiet cores).
    torch.set_num_threads(1)
    model = create(STANDIN_ARCH, STANDIN_NUM_CLASSES)
    # Zero-initialised last BatchNorm of each residual branch (Goyal et al., torchvision's zero_init_residual):
    # every block starts as the identity, which lets 16 blocks train in a few hundred steps.
    for name, module in model.named_modules():
        if name.endswith(".bn3"):
            torch.nn.init.zeros_(module.weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.25)
    loss_fn = torch.nn.CrossEntropyLoss()
    log.info("stand-in training: %s, %d steps of %d images, seed %d", STANDIN_ARCH, steps, BATCH_SIZE, seed)
    model.train()
    for step in range(steps):
        b = training_batch(step, seed)
        loss = loss_fn(model(torch.from_numpy(b["x"])), torch.from_numpy(b["y"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 10 == 0 or step == 0:
            log.info("stand-in training: step %d/%d loss %.4f (%.1f s)", step + 1, steps, loss.item(),
                     time.perf_counter() - started)
    val_top1 = eval_top1(model, val.data, val_y, 100)
    seconds = time.perf_counter() - started
    log.info("stand-in training: val top-1 %.4f, %.1f s", val_top1, seconds)

    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone().contiguous()
             for k, v in model.state_dict().items()}
    checkpoint = {
        "arch": STANDIN_ARCH,
        "num_classes": STANDIN_NUM_CLASSES,
        "state_dict": state,
        "labels": list(STANDIN_LABELS),
        "preprocessing": STANDIN_PREPROCESSING.to_dict(),
        "val_top1": val_top1,
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
    }
    info = save_checkpoint(checkpoint, out_path, "standin.json", val_images=int(len(val.data)),
                           train_seconds=round(seconds, 1), torch=str(torch.__version__))
    return {**info, "checkpoint": str(out_path), "checkpoint_bytes": out_path.stat().st_size, "seconds": seconds}


def standin_info(standin_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Metadata of the shipped stand-in (standin.json), no torch needed."""
    path = Path(standin_dir or STANDIN_DIR) / "standin.json"
    if not path.is_file():
        raise BadInputError(f"The stand-in model is not in '{path.parent}'. Make it with: resnext-deploy demo standin.")
    return json.loads(path.read_text(encoding="utf-8"))
